"""How a delivery attempt came out, as counted in ``driftd_notifications_total``."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What one delivery attempt came to."""

    sent = "sent"
    # Failed, and will be tried again after a backoff.
    retried = "retried"
    # Given up: a 4xx answer, or the last attempt failed.
    failed = "failed"
