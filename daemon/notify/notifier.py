"""The notifier as the daemon runs it: a leader chore that fills the outbox, and a sender thread
that empties it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from daemon.config.models import Notifications
from daemon.metrics import ReplicaMetrics
from daemon.notify.channels import enabled_channels
from daemon.notify.incidents import BATCH, GAP_SETTLE, Gaps, Processed, process_events
from daemon.notify.sender import Sender
from daemon.store import Store
from daemon.store.models import utcnow

log = logging.getLogger("driftd.notify")

# Batches of events one chore call works through: a backlog after downtime is caught up in a
# few calls, and one call still ends in bounded time.
MAX_BATCHES = 20


class Notifier:
    """Notifications of one daemon: ``process`` is the leader's chore (audit events → outbox,
    one transaction, no network), ``start`` / ``stop`` run the delivery thread.

    ``environ`` holds the channels' URLs (``notifications.<channel>.url_env``); it is read once,
    here. A channel whose variable is unset or empty is off. Deliveries are counted on
    ``metrics`` (``driftd_notifications_total``; the daemon passes its replica's metrics).
    """

    def __init__(
        self,
        store: Store,
        settings: Notifications,
        environ: Mapping[str, str],
        *,
        metrics: ReplicaMetrics | None = None,
        gap_settle: timedelta = GAP_SETTLE,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.channels = enabled_channels(settings, environ)
        self.metrics = metrics if metrics is not None else ReplicaMetrics()
        self._now = now
        self._gaps = Gaps(gap_settle)
        self.sender = Sender(
            store,
            self.channels,
            self.metrics,
            timeout=settings.timeout,
            max_attempts=settings.max_attempts,
            backoff=settings.backoff,
            idle=settings.poll,
            now=now,
        )

    def process(self, *, max_batches: int = MAX_BATCHES) -> Processed:
        """Turn the audit events written since the last call into incidents and outbox rows,
        a batch per transaction, until caught up or ``max_batches`` were done (the rest waits
        for the next call); wakes the sender when there is something to send."""
        if max_batches < 1:
            raise ValueError(f"max_batches must be at least 1, got {max_batches}")
        events = messages = 0
        for _ in range(max_batches):
            done = process_events(
                self.store,
                self.channels,
                frozenset(self.settings.events),
                driftd_url=self.settings.driftd_url,
                gaps=self._gaps,
                now=self._now,
            )
            events += done.events
            messages += done.messages
            if messages:
                self.sender.wake()
            if done.events < BATCH:
                break
        return Processed(events, messages, done.cursor)

    def deliver(self) -> int:
        """One delivery pass in the caller's thread (the sender thread does this on its own)."""
        return self.sender.deliver_due()

    def start(self) -> None:
        """Start delivering; logs which channels are on."""
        log.info(
            "notification channels",
            extra={"channels": sorted(self.channels) or "none"},
        )
        self.sender.start()

    def stop(self, timeout: timedelta = timedelta(seconds=5)) -> None:
        """Stop delivering, waiting at most ``timeout`` for a request in flight."""
        self.sender.stop(timeout)
