"""``DriftdMetrics``: every metric of docs/metrics.md, bound to one ``CollectorRegistry``.

The daemon builds one in ``daemon/serve.py`` on a registry of its own, never prometheus_client's
global ``REGISTRY``: tests build as many as they like side by side, and nothing a library
registers globally leaks into driftd's ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from daemon.config import Config
from daemon.ingest.pipeline import IngestStats
from daemon.metrics.leader import LeaderCounters
from daemon.metrics.loop import LoopCollector
from daemon.metrics.readings import CachedReadings
from daemon.metrics.replica import NotificationSource, QueueGauge, ReplicaCollector
from daemon.proxy import ProxyStats
from daemon.store import Store


class DriftdMetrics:
    """The replica collector, the leader's store-derived collector and the leader's own
    counters, registered on ``registry``.

    ``is_leader`` is asked at every scrape: the leader metrics appear only while it is true.
    ``store_cache`` overrides ``config.metrics.store_cache`` (tests pass 0 to see every change).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        config: Config,
        store: Store,
        ingest: IngestStats,
        proxy: ProxyStats,
        writer: QueueGauge | None,
        is_leader: Callable[[], bool],
        notifications: NotificationSource | None = None,
        store_cache: timedelta | None = None,
    ) -> None:
        self.registry = registry
        self.leader = LeaderCounters()
        self.replica = ReplicaCollector(
            deployments=[d.name for d in config.deployments],
            ingest=ingest,
            proxy=proxy,
            writer=writer,
            queue_capacity=config.ingest.queue_batches,
            is_leader=is_leader,
            notifications=notifications,
        )
        self.readings = CachedReadings(
            store, config.metrics.store_cache if store_cache is None else store_cache
        )
        self.loop = LoopCollector(config, self.readings, self.leader, is_leader)
        registry.register(self.replica)
        registry.register(self.loop)

    def set_notifications(self, source: NotificationSource | None) -> None:
        """Export ``source``'s counts as ``driftd_notifications_total`` (the notifier may be
        built after the metrics)."""
        self.replica.notifications = source

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``); reads the store when
        leading, so call it off the event loop."""
        return generate_latest(self.registry)

    CONTENT_TYPE = CONTENT_TYPE_LATEST
