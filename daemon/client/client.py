"""The client itself: a bounded queue the app's calls append to, and the thread that sends it.

How a batch fares by the server's answer, and why an invalid item is dropped rather than sent, is
told in ``daemon.client``'s docstring.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import quote

import httpx

from daemon.client.answers import count_in, detail_of, retry_after
from daemon.client.body import Scalar, feedback_body, sample_body

log = logging.getLogger("driftd.client")

# Seconds between two warnings of one kind (queue full, invalid arguments...): a busy app that
# drops thousands of samples a second gets one line per interval, with the count.
WARNING_INTERVAL: Final = 10.0
_JSON_HEADERS: Final = {"Content-Type": "application/json"}

Route = Literal["samples", "feedback"]
# A batch's samples go before its feedback, which driftd can only attach to a sample it has.
_ROUTES: Final[tuple[Route, ...]] = ("samples", "feedback")


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of a client's counters, in items (samples and feedback).

    Each ``log`` or ``feedback`` call is counted in exactly one of ``dropped`` (never queued),
    ``queued`` (waiting or in flight), ``sent``, ``rejected`` (refused by the server) and
    ``failed`` (given up on after ``max_attempts``, or at ``close``). ``duplicate`` and
    ``sampled_out`` break ``sent`` down by the server's answer; ``retries`` counts requests sent
    again after a 429, a 5xx or a connection error.
    """

    queued: int
    sent: int
    duplicate: int
    sampled_out: int
    rejected: int
    failed: int
    dropped: int
    retries: int


@dataclass(slots=True)
class _Item:
    seq: int
    route: Route
    body: dict[str, Any]
    queued_at: float


class _Throttle:
    """Lets a warning through at most once per interval and counts the ones it held back."""

    def __init__(self, interval: float = WARNING_INTERVAL) -> None:
        self._interval = interval
        self._next = -math.inf
        self._held = 0

    def __call__(self) -> int | None:
        """The number held back since the last warning if this one may be logged, else None."""
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self._interval
        return held


