"""Bring a store's schema to the revision this version of driftd expects.

The Alembic scripts ship inside the package, so no ``alembic.ini`` or working directory is needed:
the configuration is built here and the migrations run on a connection this module opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from daemon.errors import StoreError
from daemon.store.engine import unreachable, write_engine

MIGRATIONS = Path(__file__).resolve().with_name("migrations")

# Any fixed 64-bit key; replicas starting together take turns on it instead of racing to
# create the same tables.
_PG_MIGRATION_LOCK = 0x6472696674640001


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """The revision before and after ``upgrade``; ``changed`` is False when nothing ran."""

    before: str | None
    after: str
    changed: bool


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for driftd's migrations, optionally bound to ``connection``."""
    config = Config()
    # ConfigParser would read a % in the path as interpolation.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of driftd ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS}; the package is incomplete")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the store is at, or None when it was never migrated."""
    try:
        connection = engine.connect()
    except SQLAlchemyError as error:
        raise unreachable(engine, error) from error
    with connection:
        return _revision(connection)


def is_current(engine: Engine) -> bool:
    """Whether the store is at exactly the revision this version of driftd expects."""
    return current_revision(engine) == head_revision()


def upgrade(engine: Engine) -> UpgradeResult:
    """Migrate the store to the newest revision, in one transaction; a no-op when already there.

    Raises ``StoreError`` when the store cannot be reached, or when it is at a revision this
    driftd does not know (a newer driftd migrated it).
    """
    head = head_revision()
    try:
        connection = write_engine(engine).connect()
    except SQLAlchemyError as error:
        raise unreachable(engine, error) from error
    with connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
        before = _revision(connection)
        if before == head:
            return UpgradeResult(before=before, after=head, changed=False)
        try:
            command.upgrade(alembic_config(connection), "head")
        except CommandError as error:
            where = engine.url.render_as_string(hide_password=True)
            raise StoreError(
                f"cannot migrate the store at {where} from revision {before!r} to {head!r}: "
                f"{error}; if a newer driftd migrated this store, run that version instead"
            ) from error
        after = _revision(connection)
    if after is None:
        raise RuntimeError(f"the migrations ran but left no revision in the store (head {head})")
    return UpgradeResult(before=before, after=after, changed=after != before)


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
