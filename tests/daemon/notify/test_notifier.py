"""The notifier against a local HTTP receiver, on SQLite and PostgreSQL: one message per
incident, resolve messages, retries, nothing sent twice, each channel's body, and a real
Alertmanager accepting (and resolving) driftd's alerts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from daemon.config.models import Notifications, NotifyOn
from daemon.domain import JobState
from daemon.errors import ConfigError
from daemon.metrics import ReplicaMetrics
from daemon.notify import Notifier
from daemon.notify.sender import PASS_ROWS
from daemon.store import Store, upgrade
from daemon.store.jobs import claim_job, create_job, finish_job, get_job
from daemon.store.models import Event, Notification, utcnow
from daemon.store.versions import add_version, promote, rollback
from tests.fake_webhook import Receiver
from tests.helpers.checks import new_check
from tests.helpers.configs import minimal_config
from tests.helpers.serve import Server, free_port, running
from tests.helpers.wait import wait_for

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


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


def run_job(store: Store, deployment: str, kind: str, state: JobState, error: str | None) -> int:
    """Queue a job, start it and end it through the job runner's own transitions."""
    job_id = create_job(store, deployment, kind, "drift", {}, max_attempts=1)
    _, queued = get_job(store, job_id)
    assert claim_job(store, queued, "daemon-a", utcnow(), "job.log")
    _, running = get_job(store, job_id)
    assert finish_job(
        store, running, "daemon-a", state, utcnow(), f"{kind} job {job_id}: {state}", error=error
    )
    return job_id


def outbox(store: Store) -> list[Notification]:
    with store.session(readonly=True) as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


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


