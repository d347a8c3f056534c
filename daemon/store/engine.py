"""Engines for the two stores driftd supports: SQLite (one process) and PostgreSQL (many replicas).

Everything dialect-specific about *connecting* lives here, so the rest of the store can be written
once: URL spelling, SQLite's pragmas and transaction control, and the message an operator sees when
the database cannot be reached.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from daemon.errors import StoreError
from daemon.store.types import to_json_text

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_PSYCOPG_SCHEME = "postgresql+psycopg://"
_CONNECT_TIMEOUT_SECONDS = 10

DatabaseFailure = SQLAlchemyError
"""What the database layer raises when a connection or a statement fails. Code outside the store
catches it by this name, so that only ``daemon.store`` imports SQLAlchemy."""

# An execution option read by the SQLite "begin" hook; see write_engine().
_BEGIN_IMMEDIATE = "driftd_sqlite_begin_immediate"


def normalize_url(url: str) -> str:
    """Spell PostgreSQL URLs the way SQLAlchemy needs them to pick psycopg 3.

    Operators copy URLs from elsewhere (``postgres://`` from Heroku-style environments,
    ``postgresql://`` from libpq docs); SQLAlchemy would read both as psycopg2, which is not
    installed. Every other URL is returned unchanged.
    """
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return _PSYCOPG_SCHEME + url[len(scheme) :]
    return url


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, fit for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not a URL SQLAlchemy can parse, but it may still carry a password: hide user:pass@.
        return re.sub(r"(^|://)([^:/@\s]*):[^@\s]*@", r"\1\2:***@", url)


def make_engine(
    url: str, *, busy_timeout: float = 5.0, synchronous: Literal["full", "normal"] = "normal"
) -> Engine:
    """Create the engine for ``url``; nothing is connected until first use.

    SQLite: a relative path (``sqlite:///driftd.db``) is relative to the working directory. Each
    new connection gets WAL mode (readers never block the writer), a busy timeout of
    ``busy_timeout`` seconds (a second writer waits instead of failing at once), enforced foreign
    keys, and ``synchronous``: ``normal`` survives a crash of the process (WAL), ``full`` also a
    power loss (an fsync per commit).

    PostgreSQL goes through psycopg 3 with ``pool_pre_ping`` so connections dropped by a restart
    or a proxy are replaced instead of failing the next request.
    """
    if busy_timeout < 0:
        raise ValueError(f"busy_timeout must be >= 0 seconds, got {busy_timeout}")
    try:
        parsed = make_url(normalize_url(url))
    except ArgumentError as error:
        raise StoreError(
            f"invalid store URL {mask_url(url)!r}: {error}; use sqlite:///path/to/driftd.db "
            "or postgresql://user:password@host:5432/database"
        ) from error
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, busy_timeout, synchronous)
    if backend != "postgresql":
        raise StoreError(
            f"unsupported store URL {mask_url(url)!r}: driftd's store runs on SQLite "
            "(sqlite:///path/to/driftd.db) or PostgreSQL (postgresql://user@host/database)"
        )
    connect_args: dict[str, Any] = {}
    # A store that does not answer should fail start-up with a message, not hang it.
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_SECONDS
    if "application_name" not in parsed.query:
        connect_args["application_name"] = "driftd"
    return create_engine(
        parsed, pool_pre_ping=True, connect_args=connect_args, json_serializer=to_json_text
    )


def write_engine(engine: Engine) -> Engine:
    """Return a view of ``engine`` whose transactions take SQLite's write lock when they begin.

    A deferred SQLite transaction that reads and then writes fails with "database is locked",
    without waiting, when another connection committed a write in between (its snapshot is
    stale). Transactions that may write therefore start with ``BEGIN IMMEDIATE``: they queue
    on the busy timeout instead. Read-only work keeps plain ``BEGIN`` so it never blocks writers.
    On PostgreSQL the view behaves exactly like ``engine``.
    """
    return engine.execution_options(**{_BEGIN_IMMEDIATE: True})


def unreachable(engine: Engine, error: Exception) -> StoreError:
    """Build the error for a store that could not be connected to, naming what to check."""
    where = engine.url.render_as_string(hide_password=True)
    if engine.dialect.name == "sqlite":
        hint = (
            "check that the directory of the database file exists and that driftd may write to it"
        )
    else:
        hint = (
            "check that the server is running and reachable from here, and that the host, "
            "port, user, password and database in the URL are right"
        )
    reason = str(getattr(error, "orig", None) or error).strip()
    return StoreError(f"cannot connect to the store at {where}: {reason}; {hint}")


@contextmanager
def failures_reported(engine: Engine) -> Iterator[None]:
    """Turn a database failure inside the block into the ``StoreError`` of ``unreachable``."""
    try:
        yield
    except SQLAlchemyError as error:
        raise unreachable(engine, error) from error


def _sqlite_engine(url: URL, busy_timeout: float, synchronous: str) -> Engine:
    engine = create_engine(url, json_serializer=to_json_text)
    busy_ms = round(busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module, whose legacy mode never
        # begins a transaction for SELECT or DDL; the "begin" hook below emits BEGIN instead,
        # which gives repeatable reads and transactional migrations.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_BEGIN_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
