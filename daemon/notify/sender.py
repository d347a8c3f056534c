"""The delivery thread: posts due outbox rows to their channels, retrying with backoff.

It runs beside the scheduler, never in it: a channel that hangs costs this thread one request
timeout per attempt, and neither the chore that writes the outbox nor the API ever waits on it.

Every replica may run a sender. A row is claimed before it is posted by one guarded UPDATE that
moves its ``next_try_at`` past the request's timeout, so only one replica posts it; a replica
that dies mid-request leaves the row to be tried again once the claim runs out (the receiver may
then see it twice: the webhook body's ``id`` lets it tell).

Messages of one incident on one channel go out in order: a row is not due while an earlier row
of the same (channel, deployment, incident) is still pending, so a receiver never sees a resolve
before its firing message, even when the firing one needed retries.

Outcomes: a 2xx answer is ``sent``; a connection error, a timeout, 5xx or 429 is ``retried``
after ``backoff * 2**(attempt - 1)`` (at most ``MAX_BACKOFF``; longer if 429's ``Retry-After``
says so) until ``max_attempts``, then ``failed``; any other answer (4xx, 3xx) is ``failed`` at
once, since sending the same body again cannot fix it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import httpx

from daemon import __version__
from daemon.metrics import ReplicaMetrics
from daemon.notify.channels import Channel
from daemon.notify.stats import Outcome
from daemon.store import Store, outbox
from daemon.store.models import Notification, utcnow

log = logging.getLogger("driftd.notify")

MAX_BACKOFF = timedelta(hours=1)
# How long past the request timeout a claimed row stays with its sender.
CLAIM_MARGIN = timedelta(seconds=30)
PASS_ROWS = 20
MIN_WAIT = 0.05
_ERROR_CHARS = 300


class Sender:
    """Delivers the outbox of ``channels`` (only those: a replica without a channel's URL
    leaves its rows to replicas that have it). ``start`` / ``wake`` / ``stop``."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Channel],
        metrics: ReplicaMetrics,
        *,
        timeout: timedelta,
        max_attempts: int,
        backoff: timedelta,
        idle: timedelta,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.store = store
        self.channels = dict(channels)
        self.metrics = metrics
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.idle = idle
        self._now = now
        self._client = httpx.Client(
            timeout=timeout.total_seconds(),
            follow_redirects=False,
            headers={"User-Agent": f"driftd/{__version__}"},
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Deliver in a daemon thread until ``stop``; does nothing without channels."""
        if self._thread is not None or not self.channels:
            return
        self._thread = threading.Thread(target=self._loop, name="driftd-notify", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due rows now instead of at the next idle timeout."""
        self._wake.set()

    def stop(self, timeout: timedelta) -> None:
        """Stop after the request in flight; waits at most ``timeout`` for it."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout.total_seconds())
            if thread.is_alive():
                log.warning(
                    "notification sender still waiting on a channel at stop; its message is "
                    "sent again after the restart",
                    extra={"timeout_s": timeout.total_seconds()},
                )
                return  # the client is still in use; the process exit closes it
        self._client.close()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                worked = self.deliver_due()
                # Rows another replica claimed a moment ago look due to a clock slightly
                # behind; a short floor keeps that from spinning.
                wait = 0.0 if worked else max(MIN_WAIT, self._until_next_due())
            except Exception:
                log.exception("notification delivery pass failed; trying again later")
                wait = self.idle.total_seconds()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()

    def _until_next_due(self) -> float:
        """Seconds until the next row this sender may post is due, at most ``idle``."""
        due = outbox.next_due(self.store, self.channels)
        idle = self.idle.total_seconds()
        if due is None:
            return idle
        return min(idle, max(0.0, (due - self._now()).total_seconds()))

    def deliver_due(self, limit: int = PASS_ROWS) -> int:
        """One pass: post up to ``limit`` due rows; returns how many were tried."""
        if not self.channels:
            return 0
        due = outbox.due(self.store, self.channels, self._now(), limit)
        tried = 0
        for row in due:
            if self._stopping.is_set():
                break
            if self._claim(row):
                self._deliver(row)
                tried += 1
        return tried

    def _claim(self, row: Notification) -> bool:
        now = self._now()
        return outbox.claim(self.store, row.id, now, now + self.timeout + CLAIM_MARGIN)

    def _deliver(self, row: Notification) -> None:
        channel = self.channels[row.channel]
        retry_after: float | None = None
        try:
            response = self._client.post(channel.url, json=row.payload)
        except Exception as exc:  # any failure to get an answer is worth another try
            error = _scrub(f"{type(exc).__name__}: {exc}", channel.url)
            self._failed(row, error, retryable=True)
            return
        code = response.status_code
        if 200 <= code < 300:
            self._sent(row)
            return
        error = f"HTTP {code}: {_scrub(response.text, channel.url)}"
        retryable = code == 429 or code >= 500
        if code == 429:
            retry_after = _seconds(response.headers.get("Retry-After"))
        self._failed(row, error, retryable=retryable, retry_after=retry_after)

    def _sent(self, row: Notification) -> None:
        outbox.mark_sent(self.store, row.id, row.attempts + 1, self._now())
        self.metrics.notified(row.channel, Outcome.sent)
        log.info(
            "notification sent",
            extra={"channel": row.channel, "event_id": row.event_id, "state": row.state},
        )

    def _failed(
        self, row: Notification, error: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        attempts = row.attempts + 1
        where = {
            "channel": row.channel,
            "event_id": row.event_id,
            "attempt": attempts,
            "max_attempts": self.max_attempts,
            "error": error,
        }
        if retryable and attempts < self.max_attempts:
            delay = min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF)
            if retry_after is not None:
                delay = max(delay, min(timedelta(seconds=retry_after), MAX_BACKOFF))
            outbox.retry_later(self.store, row.id, attempts, error, self._now() + delay)
            self.metrics.notified(row.channel, Outcome.retried)
            log.warning(
                "notification not delivered; retrying",
                extra=where | {"retry_in_s": delay.total_seconds()},
            )
            return
        outbox.mark_failed(self.store, row.id, attempts, error)
        self.metrics.notified(row.channel, Outcome.failed)
        reason = "the channel refused it" if not retryable else "no attempts left"
        log.error(
            f"notification given up ({reason}); check the channel's URL and the receiver",
            extra=where,
        )


def _scrub(text: str, url: str) -> str:
    # A channel's URL is its credential: never let it reach a log or the store.
    return " ".join(text.replace(url, "<channel url>").split())[:_ERROR_CHARS]


def _seconds(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None  # the HTTP-date form is rare enough to fall back to the backoff
    return float(value.strip())
