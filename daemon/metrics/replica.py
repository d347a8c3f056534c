"""What this replica did: ingest, proxy, notifications, the writer's queue, who it is.

Ingest and the proxy already count everything in ``IngestStats`` and ``ProxyStats``; this
collector reads those counters at scrape time instead of keeping a second set, so the numbers
can never disagree with what the code counted. Every replica exports its own; ``sum()`` over
replicas is right.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from daemon import __version__
from daemon.ingest.pipeline import IngestStats
from daemon.metrics.readings import le_values
from daemon.proxy import ProxyStats

API, PROXY = "api", "proxy"
# Label values counted from the start (as 0) for every configured deployment: a counter that
# exists before its first event lets ``increase()`` see that event.
REJECT_REASONS = ("invalid", "too_large", "malformed", "queue_full")
DROP_REASONS = ("queue_full", "error", "invalid", "unreadable", "store_error")
STATUS_CLASSES = ("2xx", "4xx", "5xx")


class NotificationSource(Protocol):
    """What the metrics need of the notifier (``daemon.notify.NotifierStats``): counts of
    notifications by (kind, status), e.g. ``("slack", "sent")``."""

    def snapshot(self) -> Mapping[tuple[str, str], int]: ...


class QueueGauge(Protocol):
    """The writer, as far as its queue goes (``daemon.ingest.writer.Writer``)."""

    @property
    def depth(self) -> int: ...


class ReplicaCollector:
    """The replica metrics of docs/metrics.md, read from the live counters at each scrape."""

    def __init__(
        self,
        *,
        deployments: Sequence[str],
        ingest: IngestStats,
        proxy: ProxyStats,
        writer: QueueGauge | None,
        queue_capacity: int,
        is_leader: Callable[[], bool],
        notifications: NotificationSource | None = None,
        version: str = __version__,
    ) -> None:
        self.deployments = list(deployments)
        self.ingest = ingest
        self.proxy = proxy
        self.writer = writer
        self.queue_capacity = queue_capacity
        self.is_leader = is_leader
        self.notifications = notifications
        self.version = version

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily(
            "driftd_build_info", "The running driftd version (value 1).", labels=["version"]
        )
        build.add_metric([self.version], 1.0)
        yield build
        yield GaugeMetricFamily(
            "driftd_leader",
            "1 while this replica holds the leader lease, else 0.",
            value=1.0 if self.is_leader() else 0.0,
        )
        yield from self._ingest()
        yield from self._proxy()
        yield from self._queue()
        yield self._notifications()

    def _ingest(self) -> Iterable[Metric]:
        ingest = _copied(self.ingest, ("samples", "redacted", "rejected"))
        proxy = _copied(self.proxy, ("requests", "dropped", "recorded", "sampled_out", "redacted"))
        sources = [(d, source) for d in self.deployments for source in (API, PROXY)]
        received = _zeros(sources)
        stored = _zeros(sources)
        sampled_out = _zeros(sources)
        duplicate = _zeros((d,) for d in self.deployments)
        outcomes = {"received": received, "new": stored, "sampled_out": sampled_out}
        for (deployment, outcome), n in ingest["samples"].items():
            if outcome in outcomes:
                outcomes[outcome][deployment, API] += n
            elif outcome == "duplicate":
                duplicate[(deployment,)] += n
        for (deployment, _status), n in proxy["requests"].items():
            received[deployment, PROXY] += n
        for deployment, n in proxy["recorded"].items():
            stored[deployment, PROXY] += n
        for deployment, n in proxy["sampled_out"].items():
            sampled_out[deployment, PROXY] += n
        redacted: Counter[tuple[str, ...]] = Counter(ingest["redacted"])
        redacted.update(proxy["redacted"])
        rejected = _zeros((d, r) for d in self.deployments for r in REJECT_REASONS)
        rejected.update(ingest["rejected"])
        dropped = _zeros((d, r) for d in self.deployments for r in DROP_REASONS)
        dropped.update(proxy["dropped"])
        by_source = ["deployment", "source"]
        yield _family("driftd_samples_received", "Samples received.", by_source, received)
        yield _family("driftd_samples_stored", "Samples committed to the store.", by_source, stored)
        yield _family(
            "driftd_samples_duplicate",
            "Samples skipped as re-sent (their request_id was seen).",
            ["deployment"],
            duplicate,
        )
        yield _family(
            "driftd_samples_sampled_out",
            "Samples not kept by the sampling rate.",
            by_source,
            sampled_out,
        )
        yield _family(
            "driftd_samples_redacted",
            "PII redactions by kind.",
            ["deployment", "kind"],
            redacted,
        )
        yield _family(
            "driftd_samples_rejected",
            "Ingest requests refused, by reason (invalid, too_large, malformed, queue_full).",
            ["deployment", "reason"],
            rejected,
        )
        yield _family(
            "driftd_samples_dropped",
            "Proxy samples dropped; the user's request still succeeded.",
            ["deployment", "reason"],
            dropped,
        )

    def _proxy(self) -> Iterable[Metric]:
        requests = _copied(self.proxy, ("requests",))["requests"]
        by_class = _zeros((d, c) for d in self.deployments for c in STATUS_CLASSES)
        for (deployment, status), n in requests.items():
            by_class[deployment, status_class(status)] += n
        yield _family(
            "driftd_proxy_requests",
            "Proxied requests by HTTP status class (2xx, 4xx, 5xx).",
            ["deployment", "status"],
            by_class,
        )
        errors = _zeros((d, r) for d in self.deployments for r in ProxyStats.UPSTREAM_ERRORS)
        errors.update(_copied(self.proxy, ("upstream_errors",))["upstream_errors"])
        yield _family(
            "driftd_proxy_upstream_errors",
            "Upstream failures (timeout, connect, http_4xx, http_5xx).",
            ["deployment", "reason"],
            errors,
        )
        refusals = ProxyStats.REFUSALS.values()
        refused = _zeros((d, r) for d in self.deployments for r in refusals)
        refused.update(_copied(self.proxy, ("refused",))["refused"])
        yield _family(
            "driftd_proxy_refused",
            "Proxied calls driftd answered itself, nothing sent upstream or stored "
            "(unauthorized, malformed, too_large, no_upstream_key).",
            ["deployment", "reason"],
            refused,
        )
        durations = HistogramMetricFamily(
            "driftd_proxy_request_duration_seconds",
            "Time from a proxied request's arrival to its last byte sent.",
            labels=["deployment"],
        )
        measured = self.proxy.durations()
        empty = ([0] * (len(ProxyStats.BUCKETS) + 1), 0.0)
        bounds = le_values(ProxyStats.BUCKETS)
        for deployment in sorted(set(self.deployments) | set(measured)):
            counts, total = measured.get(deployment, empty)
            buckets = [(bound, float(n)) for bound, n in zip(bounds, counts, strict=True)]
            durations.add_metric([deployment], buckets, total)
        yield durations

    def _queue(self) -> Iterable[Metric]:
        depth = 0 if self.writer is None else self.writer.depth
        yield GaugeMetricFamily(
            "driftd_ingest_queue_depth", "Batches waiting for the store writer.", value=depth
        )
        yield GaugeMetricFamily(
            "driftd_ingest_queue_capacity",
            "The writer queue's bound; at depth = capacity ingest answers 429.",
            value=self.queue_capacity,
        )

    def _notifications(self) -> Metric:
        counts = {} if self.notifications is None else self.notifications.snapshot()
        return _family(
            "driftd_notifications",
            "Notifications by channel (webhook, slack, alertmanager) and outcome (sent, failed).",
            ["kind", "status"],
            Counter({tuple(key): n for key, n in counts.items()}),
        )


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx`` (or ``1xx``/``3xx``): bounded, unlike the status itself."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def _family(
    name: str, documentation: str, labels: list[str], counts: Counter[tuple[str, ...]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, n in sorted(counts.items()):
        family.add_metric(list(values), n)
    return family


def _zeros(keys: Iterable[tuple[str, ...]]) -> Counter[tuple[str, ...]]:
    return Counter(dict.fromkeys(keys, 0))


def _copied(stats: Any, names: Iterable[str]) -> dict[str, Counter[Any]]:
    """Copies of the stats' counters, taken under their lock: a scrape must not iterate a
    Counter that a request thread is adding a key to."""
    lock = getattr(stats, "_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        return {name: Counter(getattr(stats, name)) for name in names}
