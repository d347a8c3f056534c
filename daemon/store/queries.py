"""Reads for operators: checks and audit events with filters, and rows as JSON records.

Every list is newest first and comes as ``(deployment name, row)`` pairs, the shape
``Store.get_check`` already returns, so callers never need a second lookup for the name. The
``*_record`` functions turn a row into plain JSON, the one form that the admin API serves and
``driftd … --json`` prints, so both always show the same fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from daemon.config.types import parse_duration
from daemon.domain import CheckStatus
from daemon.store.models import Base, Check, Deployment, Event, Job, Version
from daemon.store.repository import Store
from daemon.store.statements import of_deployment
from daemon.store.types import require_aware
from daemon.store.versions import VersionChange

MAX_LIMIT = 1000


def list_checks(
    store: Store,
    *,
    deployment: str | None = None,
    status: CheckStatus | str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[tuple[str, Check]]:
    """The latest checks, newest first: of one deployment or all, with one status, started at
    or after ``since``. ``NotFound`` if ``deployment`` is not registered."""
    _check_limit(limit)
    query = (
        select(Deployment.name, Check)
        .join(Deployment, Deployment.id == Check.deployment_id)
        .order_by(Check.started_at.desc(), Check.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(Check.status == CheckStatus(status).value)
    if since is not None:
        query = query.where(Check.started_at >= _aware("since", since))
    with store.session(readonly=True) as session:
        query = of_deployment(session, query, Check, deployment)
        return [(str(name), check) for name, check in session.execute(query)]


def list_events(
    store: Store,
    *,
    deployment: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[tuple[str | None, Event]]:
    """The latest audit events, newest first, with ``since <= ts < until``.

    ``kind`` matches a prefix, so ``job.`` finds every job event and ``policy`` every policy
    decision; it is compared exactly, case and all, on both databases. Daemon-wide events have
    no deployment (None); filtering by ``deployment`` leaves them out.
    """
    _check_limit(limit)
    query = (
        select(Deployment.name, Event)
        .outerjoin(Deployment, Deployment.id == Event.deployment_id)
        .order_by(Event.ts.desc(), Event.id.desc())
        .limit(limit)
    )
    if kind:
        # substr rather than LIKE: '_' in kinds such as version.rolled_back is a LIKE wildcard,
        # and LIKE ignores case on SQLite but not on PostgreSQL.
        query = query.where(func.substr(Event.kind, 1, len(kind)) == kind)
    if since is not None:
        query = query.where(Event.ts >= _aware("since", since))
    if until is not None:
        query = query.where(Event.ts < _aware("until", until))
    with store.session(readonly=True) as session:
        query = of_deployment(session, query, Event, deployment)
        return [
            (None if name is None else str(name), event) for name, event in session.execute(query)
        ]


def parse_time(text: str, *, now: datetime) -> datetime:
    """A moment written by an operator: a duration ago (``2h``, ``7d``, ``1h30m``) or an
    ISO 8601 time with its offset (``2026-11-01T12:00:00Z``, ``2026-11-01T14:00+02:00``).
    ``ValueError`` if it is neither, or lies outside the years 1-9999 in UTC."""
    text = text.strip()
    try:
        ago = parse_duration(text)
    except ValueError:
        ago = None
    except OverflowError:  # more days than a timedelta holds
        raise ValueError(_out_of_range(f"{text} ago")) from None
    if ago is not None:
        try:
            return _aware("now", now) - ago
        except OverflowError:
            raise ValueError(_out_of_range(f"{text} ago")) from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected a duration ago like '2h' or '7d', or an ISO 8601 time like "
            f"'2026-11-01T12:00:00Z', got {text!r}"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{text!r} has no timezone, so it would mean different moments on different "
            f"machines; add one, e.g. {text}Z for UTC or {text}+02:00"
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in the year 0 in UTC
        raise ValueError(_out_of_range(text)) from None


def _out_of_range(moment: str) -> str:
    return (
        f"{moment!r} is out of range: a moment must lie between 0001-01-01T00:00:00Z and "
        "9999-12-31T23:59:59Z"
    )


def check_record(deployment: str, check: Check, *, signals: bool = False) -> dict[str, Any]:
    """A check as JSON, with the names of its drifted signals; ``signals`` adds every
    signal's full result (large: lists leave them out)."""
    record = _record(deployment, check, leave_out=() if signals else ("signals",))
    record["drifted"] = drifted_signals(check)
    return record


def event_record(deployment: str | None, event: Event) -> dict[str, Any]:
    return _record(deployment, event)


def version_record(deployment: str, version: Version) -> dict[str, Any]:
    return _record(deployment, version)


def job_record(deployment: str, job: Job) -> dict[str, Any]:
    return _record(deployment, job)


def change_record(change: VersionChange) -> dict[str, Any]:
    """A promotion or rollback as JSON: the version now active, the one before, the event."""
    previous = change.previous
    return {
        "deployment": change.deployment,
        "active": version_record(change.deployment, change.active),
        "previous": None if previous is None else version_record(change.deployment, previous),
        "event_id": change.event_id,
    }


def drifted_signals(check: Check) -> list[str]:
    """The names of the signals a check found drifted, as ``daemon.checks`` stores them."""
    stored = check.signals.get("signals") if isinstance(check.signals, dict) else None
    if not isinstance(stored, list):
        return []
    return [
        str(signal["name"])
        for signal in stored
        if isinstance(signal, dict) and signal.get("drifted") and "name" in signal
    ]


def _record(deployment: str | None, row: Base, leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """Every column of ``row`` except ``deployment_id``, which becomes the deployment's name,
    with times as ISO 8601 text; columns added by a later migration appear on their own."""
    record: dict[str, Any] = {"deployment": deployment}
    for column in row.__table__.columns:
        if column.key in leave_out or column.key == "deployment_id":
            continue
        value = getattr(row, column.key)
        record[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return record


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


def _aware(name: str, value: datetime) -> datetime:
    require_aware(name, value)
    return value
