"""driftd's Prometheus metrics (docs/metrics.md): replica metrics counted by this process, and
leader metrics read from the store or counted by the leader, exported only by the leader."""

from __future__ import annotations

from daemon.metrics.leader import LeaderCounters
from daemon.metrics.registry import DriftdMetrics
from daemon.metrics.replica import NotificationSource, status_class

__all__ = ["DriftdMetrics", "LeaderCounters", "NotificationSource", "status_class"]
