"""The store's operations that the daemon needs, each one transaction, on SQLite or PostgreSQL.

``Store`` is the handle every part of the daemon holds; the operations that concern one idea
(jobs, versions, the lease, the notification outbox, …) live in modules of their own that take it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    bindparam,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from daemon.domain import CheckStatus, Kind, ReferenceKind, Task
from daemon.errors import NotFound
from daemon.store.engine import failures_reported, make_engine, write_engine
from daemon.store.models import (
    Base,
    Check,
    Deployment,
    Event,
    RunClaim,
    Sample,
    Version,
    utcnow,
)
from daemon.store.rows import (
    DRAW_MODULUS,
    INSERT_BATCH_ROWS,
    ROW_COLUMNS,
    InsertResult,
    NewSample,
    RowEncoder,
    SampleRows,
    draw_for,
    insert_new,
    insert_results,
    seed_offset,
    unique_rows,
)
from daemon.store.statements import (
    deployment_id_of,
    deployment_unknown,
    insert_for,
    named_row,
    of_deployment,
    samples_between,
    write_event,
)
from daemon.store.types import require_aware

# Names that moved to ``daemon.store.rows`` and ``.statements`` stay importable from here.
__all__ = [
    "DRAW_MODULUS",
    "NO_REFERENCE",
    "ROW_COLUMNS",
    "FeedbackUpdate",
    "InsertResult",
    "NewCheck",
    "NewSample",
    "RowEncoder",
    "SampleRows",
    "Store",
    "Window",
    "draw_for",
    "insert_for",
    "seed_offset",
]

NO_REFERENCE = "none"  # stored as a check's reference kind when it drew none


@dataclass(frozen=True, slots=True)
class FeedbackUpdate:
    """What late knowledge changes on a stored sample; None leaves a column as it is."""

    request_id: str
    label: str | None = None
    label_ts: datetime | None = None
    feedback_score: float | None = None
    feedback_kind: str | None = None
    feedback_comment: str | None = None
    judge_score: float | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """Samples with ``start <= ts < end``: how many there are, and a capped draw of them."""

    start: datetime
    end: datetime
    total: int
    samples: list[Sample]


@dataclass(frozen=True, slots=True)
class NewCheck:
    """The outcome of one drift check, to record."""

    started_at: datetime
    status: CheckStatus | str
    window_start: datetime
    window_end: datetime
    reference_kind: ReferenceKind | None  # None: the check failed before drawing one
    current_rows: int
    reference_rows: int
    current_total: int
    reference_total: int
    signals: dict[str, Any]
    _: KW_ONLY
    scheduled_for: datetime | None = None
    finished_at: datetime | None = None
    reference_start: datetime | None = None
    reference_end: datetime | None = None
    snapshot_path: str | None = None
    error: str | None = None


class Store:
    """driftd's store: one object per process, safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = write_engine(engine)
        self._read_sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._writer, expire_on_commit=False)
        # The count and the draw of a window must see the same rows while ingest keeps writing;
        # SQLite's BEGIN already gives one snapshot, PostgreSQL needs REPEATABLE READ for it.
        snapshot = engine
        if engine.dialect.name == "postgresql":
            snapshot = engine.execution_options(isolation_level="REPEATABLE READ")
        self._snapshot_sessions = sessionmaker(snapshot, expire_on_commit=False)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        busy_timeout: float = 5.0,
        synchronous: Literal["full", "normal"] = "normal",
    ) -> Self:
        """A store for ``url``; connects lazily, so call ``ping`` to find out whether it answers."""
        return cls(make_engine(url, busy_timeout=busy_timeout, synchronous=synchronous))

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self) -> None:
        """Round-trip to the database; raises ``StoreError`` saying what to check if it fails."""
        with failures_reported(self.engine), self.engine.connect() as connection:
            connection.execute(select(1))

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in a transaction, committed when the block ends, rolled back on an error.

        Objects stay usable after the block (``expire_on_commit=False``). On SQLite a writing
        session takes the write lock when it begins, so read-then-write code never fails on a
        stale snapshot; pass ``readonly=True`` for reads that must not wait for writers.
        """
        factory = self._read_sessions if readonly else self._write_sessions
        with factory.begin() as session:
            yield session

    def ensure_deployment(self, name: str, kind: Kind | str, task: Task | str) -> int:
        """Register deployment ``name`` or update its kind and task; returns its id."""
        kind = Kind(kind).value
        task = Task(task).value
        with self._writer.begin() as connection:
            now = utcnow()
            insert = insert_for(connection, Deployment).values(
                name=name, kind=kind, task=task, created_at=now, updated_at=now
            )
            connection.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
            row = connection.execute(
                select(Deployment.id, Deployment.kind, Deployment.task).where(
                    Deployment.name == name
                )
            ).one()
            if (row.kind, row.task) != (kind, task):
                connection.execute(
                    update(Deployment)
                    .where(Deployment.id == row.id)
                    .values(kind=kind, task=task, updated_at=now)
                )
            return int(row.id)

    def insert_samples(self, deployment: str, samples: Sequence[NewSample]) -> InsertResult:
        """Store ``samples`` in one transaction, skipping request ids already stored.

        A request id repeated within ``samples`` is stored once (its first occurrence) and
        reported as a duplicate for every other occurrence.
        """
        return self.insert_batches([(deployment, samples)])[0]

    def insert_batches(
        self, batches: Sequence[tuple[str, Sequence[NewSample]]]
    ) -> list[InsertResult]:
        """Store several batches, of any deployments, in ONE transaction (a group commit).

        Each batch gets its own result, in order. A request id already stored, or stored by an
        earlier batch of the same call, is a duplicate.
        """
        ids = self.deployment_ids()
        encoder = RowEncoder(self.engine.dialect.name)
        encoded = []
        for deployment, samples in batches:
            if deployment not in ids:
                deployment_unknown(deployment)
            encoded.append(encoder.encode(deployment, ids[deployment], samples))
        return self.insert_rows(encoded)

    def insert_rows(self, batches: Sequence[SampleRows]) -> list[InsertResult]:
        """``insert_batches`` for batches already encoded by a ``RowEncoder`` (ingest's hot
        path: the encoding can run in another process). Rows go through the driver's
        ``executemany`` (SQLite) or one ``unnest`` insert (PostgreSQL), skipping the ORM."""
        with self._writer.begin() as connection:
            inserted = insert_new(connection, unique_rows(batches))
        return insert_results(batches, inserted)

    def deployment_ids(self) -> dict[str, int]:
        """Every registered deployment's id, by name."""
        with self.engine.connect() as connection:
            return {
                name: int(id_)
                for name, id_ in connection.execute(select(Deployment.name, Deployment.id))
            }

    def apply_feedback(self, deployment: str, updates: Sequence[FeedbackUpdate]) -> list[str]:
        """Join feedback to stored samples by request id, in one transaction; returns the
        request ids that matched a sample (the caller reports the others)."""
        with self._writer.begin() as connection:
            deployment_id = deployment_id_of(connection, deployment)
            found = _stored_request_ids(connection, deployment_id, {u.request_id for u in updates})
            for update_ in updates:
                if update_.request_id not in found:
                    continue
                values = {
                    name: getattr(update_, name)
                    for name in (
                        "label",
                        "label_ts",
                        "feedback_score",
                        "feedback_kind",
                        "feedback_comment",
                        "judge_score",
                    )
                    if getattr(update_, name) is not None
                }
                connection.execute(
                    update(Sample)
                    .where(
                        Sample.deployment_id == deployment_id,
                        Sample.request_id == update_.request_id,
                    )
                    .values(values)
                )
        return [u.request_id for u in updates if u.request_id in found]

    def read_window(
        self, deployment: str, start: datetime, end: datetime, *, max_rows: int, seed: int
    ) -> Window:
        """Count the samples with ``start <= ts < end`` and draw at most ``max_rows`` of them.

        The draw is uniform and reproducible: rows are taken in the order of their stored hash
        rotated by the seed, so the same seed gives the same rows and another seed another
        subset, and a check's cost depends on ``max_rows``, not on traffic. The samples come
        back sorted by time.
        """
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        require_aware("start", start)
        require_aware("end", end)
        with self._snapshot_sessions.begin() as session:
            deployment_id = deployment_id_of(session.connection(), deployment)
            in_window = samples_between(deployment_id, start, end)
            total = session.execute(select(func.count()).where(*in_window)).scalar_one()
            position = (cast(Sample.draw, BigInteger) + seed_offset(seed)) % DRAW_MODULUS
            drawn = list(
                session.scalars(
                    select(Sample).where(*in_window).order_by(position, Sample.id).limit(max_rows)
                )
            )
        drawn.sort(key=lambda sample: (sample.ts, sample.id))
        return Window(start=start, end=end, total=int(total), samples=drawn)

    def record_check(self, deployment: str, check: NewCheck) -> int:
        """Store a check's outcome; returns its id."""
        with self.session() as session:
            row = Check(
                deployment_id=deployment_id_of(session.connection(), deployment),
                scheduled_for=check.scheduled_for,
                started_at=check.started_at,
                finished_at=check.finished_at,
                status=CheckStatus(check.status).value,
                window_start=check.window_start,
                window_end=check.window_end,
                reference_kind=check.reference_kind or NO_REFERENCE,
                reference_start=check.reference_start,
                reference_end=check.reference_end,
                current_rows=check.current_rows,
                reference_rows=check.reference_rows,
                current_total=check.current_total,
                reference_total=check.reference_total,
                signals=check.signals,
                snapshot_path=check.snapshot_path,
                error=check.error,
            )
            session.add(row)
            session.flush()
            return row.id

    def get_check(self, check_id: int) -> tuple[str, Check]:
        """A stored check and the name of its deployment; ``NotFound`` if there is none."""
        with self.session(readonly=True) as session:
            found = named_row(session, Check, check_id)
        if found is None:
            raise NotFound(f"no check {check_id} in the store; `driftd check` prints the ids")
        return found

    def set_snapshot_path(self, check_id: int, path: str) -> None:
        with self.session() as session:
            session.execute(update(Check).where(Check.id == check_id).values(snapshot_path=path))

    def store_embeddings(self, model: str, embeddings: Mapping[int, bytes]) -> None:
        """Cache embeddings of stored samples (by sample id), computed with ``model``."""
        if not embeddings:
            return
        with self._writer.begin() as connection:
            table = Base.metadata.tables["samples"]
            connection.execute(
                update(table)
                .where(table.c.id == bindparam("sample_id"))
                .values(embedding=bindparam("vector"), embedding_model=model),
                [{"sample_id": i, "vector": v} for i, v in embeddings.items()],
            )

    def active_version(self, deployment: str) -> Version | None:
        """The deployment's active version, if it has one."""
        with self.session(readonly=True) as session:
            deployment_id = deployment_id_of(session.connection(), deployment)
            return session.scalars(
                select(Version).where(
                    Version.deployment_id == deployment_id, Version.state == "active"
                )
            ).first()

    def first_samples(
        self, deployment: str, since: datetime, until: datetime, limit: int
    ) -> list[Sample]:
        """The first ``limit`` samples with ``since <= ts < until``, oldest first: a version's
        baseline, as a check ending at ``until`` sees it."""
        require_aware("since", since)
        require_aware("until", until)
        with self.session(readonly=True) as session:
            deployment_id = deployment_id_of(session.connection(), deployment)
            return list(
                session.scalars(
                    select(Sample)
                    .where(*samples_between(deployment_id, since, until))
                    .order_by(Sample.ts, Sample.id)
                    .limit(limit)
                )
            )

    def recent_checks(self, deployment: str, limit: int = 10) -> list[Check]:
        """The deployment's latest checks, newest first."""
        with self.session(readonly=True) as session:
            deployment_id = deployment_id_of(session.connection(), deployment)
            return list(
                session.scalars(
                    select(Check)
                    .where(Check.deployment_id == deployment_id)
                    .order_by(Check.started_at.desc(), Check.id.desc())
                    .limit(limit)
                )
            )

    def add_event(
        self,
        deployment: str | None,
        kind: str,
        message: str,
        evidence: dict[str, Any],
        *,
        ts: datetime | None = None,
    ) -> int:
        """Append an audit event (``deployment`` None for daemon-wide ones); returns its id."""
        with self.session() as session:
            deployment_id = (
                None if deployment is None else deployment_id_of(session.connection(), deployment)
            )
            return write_event(session, deployment_id, kind, message, evidence, ts or utcnow())

    def recent_events(self, deployment: str | None = None, limit: int = 50) -> list[Event]:
        """The latest audit events, newest first: one deployment's, or all of them."""
        with self.session(readonly=True) as session:
            query = select(Event).order_by(Event.ts.desc(), Event.id.desc()).limit(limit)
            query = of_deployment(session, query, Event, deployment)
            return list(session.scalars(query))

    def claim_run(
        self, deployment: str, job_kind: str, scheduled_for: datetime, owner: str, epoch: int
    ) -> bool:
        """Claim the run of ``job_kind`` scheduled for ``scheduled_for``.

        True for exactly one caller, across replicas and leader changes; everyone else, and any
        later attempt at the same tick, gets False and must not run it.
        """
        require_aware("scheduled_for", scheduled_for)
        now = utcnow()
        with self._writer.begin() as connection:
            values = {
                "deployment_id": deployment_id_of(connection, deployment),
                "job_kind": job_kind,
                "scheduled_for": scheduled_for,
                "owner": owner,
                "epoch": epoch,
                "claimed_at": now,
                "heartbeat_at": now,
                "attempt": 1,
            }
            statement = (
                insert_for(connection, RunClaim)
                .values(values)
                .on_conflict_do_nothing(
                    index_elements=["deployment_id", "job_kind", "scheduled_for"]
                )
                .returning(RunClaim.id)
            )
            return connection.execute(statement).first() is not None

    def last_claims(self) -> dict[tuple[str, str], datetime]:
        """The latest scheduled time claimed of each (deployment, job kind) ever claimed."""
        with self.session(readonly=True) as session:
            found = session.execute(
                select(Deployment.name, RunClaim.job_kind, func.max(RunClaim.scheduled_for))
                .join(Deployment, Deployment.id == RunClaim.deployment_id)
                .group_by(Deployment.name, RunClaim.job_kind)
            ).all()
        return {(str(name), str(kind)): when for name, kind, when in found}


def _stored_request_ids(connection: Connection, deployment_id: int, ids: set[str]) -> set[str]:
    """Which of ``ids`` the deployment already has; the unique index answers each lookup."""
    found: set[str] = set()
    wanted = list(ids)
    for start in range(0, len(wanted), INSERT_BATCH_ROWS):
        chunk = wanted[start : start + INSERT_BATCH_ROWS]
        found.update(
            connection.execute(
                select(Sample.request_id).where(
                    Sample.deployment_id == deployment_id, Sample.request_id.in_(chunk)
                )
            ).scalars()
        )
    return found
