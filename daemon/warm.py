"""Warm checks: the samples a check will draw are embedded before it runs, behind ingest.

A check draws, per window, the ``max_rows`` samples with the smallest position
``(draw + seed offset) mod 2**31``; the draw is a hash of the request id and the seed depends on
the deployment and the window's length only, so a sample's position is known when it arrives.
Whether it will be drawn depends on the samples still to come, but one rule is certain: the
window only gains samples until its check, so a sample whose position is above the largest
position of the window's draw *as it stands now* will not be drawn. The background embedder
keeps that bound per deployment (from the store, for the current window and a
``previous_window`` or ``fixed`` reference, both drawn with the same seed) and publishes it,
with a margin for the window sliding on, in shared memory; ingest hands on only the samples
below it. While a window holds fewer than ``max_rows`` samples every sample is drawn.

Two halves, two processes:

- ``WarmFeed``, in the serving process: after each commit the writer thread offers it the new
  rows; it compares their positions with the bound and puts the candidates, in chunks, on a
  bounded queue without waiting. A full queue drops them, counted in
  ``driftd_embeddings_skipped_total{reason="queue_full"}``.
- ``Warmer``, a thread of a check worker (one per replica: the worker that claims the channel):
  it embeds with the check's own encoder (same model, same settings, loaded once for both,
  when the worker starts), using at most a tenth of a core while ingest is busy, never while
  a check of its process runs, and writes the vectors into
  the embedding cache checks read. From time to time, and soon after ingest dropped samples,
  it sweeps each window's draw in the store and embeds what is drawn and still missing: what
  the queue dropped, what arrived before a restart, and the reference window's draw.

Ingest never waits for any of it: the hot path is a comparison per row and a non-blocking put.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.config.models import ReferenceKind, Signal
from daemon.store.rows import (
    DRAW_MODULUS,
    ROW_COLUMNS,
    ROW_REQUEST_ID,
    InsertResult,
    SampleRows,
    seed_offset,
)

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

    from daemon.checks import Encoder
    from daemon.metrics import ReplicaMetrics
    from daemon.store import Store

log = logging.getLogger("driftd.warm")

CHUNK_ROWS = 200
"""Samples per queue item: one pickle per chunk, not per sample."""
MARGIN = 1.25
"""Ingest's bound is the draw's largest position times this: between two sweeps the window
slides on and its draw can reach a little further."""
INGEST_ACTIVE = 1.0
"""Seconds since ingest's last commit during which it counts as busy."""
INGEST_SHARE = 9.0
"""While ingest is busy the embedder pauses this many times as long as each batch took: it
uses at most a tenth of a core, and ingest keeps the rest of the machine."""
_DRAW = ROW_COLUMNS.index("draw")
_INPUT = ROW_COLUMNS.index("input")


@dataclass(frozen=True, slots=True)
class WarmPlan:
    """What the background embedder needs of one deployment: its draw and its windows."""

    slot: int  # index in the channel's shared arrays
    deployment: str
    deployment_id: int
    seed: int
    offset: int  # ``seed_offset(seed)``: positions are ``(draw + offset) % DRAW_MODULUS``
    model: str
    max_rows: int
    window: timedelta
    reference: ReferenceKind
    fixed: tuple[datetime, datetime] | None

    def windows(self, now: datetime) -> list[tuple[datetime, datetime]]:
        """The windows a check at ``now`` draws from the store: the current one, and the
        reference when it is a window of the store too (a data set or a baseline is not)."""
        found = [(now - self.window, now)]
        if self.reference is ReferenceKind.previous_window:
            found.append((now - 2 * self.window, now - self.window))
        elif self.fixed is not None:
            found.append(self.fixed)
        return found


def warm_plans(config: Config, deployment_ids: Mapping[str, int]) -> list[WarmPlan]:
    """The deployments whose checks embed samples and have ``monitor.warm`` on."""
    from daemon.checks import draw_seed

    plans: list[WarmPlan] = []
    for deployment in config.deployments:
        monitor = deployment.monitor
        if Signal.embedding not in deployment.signals or not monitor.warm:
            continue
        if deployment.name not in deployment_ids:  # not in the store yet: nothing to draw
            continue
        seed = draw_seed(deployment.name, monitor.window)
        reference = monitor.reference
        fixed = None
        if reference.kind is ReferenceKind.fixed:
            assert reference.start is not None
            assert reference.end is not None
            fixed = (reference.start, reference.end)
        plans.append(
            WarmPlan(
                slot=len(plans),
                deployment=deployment.name,
                deployment_id=deployment_ids[deployment.name],
                seed=seed,
                offset=seed_offset(seed),
                model=monitor.embedding_model,
                max_rows=monitor.max_rows,
                window=monitor.window,
                reference=reference.kind,
                fixed=fixed,
            )
        )
    return plans


