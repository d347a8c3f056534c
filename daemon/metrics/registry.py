"""``DriftdMetrics``: the metrics of docs/metrics.md bound to one ``CollectorRegistry``.

The metrics counted in the process are defined in ``daemon.metrics.metrics``; the leader's
metrics read from the store are collected by ``daemon.metrics.loop``. The daemon builds one
``DriftdMetrics`` in ``daemon/serve.py`` on a registry of its own, never prometheus_client's
global ``REGISTRY``: tests build as many as they like side by side, and nothing a library
registers globally leaks into driftd's ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from daemon.config import Config
from daemon.metrics.loop import LoopCollector
from daemon.metrics.metrics import LeaderCounters, QueueGauge, ReplicaMetrics
from daemon.metrics.readings import CachedReadings
from daemon.store import Store


class DriftdMetrics:
    """``replica``'s metrics, the leader's own counters and the leader's store-derived
    collector, all on ``replica.registry``.

    ``is_leader`` is asked at every scrape: the leader metrics appear only while it is true.
    ``store_cache`` overrides ``config.metrics.store_cache`` (tests pass 0 to see every change).
    """

    def __init__(
        self,
        replica: ReplicaMetrics,
        *,
        config: Config,
        store: Store,
        writer: QueueGauge | None,
        is_leader: Callable[[], bool],
        store_cache: timedelta | None = None,
    ) -> None:
        self.registry = replica.registry
        self.replica = replica
        replica.bind(
            deployments=[d.name for d in config.deployments],
            is_leader=is_leader,
            writer=writer,
            queue_capacity=config.ingest.queue_batches,
        )
        self.leader = LeaderCounters()
        self.readings = CachedReadings(
            store, config.metrics.store_cache if store_cache is None else store_cache
        )
        self.loop = LoopCollector(config, self.readings, self.leader, is_leader)
        self.registry.register(self.loop)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``); reads the store when
        leading, so call it off the event loop."""
        return generate_latest(self.registry)

    CONTENT_TYPE = CONTENT_TYPE_LATEST
