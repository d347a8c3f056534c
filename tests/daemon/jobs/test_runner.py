"""The job runner with real ``python -m retrain evaluate`` processes, on SQLite and PostgreSQL.

Jobs that must run to the end evaluate a tiny BERT classifier on the support-bot golden set;
jobs that must fail name a golden set whose line has no label (the job exits 1 at once) or one
that does not exist (exit 2: a bad spec, never retried); jobs that
must keep running long enough to be stopped or adopted are ordinary evaluations, which spend
their first seconds loading torch. Every process a test starts is killed by its pid at the end.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from daemon.domain import JobState
from daemon.errors import NotFound, StoreError
from daemon.jobs.executor import LocalExecutor, LocalHandle, Running, Status
from daemon.jobs.runner import JobRunner
from daemon.store import Job, Store
from daemon.store.jobs import (
    approve_job,
    cancel_job,
    claim_job,
    create_job,
    get_job,
    list_jobs,
    ready_jobs,
    retry_job,
)
from daemon.store.models import utcnow
from tests.helpers.serve import alive
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
SUPPORT_BOT = ROOT / "examples" / "support-bot" / "golden.jsonl"
LABELS = ["card_arrival", "card_linking", "exchange_rate"]


class RecordingExecutor:
    """A ``LocalExecutor`` that remembers every job it started, so that a test can count the
    starts and end every process it caused by its pid."""

    def __init__(self) -> None:
        self.local = LocalExecutor(grace=3.0)
        self.handles: list[str] = []

    def start(
        self, job_id: int, kind: str, spec_path: Path, log_path: Path, env: Mapping[str, str]
    ) -> str:
        handle = self.local.start(job_id, kind, spec_path, log_path, env)
        self.handles.append(handle)
        return handle

    def poll(self, handle: str) -> Status:
        return self.local.poll(handle)

    def cancel(self, handle: str) -> None:
        self.local.cancel(handle)

    def adopt(self, handle: str) -> bool:
        return self.local.adopt(handle)


@pytest.fixture
def model_dir(tiny_classifier: Callable[[Sequence[str], str], Path]) -> Path:
    """A tiny BERT classifier (MiniLM's tokenizer) that labels every input card_arrival."""
    return tiny_classifier(LABELS, "card_arrival")


@pytest.fixture
def executors() -> Iterator[Callable[[], RecordingExecutor]]:
    made: list[RecordingExecutor] = []

    def make() -> RecordingExecutor:
        made.append(RecordingExecutor())
        return made[-1]

    yield make
    for executor in made:
        for handle in executor.handles:
            if isinstance(executor.poll(handle), Running):
                os.killpg(LocalHandle.parse(handle).pid, signal.SIGKILL)
                executor.poll(handle)  # reaps it, when it is this process's child


@pytest.fixture
def runner_for(
    store: Store, tmp_path: Path, executors: Callable[[], RecordingExecutor]
) -> Callable[..., JobRunner]:
    """Runners with fast test settings, sharing one jobs directory (as replicas share a volume)."""

    def make(
        owner: str,
        *,
        on: Store | None = None,
        concurrency: int = 1,
        backoff_base: timedelta = timedelta(milliseconds=50),
        backoff_max: timedelta = timedelta(minutes=30),
    ) -> JobRunner:
        return JobRunner(
            on or store,
            executors(),
            tmp_path / "jobs",
            owner,
            heartbeat=timedelta(seconds=1),
            stale_after=timedelta(seconds=30),
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            concurrency=concurrency,
            env={"OMP_NUM_THREADS": "1"},
        )

    return make


def evaluation(model_dir: Path, *, pace_s: float = 0.0) -> dict[str, Any]:
    """The spec of an evaluation of the tiny classifier on the support-bot golden set."""
    return {
        "golden_set": str(SUPPORT_BOT),
        "model_dir": str(model_dir),
        "label_field": "intent",
        "batch_size": 2 if pace_s else 5,
        "pace_s": pace_s,
    }


def broken(tmp_path: Path) -> dict[str, Any]:
    """The spec of an evaluation that fails at once (exit 1, worth a retry): its golden set's
    line has no label."""
    golden = tmp_path / "unlabelled.jsonl"
    golden.write_text('{"input": "Where is my card?"}\n')
    return {"golden_set": str(golden), "model_dir": str(tmp_path)}


def invalid(tmp_path: Path) -> dict[str, Any]:
    """The spec of an evaluation that exits 2 at once: its golden set does not exist."""
    return {"golden_set": str(tmp_path / "missing.jsonl"), "model_dir": str(tmp_path)}


def tick_until(
    runner: JobRunner,
    job_id: int,
    done: Callable[[Job], bool],
    now: datetime | None = None,
    timeout: float = 60.0,
) -> Job:
    """Tick (at ``now``, or the real time) until the job satisfies ``done``."""

    def ticked() -> Job | None:
        runner.tick(now)
        job = get_job(runner.store, job_id)[1]
        return job if done(job) else None

    return wait_for(ticked, timeout, f"job {job_id} to be done")


def events_of(store: Store, deployment: str, job_id: int) -> list[tuple[str, dict[str, Any]]]:
    """The job's audit events, oldest first: (kind, evidence)."""
    events = reversed(store.recent_events(deployment, limit=100))
    return [(e.kind, e.evidence) for e in events if e.evidence.get("job_id") == job_id]


def pid_of(store: Store, job_id: int) -> int:
    handle = get_job(store, job_id)[1].handle
    assert handle is not None
    return LocalHandle.parse(handle).pid


def backdate_heartbeat(store: Store, job_id: int, when: datetime) -> None:
    with store.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=when))


