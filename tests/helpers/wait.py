"""Waiting for something a test can observe, instead of sleeping and hoping it happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.05
) -> T:
    """Call ``predicate`` until it returns something true, and return that; ``AssertionError``
    naming ``what`` if it has not within ``timeout`` seconds (it is asked once more at the
    deadline, so a slow poll never fails what was already done)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)
