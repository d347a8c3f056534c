"""The leader's metrics: checks, signals, quality, policy, jobs, versions, from the store.

Only the current leader exports them (``is_leader`` is asked at every scrape), so two replicas
never report the loop twice (the counters of checks and scheduled runs are the exception: every
replica keeps them of the work it ran itself, and exports them), and because they are read from
the store a new leader carries on with the same counts: the audit log and the jobs table are
the counters. Per-signal series are capped per deployment (``metrics.max_signals_per_deployment``,
drifted signals kept first), and the number monitored is exported beside the number exported, so
a cap that bites is visible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from daemon.config import Config
from daemon.config.types import Schedule
from daemon.metrics.metrics import LeaderCounters
from daemon.metrics.readings import CachedReadings, cumulative
from daemon.store.readings import FINISHED, UNFINISHED, LatestCheck, Readings

log = logging.getLogger("driftd.metrics")

ROLLBACK_REASONS = ("watch", "manual")
PROMOTION_TRIGGERS = ("drift", "schedule", "manual")
_EVALUATED = ("ok", "drift")
# Rates a quality signal reports, by the metric name they are exported under.
_RATES = {
    "format_validity": "format_valid_ratio",
    "refusal": "refusal_ratio",
    "errors": "error_ratio",
}


class LoopCollector:
    """Exports the leader metrics of docs/metrics.md while ``is_leader()`` is true."""

    def __init__(
        self,
        config: Config,
        readings: CachedReadings,
        counters: LeaderCounters,
        is_leader: Callable[[], bool],
    ) -> None:
        self.config = config
        self.readings = readings
        self.counters = counters
        self.is_leader = is_leader
        self.deployments = [d.name for d in config.deployments]
        self.cap = config.metrics.max_signals_per_deployment

    def collect(self) -> Iterable[Metric]:
        # Counted where the work ran: every replica runs checks, so every replica exports them.
        yield from self.counters.collect()
        if not self.is_leader():
            self.readings.clear()
            return
        yield from self._intervals()
        try:
            readings = self.readings.get()
        except Exception:
            # A scrape that fails hides the replica metrics too; better to export what we can
            # and say in the log why the store-derived part is missing.
            log.exception("the leader metrics could not be read from the store")
            return
        configured = set(self.deployments)
        checks = [c for c in readings.latest_checks if c.deployment in configured]
        yield from self._checks(checks)
        yield from self._jobs(readings, configured)
        yield from self._versions(readings, configured)

    def _intervals(self) -> Iterable[Metric]:
        check = GaugeMetricFamily(
            "driftd_check_interval_seconds",
            "The configured check interval (for staleness alerts).",
            labels=["deployment"],
        )
        retune = GaugeMetricFamily(
            "driftd_retune_interval_seconds",
            "The scheduled re-tune's period, for deployments with retune.schedule.",
            labels=["deployment"],
        )
        now = datetime.now(UTC)
        timezone = self.config.timezone
        for deployment in self.config.deployments:
            check.add_metric(
                [deployment.name], period_seconds(deployment.monitor.schedule, timezone, now)
            )
            if deployment.retune.schedule is not None:
                retune.add_metric(
                    [deployment.name],
                    period_seconds(deployment.retune.schedule, timezone, now),
                )
        yield from (check, retune)

    def _checks(self, checks: Sequence[LatestCheck]) -> Iterable[Metric]:
        last = GaugeMetricFamily(
            "driftd_check_last_success_timestamp_seconds",
            "End of the last check that completed (any verdict), from the store.",
            labels=["deployment"],
        )
        drifted = GaugeMetricFamily(
            "driftd_check_drifted",
            "1 if the latest completed check's verdict is drift, else 0.",
            labels=["deployment"],
        )
        score = GaugeMetricFamily(
            "driftd_drift_score",
            "The latest check's score per signal (p-value, share, distance: see method).",
            labels=["deployment", "signal", "group", "method"],
        )
        threshold = GaugeMetricFamily(
            "driftd_drift_threshold",
            "The threshold the latest score was judged against.",
            labels=["deployment", "signal", "group", "method"],
        )
        signal_drifted = GaugeMetricFamily(
            "driftd_signal_drifted",
            "1 if the signal drifted in the latest check, 0 otherwise (0 is exported too).",
            labels=["deployment", "signal", "group"],
        )
        ratio = GaugeMetricFamily(
            "driftd_drifted_signals_ratio",
            "Drifted signals / evaluated signals in the latest check.",
            labels=["deployment"],
        )
        monitored = GaugeMetricFamily(
            "driftd_signals_monitored",
            "Signals in the latest check (before the series cap).",
            labels=["deployment"],
        )
        exported = GaugeMetricFamily(
            "driftd_signals_exported",
            "Signals exported as series (after metrics.max_signals_per_deployment).",
            labels=["deployment"],
        )
        quality = GaugeMetricFamily(
            "driftd_quality",
            "Quality values of the latest check (accuracy, judge_score, refusal_ratio, ...).",
            labels=["deployment", "metric"],
        )
        for check in checks:
            name = check.deployment
            last.add_metric([name], check.finished_at.timestamp())
            drifted.add_metric([name], 1.0 if check.status == "drift" else 0.0)
            signals = check.signals
            kept = capped(signals, self.cap)
            for signal in kept:
                signal_name, group = str(signal.get("name")), str(signal.get("group"))
                method = str(signal.get("method") or "unknown")
                signal_drifted.add_metric(
                    [name, signal_name, group], 1.0 if signal.get("drifted") else 0.0
                )
                value = _finite(signal.get("score"))
                if value is not None:
                    score.add_metric([name, signal_name, group, method], value)
                bound = _finite(signal.get("threshold"))
                if bound is not None:
                    threshold.add_metric([name, signal_name, group, method], bound)
            evaluated = [s for s in signals if s.get("status") in _EVALUATED]
            drifted_count = sum(1 for s in evaluated if s.get("drifted"))
            ratio.add_metric([name], drifted_count / len(evaluated) if evaluated else 0.0)
            monitored.add_metric([name], len(signals))
            exported.add_metric([name], len(kept))
            for metric, value in sorted(quality_values(signals).items()):
                quality.add_metric([name, metric], value)
        yield from (
            last,
            drifted,
            score,
            threshold,
            signal_drifted,
            ratio,
            monitored,
            exported,
            quality,
        )

    def _jobs(self, readings: Readings, configured: set[str]) -> Iterable[Metric]:
        finished = CounterMetricFamily(
            "driftd_jobs",
            "Jobs that finished, by final status (succeeded, failed, cancelled).",
            labels=["deployment", "kind", "status", "trigger"],
        )
        pending = GaugeMetricFamily(
            "driftd_jobs_unfinished",
            "Jobs not finished yet (queued, awaiting_approval, running).",
            labels=["deployment", "kind", "status"],
        )
        # Every known (deployment, kind, trigger) gets all its statuses, zeros included, so that
        # increase() sees the first failure of a kind instead of a series appearing from nothing.
        finals: dict[tuple[str, str, str, str], int] = {}
        waiting: dict[tuple[str, str, str], int] = {}
        for (deployment, kind, state, trigger), n in readings.jobs.items():
            if deployment not in configured:
                continue
            for status in FINISHED:
                finals.setdefault((deployment, kind, status, trigger), 0)
            for status in UNFINISHED:
                waiting.setdefault((deployment, kind, status), 0)
            if state in FINISHED:
                finals[deployment, kind, state, trigger] += n
            elif state in UNFINISHED:
                waiting[deployment, kind, state] += n
        for labels, n in sorted(finals.items()):
            finished.add_metric(list(labels), n)
        for gauge_labels, n in sorted(waiting.items()):
            pending.add_metric(list(gauge_labels), n)
        durations = HistogramMetricFamily(
            "driftd_job_duration_seconds",
            "Run time of finished jobs.",
            labels=["deployment", "kind"],
        )
        for item in readings.job_durations:
            if item.deployment in configured:
                durations.add_metric(
                    [item.deployment, item.kind], cumulative(item.buckets), item.total_seconds
                )
        last_success = GaugeMetricFamily(
            "driftd_job_last_success_timestamp_seconds",
            "When a job of that kind last succeeded.",
            labels=["deployment", "kind"],
        )
        for (deployment, kind), when in sorted(readings.job_last_success.items()):
            if deployment in configured:
                last_success.add_metric([deployment, kind], when.timestamp())
        decisions = CounterMetricFamily(
            "driftd_policy_decisions",
            "Policy decisions from the audit log, by action and reason.",
            labels=["deployment", "action", "reason"],
        )
        for (deployment, action, reason), n in sorted(readings.decisions.items()):
            if deployment in configured:
                decisions.add_metric([deployment, action, reason], n)
        yield from (finished, pending, durations, last_success, decisions)

    def _versions(self, readings: Readings, configured: set[str]) -> Iterable[Metric]:
        active = GaugeMetricFamily(
            "driftd_active_version_info",
            "The active model or prompt version (value 1).",
            labels=["deployment", "kind", "version"],
        )
        for deployment, kind, version in readings.active_versions:
            if deployment in configured:
                active.add_metric([deployment, kind, version], 1.0)
        promotions = CounterMetricFamily(
            "driftd_promotions",
            "Promotions from the audit log, by trigger (drift, schedule, manual, config).",
            labels=["deployment", "trigger"],
        )
        rollbacks = CounterMetricFamily(
            "driftd_rollbacks",
            "Rollbacks from the audit log, by reason (watch, manual).",
            labels=["deployment", "reason"],
        )
        last = GaugeMetricFamily(
            "driftd_last_rollback_timestamp_seconds",
            "When the last rollback happened.",
            labels=["deployment"],
        )
        promoted = _with_zeros(readings.promotions, self.deployments, PROMOTION_TRIGGERS)
        for (deployment, trigger), n in sorted(promoted.items()):
            if deployment in configured:
                promotions.add_metric([deployment, trigger], n)
        rolled = _with_zeros(readings.rollbacks, self.deployments, ROLLBACK_REASONS)
        for (deployment, reason), n in sorted(rolled.items()):
            if deployment in configured:
                rollbacks.add_metric([deployment, reason], n)
        for deployment, when in sorted(readings.last_rollback.items()):
            if deployment in configured:
                last.add_metric([deployment], when.timestamp())
        yield from (active, promotions, rollbacks, last)


def capped(signals: Sequence[Mapping[str, Any]], cap: int) -> list[Mapping[str, Any]]:
    """At most ``cap`` signals: the drifted ones first (what an operator must see), then the
    rest in the check's order."""
    drifted = [s for s in signals if s.get("drifted")]
    return [*drifted, *(s for s in signals if not s.get("drifted"))][:cap]