def test_a_job_runs_to_succeeded_with_its_result_and_log(
    store: Store, deployment: str, model_dir: Path, runner_for: Callable[..., JobRunner]
) -> None:
    runner = runner_for("daemon-a")
    job_id = create_job(
        store, deployment, "evaluate", "manual", evaluation(model_dir), timeout=timedelta(hours=1)
    )

    runner.run_until_idle(timeout=90)

    name, job = get_job(store, job_id)
    assert (name, job.state, job.attempt, job.error) == (deployment, "succeeded", 1, None)
    assert job.result is not None
    assert job.result["n"] == 10
    assert job.result["metrics"]["accuracy"] == pytest.approx(0.1)
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.finished_at >= job.started_at
    assert job.log_path == str(runner.jobs_dir / str(job_id) / "attempt-1.log")
    log = Path(job.log_path).read_text()
    assert "evaluate: batch 2/2, 10/10 examples" in log
    assert "evaluate: succeeded" in log
    kinds = [kind for kind, _ in events_of(store, deployment, job_id)]
    assert kinds == ["job.queued", "job.running", "job.succeeded"]


def test_a_failing_job_is_retried_with_backoff_then_fails(
    store: Store, deployment: str, tmp_path: Path, runner_for: Callable[..., JobRunner]
) -> None:
    runner = runner_for(
        "daemon-a", backoff_base=timedelta(seconds=60), backoff_max=timedelta(seconds=90)
    )
    job_id = create_job(store, deployment, "evaluate", "drift", broken(tmp_path), max_attempts=3)
    t0 = utcnow()

    assert runner.tick(t0).started == [job_id]
    job = tick_until(runner, job_id, lambda j: j.state == "queued", now=t0)
    assert job.attempt == 1
    assert job.not_before == t0 + timedelta(seconds=60)
    assert job.error is not None
    assert "exited with code 1" in job.error
    assert "has no text under 'label'" in job.error  # from the job's result
    assert f"(log: {runner.jobs_dir / str(job_id) / 'attempt-1.log'})" in job.error

    assert runner.tick(t0 + timedelta(seconds=59)).started == []  # still backing off
    t1 = t0 + timedelta(seconds=61)
    assert runner.tick(t1).started == [job_id]
    job = tick_until(runner, job_id, lambda j: j.state == "queued", now=t1)
    assert (job.attempt, job.not_before) == (2, t1 + timedelta(seconds=90))  # capped

    t2 = t1 + timedelta(seconds=91)
    assert runner.tick(t2).started == [job_id]
    job = tick_until(runner, job_id, lambda j: j.state == "failed", now=t2)

    assert job.attempt == 3
    assert job.finished_at == t2
    assert job.error is not None
    assert "has no text under 'label'" in job.error
    events = events_of(store, deployment, job_id)
    assert [kind for kind, _ in events] == [
        "job.queued",
        "job.running",
        "job.queued",
        "job.running",
        "job.queued",
        "job.running",
        "job.failed",
    ]
    assert [e["retry_in_s"] for kind, e in events if "retry_in_s" in e] == [60.0, 90.0]

    retry_job(store, job_id, by="ops")
    job = get_job(store, job_id)[1]
    assert (job.state, job.attempt, job.error, job.not_before) == ("queued", 0, None, None)
    with pytest.raises(StoreError, match=r"is queued, so it cannot be retried: only a job"):
        retry_job(store, job_id)


