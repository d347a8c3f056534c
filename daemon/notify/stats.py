"""Counts of delivery outcomes, read by the metrics endpoint as ``driftd_notifications_total``."""

from __future__ import annotations

import threading
from collections import Counter
from enum import StrEnum


class Outcome(StrEnum):
    """What one delivery attempt came to."""

    sent = "sent"
    # Failed, and will be tried again after a backoff.
    retried = "retried"
    # Given up: a 4xx answer, or the last attempt failed.
    failed = "failed"


class NotifierStats:
    """A thread-safe counter of delivery outcomes by (channel kind, outcome).

    The sender thread counts, the scrape reads: a replica counts what it delivered itself, so
    ``sum()`` over replicas is right.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def count(self, kind: str, outcome: Outcome | str) -> None:
        key = (kind, Outcome(outcome).value)
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """Every (kind, status) counted so far and its count."""
        with self._lock:
            return dict(self._counts)