class Client:
    """Sends samples and feedback of one deployment to driftd from a background thread.

    ``flush`` waits for what is queued; ``close`` (also called by ``with`` and at interpreter
    exit, then bounded by ``exit_timeout``) flushes and stops the thread.
    """

    def __init__(
        self,
        base_url: str,
        deployment: str,
        token: str | None = None,
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queue: int = 50_000,
        timeout: float = 10.0,
        max_attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        exit_timeout: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if not isinstance(deployment, str) or not deployment:
            raise ValueError(f"deployment must be a non-empty name, got {deployment!r}")
        if token is not None and (not token or not token.isprintable() or " " in token):
            raise ValueError("token must be non-empty, printable and without spaces")
        for name, value in (("batch_size", batch_size), ("max_queue", max_queue)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        for name, seconds in (
            ("flush_interval", flush_interval),
            ("timeout", timeout),
            ("backoff_base", backoff_base),
            ("backoff_max", backoff_max),
            ("exit_timeout", exit_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds}")

        self.deployment = deployment
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_queue = max_queue
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._exit_timeout = exit_timeout
        prefix = f"v1/deployments/{quote(deployment, safe='')}"
        self._paths: dict[Route, str] = {
            "samples": f"{prefix}/samples",
            "feedback": f"{prefix}/feedback",
        }
        self._http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"} if token is not None else None,
            timeout=timeout,
            transport=transport,
        )

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits here for a due batch
        self._settled = threading.Condition(self._lock)  # flush waits here for a settled one
        self._abort = threading.Event()  # set when close runs out of time: stop retrying
        self._queue: deque[_Item] = deque()
        self._in_flight = 0
        self._last_seq = 0  # of the last item queued
        self._done_seq = 0  # every item up to this one is settled
        self._flush_seq = 0  # items up to this one are due now, whatever their age
        self._closing = False
        self._counts = dict.fromkeys(
            ("sent", "duplicate", "sampled_out", "rejected", "failed", "dropped", "retries"), 0
        )
        self._full = _Throttle()
        self._invalid = _Throttle()
        self._unknown = _Throttle()
        self._refusals = _Throttle()
        self._warned_statuses: set[int] = set()

        self._thread = threading.Thread(target=self._run, name="driftd-client", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # -- the app's side: never blocks, never raises ------------------------------------------

    def log(
        self,
        request_id: str,
        input: str | Sequence[Mapping[str, str]],
        output: str | None = None,
        *,
        prediction: str | None = None,
        confidence: float | None = None,
        probabilities: Mapping[str, float] | None = None,
        label: str | None = None,
        latency_ms: float | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        model_version: str | None = None,
        prompt_version: str | None = None,
        error: str | None = None,
        metadata: Mapping[str, Scalar] | None = None,
        ts: datetime | None = None,
    ) -> None:
        """Queue one sample: what the model was given and what it answered.

        ``ts`` defaults to now; a naive ``ts`` is taken as local time. A sample the server would
        refuse is dropped here with a warning, and so is one that finds the queue full.
        """
        try:
            body = sample_body(
                request_id,
                input,
                output,
                datetime.now(UTC) if ts is None else ts,
                {
                    "prediction": prediction,
                    "confidence": confidence,
                    "probabilities": probabilities,
                    "label": label,
                    "latency_ms": latency_ms,
                    "tokens_in": tokens_in,
                    "tokens_out": tokens_out,
                    "model_version": model_version,
                    "prompt_version": prompt_version,
                    "error": error,
                    "metadata": metadata,
                },
            )
        except Exception as problem:  # anything at all: the app's request must go on
            self._drop_invalid("sample", request_id, problem)
            return
        self._put("samples", body)

    def feedback(
        self,
        request_id: str,
        *,
        label: str | None = None,
        thumb: Literal["up", "down"] | None = None,
        score: float | None = None,
        judge_score: float | None = None,
        comment: str | None = None,
    ) -> None:
        """Queue feedback on a logged sample: its true label, a thumb, a score, a judge's score.

        Feedback the server would refuse, or that records nothing, is dropped with a warning.
        """
        try:
            body = feedback_body(request_id, label, thumb, score, judge_score, comment)
        except Exception as problem:
            self._drop_invalid("feedback", request_id, problem)
            return
        self._put("feedback", body)

    def _put(self, route: Route, body: dict[str, Any]) -> None:
        try:
            with self._lock:
                if self._closing:
                    reason = "the client is closed"
                elif len(self._queue) >= self._max_queue:
                    reason = f"the queue is full ({self._max_queue} items)"
                else:
                    self._last_seq += 1
                    self._queue.append(_Item(self._last_seq, route, body, time.monotonic()))
                    # Wake the worker when it has a deadline to set or a full batch to send.
                    if len(self._queue) in (1, self._batch_size):
                        self._work.notify()
                    return
                self._counts["dropped"] += 1
                held = self._full()
            if held is not None:
                log.warning(
                    "dropped %s for %s: %s (%d more dropped since the last warning)",
                    "a sample" if route == "samples" else "feedback",
                    self.deployment,
                    reason,
                    held,
                )
        except Exception:
            log.exception("driftd client: could not queue %s", route)

    def _drop_invalid(self, what: str, request_id: object, problem: Exception) -> None:
        try:
            with self._lock:
                self._counts["dropped"] += 1
                held = self._invalid()
            if held is not None:
                log.warning(
                    "dropped %s %.60r for %s: %s (%d more invalid since the last warning)",
                    what,
                    request_id,
                    self.deployment,
                    problem,
                    held,
                )
        except Exception:
            log.exception("driftd client: could not drop an invalid %s", what)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(queued=len(self._queue) + self._in_flight, **self._counts)

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued now; True once all of it is sent, refused or given up on."""
        with self._lock:
            target = self._last_seq
            if self._done_seq >= target:
                return True
            if not self._thread.is_alive() or threading.current_thread() is self._thread:
                return False
            self._flush_seq = max(self._flush_seq, target)
            self._work.notify()
            return self._settled.wait_for(lambda: self._done_seq >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, for up to ``timeout`` seconds, then stop; counts the rest failed.

        The thread ends as soon as its request in flight, if any, returns. Idempotent.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._work.notify()
        atexit.unregister(self._at_exit)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(0.1)

    def _at_exit(self) -> None:
        self.close(self._exit_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    for route in _ROUTES:
                        items = [item for item in batch if item.route == route]
                        if items:
                            self._deliver(route, items)
                finally:
                    with self._lock:
                        self._in_flight = 0
                        self._done_seq = batch[-1].seq
                        self._settled.notify_all()
        finally:
            self._http.close()
            with self._lock:
                self._closing = True
                abandoned = len(self._queue)
                self._queue.clear()
                self._counts["failed"] += abandoned
                self._done_seq = self._last_seq
                self._settled.notify_all()
            if abandoned:
                log.warning(
                    "closing: gave up on %d items for %s still queued", abandoned, self.deployment
                )

    def _next_batch(self) -> list[_Item] | None:
        """The next batch once one is due; None when the client is closed and nothing is left."""
        with self._lock:
            while not self._abort.is_set():
                wait: float | None = None
                if self._queue:
                    oldest = self._queue[0]
                    wait = oldest.queued_at + self._flush_interval - time.monotonic()
                    if (
                        wait <= 0
                        or len(self._queue) >= self._batch_size
                        or self._closing
                        or self._flush_seq >= oldest.seq
                    ):
                        size = min(len(self._queue), self._batch_size)
                        batch = [self._queue.popleft() for _ in range(size)]
                        self._in_flight = size
                        return batch
                elif self._closing:
                    return None
                self._work.wait(wait)
            return None

    def _deliver(self, route: Route, items: list[_Item]) -> None:
        chunks = [items]
        while chunks:
            chunk = chunks.pop()
            if self._abort.is_set():
                self._count("failed", len(chunk))
                continue
            try:
                too_large = self._post(route, chunk)
            except Exception:  # a bug here must cost this chunk, not the thread
                log.exception("driftd client: could not send %d %s", len(chunk), route)
                self._count("failed", len(chunk))
                continue
            if too_large:
                middle = len(chunk) // 2
                chunks += [chunk[middle:], chunk[:middle]]

    def _post(self, route: Route, chunk: list[_Item]) -> bool:
        """Send one chunk until it is settled; True if it is too large and must be split."""
        content = json.dumps(
            {route: [item.body for item in chunk]},
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode(errors="replace")  # a lone surrogate becomes "?" rather than costing the batch
        for attempt in range(1, self._max_attempts + 1):
            delay: float | None = None
            try:
                response = self._http.post(
                    self._paths[route], content=content, headers=_JSON_HEADERS
                )
            except httpx.RequestError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    self._accepted(route, chunk, response)
                    return False
                if status == 413 and len(chunk) > 1:
                    return True
                if status == 429:
                    delay = retry_after(response)
                elif status != 408 and status < 500:
                    self._refused(route, chunk, response)
                    return False
                problem = f"HTTP {status}"
            if attempt == self._max_attempts:
                break
            if delay is None:
                delay = self._backoff(attempt)
            log.debug("retrying %d %s in %.2fs after %s", len(chunk), route, delay, problem)
            if self._abort.wait(delay):
                problem = "the client was closed"
                break
            self._count("retries", 1)
        log.warning(
            "gave up on %d %s for %s after %d attempts: %s",
            len(chunk),
            route,
            self.deployment,
            attempt,
            problem,
        )
        self._count("failed", len(chunk))
        return False

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        # Half fixed, half random: clients that failed together do not retry together.
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret

    def _accepted(self, route: Route, chunk: list[_Item], response: httpx.Response) -> None:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        with self._lock:
            self._counts["sent"] += len(chunk)
            if route == "samples":
                self._counts["duplicate"] += count_in(answer.get("duplicate"))
                self._counts["sampled_out"] += count_in(answer.get("sampled_out"))
                return
            self._counts["sampled_out"] += count_in(answer.get("sampled_out"))
            unknown = answer.get("unknown")
            held = self._unknown() if unknown else None
        if held is not None and isinstance(unknown, list):
            log.warning(
                "driftd knows no sample for %d feedback request_ids of %s, e.g. %.60r "
                "(%d more such warnings held back)",
                len(unknown),
                self.deployment,
                unknown[0],
                held,
            )

    def _refused(self, route: Route, chunk: list[_Item], response: httpx.Response) -> None:
        status = response.status_code
        self._count("rejected", len(chunk))
        what = f"{len(chunk)} {route} for {self.deployment}"
        if status == 422:
            detail = detail_of(response)
            log.warning("driftd refused %s as invalid (HTTP 422): %s", what, detail)
        elif status in (401, 404):
            with self._lock:
                first = status not in self._warned_statuses
                self._warned_statuses.add(status)
            if first:
                reason = "the token" if status == 401 else f"the deployment {self.deployment!r}"
                log.warning(
                    "driftd refused %s: it does not accept %s (HTTP %d); "
                    "this client will keep counting such batches as rejected without a warning",
                    what,
                    reason,
                    status,
                )
        else:
            with self._lock:
                held = self._refusals()
            if held is not None:
                log.warning(
                    "driftd refused %s (HTTP %d): %s (%d more refusals since the last warning)",
                    what,
                    status,
                    detail_of(response),
                    held,
                )

    def _count(self, counter: str, n: int) -> None:
        with self._lock:
            self._counts[counter] += n
