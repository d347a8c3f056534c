"""What the leader's metrics read from the store (``daemon.store.readings``), and how often.

The loop's state (checks, jobs, versions, the audit log) lives in the store, not in a process,
so a new leader exports the same history as the old one and two replicas never disagree.
``CachedReadings`` reuses one set of readings for ``metrics.store_cache`` so that several
Prometheus servers cost one set of queries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from prometheus_client.utils import floatToGoString

from daemon.store import Store
from daemon.store import readings as store_readings
from daemon.store.readings import Readings

JOB_BUCKETS: tuple[float, ...] = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    1200,
    1800,
    3600,
    7200,
    14400,
    28800,
)
"""Upper bounds (seconds) of the job run-time histogram: an evaluation takes seconds, a
fine-tune hours."""


def read(store: Store) -> Readings:
    """Everything the leader exports from the store, job run times in ``JOB_BUCKETS``."""
    return store_readings.read(store, JOB_BUCKETS)


class CachedReadings:
    """``read`` at most once per ``ttl``; concurrent scrapes wait for one read, not run two."""

    def __init__(
        self,
        store: Store,
        ttl: timedelta,
        *,
        reader: Callable[[Store], Readings] = read,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl.total_seconds()
        self._reader = reader
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Readings] | None = None

    def get(self) -> Readings:
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
            readings = self._reader(self.store)
            self._cached = (self._clock(), readings)
            return readings

    def clear(self) -> None:
        """Forget the cached readings (a replica that stops leading must not serve old ones
        when it leads again)."""
        with self._lock:
            self._cached = None


def cumulative(counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus bucket pairs (``le``, cumulative count) for ``JOB_BUCKETS`` plus ``+Inf``."""
    return [(bound, float(n)) for bound, n in zip(le_values(JOB_BUCKETS), counts, strict=True)]


def le_values(bounds: Sequence[float]) -> list[str]:
    """The ``le`` labels of histogram ``bounds`` as prometheus_client writes them, +Inf last."""
    return [*(str(floatToGoString(b)) for b in bounds), "+Inf"]  # type: ignore[no-untyped-call]
