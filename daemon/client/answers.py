"""Reading driftd's answers to a batch: the wait a 429 asks for, a refusal's detail, the counts
of an accepted batch."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import httpx

# The longest wait a 429's Retry-After can impose; a larger value is taken as this one.
RETRY_AFTER_CAP: Final = 120.0
_DETAIL_CHARS: Final = 500


def retry_after(response: httpx.Response) -> float | None:
    """The wait a 429 asks for, in seconds, or None if it names none that can be read."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def detail_of(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    text = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "…"


def count_in(value: object) -> int:
    """A count from the server's answer: a number, or the length of a list of ids."""
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0