class WarmChannel:
    """What the serving process and the warming worker share: the bounded queue, and per
    deployment the bound ingest filters with, a "samples were dropped" flag and the count of
    embeddings warmed. Made in the serving process, handed to check workers as they spawn."""

    def __init__(self, plans: Sequence[WarmPlan], capacity: int) -> None:
        if capacity < CHUNK_ROWS:
            raise ValueError(f"capacity must be at least {CHUNK_ROWS} samples, got {capacity}")
        context = multiprocessing.get_context("spawn")
        self.plans = tuple(plans)
        self.capacity = capacity
        self.queue: multiprocessing.Queue[tuple[int, list[tuple[str, int, str]]]] = context.Queue(
            maxsize=capacity // CHUNK_ROWS
        )
        n = max(1, len(self.plans))
        self.bounds: Any = context.Array("q", [DRAW_MODULUS] * n, lock=False)
        self.dropped: Any = context.Array("b", [0] * n, lock=False)
        self.warmed: Any = context.Array("q", [0] * n, lock=False)
        self.owner: Synchronized[int] = context.Value("q", 0)
        # ``time.monotonic()`` of ingest's last offer (the clock is system-wide on Linux).
        self.last_offer: Any = context.Value("d", 0.0, lock=False)

    def warmed_counts(self) -> dict[str, int]:
        return {plan.deployment: int(self.warmed[plan.slot]) for plan in self.plans}

    def close(self) -> None:
        self.queue.cancel_join_thread()  # whatever is still queued is not worth waiting for
        self.queue.close()


class WarmFeed:
    """Ingest's half: ``offer`` the rows of each commit; candidates go on the queue."""

    def __init__(self, channel: WarmChannel, metrics: ReplicaMetrics | None = None) -> None:
        self.channel = channel
        self._metrics = metrics
        self._by_id = {plan.deployment_id: plan for plan in channel.plans}

    def offer(self, batches: Sequence[SampleRows], results: Sequence[InsertResult]) -> None:
        """Hand on the newly stored rows of ``batches`` that the next check may draw. Called by
        the writer thread after a commit; never blocks and never raises."""
        try:
            self.channel.last_offer.value = time.monotonic()
            for batch, result in zip(batches, results, strict=True):
                plan = self._by_id.get(batch.deployment_id)
                if plan is not None and result.new:
                    self._offer(plan, batch, result)
        except Exception:  # warming is an optimisation: the commit stands, the check embeds
            log.exception("could not hand samples to the background embedder")

    def _offer(self, plan: WarmPlan, batch: SampleRows, result: InsertResult) -> None:
        channel = self.channel
        bound = channel.bounds[plan.slot]
        offset = plan.offset
        new = set(result.new) if len(result.new) != len(batch.rows) else None
        candidates = [
            (row[ROW_REQUEST_ID], position, row[_INPUT])
            for row in batch.rows
            if (position := (row[_DRAW] + offset) % DRAW_MODULUS) < bound
            and (new is None or row[ROW_REQUEST_ID] in new)
        ]
        for start in range(0, len(candidates), CHUNK_ROWS):
            chunk = candidates[start : start + CHUNK_ROWS]
            try:
                channel.queue.put_nowait((plan.slot, chunk))
            except queue.Full:
                dropped = len(candidates) - start
                channel.dropped[plan.slot] = 1
                if self._metrics is not None:
                    self._metrics.skip_embedding(plan.deployment, "queue_full", dropped)
                return


