"""The notifier's delivery against a local HTTP receiver, on SQLite and PostgreSQL: one message
per incident and one resolve message, retries, nothing sent twice across passes, restarts,
replicas and concurrent leaders, events committed out of order, channels that refuse or are
unreachable. What each event becomes on each channel is in ``test_notifier_channels.py``."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest

from daemon.notify import Notifier
from daemon.notify.sender import PASS_ROWS
from daemon.store import Store
from daemon.store.models import Event, utcnow
from tests.daemon.notify.conftest import (
    check_completed,
    deliver_all,
    notifications,
    outbox,
    settings,
    webhook,
)
from tests.fake_webhook import Receiver
from tests.helpers.serve import free_port
from tests.helpers.wait import wait_for


def test_one_firing_message_per_incident_and_one_resolve_message(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    notifier = webhook(store, receiver)
    first = check_completed(store, deployment, "drift", text=0.001, embedding=0.02)
    check_completed(store, deployment, "drift", text=0.001)
    check_completed(store, deployment, "drift", text=0.002)
    check_completed(store, deployment, "insufficient_data")

    assert notifier.process().messages == 1
    deliver_all(notifier)

    [firing] = receiver.bodies()
    assert firing["status"] == "firing"
    assert firing["event"] == "check.completed"
    assert firing["deployment"] == deployment
    assert firing["incident"] == "drift"
    assert firing["details"]["check_id"] == first
    assert firing["summary"] == (f"{deployment}: drift detected by check {first} (embedding, text)")
    assert firing["started_at"] == firing["ts"]

    check_completed(store, deployment, "failed")
    ok = check_completed(store, deployment, "ok")
    check_completed(store, deployment, "ok")
    notifier.process()
    deliver_all(notifier)

    assert len(receiver.bodies()) == 2
    resolved = receiver.bodies()[1]
    assert resolved["status"] == "resolved"
    assert resolved["incident"] == "drift"
    assert resolved["details"]["check_id"] == ok
    assert resolved["started_at"] == firing["ts"]
    assert resolved["ts"] > firing["ts"]
    assert resolved["id"] != firing["id"]


def test_a_delivery_that_failed_is_retried_and_arrives_once_before_the_resolve(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    notifier = webhook(store, receiver)
    receiver.fail_next(1, 500)
    notifier.start()
    try:
        check_completed(store, deployment, "drift", text=0.001)
        check_completed(store, deployment, "ok")
        notifier.process()
        wait_for(lambda: len(receiver.bodies()) == 3, 10, "the retry and the resolve")
        wait_for(
            lambda: all(row.delivery == "sent" for row in outbox(store)), 10, "both marked sent"
        )
    finally:
        notifier.stop(timedelta(seconds=5))

    first, retried, resolved = receiver.bodies()
    assert first == retried  # the same body, byte for byte the same message
    assert first["status"] == "firing"
    assert resolved["status"] == "resolved"  # never before its firing message
    rows = outbox(store)
    assert [(row.state, row.attempts, row.delivery) for row in rows] == [
        ("firing", 2, "sent"),
        ("resolved", 1, "sent"),
    ]
    assert rows[0].last_error is None
    assert notifications(notifier.metrics) == {("webhook", "retried"): 1, ("webhook", "sent"): 2}


def test_a_resolve_held_back_by_its_firing_retry_waits_without_spinning(
    store: Store, deployment: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = webhook(store, receiver, backoff=timedelta(seconds=30))
    receiver.fail_next(1, 503)
    passes = 0
    deliver_due = notifier.sender.deliver_due

    def counted(limit: int = PASS_ROWS) -> int:
        nonlocal passes
        try:
            return deliver_due(limit)
        finally:
            passes += 1

    monkeypatch.setattr(notifier.sender, "deliver_due", counted)
    notifier.start()
    try:
        check_completed(store, deployment, "drift", text=0.001)
        check_completed(store, deployment, "ok")
        notifier.process()
        wait_for(lambda: len(receiver.bodies()) == 1, 10, "the first, failing, delivery")
        wait_for(lambda: outbox(store)[0].attempts == 1, 10, "the failure to be recorded")
        recorded, cpu, since = passes, time.process_time(), time.monotonic()
        # The window the waiting sender's CPU is measured over: a second at least, and two
        # passes of the sender's own, each of which would have sent the resolve had it not been
        # held back.
        wait_for(
            lambda: passes >= recorded + 2 and time.monotonic() - since >= 1.0,
            10,
            "a second and two more delivery passes",
        )
        spent = time.process_time() - cpu
    finally:
        notifier.stop(timedelta(seconds=5))

    assert [body["status"] for body in receiver.bodies()] == ["firing"]
    assert spent < 0.3, f"the sender spun for {spent:.2f} s of CPU while waiting"
    assert [(row.state, row.delivery) for row in outbox(store)] == [
        ("firing", "pending"),
        ("resolved", "pending"),
    ]


def test_nothing_is_sent_twice_across_passes_restarts_and_replicas(
    store: Store, db_url: str, deployment: str, receiver: Receiver
) -> None:
    notifier = webhook(store, receiver)
    check_completed(store, deployment, "drift", text=0.001)
    notifier.process()
    notifier.process()
    deliver_all(notifier)
    deliver_all(notifier)
    assert len(receiver.bodies()) == 1

    # A restart, or another replica taking over: a new store connection, a new notifier.
    with Store.open(db_url) as restarted:
        successor = webhook(restarted, receiver)
        assert successor.process().messages == 0
        deliver_all(successor)
        check_completed(store, deployment, "drift", text=0.003)  # still the same incident
        check_completed(store, deployment, "ok")
        assert successor.process().messages == 1
        deliver_all(successor)
        deliver_all(notifier)

    assert [body["status"] for body in receiver.bodies()] == ["firing", "resolved"]
    assert len(outbox(store)) == 2


def test_two_leaders_processing_at_once_write_each_message_once(
    store: Store, db_url: str, deployment: str
) -> None:
    # No channel is needed to see the outbox: a channel URL that is never called will do.
    environ = {"DRIFTD_WEBHOOK_URL": "http://127.0.0.1:9/unused"}
    with Store.open(db_url) as other:
        leaders = [Notifier(store, settings(), environ), Notifier(other, settings(), environ)]
        errors: list[BaseException] = []
        writing = threading.Event()

        def chore(notifier: Notifier) -> None:
            while not writing.is_set():
                try:
                    notifier.process()
                except BaseException as error:
                    errors.append(error)
                    return

        threads = [threading.Thread(target=chore, args=(n,)) for n in leaders]
        for thread in threads:
            thread.start()
        try:
            for _ in range(10):
                check_completed(store, deployment, "drift", text=0.001)
                check_completed(store, deployment, "ok")
        finally:
            writing.set()
            for thread in threads:
                thread.join(timeout=30)
        leaders[0].process()

    assert errors == []
    assert [row.state for row in outbox(store)] == ["firing", "resolved"] * 10
    assert len({row.event_id for row in outbox(store)}) == 20


def _taking_ids_before_commit(store: Store) -> None:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite writes one transaction at a time, so its event ids have no gaps")


def _drift_event(store: Store, deployment: str) -> Event:
    return Event(
        deployment_id=store.deployment_ids()[deployment],
        ts=utcnow(),
        kind="check.completed",
        message="check 1: drift",
        evidence={"check_id": 1, "status": "drift", "drifted": {"text": 0.001}},
    )


def test_an_event_committed_after_a_later_one_is_not_skipped(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    _taking_ids_before_commit(store)
    notifier = webhook(store, receiver)
    with store.session() as slow:  # a writer that took its event id but has not committed yet
        slow.add(_drift_event(store, deployment))
        slow.flush()
        check_completed(store, deployment, "ok")  # a higher id, visible first
        assert notifier.process().events == 0  # waits at the gap
    notifier.process()
    deliver_all(notifier)

    assert [body["status"] for body in receiver.bodies()] == ["firing", "resolved"]


def test_a_gap_left_by_a_rolled_back_insert_is_passed_once_settled(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    _taking_ids_before_commit(store)
    notifier = Notifier(
        store,
        settings(),
        {"DRIFTD_WEBHOOK_URL": receiver.url},
        gap_settle=timedelta(milliseconds=300),
    )
    with store.session() as aborted:  # takes an event id, then rolls back: a gap for good
        aborted.add(_drift_event(store, deployment))
        aborted.flush()
        aborted.rollback()
    check_completed(store, deployment, "drift", text=0.001)
    assert notifier.process().events == 0

    wait_for(lambda: notifier.process().events == 1, 10, "the gap to settle")
    deliver_all(notifier)
    assert [body["status"] for body in receiver.bodies()] == ["firing"]


def test_a_4xx_answer_is_given_up_at_once_without_leaking_the_url(
    store: Store, deployment: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = webhook(store, receiver, max_attempts=5)
    receiver.fail_next(1, 404)
    check_completed(store, deployment, "drift", text=0.001)
    notifier.process()

    with caplog.at_level(logging.INFO, logger="driftd.notify"):
        deliver_all(notifier)
        deliver_all(notifier)

    assert len(receiver.bodies()) == 1
    [row] = outbox(store)
    assert (row.delivery, row.attempts) == ("failed", 1)
    assert row.last_error == "HTTP 404: answered 404"
    assert "given up" in caplog.text
    assert "s3cret" not in caplog.text
    assert notifications(notifier.metrics) == {("webhook", "failed"): 1}


def test_an_unreachable_channel_is_retried_until_max_attempts(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?token=s3cret-token"  # nothing listens there
    notifier = Notifier(store, settings(max_attempts=3), {"DRIFTD_WEBHOOK_URL": url})
    check_completed(store, deployment, "drift", text=0.001)
    notifier.process()

    def given_up() -> bool:
        notifier.deliver()
        return outbox(store)[0].delivery != "pending"

    wait_for(given_up, 10, "three attempts")

    [row] = outbox(store)
    assert (row.delivery, row.attempts) == ("failed", 3)
    assert row.last_error is not None
    assert row.last_error.startswith("ConnectError")
    assert "s3cret" not in row.last_error
    assert notifications(notifier.metrics) == {("webhook", "retried"): 2, ("webhook", "failed"): 1}
