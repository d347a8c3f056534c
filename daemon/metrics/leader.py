"""What the leader counts as it works: checks it ran and how long they took, scheduled runs.

These live in the process (a check's duration is known only where it ran), unlike the rest of the
leader's metrics, which are read from the store. They are not registered on their own: the loop
collector yields them only while this replica leads, so a replica that lost the lease stops
exporting them and two replicas never both report the loop.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

CHECK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""A check is a fraction of a second on a small window and minutes at its row caps."""

RUN_STATUSES = ("ran", "claimed_elsewhere", "missed", "error")


class LeaderCounters:
    """Observed where the leader runs a check (``Actions.check``) and a scheduled tick
    (``Scheduler``); thread-safe, as prometheus_client's metrics are."""

    def __init__(self) -> None:
        self.check_duration = Histogram(
            "driftd_check_duration_seconds",
            "Duration of checks run by this leader.",
            ["deployment"],
            buckets=CHECK_BUCKETS,
            registry=None,
        )
        self.checks = Counter(
            "driftd_checks_total",
            "Checks run by this leader, by status (ok, drift, insufficient_data, failed).",
            ["deployment", "status"],
            registry=None,
        )
        self.scheduler_runs = Counter(
            "driftd_scheduler_runs_total",
            "Scheduled runs by job kind and outcome (ran, claimed_elsewhere, missed, error).",
            ["kind", "status"],
            registry=None,
        )

    def checked(self, deployment: str, status: str, seconds: float) -> None:
        """One check of ``deployment`` ended with ``status`` after ``seconds``."""
        self.check_duration.labels(deployment).observe(max(0.0, seconds))
        self.checks.labels(deployment, status).inc()

    def scheduler_run(self, kind: str, status: str) -> None:
        """One scheduled tick of ``kind`` ended as ``status`` (one of ``RUN_STATUSES``)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"scheduler run status {status!r} is not one of {RUN_STATUSES}")
        self.scheduler_runs.labels(kind, status).inc()

    def collect(self) -> Iterable[Metric]:
        yield from self.check_duration.collect()
        yield from self.checks.collect()
        yield from self.scheduler_runs.collect()
