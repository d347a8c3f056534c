"""Checks on every replica: each claims a due check tick only while one of its check workers is
free, so the ticks spread over the replicas by how much each can take.

The rule, as every replica applies it:

1. When a check tick comes due, every replica's clock offers it to its own ``Spread``, which
   queues it; nothing is claimed yet.
2. A replica has one slot per check worker (``scheduling.check_workers``). A free slot takes the
   earliest queued tick (ties in an order of its own: a hash of the replica and the deployment,
   so that two replicas walk a burst of ticks from different ends instead of racing for the same
   one) and claims it (``Store.claim_run``). A busy replica claims nothing: its queued ticks stay
   unclaimed for the replicas with free workers.
3. Losing a claim means another replica runs that tick; the slot then drops from its queue every
   tick that is claimed already (one query), so conflicts stay few however long the queue is.
4. A queued tick still unclaimed when its grace (``grace_for``: the interval, at most ten
   minutes) has passed is missed, and counted so (``driftd_scheduler_runs_total{status="missed"}``)
   by each replica that dropped it. Until then every replica keeps it queued: whichever frees a
   worker first runs it, so a tick that no replica could take at once still runs — the leader is
   no different from the others here.
5. While a claimed check runs, its replica renews the claim's heartbeat every
   ``scheduling.job_heartbeat``; the claim is marked finished when the check is recorded. A claim
   left unfinished with a heartbeat older than ``scheduling.job_stale_after`` lost its replica
   (killed, out of memory): a free slot of any replica adopts it (one guarded UPDATE, so exactly
   one replica does) and runs the tick again — unless its check was recorded before the replica
   died, in which case the claim is only marked finished. A tick whose replicas died
   ``MAX_ATTEMPTS`` times is given up (logged, counted as an error), like a job out of attempts.

What happens after a check (the watch that rolls back a regressing version, the policy that may
create a re-tuning job) is not done here but by the leader, once per finished check
(``Actions.follow_up_checks``): those must be single.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from daemon.store import Store
from daemon.store.claims import (
    adopt_claim,
    beat_claims,
    check_recorded,
    claimed_among,
    finish_claim,
    stale_claims,
)

if TYPE_CHECKING:
    from daemon.metrics import LeaderCounters
    from daemon.scheduler.scheduler import Tick

log = logging.getLogger("driftd.scheduler")

CHECK = "check"
MAX_ATTEMPTS = 3
NOT_LEADING = 0
"""The epoch stored with a claim taken by a replica that does not lead (epochs start at 1)."""


class Spread:
    """The check ticks this replica may still run, and ``slots`` threads that claim and run
    them (see the module's rule)."""

    def __init__(
        self,
        store: Store,
        owner: str,
        slots: int,
        work: Callable[[Tick], None],
        *,
        grace: Callable[[Tick], timedelta],
        heartbeat: timedelta,
        stale_after: timedelta,
        epoch: Callable[[], int | None],
        metrics: LeaderCounters | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if stale_after <= heartbeat:
            raise ValueError(
                f"stale_after ({stale_after}) must be longer than heartbeat ({heartbeat})"
            )
        self.store = store
        self.owner = owner
        self.slots = slots
        self._work = work
        self._grace = grace
        self._heartbeat = heartbeat
        self._stale_after = stale_after
        self._epoch = epoch
        self._metrics = metrics
        self._queue: list[tuple[datetime, str, Tick]] = []
        self._queued: set[tuple[str, datetime]] = set()
        self._changed = threading.Condition()
        self._running = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_adoption = 0.0

    def start(self) -> None:
        for number in range(self.slots):
            thread = threading.Thread(
                target=self._slot, name=f"driftd-check-slot-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._beat, name="driftd-check-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)

    def offer(self, tick: Tick) -> None:
        """Queue a due check tick for a free slot of this replica (or another's)."""
        key = (tick.deployment, tick.scheduled_for)
        with self._changed:
            if self._stopping.is_set() or key in self._queued:
                return
            self._queued.add(key)
            heapq.heappush(self._queue, (tick.scheduled_for, self._rank(tick.deployment), tick))
            self._changed.notify()

    def queued(self) -> int:
        """Ticks waiting for a slot of this replica."""
        with self._changed:
            return len(self._queue)

    def running(self) -> int:
        """Claimed checks under way on this replica."""
        with self._changed:
            return self._running

    def stop(self, grace: timedelta) -> None:
        """Take no new tick, wait up to ``grace`` for the running checks."""
        with self._changed:
            self._stopping.set()
            self._queue.clear()
            self._queued.clear()
            self._changed.notify_all()
        deadline = datetime.now(UTC) + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, (deadline - datetime.now(UTC)).total_seconds()))

    def _rank(self, deployment: str) -> str:
        return hashlib.blake2b(f"{self.owner}/{deployment}".encode(), digest_size=8).hexdigest()

    def _next(self) -> Tick | None:
        """The next tick for a free slot; None after a wait with nothing queued."""
        poll = self._heartbeat.total_seconds()
        with self._changed:
            if not self._queue and not self._stopping.is_set():
                self._changed.wait(timeout=poll)
            if not self._queue or self._stopping.is_set():
                return None
            _, _, tick = heapq.heappop(self._queue)
            self._queued.discard((tick.deployment, tick.scheduled_for))
            self._running += 1  # the slot is taken from here, before the claim
            return tick

    def _slot(self) -> None:
        while not self._stopping.is_set():
            try:
                # A free slot looks for a dead replica's check first (at most once per
                # heartbeat per replica): that tick is older than any queued one.
                self._adopt()
                tick = self._next()
                if tick is None:
                    continue
                try:
                    self._take(tick)
                finally:
                    with self._changed:
                        self._running -= 1
            except Exception:
                # A store that does not answer must not end the slot: it retries next tick.
                log.exception("a check slot failed; it carries on")
                self._stopping.wait(self._heartbeat.total_seconds())

    def _take(self, tick: Tick) -> None:
        late = datetime.now(UTC) - tick.scheduled_for
        if late > self._grace(tick):
            log.warning(
                "check tick missed: no replica had a free check worker within its grace",
                extra={"deployment": tick.deployment, "scheduled_for": str(tick.scheduled_for)},
            )
            self._count("missed")
            return
        epoch = self._epoch()
        claimed = self.store.claim_run(
            tick.deployment, CHECK, tick.scheduled_for, self.owner, epoch or NOT_LEADING
        )
        if not claimed:
            self._count("claimed_elsewhere")
            self._drop_claimed()
            return
        self._run(tick, "ran")

    def _run(self, tick: Tick, status: str) -> None:
        try:
            self._work(tick)
            self._count(status)
        except Exception:
            self._count("error")
            log.exception("scheduled check failed", extra={"deployment": tick.deployment})
        if not finish_claim(self.store, tick.deployment, CHECK, tick.scheduled_for, self.owner):
            log.warning(
                "a check outlived its claim (its heartbeat went stale and another replica "
                "adopted it)",
                extra={"deployment": tick.deployment, "scheduled_for": str(tick.scheduled_for)},
            )

    def _drop_claimed(self) -> None:
        with self._changed:
            waiting = set(self._queued)
        if not waiting:
            return
        taken = claimed_among(self.store, CHECK, waiting)
        if not taken:
            return
        with self._changed:
            self._queue = [entry for entry in self._queue if _key(entry[2]) not in taken]
            heapq.heapify(self._queue)
            self._queued -= taken

    def _adopt(self) -> None:
        """With a free slot: re-run a check whose replica died."""
        now = datetime.now(UTC)
        with self._changed:
            if now.timestamp() - self._last_adoption < self._heartbeat.total_seconds():
                return
            self._last_adoption = now.timestamp()
        stale_before = now - self._stale_after
        for claim in stale_claims(self.store, CHECK, stale_before, limit=1):
            if not adopt_claim(self.store, claim, self.owner, stale_before):
                continue  # its replica beat again, or another replica adopted it first
            from daemon.scheduler.scheduler import Tick

            tick = Tick(claim.deployment, CHECK, claim.scheduled_for)
            where = {
                "deployment": claim.deployment,
                "scheduled_for": str(claim.scheduled_for),
                "previous_owner": claim.owner,
                "attempt": claim.attempt + 1,
            }
            if check_recorded(self.store, claim.deployment, claim.scheduled_for):
                log.info("adopted a check recorded before its replica died", extra=where)
                finish_claim(self.store, claim.deployment, CHECK, claim.scheduled_for, self.owner)
                continue
            if claim.attempt >= MAX_ATTEMPTS:
                log.error(
                    f"a check tick whose replicas died {claim.attempt} times is given up",
                    extra=where,
                )
                self._count("error")
                finish_claim(self.store, claim.deployment, CHECK, claim.scheduled_for, self.owner)
                continue
            log.warning("re-running a check whose replica died", extra=where)
            with self._changed:
                self._running += 1
            try:
                self._run(tick, "rerun")
            finally:
                with self._changed:
                    self._running -= 1

    def _beat(self) -> None:
        while not self._stopping.wait(self._heartbeat.total_seconds()):
            if self.running() == 0:
                continue
            try:
                beat_claims(self.store, self.owner)
            except Exception:
                log.exception("could not renew the heartbeat of running checks")

    def _count(self, status: str) -> None:
        if self._metrics is not None:
            self._metrics.scheduler_run(CHECK, status)


def _key(tick: Tick) -> tuple[str, datetime]:
    return (tick.deployment, tick.scheduled_for)
