"""The job runner: what happens to each job, tick by tick, from queued to its end.

The scheduler calls ``tick`` every few seconds on the leader. A tick

1. adopts running jobs nobody watches any more (their daemon stopped or died),
2. watches the jobs this runner owns: records the outcome of those that ended, stops those
   that ran out of time or were cancelled, and renews the heartbeat of the others,
3. starts queued jobs whose backoff has passed, up to ``concurrency`` at a time.

A job runs as ``python -m retrain <kind> --spec jobs_dir/<id>/job.json`` (or whatever the
executor makes of that). The runner writes the spec, adding ``output_dir`` (where the job
writes ``result.json``); the job's output goes to ``jobs_dir/<id>/attempt-<n>.log``.

Failed attempts are retried after an exponential backoff until the job's ``max_attempts`` are
used up; then the job fails with the last attempt's error. A job that says a retry would fail
the same way (``retrain.errors.NOT_RETRIED`` exit codes: a bad spec, a token or cost cap
reached) fails at once. Every state in the store is left by a
guarded transition (``daemon.store.jobs``), so two runners on one database never start the same
job, and a runner that lost a job to another cannot overwrite what the other recorded. No job
stays ``running`` forever: a job whose daemon died is adopted by the next runner, which either
keeps watching its process or, if the process is gone, retries or fails it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.domain import JobState
from daemon.errors import KubernetesError
from daemon.jobs.executor import LOG_HEADER, Executor, Exited, Gone, Running, Status
from daemon.store import jobs
from daemon.store.models import Job, utcnow
from daemon.store.repository import Store
from retrain.errors import NOT_RETRIED

log = logging.getLogger("driftd.jobs")

SPEC_FILE = "job.json"
OUTPUT_DIR = "output"
RESULT_FILE = "result.json"
"""What a job writes into its spec's ``output_dir``: a JSON object, with ``error`` on failure."""

_LOG_TAIL_LINES = 5
_LOG_TAIL_CHARS = 800


@dataclass(slots=True)
class TickReport:
    """The job ids a tick (or ``recover``) acted on."""

    started: list[int] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    """Jobs that left ``running``: succeeded, failed, cancelled, or queued for a retry."""


