"""The notification outbox as its senders see it: which rows are due, claiming one, and
recording how its delivery went.

A pending row is ready when no earlier pending row of the same (channel, deployment, incident)
holds it back, so the messages of one incident reach a channel in order. Every change is one
guarded UPDATE of a row still pending, whose row count says whether it happened.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import aliased

from daemon.store.models import Delivery, Notification
from daemon.store.repository import Store


def next_due(store: Store, channels: Collection[str]) -> datetime | None:
    """When the first ready row of ``channels`` is due (maybe already); None if there is none."""
    with store.session(readonly=True) as session:
        return session.execute(
            select(func.min(Notification.next_try_at)).where(*_ready(channels))
        ).scalar()


def due(store: Store, channels: Collection[str], now: datetime, limit: int) -> list[Notification]:
    """The ready rows of ``channels`` due at ``now``, oldest first; at most ``limit``."""
    with store.session(readonly=True) as session:
        return list(
            session.scalars(
                select(Notification)
                .where(*_ready(channels), Notification.next_try_at <= now)
                .order_by(Notification.id)
                .limit(limit)
            )
        )


def claim(store: Store, notification_id: int, now: datetime, until: datetime) -> bool:
    """Take a due row for one delivery attempt by moving its ``next_try_at`` to ``until``;
    False if another sender took it first (or it is no longer pending or due)."""
    with store.session() as session:
        claimed = session.connection().execute(
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.delivery == Delivery.pending.value,
                Notification.next_try_at <= now,
            )
            .values(next_try_at=until)
        )
        return int(claimed.rowcount) == 1


def mark_sent(store: Store, notification_id: int, attempts: int, at: datetime) -> None:
    """The row was delivered at ``at``, on attempt ``attempts``."""
    _update_pending(
        store,
        notification_id,
        delivery=Delivery.sent.value,
        attempts=attempts,
        sent_at=at,
        last_error=None,
    )


def retry_later(
    store: Store, notification_id: int, attempts: int, error: str, next_try_at: datetime
) -> None:
    """Attempt ``attempts`` failed with ``error``; the row stays pending until ``next_try_at``."""
    _update_pending(
        store, notification_id, attempts=attempts, last_error=error, next_try_at=next_try_at
    )


def mark_failed(store: Store, notification_id: int, attempts: int, error: str) -> None:
    """The row is given up after attempt ``attempts``, which failed with ``error``."""
    _update_pending(
        store,
        notification_id,
        delivery=Delivery.failed.value,
        attempts=attempts,
        last_error=error,
    )


def _update_pending(store: Store, notification_id: int, **values: Any) -> None:
    with store.session() as session:
        session.execute(
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.delivery == Delivery.pending.value,
            )
            .values(values)
        )


def _ready(channels: Collection[str]) -> tuple[ColumnElement[bool], ...]:
    """Pending rows of ``channels`` that no earlier row of their incident holds back (whether
    they are due yet or not)."""
    earlier = aliased(Notification)
    held_back = (
        select(earlier.id)
        .where(
            earlier.channel == Notification.channel,
            earlier.deployment_id == Notification.deployment_id,
            earlier.incident == Notification.incident,
            earlier.delivery == Delivery.pending.value,
            earlier.id < Notification.id,
        )
        .exists()
    )
    return (
        Notification.delivery == Delivery.pending.value,
        Notification.channel.in_(list(channels)),
        ~held_back,
    )
