"""Every metric driftd counts in the process, as prometheus_client ``Counter``, ``Gauge`` and
``Histogram`` objects (docs/metrics.md).

``ReplicaMetrics`` is what this replica did (ingest, the proxy, notifications, the writer's
queue, who it is): ingest, the proxy and the notifier count on it directly, each replica exports
its own, and ``sum()`` over replicas is right. ``LeaderCounters`` is what the leader counts as
it works (checks and scheduled runs): exported only while this replica leads, beside the leader
metrics read from the store (``daemon.metrics.loop``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from daemon import __version__

API, PROXY = "api", "proxy"
SOURCES = (API, PROXY)
INGEST_OUTCOMES = ("received", "new", "duplicate", "sampled_out")
"""What ``ReplicaMetrics.ingested`` counts: a batch's samples received, newly stored, skipped as
re-sent, and left out by the sampling rate."""
# Label values counted from the start (as 0) for every configured deployment: a counter that
# exists before its first event lets ``increase()`` see that event.
REJECT_REASONS = ("invalid", "too_large", "malformed", "queue_full")
DROP_REASONS = ("queue_full", "error", "invalid", "unreadable", "store_error")
WARM_SKIP_REASONS = ("queue_full",)
"""Why ingest handed a sample the next check will likely draw to no background embedder."""
STATUS_CLASSES = ("2xx", "4xx", "5xx")
UPSTREAM_ERRORS = ("timeout", "connect", "http_4xx", "http_5xx")
PROXY_REFUSALS: Final[Mapping[int, str]] = {
    401: "unauthorized",
    400: "malformed",
    413: "too_large",
    503: "no_upstream_key",
}
"""Why driftd answered a proxied call itself, by the status it answered with."""
PROXY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds: a proxied call adds milliseconds, an upstream completion takes up to minutes."""
CHECK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""A check is a fraction of a second on a small window and minutes at its row caps."""
RUN_STATUSES = ("ran", "rerun", "claimed_elsewhere", "missed", "error")


class QueueGauge(Protocol):
    """The writer, as far as its queue goes (``daemon.ingest.writer.Writer``)."""

    @property
    def depth(self) -> int: ...


class ReplicaMetrics:
    """The replica metrics of docs/metrics.md on ``registry`` (a new one if none is given);
    thread-safe, as prometheus_client's metrics are.

    The methods are the events ingest, the proxy and the notifier report; ``bind`` connects the
    gauges read at scrape time and gives every configured deployment its zeros.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, version: str = __version__
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._served: dict[tuple[str, int], tuple[Counter, Counter, Histogram]] = {}
        on = self.registry
        self.build_info = Gauge(
            "driftd_build_info",
            "The running driftd version (value 1).",
            ["version"],
            registry=on,
        )
        self.build_info.labels(version).set(1)
        self.leader = Gauge(
            "driftd_leader", "1 while this replica holds the leader lease, else 0.", registry=on
        )
        by_source = ["deployment", "source"]
        self.samples_received = Counter(
            "driftd_samples_received", "Samples received.", by_source, registry=on
        )
        self.samples_stored = Counter(
            "driftd_samples_stored", "Samples committed to the store.", by_source, registry=on
        )
        self.samples_duplicate = Counter(
            "driftd_samples_duplicate",
            "Samples skipped as re-sent (their request_id was seen).",
            ["deployment"],
            registry=on,
        )
        self.samples_sampled_out = Counter(
            "driftd_samples_sampled_out",
            "Samples not kept by the sampling rate.",
            by_source,
            registry=on,
        )
        self.samples_redacted = Counter(
            "driftd_samples_redacted",
            "PII redactions by kind.",
            ["deployment", "kind"],
            registry=on,
        )
        self.samples_rejected = Counter(
            "driftd_samples_rejected",
            "Ingest requests refused, by reason (invalid, too_large, malformed, queue_full).",
            ["deployment", "reason"],
            registry=on,
        )
        self.samples_dropped = Counter(
            "driftd_samples_dropped",
            "Proxy samples dropped; the user's request still succeeded.",
            ["deployment", "reason"],
            registry=on,
        )
        self.proxy_requests = Counter(
            "driftd_proxy_requests",
            "Proxied requests by HTTP status class (2xx, 4xx, 5xx).",
            ["deployment", "status"],
            registry=on,
        )
        self.proxy_upstream_errors = Counter(
            "driftd_proxy_upstream_errors",
            "Upstream failures (timeout, connect, http_4xx, http_5xx).",
            ["deployment", "reason"],
            registry=on,
        )
        self.proxy_refused = Counter(
            "driftd_proxy_refused",
            "Proxied calls driftd answered itself, nothing sent upstream or stored "
            "(unauthorized, malformed, too_large, no_upstream_key).",
            ["deployment", "reason"],
            registry=on,
        )
        self.proxy_request_duration = Histogram(
            "driftd_proxy_request_duration_seconds",
            "Time from a proxied request's arrival to its last byte sent.",
            ["deployment"],
            buckets=PROXY_BUCKETS,
            registry=on,
        )
        self.queue_depth = Gauge(
            "driftd_ingest_queue_depth", "Batches waiting for the store writer.", registry=on
        )
        self.queue_capacity = Gauge(
            "driftd_ingest_queue_capacity",
            "The writer queue's bound; at depth = capacity ingest answers 429.",
            registry=on,
        )
        self.embeddings_skipped = Counter(
            "driftd_embeddings_skipped",
            "Samples a check will likely draw that the background embedder of warm checks was "
            "not handed (queue_full); the check or a later sweep embeds them.",
            ["deployment", "reason"],
            registry=on,
        )
        self._warmed: Callable[[], Mapping[str, int]] = dict
        self.registry.register(_WarmedCollector(lambda: self._warmed()))
        self.notifications = Counter(
            "driftd_notifications",
            "Notifications by channel (webhook, slack, alertmanager) and outcome (sent, failed).",
            ["kind", "status"],
            registry=on,
        )

    def bind(
        self,
        *,
        deployments: Iterable[str],
        is_leader: Callable[[], bool],
        writer: QueueGauge | None,
        queue_capacity: int,
    ) -> None:
        """Read ``driftd_leader`` and the queue's depth at each scrape, and export a 0 for every
        known label value of each configured deployment."""
        self.leader.set_function(lambda: 1.0 if is_leader() else 0.0)
        if writer is not None:
            queue: QueueGauge = writer
            self.queue_depth.set_function(lambda: queue.depth)
        self.queue_capacity.set(queue_capacity)
        for deployment in deployments:
            for source in SOURCES:
                self.samples_received.labels(deployment, source)
                self.samples_stored.labels(deployment, source)
                self.samples_sampled_out.labels(deployment, source)
            self.samples_duplicate.labels(deployment)
            for reason in REJECT_REASONS:
                self.samples_rejected.labels(deployment, reason)
            for reason in DROP_REASONS:
                self.samples_dropped.labels(deployment, reason)
            for status in STATUS_CLASSES:
                self.proxy_requests.labels(deployment, status)
            for reason in UPSTREAM_ERRORS:
                self.proxy_upstream_errors.labels(deployment, reason)
            for reason in PROXY_REFUSALS.values():
                self.proxy_refused.labels(deployment, reason)
            self.proxy_request_duration.labels(deployment)
            for reason in WARM_SKIP_REASONS:
                self.embeddings_skipped.labels(deployment, reason)

    # Ingest through the API.

    def ingested(self, deployment: str, outcome: str, n: int = 1) -> None:
        """``n`` samples of a batch sent to the API came to ``outcome`` (``INGEST_OUTCOMES``)."""
        if outcome not in INGEST_OUTCOMES:
            raise ValueError(f"ingest outcome {outcome!r} is not one of {INGEST_OUTCOMES}")
        if not n:
            return
        if outcome == "duplicate":
            self.samples_duplicate.labels(deployment).inc(n)
            return
        by_source = {
            "received": self.samples_received,
            "new": self.samples_stored,
            "sampled_out": self.samples_sampled_out,
        }[outcome]
        by_source.labels(deployment, API).inc(n)

    def reject(self, deployment: str, reason: str, n: int = 1) -> None:
        """An ingest request was refused (one per request, whatever its number of samples)."""
        self.samples_rejected.labels(deployment, reason).inc(n)

    def add_redacted(self, deployment: str, counts: Mapping[str, int]) -> None:
        """PII redactions, by kind, in samples or feedback of ``deployment`` (API or proxy)."""
        for kind, n in counts.items():
            if n:
                self.samples_redacted.labels(deployment, kind).inc(n)

    # The proxy.

    def served(self, deployment: str, status: int, seconds: float) -> None:
        """A proxied call was answered with ``status`` after ``seconds``: a sample received."""
        # The children are looked up once per label set: ``labels`` takes a lock and checks
        # its arguments each time, which on the proxy's hot path costs more than counting.
        key = (deployment, status)
        children = self._served.get(key)
        if children is None:
            children = self._served[key] = (
                self.proxy_requests.labels(deployment, status_class(status)),
                self.samples_received.labels(deployment, PROXY),
                self.proxy_request_duration.labels(deployment),
            )
        children[0].inc()
        children[1].inc()
        children[2].observe(seconds)

    def upstream_error(self, deployment: str, reason: str) -> None:
        """The upstream failed a call: ``timeout``, ``connect`` (no answer, or one broken off)
        or ``http_4xx``/``http_5xx`` (it answered with an error status)."""
        self.proxy_upstream_errors.labels(deployment, reason).inc()

    def refuse(self, deployment: str, reason: str) -> None:
        """A call driftd answered itself (``PROXY_REFUSALS``): nothing went upstream or was
        stored."""
        self.proxy_refused.labels(deployment, reason).inc()

    def drop(self, deployment: str, reason: str, n: int = 1) -> None:
        """``n`` proxy samples were not stored (``DROP_REASONS``); their calls succeeded."""
        self.samples_dropped.labels(deployment, reason).inc(n)

    def stored(self, deployment: str, n: int) -> None:
        """The writer committed ``n`` new proxy samples."""
        self.samples_stored.labels(deployment, PROXY).inc(n)

    def prepared(self, deployment: str, sampled_out: int, redacted: Mapping[str, int]) -> None:
        """A batch of proxy samples was prepared: some left out by sampling, some redacted."""
        self.samples_sampled_out.labels(deployment, PROXY).inc(sampled_out)
        self.add_redacted(deployment, redacted)

    def bind_warmed(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Read ``driftd_embeddings_warmed_total`` from ``counts`` at each scrape: embeddings
        the background embedder computed, by deployment (it counts in another process)."""
        self._warmed = counts

    def skip_embedding(self, deployment: str, reason: str, n: int) -> None:
        """``n`` samples were not handed to the background embedder (``WARM_SKIP_REASONS``)."""
        self.embeddings_skipped.labels(deployment, reason).inc(n)

    # Notifications.

    def notified(self, kind: str, outcome: str) -> None:
        """One delivery attempt on a channel of ``kind`` came to ``outcome`` (sent, retried,
        failed)."""
        self.notifications.labels(kind, outcome).inc()


class LeaderCounters:
    """Observed where a replica runs a check (``Actions.check``) and a scheduled tick
    (``Scheduler``, ``Spread``); thread-safe, as prometheus_client's metrics are.

    These live in the process (a check's duration is known only where it ran), unlike the
    leader's metrics, which are read from the store. Every replica runs checks, so the loop
    collector yields these on every replica, leading or not: summed over the replicas (the
    scrape's ``instance``), they count the cluster's checks and claims once each.
    """

    def __init__(self) -> None:
        self.check_duration = Histogram(
            "driftd_check_duration_seconds",
            "Duration of checks run by this replica.",
            ["deployment"],
            buckets=CHECK_BUCKETS,
            registry=None,
        )
        self.checks = Counter(
            "driftd_checks_total",
            "Checks run by this replica, by status (ok, drift, insufficient_data, failed).",
            ["deployment", "status"],
            registry=None,
        )
        self.scheduler_runs = Counter(
            "driftd_scheduler_runs_total",
            "Scheduled runs by job kind and outcome "
            "(ran, rerun, claimed_elsewhere, missed, error).",
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


class _WarmedCollector:
    """``driftd_embeddings_warmed_total``, read from the check worker's shared counts."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for deployment, n in sorted(self._counts().items()):
            family.add_metric([deployment], float(n))
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "driftd_embeddings_warmed",
            "Embeddings the background embedder of warm checks computed and cached before a "
            "check asked for them.",
            labels=["deployment"],
        )


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx`` (or ``1xx``/``3xx``): bounded, unlike the status itself."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"
