"""The store's operations that the daemon needs, each one transaction, on SQLite or PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from operator import attrgetter
from types import TracebackType
from typing import Any, Literal, Self

from sqlalchemy import (
    BigInteger,
    Connection,
    Dialect,
    Engine,
    cast,
    func,
    select,
    update,
)
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
from daemon.store.types import UTCDateTime

DRAW_MODULUS = 2**31
# Rows per INSERT round trip: well under SQLite's and PostgreSQL's bound-parameter limits even
# with every sample column set, and large enough that a 10,000-row batch takes 10 round trips.
INSERT_BATCH_ROWS = 1000
_DRAW_PERSON = b"driftd.draw.v1"
_SEED_PERSON = b"driftd.seed.v1"
_MAX_ID_LENGTH = 255


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
        earlier batch of the same call, is a duplicate. Rows go through the driver's
        ``executemany`` with SQLAlchemy's own type conversions, skipping the ORM: this is
        ingest's hot path.
        """
        with self._writer.begin() as connection:
            plan = _sample_insert(connection)
            now = utcnow()
            pending: list[tuple[int, list[NewSample]]] = []
            seen: dict[int, set[str]] = {}
            for deployment, samples in batches:
                deployment_id = _deployment_id(connection, deployment)
                taken = seen.setdefault(deployment_id, set())
                fresh = []
                for sample in samples:
                    if sample.request_id not in taken:
                        taken.add(sample.request_id)
                        fresh.append(sample)
                pending.append((deployment_id, fresh))
                plan.add(deployment, deployment_id, fresh, now)
            inserted = plan.execute(connection)
        results = []
        for (deployment_id, fresh), (_, samples) in zip(pending, batches, strict=True):
            new_ids = {s.request_id for s in fresh if (deployment_id, s.request_id) in inserted}
            new: list[str] = []
            duplicate: list[str] = []
            for sample in samples:
                if sample.request_id in new_ids:
                    new_ids.discard(sample.request_id)
                    new.append(sample.request_id)
                else:
                    duplicate.append(sample.request_id)
            results.append(InsertResult(new=new, duplicate=duplicate))
        return results

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


# The sample columns an insert writes, in table order; ``id`` is the database's.
_SAMPLE_COLUMNS = tuple(c.name for c in Sample.__table__.columns if c.name != "id")
_COMPUTED = ("deployment_id", "draw", "created_at")
_FROM_SAMPLE = tuple(name for name in _SAMPLE_COLUMNS if name not in _COMPUTED)
_read_sample = attrgetter(*_FROM_SAMPLE)
_REQUEST_ID = len(_COMPUTED) + _FROM_SAMPLE.index("request_id")


def _converter(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """How a column's value goes to the driver: SQLAlchemy's own conversion, except for the
    timestamps on SQLite, done here in one step in the very text format SQLAlchemy writes."""
    if isinstance(type_, UTCDateTime) and dialect.name == "sqlite":
        return _sqlite_utc_text
    processor: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor


def _sqlite_utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class _SampleInsert:
    """The rows of one grouped insert, converted the way each column's SQLAlchemy type would
    (UTC text on SQLite, JSON text, …) so that they read back through the ORM exactly like
    rows the ORM wrote, without the ORM's per-row cost. One instance per transaction."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        columns = {c.name: c for c in Sample.__table__.columns}
        self.converters = [
            (i, converter)
            for i, name in enumerate(_FROM_SAMPLE)
            if (converter := _converter(columns[name].type, dialect))
        ]
        self.created_processor = _converter(columns["created_at"].type, dialect)
        self.rows: list[tuple[Any, ...]] = []

    def add(
        self, deployment: str, deployment_id: int, samples: Sequence[NewSample], now: datetime
    ) -> None:
        created = self.created_processor(now) if self.created_processor else now
        converters = self.converters
        for sample in samples:
            values = list(_read_sample(sample))
            for i, convert in converters:
                if values[i] is not None:
                    values[i] = convert(values[i])
            self.rows.append(
                (deployment_id, draw_for(deployment, sample.request_id), created, *values)
            )

    def execute(self, connection: Connection) -> set[tuple[int, str]]:
        """Insert the rows, skipping known request ids; returns the (deployment id, request id)
        pairs actually stored.

        SQLite: the transaction holds the write lock, and new rows take ids above the largest
        one, so when the driver reports fewer rows than it was given, the stored ones are those
        above the largest id seen before. No lookup is needed when nothing was a duplicate.
        """
        sql = (
            f"INSERT INTO samples ({', '.join(_COMPUTED + _FROM_SAMPLE)}) "
            f"VALUES ({', '.join('?' for _ in _COMPUTED + _FROM_SAMPLE)}) "
            "ON CONFLICT (deployment_id, request_id) DO NOTHING"
        )
        before = connection.execute(select(func.coalesce(func.max(Sample.id), 0))).scalar_one()
        stored = 0
        for start in range(0, len(self.rows), INSERT_BATCH_ROWS):
            result = connection.exec_driver_sql(sql, self.rows[start : start + INSERT_BATCH_ROWS])
            stored += result.rowcount
        if stored == len(self.rows):
            return {(row[0], row[_REQUEST_ID]) for row in self.rows}
        return {
            (int(d), str(r))
            for d, r in connection.execute(
                select(Sample.deployment_id, Sample.request_id).where(Sample.id > before)
            )
        }


class _PostgresSampleInsert(_SampleInsert):
    """One ``INSERT … SELECT FROM unnest(arrays)`` per chunk: a single round trip with few
    parameters, and ``RETURNING`` says exactly which rows were new, even when another replica
    inserts the same request id at the same moment."""

    def execute(self, connection: Connection) -> set[tuple[int, str]]:
        columns = {c.name: c for c in Sample.__table__.columns}
        names = _COMPUTED + _FROM_SAMPLE
        casts = [
            f"%(c{i})s::{columns[name].type.dialect_impl(self.dialect).compile(self.dialect)}[]"
            for i, name in enumerate(names)
        ]
        sql = (
            f"INSERT INTO samples ({', '.join(names)}) SELECT * FROM unnest({', '.join(casts)}) "
            "ON CONFLICT (deployment_id, request_id) DO NOTHING RETURNING deployment_id, request_id"
        )
        inserted: set[tuple[int, str]] = set()
        for start in range(0, len(self.rows), INSERT_BATCH_ROWS * 5):
            chunk = self.rows[start : start + INSERT_BATCH_ROWS * 5]
            arrays = {f"c{i}": list(column) for i, column in enumerate(zip(*chunk, strict=True))}
            result = connection.exec_driver_sql(sql, arrays)
            inserted.update((int(d), str(r)) for d, r in result)
        return inserted


def sample_rows(
    dialect: Dialect, deployment: str, deployment_id: int, samples: Sequence[NewSample]
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The column names and rows exactly as ``insert_batches`` hands them to the driver; for
    measuring the driver alone against the whole path."""
    plan = _SampleInsert(dialect)
    plan.add(deployment, deployment_id, samples, utcnow())
    return _COMPUTED + _FROM_SAMPLE, plan.rows


def _sample_insert(connection: Connection) -> _SampleInsert:
    if connection.dialect.name == "postgresql":
        return _PostgresSampleInsert(connection.dialect)
    return _SampleInsert(connection.dialect)


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
