"""What the notifier sends and where, on SQLite and PostgreSQL: job failures and their
resolution, promotions and rollbacks, each channel's body, channels left out or misconfigured,
a channel that hangs, a real Alertmanager accepting (and resolving) driftd's alerts, and the
daemon sending to the channels in its environment."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.config.models import NotifyOn
from daemon.domain import JobState
from daemon.errors import ConfigError
from daemon.notify import Notifier
from daemon.store import Store, upgrade
from daemon.store.jobs import claim_job, create_job, finish_job, get_job
from daemon.store.models import utcnow
from daemon.store.versions import add_version, promote, rollback
from tests.daemon.notify.conftest import (
    check_completed,
    deliver_all,
    notifications,
    outbox,
    settings,
    webhook,
)
from tests.fake_webhook import Receiver
from tests.helpers.configs import minimal_config
from tests.helpers.serve import Server, free_port, running
from tests.helpers.wait import wait_for

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


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
