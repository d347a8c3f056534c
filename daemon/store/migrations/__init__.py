"""Alembic migrations of driftd's store, applied by ``daemon.store.migrate.upgrade``."""