def test_a_job_that_runs_too_long_is_stopped_and_fails_as_timed_out(
    store: Store, deployment: str, model_dir: Path, runner_for: Callable[..., JobRunner]
) -> None:
    runner = runner_for("daemon-a")
    job_id = create_job(
        store,
        deployment,
        "evaluate",
        "schedule",
        evaluation(model_dir, pace_s=1.0),
        max_attempts=1,
        timeout=timedelta(seconds=5),
    )
    t0 = utcnow()
    runner.tick(t0)
    pid = pid_of(store, job_id)

    assert runner.tick(t0 + timedelta(seconds=4)).ended == []
    assert runner.tick(t0 + timedelta(seconds=6)).ended == [job_id]

    job = get_job(store, job_id)[1]
    assert job.state == "failed"
    assert job.error == "timed out after 5 s"
    assert not alive(pid)


def test_cancel_ends_a_queued_job_at_once_and_a_running_one_through_its_runner(
    store: Store, deployment: str, model_dir: Path, runner_for: Callable[..., JobRunner]
) -> None:
    runner = runner_for("daemon-a")
    running = create_job(store, deployment, "evaluate", "manual", evaluation(model_dir, pace_s=1))
    runner.tick()
    pid = pid_of(store, running)
    queued = create_job(store, deployment, "evaluate", "manual", evaluation(model_dir))

    assert cancel_job(store, queued, by="ops") is JobState.cancelled
    job = get_job(store, queued)[1]
    assert (job.state, job.attempt, job.handle) == ("cancelled", 0, None)
    assert job.finished_at is not None
    with pytest.raises(StoreError, match=r"is cancelled, so it cannot be cancelled"):
        cancel_job(store, queued)

    assert cancel_job(store, running, by="ops") is JobState.running
    assert get_job(store, running)[1].cancel_requested
    assert alive(pid)  # the request is carried out by the runner
    report = runner.tick()
    assert report.ended == [running]
    assert report.started == []  # the cancelled one never starts

    assert get_job(store, running)[1].state == "cancelled"
    assert not alive(pid)
    kinds = [kind for kind, _ in events_of(store, deployment, running)]
    assert kinds == ["job.queued", "job.running", "job.cancel_requested", "job.cancelled"]


def test_a_job_whose_retry_would_fail_the_same_way_fails_at_once(
    store: Store, deployment: str, tmp_path: Path, runner_for: Callable[..., JobRunner]
) -> None:
    # Exit 2 (a bad spec) and exit 3 (a cap reached: JobError.final) are not retried: a re-tune's
    # next attempt would pay for another fine-tune only to stop at the same place.
    runner = runner_for("daemon-a", backoff_base=timedelta(seconds=60))
    job_id = create_job(store, deployment, "evaluate", "drift", invalid(tmp_path), max_attempts=3)
    assert runner.tick().started == [job_id]
    job = tick_until(runner, job_id, lambda j: j.state == "failed")
    assert job.attempt == 1
    assert job.error is not None
    assert job.error.startswith("the job exited with code 2: retrain evaluate: invalid spec")
    (failed,) = [e for e in store.recent_events(deployment, limit=100) if e.kind == "job.failed"]
    assert "failed on attempt 1, not retried (a retry would fail the same way)" in failed.message


