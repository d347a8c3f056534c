"""driftd's metrics after real actions, on SQLite and PostgreSQL, in prometheus/client_python's
style: every test builds its own ``CollectorRegistry`` and reads values with
``get_sample_value``. Batches go through the ingest API, checks through ``Actions.check`` and the
real ``Checker``, jobs through the job runner with real ``python -m retrain`` processes,
promotions and rollbacks through ``daemon.retune.promotion`` as the CLI runs them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from daemon import __version__
from daemon.api import Tokens, create_app
from daemon.checks import Checker
from daemon.config import Config, parse_config
from daemon.config.models import Hooks, Metrics
from daemon.domain import JobState, VersionKind, VersionState
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.prepare import PreparerPool
from daemon.ingest.writer import Writer
from daemon.jobs.executor import LocalExecutor
from daemon.jobs.runner import JobRunner
from daemon.metrics import DriftdMetrics, ReplicaMetrics
from daemon.prompts import ensure_initial
from daemon.retune import promotion
from daemon.scheduler import CheckDone, Tick
from daemon.scheduler.actions import Actions
from daemon.store import Check, Store, versions
from daemon.store import jobs as job_store

CONFIG = """\
ingest: {queue_batches: 8}
deployments:
  - name: bot
    kind: prompted
    task: generation
    prompt: {model: gpt-4o-mini, system: You help bank customers.}
    monitor:
      schedule: every 30s
      window: 1h
      min_rows: 20
      max_rows: 400
      signals: [descriptors, refusal, errors]
    retune: {schedule: "0 3 * * *", golden_set: golden.jsonl}
    judge: {rubric: The answer helps the customer., schedule: every 24h}
"""
INGEST = {"Authorization": "Bearer ingest-1"}
ADMIN = {"Authorization": "Bearer admin-1"}
REFUSAL = "I'm sorry, but I can't help with that."
NO_CACHE = timedelta(0)


class Leading:
    """Whether the replica leads, as the scheduler's ``is_leader`` would say; tests flip it."""

    def __init__(self, leads: bool = True) -> None:
        self.leads = leads

    def __call__(self) -> bool:
        return self.leads


class InProcessChecks:
    """The check workers' job done in this process: the real ``Checker``, no worker pool."""

    def __init__(self, config: Config, store: Store) -> None:
        self.checker = Checker(config, store)

    def run(self, deployment: str, *, scheduled_for: datetime | None = None) -> CheckDone:
        outcome = self.checker.run(deployment, scheduled_for=scheduled_for)
        drifted = tuple(s.name for s in outcome.result.signals if s.drifted)
        return CheckDone(outcome.check_id, outcome.result.status, drifted, 0.0)


