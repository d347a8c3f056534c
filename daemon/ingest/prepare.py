"""From a request body to the rows the writer stores, in this process or in worker processes.

Validation, redaction, descriptors and row encoding are pure CPU work of a few tens of
microseconds per sample; in one Python process they compete for one interpreter lock with the
HTTP server and the writer. Worker processes do that work in parallel: the API hands them the
raw body and gets back plain rows, so only bytes and tuples cross the process boundary.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from daemon.config.models import Deployment
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SAMPLE_BATCH, BodyError, Problem, parse_body, problems_of
from daemon.store.repository import RowEncoder, SampleRows

log = logging.getLogger("driftd.ingest")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one request's batch: rows for the writer, or why it was refused."""

    status: int
    detail: Any = None
    reason: str | None = None  # why it was refused, for the metrics: invalid, too_large, …
    received: int = 0
    rows: SampleRows | None = None
    sampled_out: int = 0
    redacted: Counter[str] = field(default_factory=Counter)


class Preparer:
    """Checks, samples, redacts, describes and encodes the batches of every deployment."""

    def __init__(
        self,
        deployments: Sequence[Deployment],
        deployment_ids: Mapping[str, int],
        dialect: str,
        max_batch: int,
    ) -> None:
        self.pipelines = {d.name: DeploymentPipeline(d) for d in deployments}
        self.ids = dict(deployment_ids)
        self.encoder = RowEncoder(dialect)
        self.max_batch = max_batch

    def samples(self, deployment: str, body: bytes, now: datetime) -> Outcome:
        pipeline = self.pipelines[deployment]
        try:
            batch = parse_body(body, SAMPLE_BATCH)
        except BodyError as exc:
            return Outcome(400, str(exc), "malformed")
        except ValidationError as exc:
            return invalid(problems_of(exc, "samples"), count_items(body, "samples"))
        samples = batch.samples
        if len(samples) > self.max_batch:
            detail = f"{len(samples)} samples in one batch; at most {self.max_batch}"
            return Outcome(413, detail, "too_large")
        problems = pipeline.check(samples)
        if problems:
            return invalid(problems, len(samples))
        prepared = pipeline.prepare(samples, now)
        rows = self.encoder.encode(deployment, self.ids[deployment], prepared.samples, now)
        return Outcome(
            200,
            received=len(samples),
            rows=rows,
            sampled_out=len(prepared.sampled_out),
            redacted=prepared.redacted,
        )


def invalid(problems: list[Problem], total: int, items: str = "samples") -> Outcome:
    """The 422 for a batch with ``problems``: by item index, and by field for the body itself
    (index None: not a JSON object with an ``items`` list, or a key beside it)."""
    parts = []
    if any(p.index is None for p in problems):
        parts.append(
            f"the body must be a JSON object with a {items!r} list and nothing else, "
            f'like {{"{items}": [{{...}}, ...]}}'
        )
    bad = len({p.index for p in problems if p.index is not None})
    if bad:
        parts.append(f"{bad} of {total} items are invalid")
    detail = {
        "message": f"{'; '.join(parts)}; nothing was stored",
        "problems": [p.model_dump() for p in problems],
    }
    return Outcome(422, detail, "invalid")


def count_items(body: bytes, items: str) -> int:
    """How many items an invalid body held, for the message (0 when it is not a list)."""
    try:
        value = json.loads(body)
    except ValueError:
        return 0
    listed = value.get(items) if isinstance(value, dict) else None
    return len(listed) if isinstance(listed, list) else 0


def auto_workers() -> int:
    """One worker per core this process may run on, at most four: the server process mostly
    waits (on the network and on the database, outside the interpreter lock), so it needs no
    core of its own. A replica pinned to one core (taskset, a cpuset) gets one worker."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


_worker: Preparer | None = None
_ORPHAN_POLL_SECONDS = 1.0
_GC_YOUNG = 20_000  # allocations between young-generation collections (CPython's default: 700)


def quiet_collector() -> None:
    """Keep what the process has built so far out of the garbage collector's way, and collect
    the young generation less often: ingest allocates many short-lived objects per sample, and
    this took about a fifth off the cost of preparing one here."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])


def _start_worker(
    deployments: Sequence[Deployment],
    ids: Mapping[str, int],
    dialect: str,
    max_batch: int,
    parent: int,
) -> None:
    global _worker
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # ``parent`` comes from the parent itself: a worker that boots after its parent was killed
    # must not take its new parent (init) for the server and wait forever.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker = Preparer(deployments, ids, dialect, max_batch)
    quiet_collector()


def _exit_with_parent(parent: int) -> None:
    """A server killed outright (SIGKILL, the OOM killer) cannot stop its workers: they notice
    they were orphaned and exit, instead of holding memory forever."""
    while os.getppid() == parent:
        time.sleep(_ORPHAN_POLL_SECONDS)
    os._exit(0)


def _in_worker(deployment: str, body: bytes, now: datetime) -> Outcome:
    assert _worker is not None, "worker started without its initializer"
    return _worker.samples(deployment, body, now)


def _ready() -> bool:
    return _worker is not None


class PreparerPool:
    """``Preparer`` in ``workers`` processes, or in this one when ``workers`` is 0."""

    def __init__(
        self,
        workers: int,
        deployments: Sequence[Deployment],
        deployment_ids: Mapping[str, int],
        dialect: str,
        max_batch: int,
    ) -> None:
        self.workers = workers
        self._args = (tuple(deployments), dict(deployment_ids), dialect, max_batch)
        self._local = Preparer(*self._args) if workers == 0 else None
        self._pool: ProcessPoolExecutor | None = None
        if workers:
            self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            # spawn, not fork: the parent already runs threads (the writer) and holds
            # database connections that a forked child must not share.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(*self._args, os.getpid()),
        )
        # Start every worker now, so that start-up problems show at start and the first
        # requests do not wait for interpreters to boot.
        for future in [pool.submit(_ready) for _ in range(self.workers)]:
            future.result(timeout=120)
        return pool

    async def samples(self, deployment: str, body: bytes, now: datetime) -> Outcome:
        if self._local is not None:
            return self._local.samples(deployment, body, now)
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _in_worker, deployment, body, now)
        except BrokenProcessPool:
            log.error("an ingest worker died; starting a new pool")
            # In this thread, not a helper one: the workers outlive the thread that starts them.
            self._pool = self._new_pool()
            return Outcome(503, "an ingest worker died; retry the batch", "worker_died")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