def test_a_job_held_for_approval_starts_only_once_approved(
    store: Store, deployment: str, tmp_path: Path, runner_for: Callable[..., JobRunner]
) -> None:
    runner = runner_for("daemon-a")
    job_id = create_job(
        store,
        deployment,
        "evaluate",
        "drift",
        broken(tmp_path),
        state=JobState.awaiting_approval,
        max_attempts=1,
    )

    assert runner.tick().started == []
    assert [j.id for _, j in list_jobs(store, state="awaiting_approval")] == [job_id]

    approve_job(store, job_id, by="ops@example.com")
    with pytest.raises(StoreError, match=r"is queued, so it cannot be approved"):
        approve_job(store, job_id)
    assert runner.tick().started == [job_id]
    runner.run_until_idle(timeout=30)

    assert get_job(store, job_id)[1].state == "failed"
    events = store.recent_events(deployment)
    assert any(
        e.message == f"evaluate job {job_id} approved by ops@example.com and queued" for e in events
    )
    assert [j.id for _, j in list_jobs(store, deployment=deployment, state="failed")] == [job_id]


def test_the_store_refuses_jobs_it_cannot_run(store: Store, deployment: str) -> None:
    with pytest.raises(ValueError, match=r"job kind '--spec' is not a lower-case name"):
        create_job(store, deployment, "--spec", "manual", {})
    with pytest.raises(ValueError, match=r"max_attempts must be at least 1"):
        create_job(store, deployment, "evaluate", "manual", {}, max_attempts=0)
    with pytest.raises(NotFound, match=r"unknown deployment 'nope'"):
        create_job(store, "nope", "evaluate", "manual", {})
    with pytest.raises(NotFound, match=r"no job 404 in the store"):
        get_job(store, 404)
    assert list_jobs(store) == []


def test_two_runners_on_one_database_never_start_the_same_job(
    store: Store,
    db_url: str,
    deployment: str,
    tmp_path: Path,
    runner_for: Callable[..., JobRunner],
) -> None:
    # The guard itself: of two claims of the same queued job, only the first wins.
    raced = create_job(store, deployment, "evaluate", "manual", broken(tmp_path))
    (queued,) = ready_jobs(store, utcnow(), 1)
    assert queued.id == raced
    assert claim_job(store, queued, "daemon-x", utcnow(), "x.log")
    assert not claim_job(store, queued, "daemon-y", utcnow(), "y.log")
    assert get_job(store, raced)[1].owner == "daemon-x"

    # Two runners ticking at the same moments over eight jobs: each job starts once.
    ids = [
        create_job(store, deployment, "evaluate", "manual", broken(tmp_path), max_attempts=1)
        for _ in range(8)
    ]
    with Store.open(db_url) as other:
        runners = [
            runner_for("daemon-a", concurrency=3),
            runner_for("daemon-b", concurrency=3, on=other),
        ]
        barrier = threading.Barrier(len(runners))
        failures: list[BaseException] = []

        def work(runner: JobRunner) -> None:
            deadline = time.monotonic() + 60
            try:
                while time.monotonic() < deadline:
                    try:
                        barrier.wait(timeout=30)  # both tick at the same moment, every time
                    except threading.BrokenBarrierError:
                        return  # the other runner found every job done, or failed
                    runner.tick()
                    if all(get_job(store, i)[1].state == "failed" for i in ids):
                        barrier.abort()
                        return
                    time.sleep(0.02)
            except BaseException as error:
                failures.append(error)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(r,)) for r in runners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
    assert not failures

    assert all(get_job(store, i)[1].attempt == 1 for i in ids)
    started = []
    for runner in runners:
        assert isinstance(runner.executor, RecordingExecutor)
        started += runner.executor.handles
    assert len(started) == len(set(started)) == len(ids)
    for job_id in ids:
        kinds = [kind for kind, _ in events_of(store, deployment, job_id)]
        assert kinds.count("job.running") == 1


