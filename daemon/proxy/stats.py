"""What the proxy did, counted per deployment for the metrics endpoint."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import Counter
from typing import ClassVar


class ProxyStats:
    """Counters of what the proxy did, per deployment, for the metrics endpoint.

    Request durations are kept as counts per bucket (``BUCKETS``, then +Inf) and a sum: a list
    per deployment, updated under the lock, costs one bisect per request and is exported as
    the ``driftd_proxy_request_duration_seconds`` histogram without a second bookkeeping.
    """

    # Seconds: a proxied call adds milliseconds, an upstream completion takes up to minutes.
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
    UPSTREAM_ERRORS = ("timeout", "connect", "http_4xx", "http_5xx")
    REFUSALS: ClassVar[dict[int, str]] = {
        401: "unauthorized",
        400: "malformed",
        413: "too_large",
        503: "no_upstream_key",
    }
    """Why driftd answered a call itself, by the status it answered with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (deployment, status)
        self.dropped: Counter[tuple[str, str]] = Counter()  # (deployment, reason)
        self.recorded: Counter[str] = Counter()  # samples the writer committed
        self.sampled_out: Counter[str] = Counter()
        self.redacted: Counter[tuple[str, str]] = Counter()  # (deployment, kind)
        self.duration_seconds: dict[str, float] = {}  # total, for a rate of mean latency
        self.duration_buckets: dict[str, list[int]] = {}  # per bucket, not cumulative; +Inf last
        self.upstream_errors: Counter[tuple[str, str]] = Counter()  # (deployment, reason)
        self.refused: Counter[tuple[str, str]] = Counter()  # (deployment, reason)

    def served(self, deployment: str, status: int, seconds: float) -> None:
        bucket = bisect.bisect_left(self.BUCKETS, seconds)  # the first bound >= seconds
        with self._lock:
            self.requests[deployment, status] += 1
            total = self.duration_seconds.get(deployment, 0.0)
            self.duration_seconds[deployment] = total + seconds
            counts = self.duration_buckets.get(deployment)
            if counts is None:
                counts = self.duration_buckets[deployment] = [0] * (len(self.BUCKETS) + 1)
            counts[bucket] += 1

    def upstream_error(self, deployment: str, reason: str) -> None:
        """The upstream failed a call: ``timeout``, ``connect`` (no answer, or one broken off)
        or ``http_4xx``/``http_5xx`` (it answered with an error status)."""
        with self._lock:
            self.upstream_errors[deployment, reason] += 1

    def durations(self) -> dict[str, tuple[list[int], float]]:
        """Per deployment: cumulative counts per bucket (+Inf last) and the sum, copied."""
        with self._lock:
            copied = {
                name: (list(counts), self.duration_seconds.get(name, 0.0))
                for name, counts in self.duration_buckets.items()
            }
        return {name: (list(itertools.accumulate(c)), total) for name, (c, total) in copied.items()}

    def refuse(self, deployment: str, reason: str) -> None:
        """A call driftd answered itself (``REFUSALS``): nothing went upstream or was stored."""
        with self._lock:
            self.refused[deployment, reason] += 1

    def drop(self, deployment: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[deployment, reason] += n

    def stored(self, deployment: str, n: int) -> None:
        with self._lock:
            self.recorded[deployment] += n

    def prepared(self, deployment: str, sampled_out: int, redacted: Counter[str]) -> None:
        with self._lock:
            self.sampled_out[deployment] += sampled_out
            for kind, n in redacted.items():
                self.redacted[deployment, kind] += n
