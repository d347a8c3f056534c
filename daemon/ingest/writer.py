"""The writer: one thread that commits what ingest accepted, several batches per transaction.

Requests hand their batch over and wait for its commit: a 2xx is only sent once the batch is
durable. While a commit runs, new batches queue up and go together into the next one (group
commit), so throughput grows with load instead of collapsing under it. The queue is bounded:
when it is full the caller is told at once (the API answers 429), nothing is dropped silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from daemon.errors import DriftdError, QueueFull
from daemon.store import InsertResult, Store
from daemon.store.repository import SampleRows

log = logging.getLogger("driftd.writer")


@dataclass(frozen=True, slots=True)
class _Batch:
    rows: SampleRows
    done: Future[InsertResult]


_STOP = object()


class Writer:
    """Commits batches in the order they arrive; ``start`` → ``submit``… → ``stop``."""

    def __init__(
        self,
        store: Store,
        *,
        queue_batches: int = 64,
        commit_rows: int = 5000,
        on_commit: Callable[[Sequence[SampleRows], Sequence[InsertResult]], None] | None = None,
    ) -> None:
        self.store = store
        self.commit_rows = commit_rows
        # Told of each commit after its batches are acknowledged (warm checks' feed); it must
        # not block: the next commit waits for it.
        self._on_commit = on_commit
        self._queue: queue.Queue[_Batch | object] = queue.Queue(maxsize=queue_batches)
        self._thread = threading.Thread(target=self._run, name="driftd-writer", daemon=True)
        self.commits = 0

    @property
    def depth(self) -> int:
        """Batches waiting for a commit."""
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: SampleRows) -> Future[InsertResult]:
        """Queue an encoded batch; the future completes when it is committed. ``QueueFull`` at
        once if the writer is that far behind."""
        done: Future[InsertResult] = Future()
        if not rows.rows:
            done.set_result(InsertResult(new=[], duplicate=[]))
            return done
        try:
            self._queue.put_nowait(_Batch(rows, done))
        except queue.Full:
            raise QueueFull(
                f"the write queue is full ({self._queue.maxsize} batches waiting)"
            ) from None
        return done

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the thread."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    log.error("writer did not drain its queue in time; batches are lost")
                    return
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            group: list[_Batch] = [first]  # type: ignore[list-item]
            rows = len(group[0].rows.rows)
            while rows < self.commit_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Batch)
                group.append(item)
                rows += len(item.rows.rows)
            self._commit(group)

    def _commit(self, group: list[_Batch]) -> None:
        try:
            results = self.store.insert_rows([b.rows for b in group])
        except Exception:
            if len(group) == 1:
                log.exception(
                    "a batch could not be stored", extra={"rows": len(group[0].rows.rows)}
                )
                group[0].done.set_exception(_stored_error())
                return
            # One bad batch must not fail the others it was grouped with: commit them alone.
            for batch in group:
                self._commit([batch])
            return
        self.commits += 1
        for batch, result in zip(group, results, strict=True):
            batch.done.set_result(result)
        if self._on_commit is not None:
            self._on_commit([b.rows for b in group], results)


def _stored_error() -> DriftdError:
    return DriftdError("the store refused the batch; see driftd's log")
