"""Samples as the database driver receives them: each one's place in every capped draw, the
encoding of a batch into plain rows, and the bulk insert of those rows on each dialect.

Ingest's hot path runs through here, so rows skip the ORM: ``RowEncoder`` writes values in the
very form SQLAlchemy's column types would (and may run in another process) — tuples for SQLite's
``executemany``, binary ``COPY`` tuples for PostgreSQL — and the insert skips request ids already
stored, saying exactly which ones were new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import JSON, Connection, func, select

from daemon.errors import StoreError
from daemon.ingest.rules import MAX_ID_LENGTH
from daemon.store.models import Sample, utcnow
from daemon.store.pgcopy import HEADER, TRAILER, RowFormat
from daemon.store.types import UTCDateTime, require_aware, to_json_text

DRAW_MODULUS = 2**31
# Rows per INSERT round trip: well under SQLite's and PostgreSQL's bound-parameter limits even
# with every sample column set, and large enough that a 10,000-row batch takes 10 round trips.
INSERT_BATCH_ROWS = 1000
_DRAW_PERSON = b"driftd.draw.v1"
_SEED_PERSON = b"driftd.seed.v1"


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
        if not self.request_id or len(self.request_id) > MAX_ID_LENGTH:
            raise ValueError(
                f"request_id must be 1 to {MAX_ID_LENGTH} characters, "
                f"got {len(self.request_id)}: {self.request_id[:40]!r}"
            )
        require_aware("ts", self.ts)
        if self.label_ts is not None:
            require_aware("label_ts", self.label_ts)


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Request ids stored by this call (``new``) and those already stored (``duplicate``)."""

    new: list[str]
    duplicate: list[str]


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
    """One batch of samples encoded for the driver, one row per sample in ``ROW_COLUMNS``
    order: a tuple of plain values on SQLite, a binary ``COPY`` tuple (bytes) on PostgreSQL.
    Plain values only, so a batch can be encoded in another process."""

    deployment_id: int
    request_ids: list[str]
    rows: list[Any]


class RowEncoder:
    """Turns samples into the rows the driver receives, in the very form SQLAlchemy's types
    would write (UTC text timestamps on SQLite, JSON text, ``timestamptz`` and ``json`` as
    PostgreSQL reads them from ``COPY``), so that rows written this way read back through the
    ORM exactly like rows the ORM wrote, without its per-row cost."""

    def __init__(self, dialect: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
        columns = {c.name: c for c in Sample.__table__.columns}
        self._copy = (
            RowFormat([columns[name].type for name in ROW_COLUMNS])
            if dialect == "postgresql"
            else None
        )
        self._converters: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(_FROM_SAMPLE):
            type_ = columns[name].type
            if isinstance(type_, UTCDateTime):
                self._converters.append((i, _sqlite_utc_text))
            elif isinstance(type_, JSON):
                self._converters.append((i, to_json_text))

    def encode(
        self,
        deployment: str,
        deployment_id: int,
        samples: Sequence[NewSample],
        now: datetime | None = None,
    ) -> SampleRows:
        created = now or utcnow()
        request_ids = [sample.request_id for sample in samples]
        if self._copy is not None:
            encode = self._copy.encode
            tuples = [
                encode(
                    (
                        deployment_id,
                        draw_for(deployment, sample.request_id),
                        created,
                        *_read_sample(sample),
                    )
                )
                for sample in samples
            ]
            return SampleRows(deployment_id, request_ids, tuples)
        stamp = _sqlite_utc_text(created)
        converters = self._converters
        rows = []
        for sample in samples:
            values = list(_read_sample(sample))
            for i, convert in converters:
                if values[i] is not None:
                    values[i] = convert(values[i])
            rows.append((deployment_id, draw_for(deployment, sample.request_id), stamp, *values))
        return SampleRows(deployment_id, request_ids, rows)


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


# A staging table of the session: rows stream in with COPY, which cannot skip duplicates, and
# one INSERT … SELECT moves them on. Temporary, so nothing is logged or shared between replicas;
# emptied by every commit; created once per connection, and again if a pooler swaps it.
_STAGING = "driftd_samples_in"
_COLUMN_LIST = ", ".join(ROW_COLUMNS)
_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "
    f"SELECT {_COLUMN_LIST} FROM samples WITH NO DATA"
)
_COPY_STAGING = f"COPY {_STAGING} ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
# In key order: two replicas inserting overlapping request ids then take the rows' locks in the
# same order, and the second waits for the first instead of deadlocking with it.
_MERGE_STAGING = (
    f"INSERT INTO samples ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {_STAGING} "
    'ORDER BY deployment_id, request_id COLLATE "C" '
    "ON CONFLICT (deployment_id, request_id) DO NOTHING RETURNING deployment_id, request_id"
)
_COPY_CHUNK_ROWS = 1000


def _insert_postgres(connection: Connection, rows: list[bytes]) -> set[tuple[int, str]]:
    """``COPY`` the binary tuples into the staging table, then merge it into ``samples``:
    ``RETURNING`` says exactly which rows were new, even when another replica inserts the same
    request id at the same moment (the insert waits for that one's transaction to end)."""
    driver = connection.connection.driver_connection
    assert driver is not None, "a connection in a transaction has a driver connection"
    with driver.cursor() as cursor:
        cursor.execute(_CREATE_STAGING)
        with cursor.copy(_COPY_STAGING) as copy:
            copy.write(HEADER)
            for start in range(0, len(rows), _COPY_CHUNK_ROWS):
                copy.write(b"".join(rows[start : start + _COPY_CHUNK_ROWS]))
            copy.write(TRAILER)
        cursor.execute(_MERGE_STAGING)
        return {(int(d), str(r)) for d, r in cursor.fetchall()}


def unique_rows(batches: Sequence[SampleRows]) -> list[Any]:
    """The rows of ``batches`` with each (deployment, request id) once: its first occurrence."""
    taken: set[tuple[int, str]] = set()
    fresh: list[Any] = []
    for batch in batches:
        for request_id, row in zip(batch.request_ids, batch.rows, strict=True):
            key = (batch.deployment_id, request_id)
            if key not in taken:
                taken.add(key)
                fresh.append(row)
    return fresh


def insert_new(connection: Connection, rows: list[Any]) -> set[tuple[int, str]]:
    """Insert ``rows`` (unique, see ``unique_rows``), skipping request ids already stored;
    returns the (deployment id, request id) pairs this call stored."""
    if connection.dialect.name == "postgresql":
        return _insert_postgres(connection, rows)
    return _insert_sqlite(connection, rows)


def insert_results(
    batches: Sequence[SampleRows], inserted: set[tuple[int, str]]
) -> list[InsertResult]:
    """Each batch's new and duplicate request ids, in order, given what ``insert_new`` stored
    (consumed: a request id is new for the first batch that carries it)."""
    found = []
    for batch in batches:
        new: list[str] = []
        duplicate: list[str] = []
        for request_id in batch.request_ids:
            key = (batch.deployment_id, request_id)
            if key in inserted:
                inserted.discard(key)
                new.append(key[1])
            else:
                duplicate.append(key[1])
        found.append(InsertResult(new=new, duplicate=duplicate))
    return found