def test_recovery_adopts_a_job_whose_process_still_runs(
    store: Store, deployment: str, model_dir: Path, runner_for: Callable[..., JobRunner]
) -> None:
    crashed = runner_for("daemon-a")
    job_id = create_job(store, deployment, "evaluate", "manual", evaluation(model_dir, pace_s=0.3))
    crashed.tick()
    pid = pid_of(store, job_id)
    # The daemon dies: no shutdown, and its heartbeats stop.
    del crashed
    stopped = utcnow() - timedelta(minutes=1)
    backdate_heartbeat(store, job_id, stopped)

    successor = runner_for("daemon-b")
    assert successor.recover().adopted == [job_id]

    job = get_job(store, job_id)[1]
    assert (job.state, job.owner) == ("running", "daemon-b")
    assert alive(pid)
    adopted = [e for kind, e in events_of(store, deployment, job_id) if kind == "job.adopted"]
    assert adopted == [
        {
            "job_id": job_id,
            "kind": "evaluate",
            "trigger": "manual",
            "attempt": 1,
            "owner": "daemon-b",
            "previous_owner": "daemon-a",
            "heartbeat_at": stopped.isoformat(),
        }
    ]

    successor.run_until_idle(timeout=90)

    job = get_job(store, job_id)[1]
    assert (job.state, job.attempt) == ("succeeded", 1)
    assert job.result is not None
    assert job.result["n"] == 10


def test_recovery_settles_jobs_that_ended_while_no_daemon_watched(
    store: Store,
    deployment: str,
    model_dir: Path,
    tmp_path: Path,
    runner_for: Callable[..., JobRunner],
) -> None:
    crashed = runner_for("daemon-a", concurrency=3)
    last_try, can_retry = (
        create_job(
            store,
            deployment,
            "evaluate",
            "manual",
            evaluation(model_dir, pace_s=1),
            max_attempts=attempts,
        )
        for attempts in (1, 2)
    )
    finished = create_job(
        store, deployment, "evaluate", "manual", invalid(tmp_path), max_attempts=1
    )
    assert crashed.tick().started == [last_try, can_retry, finished]
    pids = {job_id: pid_of(store, job_id) for job_id in (last_try, can_retry)}
    # The daemon dies, and two of its jobs with it (init reaps them); the third ends alone.
    del crashed
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    wait_for(lambda: not alive(pid_of(store, finished)), 30, "the third job to end alone")
    stopped = utcnow() - timedelta(minutes=1)
    for job_id in (last_try, can_retry, finished):
        backdate_heartbeat(store, job_id, stopped)

    successor = runner_for("daemon-b", backoff_base=timedelta(minutes=5))
    now = utcnow()
    report = successor.recover(now)

    assert sorted(report.adopted) == sorted(report.ended) == [last_try, can_retry, finished]
    for job_id, outcome in ((last_try, "failed"), (can_retry, "queued")):
        job = get_job(store, job_id)[1]
        assert job.state == outcome
        assert job.error is not None
        assert job.error.startswith(
            "the job's process died while no daemon watched it "
            f"(process {pids[job_id]} is not running and left no exit code"
        )
        assert f"the heartbeat of daemon-a stopped at {stopped.isoformat()}" in job.error
    retried = get_job(store, can_retry)[1]
    assert retried.not_before == now + timedelta(minutes=5)
    assert retried.owner is None
    # The one that ended on its own left its exit code, and that is what is recorded.
    job = get_job(store, finished)[1]
    assert job.state == "failed"
    assert job.error is not None
    assert job.error.startswith("the job exited with code 2: retrain evaluate: invalid spec")


def test_shutdown_leaves_running_jobs_to_be_adopted_at_once(
    store: Store, deployment: str, model_dir: Path, runner_for: Callable[..., JobRunner]
) -> None:
    stopping = runner_for("daemon-a")
    job_id = create_job(store, deployment, "evaluate", "manual", evaluation(model_dir, pace_s=1))
    stopping.tick()
    pid = pid_of(store, job_id)

    stopping.shutdown()
    later = create_job(store, deployment, "evaluate", "manual", evaluation(model_dir))

    assert stopping.tick().started == []  # a stopped runner starts nothing
    job = get_job(store, job_id)[1]
    assert (job.state, job.owner) == ("running", None)
    assert alive(pid)
    # The next daemon need not wait for the heartbeat to go stale.
    successor = runner_for("daemon-b")
    assert successor.recover().adopted == [job_id]

    # It can stop what it adopted, though the process is not its child.
    cancel_job(store, later)
    cancel_job(store, job_id)
    assert successor.tick().ended == [job_id]
    assert get_job(store, job_id)[1].state == "cancelled"
    assert not alive(pid)