class JobRunner:
    """Starts and watches the jobs of one daemon (``owner``, unique per process)."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        jobs_dir: Path,
        owner: str,
        *,
        heartbeat: timedelta = timedelta(seconds=5),
        stale_after: timedelta = timedelta(seconds=30),
        backoff_base: timedelta = timedelta(seconds=30),
        backoff_max: timedelta = timedelta(minutes=30),
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``heartbeat`` is how often a watched job's heartbeat is renewed; a job whose
        heartbeat is older than ``stale_after`` is taken to have lost its daemon and is
        adopted. Attempt ``n`` that fails is retried after ``backoff_base * 2**(n-1)``, at most
        ``backoff_max``. ``env`` is added to every job's environment."""
        if heartbeat <= timedelta(0):
            raise ValueError(f"heartbeat must be positive, got {heartbeat}")
        if stale_after <= heartbeat:
            raise ValueError(
                f"stale_after ({stale_after}) must exceed heartbeat ({heartbeat}), or jobs "
                "of a live daemon would be adopted by another"
            )
        if backoff_base <= timedelta(0) or backoff_max < backoff_base:
            raise ValueError(
                f"need 0 < backoff_base <= backoff_max, got {backoff_base} and {backoff_max}"
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.executor = executor
        self.jobs_dir = Path(jobs_dir).resolve()
        self.owner = owner
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.concurrency = concurrency
        self.env = dict(env or {})
        self.clock = clock
        self._lock = threading.Lock()
        self._stopped = False

    def recover(self, now: datetime | None = None) -> TickReport:
        """Adopt the running jobs of daemons that died or stopped; call once at start-up.

        A job whose process still runs is watched from now on; one whose process finished
        has its outcome recorded; one whose process is gone is retried or failed, with an error
        that says when its heartbeat stopped. ``tick`` does this too, for daemons that die
        while this one runs.
        """
        with self._lock:
            report = TickReport()
            if not self._stopped:
                self._adopt_orphans(now or self.clock(), report)
            return report

    def tick(self, now: datetime | None = None) -> TickReport:
        """One round of adopting, watching and starting jobs; see the module docstring."""
        with self._lock:
            report = TickReport()
            if self._stopped:
                return report
            now = now or self.clock()
            self._adopt_orphans(now, report)
            running = self._watch(now, report)
            if running < self.concurrency:
                for job in jobs.ready_jobs(self.store, now, self.concurrency - running):
                    if self._start(job, now):
                        report.started.append(job.id)
            return report

    def run_until_idle(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Tick until no job is queued and none of this runner's is running; ``TimeoutError``
        after ``timeout`` seconds. For tests and one-off command-line runs."""
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            if not jobs.owned_jobs(self.store, self.owner) and not jobs.waiting_jobs(self.store):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"jobs were still queued or running after {timeout} s")
            time.sleep(interval)

    def shutdown(self) -> None:
        """Stop starting jobs, and hand the running ones over: their processes keep running,
        and the next daemon adopts them at once instead of waiting for stale heartbeats."""
        with self._lock:
            self._stopped = True
            released = jobs.release_jobs(self.store, self.owner)
        if released:
            log.info("left %d running job(s) for the next daemon to adopt", released)

    def backoff(self, attempt: int) -> timedelta:
        """How long to wait before retrying after failed attempt ``attempt`` (1-based)."""
        doublings = min(max(attempt - 1, 0), 20)  # beyond that the cap applies anyway
        return min(self.backoff_base * (1 << doublings), self.backoff_max)

    def _adopt_orphans(self, now: datetime, report: TickReport) -> None:
        stale_before = now - self.stale_after
        for job in jobs.orphaned_jobs(self.store, stale_before):
            if job.owner == self.owner:
                continue
            if not jobs.adopt_job(self.store, job, self.owner, now, stale_before):
                continue
            report.adopted.append(job.id)
            if self._can_adopt(job):
                continue  # watched from now on, starting with this very tick
            status = self._status(job)
            if isinstance(status, Running):
                continue
            adopted = self._reload(job)
            if isinstance(status, Gone):
                stopped = job.heartbeat_at.isoformat() if job.heartbeat_at else "its start"
                error = (
                    f"the job's process died while no daemon watched it ({status.reason}); "
                    f"the heartbeat of {job.owner or 'its daemon'} stopped at {stopped}"
                )
                self._fail_or_retry(adopted, error, now)
            else:
                self._settle(adopted, status, now)
            report.ended.append(job.id)

    def _watch(self, now: datetime, report: TickReport) -> int:
        """Act on every job this runner owns; returns how many are still running."""
        running = 0
        for job in jobs.owned_jobs(self.store, self.owner):
            status = self._status(job)
            if not isinstance(status, Running):
                self._settle(job, status, now)
                report.ended.append(job.id)
            elif job.cancel_requested:
                self._cancel(job)
                self._finish(job, JobState.cancelled, now, f"{_name(job)} was cancelled")
                report.ended.append(job.id)
            elif self._timed_out(job, now):
                self._cancel(job)
                self._fail_or_retry(job, f"timed out after {job.timeout_s:g} s", now)
                report.ended.append(job.id)
            else:
                running += 1
                if job.heartbeat_at is None or now - job.heartbeat_at >= self.heartbeat:
                    jobs.beat(self.store, job.id, self.owner, now)
        return running

    def _start(self, job: Job, now: datetime) -> bool:
        attempt = job.attempt + 1
        job_dir = self.jobs_dir / str(job.id)
        log_path = job_dir / f"attempt-{attempt}.log"
        if not jobs.claim_job(self.store, job, self.owner, now, str(log_path)):
            return False
        claimed = self._reload(job)
        try:
            spec_path = self._write_spec(claimed, job_dir)
            handle = self.executor.start(job.id, job.kind, spec_path, log_path, self.env)
        except (OSError, KubernetesError) as error:
            self._fail_or_retry(claimed, f"could not start the job's process: {error}", now)
            return True
        # Should the daemon die right here, the job has no handle: the next runner finds it
        # orphaned with no process to watch, and retries it.
        jobs.set_handle(self.store, job.id, self.owner, handle)
        return True

    def _settle(self, job: Job, status: Exited | Gone, now: datetime) -> None:
        """Record how a job whose process ended came out."""
        result = self._read_result(job)
        if isinstance(status, Exited) and status.code == 0:
            if result is not None:
                self._finish(
                    job,
                    JobState.succeeded,
                    now,
                    f"{_name(job)} succeeded on attempt {job.attempt}",
                    result=result,
                )
                return
            error = f"the job exited with code 0 but wrote no result to {self._result_path(job)}"
        elif isinstance(status, Exited):
            how = (
                f"was killed by {signal.Signals(-status.code).name}"
                if status.code < 0 and -status.code in signal.valid_signals()
                else f"exited with code {status.code}"
            )
            detail = result.get("error") if result else None
            if not isinstance(detail, str) or not detail:
                detail = _tail(job.log_path)
            error = f"the job {how}" + (f": {detail}" if detail else "")
        else:
            error = f"the job's process disappeared: {status.reason}"
        if job.log_path:
            error += f" (log: {job.log_path})"
        if job.cancel_requested:
            self._finish(job, JobState.cancelled, now, f"{_name(job)} was cancelled", error=error)
        elif isinstance(status, Exited) and status.code in NOT_RETRIED:
            # A bad spec, or a cap reached: the next attempt would fail the same way, and a
            # re-tune's attempt may pay for a fine-tune first.
            self._finish(
                job,
                JobState.failed,
                now,
                f"{_name(job)} failed on attempt {job.attempt}, not retried (a retry would fail "
                f"the same way): {error}",
                error=error,
            )
        else:
            self._fail_or_retry(job, error, now)

    def _fail_or_retry(self, job: Job, error: str, now: datetime) -> None:
        if job.attempt < job.max_attempts:
            not_before = now + self.backoff(job.attempt)
            jobs.requeue_job(self.store, job, self.owner, now, not_before, error)
            return
        tries = f"{job.attempt} attempt{'s' if job.attempt != 1 else ''}"
        self._finish(
            job, JobState.failed, now, f"{_name(job)} failed after {tries}: {error}", error=error
        )

    def _finish(
        self,
        job: Job,
        state: JobState,
        now: datetime,
        message: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        if not jobs.finish_job(
            self.store, job, self.owner, state, now, message, result=result, error=error
        ):
            log.warning("%s was taken over by another daemon before it could end", _name(job))

    def _status(self, job: Job) -> Status:
        if job.handle is None:
            return Gone("no process was recorded for it: its daemon stopped while starting it")
        try:
            return self.executor.poll(job.handle)
        except ValueError as error:
            return Gone(f"this daemon's executor cannot follow handle {job.handle!r}: {error}")

    def _can_adopt(self, job: Job) -> bool:
        if job.handle is None:
            return False
        try:
            return self.executor.adopt(job.handle)
        except ValueError:
            return False  # a handle of another sort of executor

    def _cancel(self, job: Job) -> None:
        if job.handle is not None:
            self.executor.cancel(job.handle)

    def _timed_out(self, job: Job, now: datetime) -> bool:
        if job.timeout_s is None or job.started_at is None:
            return False
        return (now - job.started_at).total_seconds() > job.timeout_s

    def _write_spec(self, job: Job, job_dir: Path) -> Path:
        output_dir = job_dir / OUTPUT_DIR
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RESULT_FILE).unlink(missing_ok=True)
        spec = {**job.spec, "output_dir": str(output_dir)}
        path = job_dir / SPEC_FILE
        partial = path.with_name(f".{SPEC_FILE}.partial")
        partial.write_text(json.dumps(spec, indent=2) + "\n")
        os.replace(partial, path)
        return path

    def _result_path(self, job: Job) -> Path:
        return self.jobs_dir / str(job.id) / OUTPUT_DIR / RESULT_FILE

    def _read_result(self, job: Job) -> dict[str, Any] | None:
        try:
            result = json.loads(self._result_path(job).read_text())
        except (OSError, ValueError):
            return None
        return result if isinstance(result, dict) else None

    def _reload(self, job: Job) -> Job:
        return jobs.get_job(self.store, job.id)[1]


def _name(job: Job) -> str:
    return f"{job.kind} job {job.id}"


def _tail(log_path: str | None) -> str | None:
    """The last lines the latest attempt wrote to its log: the reason it failed, when it wrote
    no result."""
    if not log_path:
        return None
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - 8 * _LOG_TAIL_CHARS))
            text = log_file.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith(LOG_HEADER)]
    if starts:
        lines = lines[starts[-1] + 1 :]
    tail = " | ".join(lines[-_LOG_TAIL_LINES:])
    return tail[-_LOG_TAIL_CHARS:] or None