class Daemon:
    """The parts of ``driftd serve`` the metrics read: a store, the API with its writer, the
    replica's metrics, and ``DriftdMetrics`` on a registry of this test's own."""

    def __init__(self, store: Store, tmp_path: Path, **metrics: Any) -> None:
        (tmp_path / "golden.jsonl").write_text('{"input": "hi", "expected": "hello"}\n')
        text = CONFIG + f"storage: {{snapshots: {tmp_path / 'snapshots'}}}\n"
        self.config = parse_config(text, environ={}, base_dir=tmp_path)
        for deployment in self.config.deployments:
            store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
        self.store = store
        self.writer = Writer(store, queue_batches=self.config.ingest.queue_batches)
        self.writer.start()
        self.preparer = PreparerPool(
            0, self.config.deployments, store.deployment_ids(), store.engine.dialect.name, 1000
        )
        self.leading = Leading()
        self.registry = CollectorRegistry()
        self.replica = ReplicaMetrics(self.registry)
        self.metrics = DriftdMetrics(
            self.replica,
            config=self.config,
            store=store,
            writer=self.writer,
            is_leader=self.leading,
            store_cache=metrics.pop("store_cache", NO_CACHE),
            **metrics,
        )
        app = create_app(
            store=store,
            writer=self.writer,
            preparer=self.preparer,
            pipelines={d.name: DeploymentPipeline(d) for d in self.config.deployments},
            tokens=Tokens(ingest=(b"ingest-1",), admin=(b"admin-1",)),
            limits=self.config.ingest,
            stats=self.replica,
            leader=self.leading,
            metrics=self.metrics,
        )
        self.client = TestClient(app)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def series(self, name: str) -> list[dict[str, str]]:
        return [
            sample.labels
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        ]

    def ingest(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        answer = self.client.post(
            "/v1/deployments/bot/samples", json={"samples": samples}, headers=INGEST
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def close(self) -> None:
        self.writer.stop()
        self.preparer.close()


@pytest.fixture
def daemon(store: Store, tmp_path: Path) -> Iterator[Daemon]:
    made = Daemon(store, tmp_path)
    try:
        yield made
    finally:
        made.close()


def traffic(start: datetime, count: int, tag: str, *, refusals: int = 0) -> list[dict[str, Any]]:
    """``count`` chat samples spread over the hour after ``start``; the first ``refusals`` of
    them answered with a refusal."""
    return [
        {
            "request_id": f"{tag}-{i}",
            "ts": (start + timedelta(seconds=i * 3500 / count)).isoformat(),
            "input": f"How do I change the address on my account number {i}?",
            "output": REFUSAL if i < refusals else f"Open Settings, then Address ({i}).",
        }
        for i in range(count)
    ]


def latest_signals(store: Store) -> list[dict[str, Any]]:
    with store.session(readonly=True) as session:
        check = session.scalars(select(Check).order_by(Check.id.desc())).first()
    assert check is not None
    return list(check.signals["signals"])


def test_an_ingested_batch_is_counted_by_source_and_outcome(daemon: Daemon) -> None:
    now = datetime.now(UTC)
    batch = traffic(now - timedelta(minutes=30), 5, "a")
    batch[0]["input"] = "Write to me at jane@example.com please"
    assert daemon.ingest(batch)["new"] == 5
    assert daemon.ingest(batch[:2] + traffic(now, 1, "b"))["duplicate"] == 2
    bad = daemon.client.post("/v1/deployments/bot/samples", content=b"{", headers=INGEST)
    assert bad.status_code == 400

    bot_api = {"deployment": "bot", "source": "api"}
    assert daemon.value("driftd_samples_received_total", **bot_api) == 8
    assert daemon.value("driftd_samples_stored_total", **bot_api) == 6
    assert daemon.value("driftd_samples_duplicate_total", deployment="bot") == 2
    assert daemon.value("driftd_samples_sampled_out_total", **bot_api) == 0
    # Redaction runs before the store finds a re-sent sample: the address was redacted twice.
    assert daemon.value("driftd_samples_redacted_total", deployment="bot", kind="email") == 2
    assert daemon.value("driftd_samples_rejected_total", deployment="bot", reason="malformed") == 1
    assert daemon.value("driftd_ingest_queue_depth") == 0
    assert daemon.value("driftd_ingest_queue_capacity") == 8
    assert daemon.value("driftd_build_info", version=__version__) == 1
    assert daemon.value("driftd_leader") == 1
    daemon.leading.leads = False
    assert daemon.value("driftd_leader") == 0


def test_metrics_are_served_open_in_the_text_format(daemon: Daemon) -> None:
    for _ in range(3):
        daemon.replica.notified("slack", "sent")  # as the notifier's sender counts
    daemon.replica.notified("webhook", "failed")
    answer = daemon.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == DriftdMetrics.CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert families["driftd_leader"].samples[0].value == 1
    sent = [
        s
        for s in families["driftd_notifications"].samples
        if s.name == "driftd_notifications_total" and s.labels["status"] == "sent"
    ]
    assert [(s.labels["kind"], s.value) for s in sent] == [("slack", 3)]
    assert daemon.value("driftd_notifications_total", kind="webhook", status="failed") == 1


def test_a_real_check_exports_its_verdict_signals_and_quality_zeros_included(
    daemon: Daemon,
) -> None:
    now = datetime.now(UTC)
    daemon.ingest(traffic(now - timedelta(hours=2), 60, "ref"))
    daemon.ingest(traffic(now - timedelta(hours=1), 60, "cur", refusals=30))
    actions = Actions(
        daemon.config,
        daemon.store,
        InProcessChecks(daemon.config, daemon.store),  # type: ignore[arg-type]
        metrics=daemon.metrics.leader,
    )
    actions.check(Tick("bot", "check", now))

    assert daemon.value("driftd_checks_total", deployment="bot", status="drift") == 1
    assert daemon.value("driftd_check_duration_seconds_count", deployment="bot") == 1
    assert daemon.value("driftd_check_drifted", deployment="bot") == 1
    last = daemon.value("driftd_check_last_success_timestamp_seconds", deployment="bot")
    assert last is not None
    assert abs(last - now.timestamp()) < 120
    refusal = {"deployment": "bot", "signal": "refusal", "group": "quality"}
    assert daemon.value("driftd_signal_drifted", **refusal) == 1
    # Signals that did not drift, or could not run, are exported as 0: alerts can resolve.
    assert (
        daemon.value("driftd_signal_drifted", deployment="bot", signal="errors", group="output")
        == 0
    )
    # The exported values are the stored evidence of that check, to the last digit.
    stored = {s["name"]: s for s in latest_signals(daemon.store)}
    method = stored["refusal"]["method"]
    assert method == "evidently:z+rate_change"
    assert (
        daemon.value("driftd_drift_score", **refusal, method=method) == (stored["refusal"]["score"])
    )
    assert daemon.value("driftd_drift_score", **refusal, method=method) == pytest.approx(
        0.5, abs=0.05
    )
    assert daemon.value("driftd_drift_threshold", **refusal, method=method) == 0.05
    assert (
        daemon.value("driftd_quality", deployment="bot", metric="refusal_ratio")
        == (stored["refusal"]["details"]["rate"]["current"])
    )
    monitored = daemon.value("driftd_signals_monitored", deployment="bot")
    assert monitored is not None
    assert monitored >= 3
    assert daemon.value("driftd_signals_exported", deployment="bot") == monitored
    ratio = daemon.value("driftd_drifted_signals_ratio", deployment="bot")
    assert ratio is not None
    assert 0 < ratio <= 1
    assert daemon.value("driftd_check_interval_seconds", deployment="bot") == 30
    assert daemon.value("driftd_retune_interval_seconds", deployment="bot") == 86400
    (decision,) = [e for e in daemon.store.recent_events("bot") if e.kind == "policy.decision"]
    action, reason = decision.evidence["action"], decision.evidence["reason"]
    assert (action, reason) == ("none", "hysteresis")  # one drift check of the two it takes
    assert (
        daemon.value(
            "driftd_policy_decisions_total", deployment="bot", action=action, reason=reason
        )
        == 1
    )

    # The cap: at most two per-signal series, the drifted one kept; all still counted.
    capped = CollectorRegistry()
    config = daemon.config.model_copy(update={"metrics": Metrics(max_signals_per_deployment=2)})
    DriftdMetrics(
        ReplicaMetrics(capped),
        config=config,
        store=daemon.store,
        writer=None,
        is_leader=lambda: True,
        store_cache=NO_CACHE,
    )
    detected = [
        s.labels["signal"]
        for family in capped.collect()
        for s in family.samples
        if s.name == "driftd_signal_drifted"
    ]
    assert len(detected) == 2
    assert "refusal" in detected
    assert capped.get_sample_value("driftd_signals_exported", {"deployment": "bot"}) == 2
    assert capped.get_sample_value("driftd_signals_monitored", {"deployment": "bot"}) == monitored


def test_the_leader_metrics_are_absent_on_a_replica_that_does_not_lead_but_its_checks_are(
    daemon: Daemon,
) -> None:
    daemon.store.add_event(
        "bot", "policy.decision", "none", {"action": "none", "reason": "no_drift"}
    )
    daemon.metrics.leader.checked("bot", "ok", 0.2)
    assert daemon.value("driftd_checks_total", deployment="bot", status="ok") == 1
    assert daemon.value("driftd_check_interval_seconds", deployment="bot") == 30

    daemon.leading.leads = False
    names = {s.name for family in daemon.registry.collect() for s in family.samples}
    assert names, "the replica metrics are still there"
    assert "driftd_build_info" in names
    # Every replica runs checks: what it ran itself, it exports, leading or not.
    assert "driftd_checks_total" in names
    assert "driftd_check_duration_seconds_count" in names
    leader_only = {
        "driftd_check_interval_seconds",
        "driftd_policy_decisions_total",
        "driftd_promotions_total",
        "driftd_rollbacks_total",
    }
    assert not names & leader_only
    assert daemon.value("driftd_leader") == 0
    daemon.leading.leads = True  # leading again: the counts kept in the store are back
    assert daemon.value("driftd_checks_total", deployment="bot", status="ok") == 1
    decided = {"deployment": "bot", "action": "none", "reason": "no_drift"}
    assert daemon.value("driftd_policy_decisions_total", **decided) == 1


def test_jobs_are_counted_by_kind_status_and_trigger_with_their_run_time(
    daemon: Daemon, tmp_path: Path
) -> None:
    broken = {"golden_set": str(tmp_path / "missing.jsonl"), "model_dir": str(tmp_path)}
    failed = job_store.create_job(daemon.store, "bot", "evaluate", "drift", broken, max_attempts=1)
    job_store.create_job(
        daemon.store, "bot", "prompt_revision", "drift", {}, state=JobState.awaiting_approval
    )
    runner = JobRunner(
        daemon.store,
        LocalExecutor(grace=3.0),
        tmp_path / "jobs",
        "test-runner",
        heartbeat=timedelta(seconds=1),
        stale_after=timedelta(seconds=30),
        env={"OMP_NUM_THREADS": "1"},
    )
    runner.run_until_idle(timeout=60)
    assert job_store.get_job(daemon.store, failed)[1].state == JobState.failed

    ended = {"deployment": "bot", "kind": "evaluate", "trigger": "drift"}
    assert daemon.value("driftd_jobs_total", **ended, status="failed") == 1
    # The other final statuses exist from the start, so increase() sees their first one.
    assert daemon.value("driftd_jobs_total", **ended, status="succeeded") == 0
    waiting = {"deployment": "bot", "kind": "prompt_revision"}
    assert daemon.value("driftd_jobs_unfinished", **waiting, status="awaiting_approval") == 1
    assert daemon.value("driftd_jobs_unfinished", **waiting, status="running") == 0
    run = {"deployment": "bot", "kind": "evaluate"}
    assert daemon.value("driftd_job_duration_seconds_count", **run) == 1
    took = daemon.value("driftd_job_duration_seconds_sum", **run)
    assert took is not None
    assert 0 < took < 60
    assert daemon.value("driftd_job_duration_seconds_bucket", **run, le="+Inf") == 1
    assert daemon.value("driftd_job_last_success_timestamp_seconds", **run) is None


def test_promotions_and_rollbacks_come_from_the_audit_log(daemon: Daemon) -> None:
    store = daemon.store
    ensure_initial(store, daemon.config.deployment("bot"))  # prompt-1, promoted by the config
    artifact = store.active_version("bot")
    assert artifact is not None
    job_id = job_store.create_job(store, "bot", "prompt_revision", "schedule", {})
    for name, job in (("prompt-2", job_id), ("prompt-3", None)):
        versions.add_version(
            store,
            "bot",
            kind=VersionKind.prompt,
            name=name,
            artifact=artifact.artifact,
            state=VersionState.candidate,
            job_id=job,
        )
    hooks = Hooks()
    promotion.promote(store, hooks, "bot", "prompt-2", actor="leader:daemon-a")
    promotion.promote(store, hooks, "bot", "prompt-3", actor="cli:ops")
    promotion.rollback(store, hooks, "bot", actor="leader:daemon-a")  # the watch's rollback

    bot = {"deployment": "bot"}
    assert daemon.value("driftd_promotions_total", **bot, trigger="config") == 1
    assert daemon.value("driftd_promotions_total", **bot, trigger="schedule") == 1
    assert daemon.value("driftd_promotions_total", **bot, trigger="manual") == 1
    assert daemon.value("driftd_promotions_total", **bot, trigger="drift") == 0
    assert daemon.value("driftd_rollbacks_total", **bot, reason="watch") == 1
    assert daemon.value("driftd_rollbacks_total", **bot, reason="manual") == 0
    last = daemon.value("driftd_last_rollback_timestamp_seconds", **bot)
    assert last is not None
    assert abs(last - datetime.now(UTC).timestamp()) < 60
    assert daemon.series("driftd_active_version_info") == [
        {"deployment": "bot", "kind": "prompt", "version": "prompt-2"}
    ]


def test_store_readings_are_reused_for_the_cache_time(store: Store, tmp_path: Path) -> None:
    cached = Daemon(store, tmp_path, store_cache=timedelta(hours=1))
    try:
        bot = {"deployment": "bot", "trigger": "manual"}
        assert cached.value("driftd_promotions_total", **bot) == 0
        store.add_event("bot", "version.promoted", "x", {"actor": "api:10.0.0.1", "new": None})
        assert cached.value("driftd_promotions_total", **bot) == 0  # within store_cache
        cached.metrics.readings.clear()
        assert cached.value("driftd_promotions_total", **bot) == 1
    finally:
        cached.close()


def test_proxy_durations_from_many_threads_add_up_to_a_histogram(daemon: Daemon) -> None:
    import threading

    registry = CollectorRegistry()
    stats = ReplicaMetrics(registry)
    DriftdMetrics(
        stats,
        config=daemon.config,
        store=daemon.store,
        writer=None,
        is_leader=lambda: False,
    )

    def serve() -> None:
        for i in range(500):
            stats.served("bot", 200 if i % 5 else 502, 0.004 if i % 2 else 0.3)
            if i % 100 == 0:
                stats.refuse("bot", "unauthorized")  # answered by driftd: no request counted

    threads = [threading.Thread(target=serve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    bot = {"deployment": "bot"}
    value = registry.get_sample_value
    assert value("driftd_proxy_request_duration_seconds_count", bot) == 4000
    assert value("driftd_proxy_request_duration_seconds_bucket", {**bot, "le": "0.005"}) == 2000
    assert value("driftd_proxy_request_duration_seconds_bucket", {**bot, "le": "0.25"}) == 2000
    assert value("driftd_proxy_request_duration_seconds_bucket", {**bot, "le": "0.5"}) == 4000
    assert value("driftd_proxy_request_duration_seconds_sum", bot) == pytest.approx(608.0)
    assert value("driftd_proxy_requests_total", {**bot, "status": "5xx"}) == 800
    assert value("driftd_proxy_requests_total", {**bot, "status": "2xx"}) == 3200
    assert value("driftd_samples_received_total", {**bot, "source": "proxy"}) == 4000
    assert value("driftd_proxy_refused_total", {**bot, "reason": "unauthorized"}) == 40
    assert value("driftd_proxy_refused_total", {**bot, "reason": "too_large"}) == 0


DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
DOCUMENTED = re.compile(
    r"^\| `(driftd_[a-z0-9_]+)` \| (counter|gauge|histogram)[^|]*\| ([^|]*) \|", re.M
)


def test_every_family_is_exported_with_its_documented_name_type_and_labels(
    daemon: Daemon,
) -> None:
    documented = {
        name: (kind, set(re.findall(r"`([a-z_]+)`", labels)))
        for name, kind, labels in DOCUMENTED.findall(DOCS.read_text(encoding="utf-8"))
    }
    daemon.ingest(traffic(datetime.now(UTC) - timedelta(minutes=30), 3, "doc"))
    daemon.metrics.leader.checked("bot", "ok", 0.2)
    daemon.metrics.leader.scheduler_run("check", "ran")
    daemon.replica.notified("webhook", "sent")
    exported: dict[str, tuple[str, set[str]]] = {}
    for family in daemon.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {label for s in family.samples for label in s.labels if label != "le"}
        exported[name] = (family.type, labels)

    assert sorted(exported) == sorted(documented)
    for name, (kind, labels) in exported.items():
        assert kind == documented[name][0], name
        if labels:  # a family with no series yet says nothing of its labels
            assert labels == documented[name][1], name
