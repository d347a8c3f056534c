"""What the notifier's tests share: a local HTTP receiver, notification settings with fast
retries, a notifier of one webhook channel, and the store's side (checks, the outbox)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from daemon.config.models import Notifications
from daemon.metrics import ReplicaMetrics
from daemon.notify import Notifier
from daemon.store import Store
from daemon.store.models import Notification, utcnow
from tests.fake_webhook import Receiver
from tests.helpers.checks import new_check


def notifications(metrics: ReplicaMetrics) -> dict[tuple[str, str], float]:
    """``driftd_notifications_total`` by (kind, status), as ``/metrics`` exports it."""
    return {
        (sample.labels["kind"], sample.labels["status"]): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "driftd_notifications_total"
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def settings(**changes: Any) -> Notifications:
    """Notification settings with fast retries, for tests."""
    values: dict[str, Any] = {
        "poll": timedelta(milliseconds=50),
        "timeout": timedelta(seconds=2),
        "backoff": timedelta(milliseconds=50),
        "max_attempts": 3,
        **changes,
    }
    return Notifications(**values)


def webhook(store: Store, receiver: Receiver, **changes: Any) -> Notifier:
    return Notifier(store, settings(**changes), {"DRIFTD_WEBHOOK_URL": receiver.url})


def deliver_all(notifier: Notifier) -> None:
    """Deliver in this thread until nothing is due."""
    for _ in range(50):
        if not notifier.deliver():
            return
    pytest.fail("the outbox never emptied")


def check_completed(store: Store, deployment: str, status: str, **drifted: float) -> int:
    """Record a check and its audit event as the daemon's checker does."""
    check_id = store.record_check(deployment, new_check(status, at=utcnow()))
    store.add_event(
        deployment,
        "check.completed",
        f"check {check_id}: {status}",
        {"check_id": check_id, "status": status, "drifted": drifted},
    )
    return check_id


def outbox(store: Store) -> list[Notification]:
    with store.session(readonly=True) as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))
