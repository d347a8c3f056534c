"""The store's operations that the daemon needs, each one transaction, on SQLite or PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, fields
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy import BigInteger, Connection, Engine, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.domain import CheckStatus, Kind, Task
from daemon.errors import StoreError
from daemon.store.engine import make_engine, unreachable, write_engine
from daemon.store.models import (
    Base,
    Check,
    Deployment,
    Event,
    RunClaim,
    Sample,
    utcnow,
)

DRAW_MODULUS = 2**31
# Rows per INSERT round trip: well under SQLite's and PostgreSQL's bound-parameter limits even
# with every sample column set, and large enough that a 10,000-row batch takes 10 round trips.
INSERT_BATCH_ROWS = 1000
_DRAW_PERSON = b"driftd.draw.v1"
_SEED_PERSON = b"driftd.seed.v1"
_MAX_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class NewSample:
    """A sample to store. ``request_id`` identifies it within its deployment: re-sent samples
    with a known ``request_id`` are recognised as duplicates and not stored again."""

    request_id: str
    ts: datetime
    _: KW_ONLY
    input: str = ""
    input_messages: list[dict[str, Any]] | None = None
    output: str | None = None
    prediction: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    label: str | None = None
    label_ts: datetime | None = None
    feedback_score: float | None = None
    feedback_kind: str | None = None
    judge_score: float | None = None
    descriptors: dict[str, Any] | None = None
    embedding: bytes | None = None
    embedding_model: str | None = None
    model_version: str | None = None
    prompt_version: str | None = None
    latency_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.request_id or len(self.request_id) > _MAX_ID_LENGTH:
            raise ValueError(
                f"request_id must be 1 to {_MAX_ID_LENGTH} characters, "
                f"got {len(self.request_id)}: {self.request_id[:40]!r}"
            )
        _require_aware("ts", self.ts)
        if self.label_ts is not None:
            _require_aware("label_ts", self.label_ts)


_ALWAYS_STORED = ("request_id", "ts", "input")
_OPTIONAL_FIELDS = tuple(f.name for f in fields(NewSample) if f.name not in _ALWAYS_STORED)


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Request ids stored by this call (``new``) and those already stored (``duplicate``)."""

    new: list[str]
    duplicate: list[str]


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
    reference_kind: str
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


def draw_for(deployment: str, request_id: str) -> int:
    """The sample's position in every capped draw, in ``[0, 2**31)``.

    A keyed hash rather than ``random``: the same sample gets the same value in every process and
    on every re-insert, so a check can be re-run on exactly the same rows.
    """
    digest = hashlib.blake2b(
        f"{deployment}\x00{request_id}".encode(), digest_size=8, person=_DRAW_PERSON
    ).digest()
    return int.from_bytes(digest, "big") % DRAW_MODULUS


