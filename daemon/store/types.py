"""Column types that behave the same on SQLite and PostgreSQL, and the check that a time passed to
the store is one (timezone-aware)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json
from sqlalchemy import JSON, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, always timezone-aware UTC in Python.

    PostgreSQL stores it as ``timestamptz``. SQLite has no such type: values are stored as naive
    UTC text of fixed width (so text order is time order and range queries work) and come back
    naive, so UTC is attached again on the way out. Naive datetimes are refused on the way in:
    their meaning depends on the machine that made them, and guessing would shift samples
    between windows.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} has no timezone; "
                "pass an aware datetime, e.g. datetime.now(UTC)"
            )
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        return datetime


def json_type() -> JSON:
    """JSON where Python ``None`` is SQL NULL, so ``IS NULL`` finds the rows that have no value.

    SQLAlchemy's default stores ``None`` as the JSON text ``null``, which is not NULL to SQL.
    """
    return JSON(none_as_null=True)


def to_json_text(value: Any) -> str:
    """JSON text as the store writes it: pydantic-core's serializer, several times faster than
    ``json.dumps``, since JSON columns are written for every ingested sample."""
    return str(to_json(value).decode())


def require_aware(name: str, value: datetime) -> None:
    """Refuse a naive datetime (``ValueError``, naming the argument): its meaning depends on the
    machine that made it, and the store compares times across machines."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} {value.isoformat()} has no timezone; pass an aware datetime, "
            "e.g. datetime.now(UTC)"
        )