def quality_values(signals: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The quality values a check measured, by the ``metric`` label they are exported under.

    Read from each signal's evidence (``details``): measured ``accuracy`` and ``macro_f1`` or an
    ``estimated_accuracy`` (performance), the mean ``judge_score``, and the current rates of
    positive feedback, valid JSON, refusals and errors. Signals that did not run give nothing.
    """
    values: dict[str, float] = {}
    for signal in signals:
        if signal.get("status") not in _EVALUATED:
            continue
        details = signal.get("details") or {}
        name = signal.get("name")
        if name == "performance":
            metrics = details.get("metrics") or {}
            if details.get("estimated"):
                _put(values, "estimated_accuracy", _current(metrics.get("accuracy")))
            else:
                _put(values, "accuracy", _current(metrics.get("accuracy")))
                _put(values, "macro_f1", _current(metrics.get("macro_f1")))
        elif name == "judge":
            _put(values, "judge_score", _current(details.get("mean")))
        elif name == "feedback":
            negative = _current(details.get("rate"))
            _put(values, "feedback_positive_ratio", None if negative is None else 1.0 - negative)
        elif isinstance(name, str) and name in _RATES:
            _put(values, _RATES[name], _current(details.get("rate")))
    return values


def period_seconds(schedule: Schedule, timezone: str, now: datetime) -> float:
    """How often ``schedule`` fires: its interval, or for cron the gap between its next two
    fire times (a daily cron is 86400 s)."""
    if schedule.every is not None:
        return schedule.every.total_seconds()
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(schedule.cron, timezone=timezone)
    first = trigger.get_next_fire_time(None, now)
    if first is None:
        return 0.0
    second = trigger.get_next_fire_time(first, first + timedelta(microseconds=1))
    return 0.0 if second is None else float((second - first).total_seconds())


def _with_zeros(
    counts: Mapping[tuple[str, str], int], deployments: Iterable[str], values: Iterable[str]
) -> dict[tuple[str, str], int]:
    """``counts`` plus a 0 for each (deployment, value) never seen: a counter that exists from
    the start lets ``increase()`` see its first event."""
    merged = dict(counts)
    for deployment in deployments:
        for value in values:
            merged.setdefault((deployment, value), 0)
    return merged


def _current(entry: Any) -> float | None:
    return _finite(entry.get("current")) if isinstance(entry, Mapping) else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _put(values: dict[str, float], metric: str, value: float | None) -> None:
    if value is not None:
        values[metric] = value