def seed_offset(seed: int) -> int:
    """Spread a seed over ``[0, 2**31)``: neighbouring seeds must draw unrelated subsets, which
    a plain ``(draw + seed)`` rotation would not (seeds 1 and 2 would pick nearly the same rows)."""
    digest = hashlib.blake2b(str(seed).encode(), digest_size=8, person=_SEED_PERSON).digest()
    return int.from_bytes(digest, "big") % DRAW_MODULUS


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
    def open(cls, url: str, *, busy_timeout: float = 5.0) -> Self:
        """A store for ``url``; connects lazily, so call ``ping`` to find out whether it answers."""
        return cls(make_engine(url, busy_timeout=busy_timeout))

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
        try:
            with self.engine.connect() as connection:
                connection.execute(select(1))
        except SQLAlchemyError as error:
            raise unreachable(self.engine, error) from error

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
        rows = _sample_rows(deployment, samples)
        stored: set[str] = set()
        with self._writer.begin() as connection:
            deployment_id = _deployment_id(connection, deployment)
            statement = (
                insert_for(connection, Sample)
                .on_conflict_do_nothing(index_elements=["deployment_id", "request_id"])
                .returning(Sample.request_id)
            )
            for start in range(0, len(rows), INSERT_BATCH_ROWS):
                batch = rows[start : start + INSERT_BATCH_ROWS]
                for row in batch:
                    row["deployment_id"] = deployment_id
                stored.update(connection.execute(statement, batch).scalars())
        new: list[str] = []
        duplicate: list[str] = []
        for sample in samples:
            if sample.request_id in stored:
                stored.discard(sample.request_id)
                new.append(sample.request_id)
            else:
                duplicate.append(sample.request_id)
        return InsertResult(new=new, duplicate=duplicate)

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
        _require_aware("start", start)
        _require_aware("end", end)
        with self._snapshot_sessions.begin() as session:
            deployment_id = _deployment_id(session.connection(), deployment)
            in_window = (
                Sample.deployment_id == deployment_id,
                Sample.ts >= start,
                Sample.ts < end,
            )
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
                deployment_id=_deployment_id(session.connection(), deployment),
                scheduled_for=check.scheduled_for,
                started_at=check.started_at,
                finished_at=check.finished_at,
                status=CheckStatus(check.status).value,
                window_start=check.window_start,
                window_end=check.window_end,
                reference_kind=check.reference_kind,
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

    def recent_checks(self, deployment: str, limit: int = 10) -> list[Check]:
        """The deployment's latest checks, newest first."""
        with self.session(readonly=True) as session:
            deployment_id = _deployment_id(session.connection(), deployment)
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
                None if deployment is None else _deployment_id(session.connection(), deployment)
            )
            row = Event(
                deployment_id=deployment_id,
                ts=ts or utcnow(),
                kind=kind,
                message=message,
                evidence=evidence,
            )
            session.add(row)
            session.flush()
            return row.id

    def recent_events(self, deployment: str | None = None, limit: int = 50) -> list[Event]:
        """The latest audit events, newest first: one deployment's, or all of them."""
        with self.session(readonly=True) as session:
            query = select(Event).order_by(Event.ts.desc(), Event.id.desc()).limit(limit)
            if deployment is not None:
                deployment_id = _deployment_id(session.connection(), deployment)
                query = query.where(Event.deployment_id == deployment_id)
            return list(session.scalars(query))

    def claim_run(
        self, deployment: str, job_kind: str, scheduled_for: datetime, owner: str, epoch: int
    ) -> bool:
        """Claim the run of ``job_kind`` scheduled for ``scheduled_for``.

        True for exactly one caller, across replicas and leader changes; everyone else, and any
        later attempt at the same tick, gets False and must not run it.
        """
        _require_aware("scheduled_for", scheduled_for)
        with self._writer.begin() as connection:
            values = {
                "deployment_id": _deployment_id(connection, deployment),
                "job_kind": job_kind,
                "scheduled_for": scheduled_for,
                "owner": owner,
                "epoch": epoch,
                "claimed_at": utcnow(),
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


def insert_for(connection: Connection, entity: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``entity``'s table in the connection's dialect, for ON CONFLICT clauses."""
    name = connection.dialect.name
    if name == "postgresql":
        return postgresql.insert(entity)
    if name == "sqlite":
        return sqlite.insert(entity)
    raise StoreError(f"unsupported database {name!r}: driftd's store runs on SQLite or PostgreSQL")


def _deployment_id(connection: Connection, name: str) -> int:
    found = connection.execute(select(Deployment.id).where(Deployment.name == name)).scalar()
    if found is None:
        raise StoreError(
            f"unknown deployment {name!r}: it is not registered in the store; check the name, "
            "or add the deployment to the configuration and restart driftd to register it"
        )
    return int(found)


def _sample_rows(deployment: str, samples: Sequence[NewSample]) -> list[dict[str, Any]]:
    """One row per distinct request id (its first occurrence), holding only the columns that
    some sample sets: the rest are NULL anyway, and every bound parameter costs time in the
    driver (half the columns of a typical batch are empty)."""
    now = utcnow()
    first: dict[str, NewSample] = {}
    for sample in samples:
        first.setdefault(sample.request_id, sample)
    columns = list(_ALWAYS_STORED) + [
        name
        for name in _OPTIONAL_FIELDS
        if any(getattr(sample, name) is not None for sample in first.values())
    ]
    return [
        {name: getattr(sample, name) for name in columns}
        | {"draw": draw_for(deployment, sample.request_id), "created_at": now}
        for sample in first.values()
    ]


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} {value.isoformat()} has no timezone; pass an aware datetime, "
            "e.g. datetime.now(UTC)"
        )
