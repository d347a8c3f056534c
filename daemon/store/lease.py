"""The leader lease: one row per lease name, taken and renewed with one conditional UPDATE.

The model is Kubernetes' coordination Lease. Expiry is judged by the *database* clock, the one
clock every replica shares, so skewed machine clocks cannot make two replicas leaders at once. The
epoch grows by one whenever the holder changes; it is a fencing token: work that must not be done
by a deposed leader (a promotion) checks ``epoch_is_current`` in its own transaction first.

Each holder also keeps a local deadline on the monotonic clock, started *before* it asked the
database: it stops acting when that passes, even if it cannot reach the database to learn that
the lease expired. Renew every ``ttl / 3`` so that a missed renewal or two is not a change of
leader.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    Connection,
    Double,
    Engine,
    case,
    cast,
    extract,
    func,
    select,
    update,
)

from daemon.store.engine import write_engine
from daemon.store.models import LeaseRow
from daemon.store.repository import Store
from daemon.store.statements import insert_for

_UNIX_EPOCH_JULIAN_DAY = 2440587.5
_SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this replica holds, as of the ``acquire`` call that returned it."""

    name: str
    owner: str
    epoch: int
    expires_at: float
    """When the lease expires, in seconds since the Unix epoch on the database clock."""
    ttl: float
    valid_until_monotonic: float
    """``time.monotonic()`` after which the holder must stop acting until it renews."""

    def is_valid(self) -> bool:
        """Whether the holder may still act on this lease, by the local monotonic clock."""
        return time.monotonic() < self.valid_until_monotonic


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease row as stored, with the database clock read at the same moment."""

    name: str
    owner: str
    epoch: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    now: float

    @property
    def expired(self) -> bool:
        return self.expires_at <= self.now


def db_clock(connection: Connection) -> ColumnElement[float]:
    """The database's current time in seconds since the Unix epoch, as a SQL expression."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        julian_day = func.julianday("now", type_=Double)
        return (julian_day - _UNIX_EPOCH_JULIAN_DAY) * _SECONDS_PER_DAY
    if dialect == "postgresql":
        # clock_timestamp(), not now(): now() is frozen at the start of the transaction.
        return cast(extract("epoch", func.clock_timestamp()), Double)
    raise ValueError(f"no database clock for dialect {dialect!r}; use SQLite or PostgreSQL")


def acquire(store: Store | Engine, name: str, owner: str, ttl: float) -> Lease | None:
    """Take lease ``name`` for ``owner``, or renew it if ``owner`` holds it; None if another does.

    ``owner`` must be unique per process (host, pid and a random part): two processes sharing an
    owner would both believe they lead. Taking an expired lease from another owner increments the
    epoch; renewing keeps it.
    """
    if ttl <= 0:
        raise ValueError(f"ttl must be positive seconds, got {ttl}")
    started = time.monotonic()
    with write_engine(_engine(store)).begin() as connection:
        now = float(connection.execute(select(db_clock(connection))).scalar_one())
        mine = LeaseRow.owner == owner
        taken = connection.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name, mine | (LeaseRow.expires_at <= now))
            .values(
                owner=owner,
                epoch=case((mine, LeaseRow.epoch), else_=LeaseRow.epoch + 1),
                acquired_at=case((mine, LeaseRow.acquired_at), else_=now),
                renewed_at=now,
                expires_at=now + ttl,
            )
            .returning(LeaseRow.epoch)
        ).scalar()
        if taken is None:
            taken = connection.execute(
                insert_for(connection, LeaseRow)
                .values(
                    name=name,
                    owner=owner,
                    epoch=1,
                    acquired_at=now,
                    renewed_at=now,
                    expires_at=now + ttl,
                )
                .on_conflict_do_nothing(index_elements=["name"])
                .returning(LeaseRow.epoch)
            ).scalar()
    if taken is None:
        return None
    return Lease(
        name=name,
        owner=owner,
        epoch=int(taken),
        expires_at=now + ttl,
        ttl=ttl,
        valid_until_monotonic=started + ttl,
    )


def release(store: Store | Engine, name: str, owner: str) -> None:
    """Give up lease ``name`` if ``owner`` still holds it, so another replica can take it at once.

    Call this on a clean shutdown; a crashed holder's lease simply expires.
    """
    with write_engine(_engine(store)).begin() as connection:
        now = db_clock(connection)
        connection.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.owner == owner, LeaseRow.expires_at > now)
            .values(expires_at=now, renewed_at=now)
        )


def current(store: Store | Engine | Connection, name: str) -> LeaseState | None:
    """Lease ``name`` as stored now, held or expired; None if it was never taken."""
    with _connection(store) as connection:
        row = connection.execute(
            select(
                LeaseRow.owner,
                LeaseRow.epoch,
                LeaseRow.acquired_at,
                LeaseRow.renewed_at,
                LeaseRow.expires_at,
                db_clock(connection),
            ).where(LeaseRow.name == name)
        ).first()
    if row is None:
        return None
    owner, epoch, acquired_at, renewed_at, expires_at, now = row
    return LeaseState(
        name=name,
        owner=owner,
        epoch=int(epoch),
        acquired_at=float(acquired_at),
        renewed_at=float(renewed_at),
        expires_at=float(expires_at),
        now=float(now),
    )


def epoch_is_current(store: Store | Engine | Connection, name: str, epoch: int) -> bool:
    """Whether lease ``name`` is held, unexpired, at ``epoch``: the fencing check.

    Pass the connection of the transaction that does the guarded work (a promotion), so the
    check and the work commit together: on PostgreSQL the lease row is then share-locked until
    that commit, so no other replica can take the lease in between; on SQLite the work's write
    transaction already excludes every other writer.
    """
    with _connection(store) as connection:
        row = connection.execute(
            select(LeaseRow.epoch, LeaseRow.expires_at > db_clock(connection))
            .where(LeaseRow.name == name)
            .with_for_update(read=True)
        ).first()
    return row is not None and int(row[0]) == epoch and bool(row[1])


def _engine(store: Store | Engine) -> Engine:
    return store.engine if isinstance(store, Store) else store


@contextmanager
def _connection(bind: Store | Engine | Connection) -> Iterator[Connection]:
    """Use a caller's connection as it is, or open (and close) one for a store or an engine."""
    if isinstance(bind, Connection):
        yield bind
        return
    with _engine(bind).connect() as connection:
        yield connection
