"""Finished calls to stored samples, in a thread of their own and in batches.

The request path only appends the finished call to a bounded deque (no lock, no thread hop, no
wake-up per call). The recorder thread wakes when there is work, lets ``linger`` pass so that
calls arriving together are handled together, and then validates, samples, redacts, describes
and encodes them per deployment and hands one batch per deployment to the writer: under load
that is one commit for many calls instead of one per call. When the deque or the writer's queue
is full the samples are dropped and counted; the user's request has already been answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime

from pydantic import ValidationError

from daemon.config.models import Deployment
from daemon.errors import QueueFull, StoreError
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics
from daemon.proxy.call import Call, sample_of, where
from daemon.store import InsertResult
from daemon.store.repository import RowEncoder

log = logging.getLogger("driftd.proxy")

CAPACITY = 10_000
"""Finished calls that may wait for the recorder before new ones are dropped."""
LINGER = 0.02
"""Seconds the recorder lets pass after waking, to take the calls that follow in one batch."""


class ProxyRecorder:
    """Turns finished calls into samples and hands them to the writer, never waiting for it.

    ``start`` before the first call, ``stop`` after the last (it records what is still
    waiting, then returns; the writer must still be running).
    """

    def __init__(
        self,
        deployments: Sequence[Deployment],
        writer: Writer,
        stats: ReplicaMetrics,
        *,
        capacity: int = CAPACITY,
        linger: float = LINGER,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.pipelines = {d.name: DeploymentPipeline(d) for d in deployments}
        self.writer = writer
        self.stats = stats
        self.capacity = capacity
        self.linger = linger
        store = writer.store
        self.encoder = RowEncoder(store.engine.dialect.name)
        ids = store.deployment_ids()
        missing = sorted(set(self.pipelines) - set(ids))
        if missing:
            raise StoreError(
                f"deployments {missing} are configured but not registered in the store; "
                "start the proxy after the daemon has registered them"
            )
        self.ids = {name: ids[name] for name in self.pipelines}
        self._pending: deque[Call] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="driftd-proxy-recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def record(self, call: Call) -> None:
        """Take a finished call; called on the event loop, so it only appends. Never raises."""
        if len(self._pending) >= self.capacity or self._stopping:
            self.stats.drop(call.deployment, "queue_full")
            return
        self._pending.append(call)
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._stopping:
                time.sleep(self.linger)
            self._wake.clear()
            self._drain()
            if self._stopping:
                self._drain()
                return

    def _drain(self) -> None:
        calls: dict[str, list[Call]] = defaultdict(list)
        while self._pending:
            call = self._pending.popleft()
            calls[call.deployment].append(call)
        for deployment, batch in calls.items():
            try:
                self._record(deployment, batch)
            except QueueFull:
                self.stats.drop(deployment, "queue_full", len(batch))
            except Exception:
                log.exception(
                    "proxied calls could not be recorded",
                    extra={"deployment": deployment, "calls": len(batch)},
                )
                self.stats.drop(deployment, "error", len(batch))

    def _record(self, deployment: str, calls: list[Call]) -> None:
        pipeline = self.pipelines[deployment]
        samples = [s for s in (self._sample(call, pipeline) for call in calls) if s is not None]
        if not samples:
            return
        prepared = pipeline.prepare(samples, datetime.now(UTC))
        self.stats.prepared(deployment, len(prepared.sampled_out), prepared.redacted)
        if not prepared.samples:
            return
        rows = self.encoder.encode(deployment, self.ids[deployment], prepared.samples)
        done = self.writer.submit(rows)
        done.add_done_callback(lambda future: self._stored(deployment, len(rows.rows), future))

    def _sample(self, call: Call, pipeline: DeploymentPipeline) -> SampleIn | None:
        """The call's sample, or None (counted) when it makes no valid one."""
        try:
            sample = sample_of(call, pipeline)
        except (ValidationError, ValueError) as exc:
            log.warning("a proxied call makes no valid sample: %s", exc, extra=where(call))
            self.stats.drop(call.deployment, "invalid")
            return None
        if sample is None:
            self.stats.drop(call.deployment, "unreadable")
            return None
        problems = pipeline.check([sample])
        if problems:
            log.warning("a proxied call makes no valid sample: %s", problems[0].message)
            self.stats.drop(call.deployment, "invalid")
            return None
        return sample

    def _stored(self, deployment: str, rows: int, done: Future[InsertResult]) -> None:
        if done.exception() is not None:
            self.stats.drop(deployment, "store_error", rows)
        else:
            self.stats.stored(deployment, len(done.result().new))
