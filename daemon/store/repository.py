"""The store's operations that the daemon needs, each one transaction, on SQLite or PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from operator import attrgetter
from types import TracebackType
from typing import Any, Literal, NoReturn, Self

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Engine,
    bindparam,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.domain import CheckStatus, Kind, ReferenceKind, Task
from daemon.errors import NotFound, StoreError
from daemon.store.engine import make_engine, unreachable, write_engine
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
from daemon.store.types import UTCDateTime, to_json_text

DRAW_MODULUS = 2**31
# Rows per INSERT round trip: well under SQLite's and PostgreSQL's bound-parameter limits even
# with every sample column set, and large enough that a 10,000-row batch takes 10 round trips.
INSERT_BATCH_ROWS = 1000
_DRAW_PERSON = b"driftd.draw.v1"
_SEED_PERSON = b"driftd.seed.v1"
_MAX_ID_LENGTH = 255
NO_REFERENCE = "none"  # stored as a check's reference kind when it drew none


@dataclass(slots=True)
class NewSample:
    """A sample to store. ``request_id`` identifies it within its deployment: re-sent samples
    with a known ``request_id`` are recognised as duplicates and not stored again.

    Not frozen: ingest builds one per sample on its hot path, and a frozen dataclass's
    ``__init__`` costs several times more. Treat it as a value all the same."""

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
    feedback_comment: str | None = None
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
                _deployment_unknown(deployment)
            encoded.append(encoder.encode(deployment, ids[deployment], samples))
        return self.insert_rows(encoded)

    def insert_rows(self, batches: Sequence[SampleRows]) -> list[InsertResult]:
        """``insert_batches`` for batches already encoded by a ``RowEncoder`` (ingest's hot
        path: the encoding can run in another process). Rows go through the driver's
        ``executemany`` (SQLite) or one ``unnest`` insert (PostgreSQL), skipping the ORM."""
        taken: set[tuple[int, str]] = set()
        fresh: list[tuple[Any, ...]] = []
        for batch in batches:
            for row in batch.rows:
                key = (batch.deployment_id, row[ROW_REQUEST_ID])
                if key not in taken:
                    taken.add(key)
                    fresh.append(row)
        with self._writer.begin() as connection:
            if connection.dialect.name == "postgresql":
                inserted = _insert_postgres(connection, fresh)
            else:
                inserted = _insert_sqlite(connection, fresh)
        results = []
        for batch in batches:
            new: list[str] = []
            duplicate: list[str] = []
            for row in batch.rows:
                key = (batch.deployment_id, row[ROW_REQUEST_ID])
                if key in inserted:
                    inserted.discard(key)
                    new.append(key[1])
                else:
                    duplicate.append(key[1])
            results.append(InsertResult(new=new, duplicate=duplicate))
        return results

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
            deployment_id = _deployment_id(connection, deployment)
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
            found = session.execute(
                select(Deployment.name, Check)
                .join(Deployment, Deployment.id == Check.deployment_id)
                .where(Check.id == check_id)
            ).first()
        if found is None:
            raise NotFound(f"no check {check_id} in the store; `driftd check` prints the ids")
        return str(found[0]), found[1]

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
            deployment_id = _deployment_id(session.connection(), deployment)
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
        _require_aware("since", since)
        _require_aware("until", until)
        with self.session(readonly=True) as session:
            deployment_id = _deployment_id(session.connection(), deployment)
            return list(
                session.scalars(
                    select(Sample)
                    .where(
                        Sample.deployment_id == deployment_id,
                        Sample.ts >= since,
                        Sample.ts < until,
                    )
                    .order_by(Sample.ts, Sample.id)
                    .limit(limit)
                )
            )

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
        _deployment_unknown(name)
    return int(found)


def _deployment_unknown(name: str) -> NoReturn:
    raise NotFound(
        f"unknown deployment {name!r}: it is not registered in the store; check the name, "
        "or add the deployment to the configuration and restart driftd to register it"
    )


# The sample columns an insert writes, in table order; ``id`` is the database's.
_SAMPLE_COLUMNS = tuple(c.name for c in Sample.__table__.columns if c.name != "id")
_COMPUTED = ("deployment_id", "draw", "created_at")
_FROM_SAMPLE = tuple(name for name in _SAMPLE_COLUMNS if name not in _COMPUTED)
_read_sample = attrgetter(*_FROM_SAMPLE)
ROW_COLUMNS = _COMPUTED + _FROM_SAMPLE
ROW_REQUEST_ID = ROW_COLUMNS.index("request_id")


def _sqlite_utc_text(value: datetime) -> str:
    # The text SQLAlchemy's SQLite DATETIME writes, made by C code in one go.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


@dataclass(frozen=True, slots=True)
class SampleRows:
    """One batch of samples encoded for the driver: one tuple per sample, in ``ROW_COLUMNS``
    order. Plain values only, so a batch can be encoded in another process."""

    deployment_id: int
    rows: list[tuple[Any, ...]]


class RowEncoder:
    """Turns samples into the rows the driver receives, in the very form SQLAlchemy's types
    would write (UTC text timestamps on SQLite, JSON text), so that rows written this way read
    back through the ORM exactly like rows the ORM wrote, without its per-row cost."""

    def __init__(self, dialect: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
        columns = {c.name: c for c in Sample.__table__.columns}
        stamp = _sqlite_utc_text if dialect == "sqlite" else None
        self._stamp = stamp
        self._converters: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(_FROM_SAMPLE):
            type_ = columns[name].type
            if isinstance(type_, UTCDateTime) and stamp is not None:
                self._converters.append((i, stamp))
            elif isinstance(type_, JSON):
                self._converters.append((i, to_json_text))

    def encode(
        self,
        deployment: str,
        deployment_id: int,
        samples: Sequence[NewSample],
        now: datetime | None = None,
    ) -> SampleRows:
        created: Any = now or utcnow()
        if self._stamp is not None:
            created = self._stamp(created)
        converters = self._converters
        rows = []
        for sample in samples:
            values = list(_read_sample(sample))
            for i, convert in converters:
                if values[i] is not None:
                    values[i] = convert(values[i])
            rows.append((deployment_id, draw_for(deployment, sample.request_id), created, *values))
        return SampleRows(deployment_id, rows)


def _insert_sqlite(connection: Connection, rows: list[tuple[Any, ...]]) -> set[tuple[int, str]]:
    """Insert, skipping known request ids; the (deployment id, request id) pairs stored.

    The transaction holds SQLite's write lock and new rows take ids above the largest one, so
    when the driver reports fewer rows than it was given, the stored ones are those above the
    largest id seen before. No lookup is needed when nothing was a duplicate.
    """
    sql = (
        f"INSERT INTO samples ({', '.join(ROW_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in ROW_COLUMNS)}) "
        "ON CONFLICT (deployment_id, request_id) DO NOTHING"
    )
    before = connection.execute(select(func.coalesce(func.max(Sample.id), 0))).scalar_one()
    stored = 0
    for start in range(0, len(rows), INSERT_BATCH_ROWS):
        stored += connection.exec_driver_sql(sql, rows[start : start + INSERT_BATCH_ROWS]).rowcount
    if stored == len(rows):
        return {(row[0], row[ROW_REQUEST_ID]) for row in rows}
    query = select(Sample.deployment_id, Sample.request_id).where(Sample.id > before)
    return {(int(d), str(r)) for d, r in connection.execute(query)}


def _insert_postgres(connection: Connection, rows: list[tuple[Any, ...]]) -> set[tuple[int, str]]:
    """One ``INSERT … SELECT FROM unnest(arrays)`` per chunk: a single round trip with few
    parameters, and ``RETURNING`` says exactly which rows were new, even when another replica
    inserts the same request id at the same moment."""
    dialect = connection.dialect
    columns = {c.name: c for c in Sample.__table__.columns}
    casts = []
    for i, name in enumerate(ROW_COLUMNS):
        type_ = columns[name].type
        sql_type = "TEXT" if isinstance(type_, JSON) else type_.compile(dialect)
        casts.append(f"%(c{i})s::{sql_type}[]")
    sql = (
        f"INSERT INTO samples ({', '.join(ROW_COLUMNS)}) "
        f"SELECT {', '.join(_select_list(columns))} FROM unnest({', '.join(casts)}) "
        f"AS r({', '.join(ROW_COLUMNS)}) "
        "ON CONFLICT (deployment_id, request_id) DO NOTHING RETURNING deployment_id, request_id"
    )
    inserted: set[tuple[int, str]] = set()
    for start in range(0, len(rows), INSERT_BATCH_ROWS * 5):
        chunk = rows[start : start + INSERT_BATCH_ROWS * 5]
        arrays = {f"c{i}": list(column) for i, column in enumerate(zip(*chunk, strict=True))}
        inserted.update((int(d), str(r)) for d, r in connection.exec_driver_sql(sql, arrays))
    return inserted


def _select_list(columns: dict[str, Any]) -> list[str]:
    # JSON travels as text (one cast per array), and becomes JSON column by column.
    return [
        f"r.{name}::JSON" if isinstance(columns[name].type, JSON) else f"r.{name}"
        for name in ROW_COLUMNS
    ]


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


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} {value.isoformat()} has no timezone; pass an aware datetime, "
            "e.g. datetime.now(UTC)"
        )
