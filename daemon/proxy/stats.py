"""What the proxy did, counted per deployment for the metrics endpoint."""

from __future__ import annotations

import threading
from collections import Counter


class ProxyStats:
    """Counters of what the proxy did, per deployment, for the metrics endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (deployment, status)
        self.dropped: Counter[tuple[str, str]] = Counter()  # (deployment, reason)
        self.recorded: Counter[str] = Counter()  # samples the writer committed
        self.sampled_out: Counter[str] = Counter()
        self.redacted: Counter[tuple[str, str]] = Counter()  # (deployment, kind)
        self.duration_seconds: dict[str, float] = {}  # total, for a rate of mean latency

    def served(self, deployment: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[deployment, status] += 1
            total = self.duration_seconds.get(deployment, 0.0)
            self.duration_seconds[deployment] = total + seconds

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
