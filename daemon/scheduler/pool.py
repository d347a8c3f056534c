"""Checks in worker processes: never on the event loop that serves the API, and never forever.

A check is seconds of pandas, scikit-learn and torch. In the daemon's own process it would hold
the interpreter lock against the API and the writer; so it runs in a worker process that imported
the heavy libraries once at start-up (a scheduled check every second must not pay the imports),
opened its own connection to the store, and runs ``Checker.run``. A check that outlives its
timeout has its worker killed and replaced, and is recorded as failed.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from daemon.config import Config
from daemon.errors import CheckTimeout, DriftdError
from daemon.warm import WarmChannel

log = logging.getLogger("driftd.scheduler")

_ORPHAN_POLL_SECONDS = 1.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc (musl, macOS): no arenas to trim
    return libc if hasattr(libc, "malloc_trim") else None


_libc = _glibc()


@dataclass(frozen=True, slots=True)
class CheckDone:
    """What the scheduler needs of a finished check: the stored row's id and its verdict."""

    check_id: int
    status: str
    drifted: tuple[str, ...]
    seconds: float


_checker: object | None = None
_warmer: object | None = None
# Held by a check for its whole run and by the background embedder for each batch it encodes:
# the two share the encoder, and a check never waits for more than one batch.
_ENCODING = threading.Lock()


def _start_worker(config: Config, parent: int, warm: WarmChannel | None = None) -> None:
    global _checker, _warmer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    # ``parent`` comes from the parent itself: a worker that boots after its parent was killed
    # must not take its new parent (init) for the daemon and wait forever.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    from daemon.checks import Checker
    from daemon.store import Store

    storage = config.storage
    store = Store.open(
        storage.url,
        busy_timeout=storage.busy_timeout.total_seconds(),
        synchronous=storage.sqlite_synchronous,
    )
    _checker = Checker(config, store)
    if warm is not None and warm.plans:
        from daemon.warm import Warmer

        _warmer = Warmer(warm, store, _checker.encoder, _ENCODING)
        _warmer.start()
    # The heavy imports now, not in the first scheduled check.
    import monitors.check  # noqa: F401


def _exit_with_parent(parent: int) -> None:
    """A daemon killed outright cannot stop its workers: they notice and exit."""
    while os.getppid() == parent:
        time.sleep(_ORPHAN_POLL_SECONDS)
    os._exit(0)


def _ready() -> int:
    return os.getpid()


def release_free_memory() -> None:
    """Hand the heap a check freed back to the system.

    A check allocates a few hundred MB (the draw's frames, the encoder's activations,
    Evidently's report) and frees it; glibc keeps freed heap in its arenas, so a worker that ran
    one check kept that much resident until its next one. ``malloc_trim`` returns it (about
    200 MB per check worker, measured by ``benchmarks/soak.py``). Elsewhere than glibc: nothing.
    """
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)


def _run_check(deployment: str, now: datetime, scheduled_for: datetime | None) -> CheckDone:
    from daemon.checks import Checker

    assert isinstance(_checker, Checker), "check worker started without its initializer"
    started = time.perf_counter()
    try:
        with _ENCODING:
            outcome = _checker.run(deployment, now=now, scheduled_for=scheduled_for)
    finally:
        release_free_memory()
    drifted = tuple(s.name for s in outcome.result.signals if s.drifted)
    return CheckDone(
        outcome.check_id, outcome.result.status, drifted, time.perf_counter() - started
    )


class CheckPool:
    """``workers`` processes that run checks; ``run`` blocks its calling thread, not the API."""

    def __init__(self, config: Config, workers: int, warm: WarmChannel | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.config = config
        self.workers = workers
        self.warm = warm  # one worker runs the background embedder of warm checks on it
        self._lock = threading.Lock()
        self._booting: list[Future[int]] = []
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.config, os.getpid(), self.warm),
        )
        # Boot every worker now, in the background: the first check then does not wait for the
        # imports, and the daemon's start does not wait for them either.
        self._booting = [pool.submit(_ready) for _ in range(self.workers)]
        return pool

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until every worker has booted (imports done, store opened)."""
        for future in list(self._booting):
            future.result(timeout=timeout)

    def run(
        self,
        deployment: str,
        *,
        now: datetime | None = None,
        scheduled_for: datetime | None = None,
        timeout: timedelta | None = None,
    ) -> CheckDone:
        """Run one check of ``deployment``; ``CheckTimeout`` when it outlives ``timeout``."""
        limit = timeout or self.config.deployment(deployment).monitor.timeout
        when = now or datetime.now(UTC)
        with self._lock:
            pool = self._pool
        future: Future[CheckDone] = pool.submit(_run_check, deployment, when, scheduled_for)
        try:
            return future.result(timeout=limit.total_seconds())
        except FutureTimeout:
            self._replace(pool, f"a check of {deployment} ran over {limit}")
            raise CheckTimeout(
                f"check of deployment {deployment!r} ran longer than its timeout "
                f"({limit.total_seconds():g} s, monitor.timeout) and was stopped"
            ) from None
        except BrokenProcessPool:
            self._replace(pool, "a check worker died")
            raise DriftdError(
                f"the worker running the check of {deployment!r} died (killed or out of memory)"
            ) from None

    def _replace(self, broken: ProcessPoolExecutor, reason: str) -> None:
        """Kill the workers of ``broken`` (a check cannot be interrupted otherwise) and start
        a fresh pool, once, whichever thread notices first."""
        with self._lock:
            if self._pool is not broken:
                return
            log.warning("restarting the check workers", extra={"reason": reason})
            _kill_workers(broken)
            self._pool = self._new_pool()

    def close(self) -> None:
        with self._lock:
            _kill_workers(self._pool)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool`` now, running checks included: its worker processes are killed (the pool
    has no way to interrupt a task), then reaped."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
