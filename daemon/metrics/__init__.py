"""driftd's Prometheus metrics (docs/metrics.md): replica metrics counted by this process, and
leader metrics read from the store or counted by the leader, exported only by the leader."""

from __future__ import annotations

from daemon.metrics.metrics import PROXY_REFUSALS, LeaderCounters, ReplicaMetrics, status_class
from daemon.metrics.registry import DriftdMetrics

__all__ = [
    "PROXY_REFUSALS",
    "DriftdMetrics",
    "LeaderCounters",
    "ReplicaMetrics",
    "status_class",
]