def test_a_failed_job_fires_once_and_the_next_success_of_its_kind_resolves_it(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    notifier = webhook(store, receiver)
    failed = run_job(store, deployment, "finetune", JobState.failed, "CUDA out of memory")
    run_job(store, deployment, "finetune", JobState.failed, "CUDA out of memory")
    run_job(store, deployment, "prompt_revision", JobState.succeeded, None)  # another kind
    notifier.process()
    deliver_all(notifier)

    [firing] = receiver.bodies()
    assert firing["status"] == "firing"
    assert firing["event"] == "job.failed"
    assert firing["incident"] == "job_failed:finetune"
    assert firing["details"]["job_id"] == failed
    assert firing["details"]["error"] == "CUDA out of memory"
    assert "CUDA out of memory" in firing["summary"]

    succeeded = run_job(store, deployment, "finetune", JobState.succeeded, None)
    notifier.process()
    deliver_all(notifier)

    resolved = receiver.bodies()[1]
    assert len(receiver.bodies()) == 2
    assert resolved["status"] == "resolved"
    assert resolved["event"] == "job.succeeded"
    assert resolved["incident"] == "job_failed:finetune"
    assert resolved["details"]["job_id"] == succeeded


def test_promotion_and_rollback_send_one_info_message_each(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    notifier = webhook(store, receiver)
    for name in ("v1", "v2"):
        add_version(store, deployment, kind="prompt", name=name, artifact=f"{name}.txt")
        promote(store, deployment, name, actor="leader")
    rollback(store, deployment, actor="watch")
    notifier.process()
    deliver_all(notifier)

    bodies = receiver.bodies()
    assert [(b["status"], b["event"], b["incident"]) for b in bodies] == [
        ("info", "version.promoted", None),
        ("info", "version.promoted", None),
        ("info", "version.rolled_back", None),
    ]
    assert bodies[1]["summary"] == f"{deployment}: version v2 promoted by leader (was v1)"
    assert bodies[2]["details"]["new"]["name"] == "v1"
    assert bodies[2]["details"]["old"]["name"] == "v2"


def test_each_channel_gets_its_own_body(store: Store, deployment: str, receiver: Receiver) -> None:
    environ = {
        "DRIFTD_WEBHOOK_URL": receiver.url,
        "DRIFTD_SLACK_WEBHOOK_URL": f"{receiver.base}/slack/T000/B000/s3cret",
        "DRIFTD_ALERTMANAGER_URL": f"{receiver.base}/am/",
    }
    notifier = Notifier(store, settings(driftd_url="https://driftd.test"), environ)
    check_completed(store, deployment, "drift", text=0.001)
    check_completed(store, deployment, "ok")
    add_version(store, deployment, kind="prompt", name="v7", artifact="v7.txt")
    promote(store, deployment, "v7", actor="leader")
    assert notifier.process().messages == 9
    deliver_all(notifier)

    hooks = receiver.bodies("/hooks/")
    assert [body["driftd_url"] for body in hooks] == ["https://driftd.test"] * 3

    # Order holds within an incident; the promotion may overtake the drift's resolution.
    slack = sorted(body["text"] for body in receiver.bodies("/slack/"))
    assert all(set(body) == {"text"} for body in receiver.bodies("/slack/"))
    assert slack[0].startswith(":information_source: *[INFO]* ")
    assert slack[1].startswith(f":rotating_light: *[FIRING]* {deployment}: drift detected by")
    assert slack[2].startswith(f":white_check_mark: *[RESOLVED]* {deployment}: drift")
    assert "<https://driftd.test|driftd>" in slack[1]

    alerts = receiver.bodies("/am/api/v2/alerts")
    assert len(alerts) == 3
    assert all(isinstance(body, list) and len(body) == 1 for body in alerts)
    firing = next(a for (a,) in alerts if a["labels"]["alertname"] == "DriftdDriftDetected")
    resolved = next(
        a for (a,) in alerts if a["labels"]["alertname"] == "DriftdDriftDetected" and a != firing
    )
    promoted = next(a for (a,) in alerts if a["labels"]["alertname"] == "DriftdPromotion")
    assert firing["labels"] == {
        "alertname": "DriftdDriftDetected",
        "deployment": deployment,
        "severity": "warning",
        "source": "driftd",
    }
    assert resolved["labels"] == firing["labels"]
    assert set(firing["annotations"]) == {"summary", "description"}
    assert firing["generatorURL"] == "https://driftd.test"
    starts = datetime.fromisoformat(firing["startsAt"])
    assert datetime.fromisoformat(firing["endsAt"]) - starts == timedelta(days=7)
    assert resolved["startsAt"] == firing["startsAt"]
    ended = datetime.fromisoformat(resolved["endsAt"])
    assert starts < ended <= datetime.now(UTC)
    assert promoted["labels"] == {
        "alertname": "DriftdPromotion",
        "deployment": deployment,
        "severity": "info",
        "source": "driftd",
        "version": "v7",
    }
    promoted_at = datetime.fromisoformat(promoted["startsAt"])
    assert datetime.fromisoformat(promoted["endsAt"]) - promoted_at == timedelta(hours=1)


def test_a_channel_without_a_url_and_an_event_class_not_chosen_send_nothing(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    off = Notifier(store, settings(), {"DRIFTD_WEBHOOK_URL": "", "DRIFTD_SLACK_WEBHOOK_URL": " "})
    assert off.channels == {}
    check_completed(store, deployment, "drift", text=0.001)
    assert off.process().messages == 0
    assert off.deliver() == 0
    assert outbox(store) == []

    promotions_only = webhook(store, receiver, events=(NotifyOn.promotion,))
    check_completed(store, deployment, "ok")  # resolves the drift the first one tracked
    add_version(store, deployment, kind="prompt", name="v1", artifact="v1.txt")
    promote(store, deployment, "v1", actor="leader")
    promotions_only.process()
    deliver_all(promotions_only)

    assert [body["event"] for body in receiver.bodies()] == ["version.promoted"]


def test_a_channel_url_that_is_not_a_url_stops_start_up_without_showing_it(store: Store) -> None:
    environ = {"DRIFTD_SLACK_WEBHOOK_URL": "services/T000/B000/s3cret"}

    with pytest.raises(ConfigError, match=r"DRIFTD_SLACK_WEBHOOK_URL \(notifications.slack") as e:
        Notifier(store, settings(), environ)

    assert "s3cret" not in str(e.value)


def test_a_hanging_channel_never_blocks_the_chore(
    store: Store, deployment: str, receiver: Receiver
) -> None:
    notifier = webhook(store, receiver, timeout=timedelta(seconds=1))
    receiver.hang()
    notifier.start()
    try:
        check_completed(store, deployment, "drift", text=0.001)
        notifier.process()
        wait_for(lambda: len(receiver.bodies()) == 1, 10, "the sender to be stuck on the receiver")

        check_completed(store, deployment, "ok")
        started = time.monotonic()
        processed = notifier.process()
        took = time.monotonic() - started

        assert processed.messages == 1
        assert took < 0.5
        receiver.release()
        wait_for(
            lambda: [row.delivery for row in outbox(store)] == ["sent", "sent"],
            10,
            "delivery once the receiver answers",
        )
    finally:
        started = time.monotonic()
        notifier.stop(timedelta(seconds=5))
        assert time.monotonic() - started < 5
    statuses = [body["status"] for body in receiver.bodies()]
    assert statuses[-1] == "resolved"
    assert set(statuses[:-1]) == {"firing"}  # the timed-out attempt, then its retry


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a local URL)
        return json.loads(response.read())


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager (Debian's prometheus-alertmanager) on 127.0.0.1; its base URL."""
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian package)")
    config = tmp_path / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    server = Server(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        cwd=tmp_path,
        env=os.environ,
        port=port,
        log=tmp_path / "alertmanager.log",
    )
    with running(server, timeout=20, path="/-/ready", stop_within=10, exit_code=None):
        yield server.url


def test_a_real_alertmanager_takes_the_alert_and_its_resolution(
    tmp_path: Path, alertmanager: str
) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'driftd.db'}") as store:
        upgrade(store.engine)
        store.ensure_deployment("intents", "finetuned", "classification")
        notifier = Notifier(store, settings(), {"DRIFTD_ALERTMANAGER_URL": alertmanager})
        check_completed(store, "intents", "drift", text=0.001)
        notifier.process()
        deliver_all(notifier)

        def active() -> list[dict[str, Any]]:
            alerts: list[dict[str, Any]] = _get_json(f"{alertmanager}/api/v2/alerts")
            return [a for a in alerts if a["labels"].get("source") == "driftd"]

        wait_for(lambda: len(active()) == 1, 10, "the alert in alertmanager")
        [alert] = active()
        assert alert["labels"]["alertname"] == "DriftdDriftDetected"
        assert alert["labels"]["deployment"] == "intents"
        assert alert["status"]["state"] in ("active", "unprocessed")

        check_completed(store, "intents", "ok")
        notifier.process()
        deliver_all(notifier)

        wait_for(lambda: active() == [], 10, "alertmanager to resolve the alert")
        assert [row.delivery for row in outbox(store)] == ["sent", "sent"]


def test_the_daemon_sends_what_its_leader_sees_to_the_channels_in_its_environ(
    tmp_path: Path, receiver: Receiver
) -> None:
    from daemon.api import Tokens
    from daemon.config import parse_config
    from daemon.serve import Daemon

    text = minimal_config(
        name="support-bot",
        storage=f"url: 'sqlite:///{tmp_path / 'driftd.db'}'",
        scheduling=f"lease_ttl: 3s, job_poll: 1s, jobs_dir: '{tmp_path / 'jobs'}'",
        notifications="poll: 1s, backoff: 1s",
    )
    config = parse_config(text, environ={})
    daemon = Daemon(config, Tokens(), environ={"DRIFTD_WEBHOOK_URL": receiver.url})
    daemon.start()
    try:
        check_completed(daemon.store, "support-bot", "drift", text=0.001)
        wait_for(lambda: len(receiver.bodies()) == 2, 60, "the leader's messages")
    finally:
        daemon.stop()

    # Start-up promoted the prompt from the file as the first version: news, too.
    assert sorted((b["status"], b["event"]) for b in receiver.bodies()) == [
        ("firing", "check.completed"),
        ("info", "version.promoted"),
    ]
    assert notifications(daemon.replica_metrics) == {("webhook", "sent"): 2}
