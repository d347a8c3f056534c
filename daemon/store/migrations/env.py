"""Alembic's entry point, run by ``daemon.store.migrate`` with a connection already open.

driftd ships its migrations inside the package and needs no ``alembic.ini``: ``migrate.upgrade``
passes its connection (inside its transaction) in ``config.attributes["connection"]``. For the
``alembic`` command line (writing a new revision with ``--autogenerate``), a ``sqlalchemy.url``
main option is used instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from daemon.store.engine import make_engine, write_engine
from daemon.store.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError(
            "driftd's migrations run online only: call daemon.store.migrate.upgrade(engine) "
            "or `alembic upgrade` without --sql"
        )
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database to migrate: pass a connection in config.attributes['connection'] "
            "(daemon.store.migrate does) or set sqlalchemy.url in the Alembic configuration"
        )
    engine = make_engine(url)
    try:
        with write_engine(engine).begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


_main()