class Warmer:
    """The worker's half: a thread that embeds what the queue brings and what the sweeps find
    missing, ``batch`` texts at a time, each batch under ``encoding`` (the check's lock)."""

    def __init__(
        self,
        channel: WarmChannel,
        store: Store,
        encoder_for: Callable[[str], Encoder],
        encoding: threading.Lock,
        *,
        batch: int = 256,
        sweep_every: float = 30.0,
        sweep_after_drop: float = 3.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.channel = channel
        self.store = store
        self._encoder_for = encoder_for
        self._encoding = encoding
        self._batch = batch
        self._sweep_every = sweep_every
        self._sweep_after_drop = sweep_after_drop
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="driftd-warm", daemon=True)
        plans = channel.plans
        # Below ``_exact`` a queued sample may be drawn (the draw's largest position, exclusive).
        self._exact = [DRAW_MODULUS] * len(plans)
        self._next_sweep = [0.0] * len(plans)
        self._pending: list[dict[str, tuple[int, str]]] = [{} for _ in plans]
        self._missing: list[dict[str, str]] = [{} for _ in plans]
        # Request ids embedded lately: a sample can reach the queue after a sweep found it
        # missing and it was embedded from there.
        self._done: list[set[str]] = [set() for _ in plans]
        self._resume_at = 0.0  # while ingest is busy, the next batch waits until then

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        if not self._claim():
            return
        # The model now, before traffic comes: loading it takes a core for seconds. Not under
        # the check's lock: a check that needs no new embedding must not wait for it.
        for model in {plan.model for plan in self.channel.plans}:
            try:
                self._encoder_for(model).encode([])
            except Exception:  # the checks will say what is wrong with it
                log.exception("the background embedder could not load its model")
                return
        log.info("background embedder started", extra={"deployments": len(self.channel.plans)})
        while not self._stop.is_set():
            try:
                self.step(block=True)
            except Exception:
                log.exception("the background embedder failed; it goes on after a pause")
                self._stop.wait(5.0)

    def _claim(self) -> bool:
        """One worker per channel warms: the first to claim it, or the next once it died."""
        owner = self.channel.owner
        while not self._stop.is_set():
            with owner.get_lock():
                if owner.value == 0 or not _alive(owner.value):
                    owner.value = os.getpid()
                    return True
            self._stop.wait(5.0)
        return False

    def step(self, *, block: bool = False) -> int:
        """One round: take what is queued, sweep the deployments that are due, embed one batch.
        Returns the number of texts embedded, 0 when there was nothing to do (tests drive it
        by hand)."""
        busy = any(self._pending) or any(self._missing)
        self._drain(block=block and not busy)
        now = time.monotonic()
        for plan in self.channel.plans:
            due = now >= self._next_sweep[plan.slot]
            if self.channel.dropped[plan.slot] and not self._ingest_busy():
                # Samples were dropped: sweep soon, once ingest has calmed down.
                due = due or now >= self._next_sweep[plan.slot] - (
                    self._sweep_every - self._sweep_after_drop
                )
            if due:
                self.channel.dropped[plan.slot] = 0
                self._sweep(plan)
                self._next_sweep[plan.slot] = time.monotonic() + self._sweep_every
        return self._embed_batch()

    def _drain(self, *, block: bool) -> None:
        room = self.channel.capacity - sum(len(p) for p in self._pending)
        timeout = 1.0 if block else None
        while room > 0:
            try:
                if timeout is not None:
                    slot, chunk = self.channel.queue.get(timeout=timeout)
                    timeout = None
                else:
                    slot, chunk = self.channel.queue.get_nowait()
            except queue.Empty:
                return
            exact = self._exact[slot]
            pending = self._pending[slot]
            done = self._done[slot]
            missing = self._missing[slot]
            for request_id, position, text in chunk:
                if position < exact and request_id not in done and request_id not in missing:
                    pending[request_id] = (position, text)
            room -= len(chunk)

    def _sweep(self, plan: WarmPlan) -> None:
        """Read the draws of ``plan``'s windows as they stand: the bound, and what is missing."""
        from daemon.store.warm import unembedded_draw

        encoder = self._encoder_for(plan.model)
        now = self._clock()
        bounds: list[int | None] = []
        missing: dict[str, str] = {}
        for start, end in plan.windows(now):
            draw = unembedded_draw(
                self.store,
                plan.deployment,
                start,
                end,
                max_rows=plan.max_rows,
                seed=plan.seed,
                model=encoder.name,
            )
            bounds.append(draw.bound)
            missing.update((request_id, text) for _, request_id, text in draw.missing)
        if any(b is None for b in bounds):
            exact = DRAW_MODULUS
        else:
            exact = max(b for b in bounds if b is not None) + 1
        self._exact[plan.slot] = exact
        self.channel.bounds[plan.slot] = min(DRAW_MODULUS, int(exact * MARGIN))
        pending = self._pending[plan.slot]
        # The store is the authority on what is drawn and still missing; what was queued and
        # is not drawn any more is not worth embedding.
        for request_id in [r for r, (position, _) in pending.items() if position >= exact]:
            del pending[request_id]
        self._missing[plan.slot] = {r: t for r, t in missing.items() if r not in pending}

    def _embed_batch(self) -> int:
        for plan in self.channel.plans:
            pending = self._pending[plan.slot]
            missing = self._missing[plan.slot]
            if not pending and not missing:
                continue
            texts: dict[str, str] = {}
            # Queued samples first, most certainly drawn first; then what the sweep found.
            for request_id, (_, text) in sorted(pending.items(), key=lambda kv: kv[1][0])[
                : self._batch
            ]:
                texts[request_id] = text
                del pending[request_id]
            while len(texts) < self._batch and missing:
                request_id, text = missing.popitem()
                texts[request_id] = text
            return self._embed(plan, texts)
        return 0

    def _embed(self, plan: WarmPlan, texts: dict[str, str]) -> int:
        import numpy as np

        from daemon.store.warm import store_embeddings_by_request

        encoder = self._encoder_for(plan.model)
        ids = list(texts)
        if self._ingest_busy():
            # Leave ingest the CPU for nine times as long as the last batch took.
            self._stop.wait(max(0.0, self._resume_at - time.monotonic()))
        with self._encoding:
            started = time.monotonic()
            vectors = encoder.encode([texts[r] for r in ids])
            took = time.monotonic() - started
        written = store_embeddings_by_request(
            self.store,
            plan.deployment_id,
            encoder.name,
            {r: vectors[i].astype(np.float32).tobytes() for i, r in enumerate(ids)},
        )
        done = self._done[plan.slot]
        if len(done) > 4 * self.channel.capacity:
            done.clear()
        done.update(ids)
        self.channel.warmed[plan.slot] += written
        self._resume_at = time.monotonic() + INGEST_SHARE * took
        return len(ids)

    def _ingest_busy(self) -> bool:
        return bool(time.monotonic() - self.channel.last_offer.value < INGEST_ACTIVE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
