"""Jobs in the store: creating them, what operators do to them, and the runner's transitions.

Every change of state is one guarded ``UPDATE … WHERE id = :id AND state = :expected`` whose row
count says whether it happened: when two replicas race for the same job, the database lets
exactly one of them through, on SQLite (one writer at a time) and on PostgreSQL (the second
UPDATE waits for the first and re-checks its WHERE clause on the row as the first left it).
Transitions of a running job are guarded on its ``owner`` too, so a daemon that lost a job to
another one (which adopted it after its heartbeat stopped) cannot record a stale outcome.

Each transition that happened leaves an audit event ``job.<state>`` (``job.adopted`` when a
daemon takes over a running job) with the job's id, kind and attempt as evidence.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, or_, select, update

from daemon.domain import JobState
from daemon.errors import NotFound, StoreError
from daemon.store.models import Deployment, Job, utcnow
from daemon.store.repository import Store
from daemon.store.statements import deployment_id_of, named_row, of_deployment

# A kind names a job of the ``retrain`` package (``python -m retrain <kind>``) or a Kubernetes
# Job template: lower-case words, so it can never be read as an option or a path.
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")

# What an operator may do in each state; the messages of refused actions quote these.
_APPROVABLE = (JobState.awaiting_approval,)
_CANCELLABLE_AT_ONCE = (JobState.queued, JobState.awaiting_approval)
_RETRYABLE = (JobState.failed, JobState.cancelled)


def create_job(
    store: Store,
    deployment: str,
    kind: str,
    trigger: str,
    spec: dict[str, Any],
    *,
    state: JobState = JobState.queued,
    max_attempts: int = 3,
    timeout: timedelta | None = None,
) -> int:
    """Queue a job (or hold it for approval, with ``state=awaiting_approval``); returns its id.

    ``spec`` is what the job receives as ``job.json``; it must be JSON-serialisable. A failed
    attempt is retried, after a backoff, until ``max_attempts`` attempts have run. An attempt
    running longer than ``timeout`` is stopped and counts as failed.
    """
    state = JobState(state)
    if state not in (JobState.queued, JobState.awaiting_approval):
        raise ValueError(f"a new job is queued or awaiting_approval, not {state.value}")
    if not KIND_PATTERN.fullmatch(kind):
        raise ValueError(
            f"job kind {kind!r} is not a lower-case name like 'evaluate' or 'fine_tune'"
        )
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if timeout is not None and timeout <= timedelta(0):
        raise ValueError(f"timeout must be positive, got {timeout}")
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict (a JSON object), got {type(spec).__name__}")
    now = utcnow()
    with store.session() as session:
        job = Job(
            deployment_id=deployment_id_of(session.connection(), deployment),
            kind=kind,
            trigger=trigger,
            state=state.value,
            attempt=0,
            max_attempts=max_attempts,
            created_at=now,
            spec=spec,
            cancel_requested=False,
            timeout_s=None if timeout is None else timeout.total_seconds(),
        )
        session.add(job)
        session.flush()
        job_id = job.id
    waiting = "awaits approval" if state is JobState.awaiting_approval else "is queued"
    store.add_event(
        deployment,
        f"job.{state.value}",
        f"{kind} job {job_id} ({trigger}) {waiting}",
        _evidence(job),
        ts=now,
    )
    return job_id


def get_job(store: Store, job_id: int) -> tuple[str, Job]:
    """A job and the name of its deployment; ``NotFound`` if there is no such job."""
    with store.session(readonly=True) as session:
        found = named_row(session, Job, job_id)
    if found is None:
        raise NotFound(f"no job {job_id} in the store; check the job id")
    return found


def list_jobs(
    store: Store,
    *,
    deployment: str | None = None,
    state: JobState | str | None = None,
    limit: int = 50,
) -> list[tuple[str, Job]]:
    """The latest jobs, newest first, with their deployments' names; optionally only one
    deployment's, or only those in one state."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    query = (
        select(Deployment.name, Job)
        .join(Deployment, Deployment.id == Job.deployment_id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    with store.session(readonly=True) as session:
        query = of_deployment(session, query, Job, deployment)
        if state is not None:
            query = query.where(Job.state == JobState(state).value)
        return [(str(name), job) for name, job in session.execute(query)]


def succeeded_jobs(store: Store, limit: int) -> list[tuple[str, Job]]:
    """The latest ``limit`` succeeded jobs, last finished first, with their deployments' names."""
    with store.session(readonly=True) as session:
        rows = session.execute(
            select(Deployment.name, Job)
            .join(Deployment, Deployment.id == Job.deployment_id)
            .where(Job.state == JobState.succeeded.value)
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(limit)
        ).all()
    return [(str(name), job) for name, job in rows]


def approve_job(store: Store, job_id: int, *, by: str | None = None) -> None:
    """Let a job that awaits approval run: it is queued. ``StoreError`` in any other state."""
    _, job = get_job(store, job_id)
    who = f" by {by}" if by else ""
    if not _transition(
        store,
        job_id,
        (Job.state == JobState.awaiting_approval.value,),
        {"state": JobState.queued.value},
        event=f"job.{JobState.queued.value}",
        message=f"{job.kind} job {job_id} approved{who} and queued",
        evidence=_evidence(job) | {"approved_by": by},
    ):
        raise _refused(store, job_id, "approved", _APPROVABLE)


def cancel_job(store: Store, job_id: int, *, by: str | None = None) -> JobState:
    """Cancel a job. A queued job, or one awaiting approval, is cancelled at once; a running one
    is marked ``cancel_requested`` and its runner stops the process and records the cancel.

    Returns the state the job is in afterwards (``cancelled``, or ``running`` while the request
    is carried out). ``StoreError`` if the job has already ended.
    """
    deployment, job = get_job(store, job_id)
    who = f" by {by}" if by else ""
    now = utcnow()
    if _transition(
        store,
        job_id,
        (Job.state.in_([s.value for s in _CANCELLABLE_AT_ONCE]),),
        {"state": JobState.cancelled.value, "finished_at": now},
        event=f"job.{JobState.cancelled.value}",
        message=f"{job.kind} job {job_id} cancelled{who} before it started",
        evidence=_evidence(job) | {"cancelled_by": by},
        ts=now,
    ):
        return JobState.cancelled
    with store.session() as session:
        requested = _execute(
            session.connection(),
            job_id,
            (Job.state == JobState.running.value,),
            {"cancel_requested": True},
        )
    if requested:
        store.add_event(
            deployment,
            "job.cancel_requested",
            f"cancel of running {job.kind} job {job_id} requested{who}; its runner stops it",
            _evidence(job) | {"cancelled_by": by},
            ts=now,
        )
        return JobState.running
    raise _refused(store, job_id, "cancelled", (*_CANCELLABLE_AT_ONCE, JobState.running))


def retry_job(store: Store, job_id: int, *, by: str | None = None) -> None:
    """Queue a failed or cancelled job again, with a fresh budget of ``max_attempts`` attempts.
    ``StoreError`` in any other state."""
    _, job = get_job(store, job_id)
    who = f" by {by}" if by else ""
    if not _transition(
        store,
        job_id,
        (Job.state.in_([s.value for s in _RETRYABLE]),),
        {
            "state": JobState.queued.value,
            "attempt": 0,
            "not_before": None,
            "cancel_requested": False,
            "started_at": None,
            "finished_at": None,
            "heartbeat_at": None,
            "handle": None,
            "owner": None,
            "result": None,
            "error": None,
        },
        event=f"job.{JobState.queued.value}",
        message=(
            f"{job.kind} job {job_id} queued again{who} with {job.max_attempts} "
            f"attempt{'s' if job.max_attempts != 1 else ''}; it was {job.state}"
            + (f": {job.error}" if job.error else "")
        ),
        evidence=_evidence(job) | {"retried_by": by, "previous_error": job.error},
    ):
        raise _refused(store, job_id, "retried", _RETRYABLE)


# The runner's side: finding work, and each transition of a job it starts or watches.


def ready_jobs(store: Store, now: datetime, limit: int) -> list[Job]:
    """Queued jobs whose backoff has passed, oldest first: the next ones to start."""
    with store.session(readonly=True) as session:
        return list(
            session.scalars(
                select(Job)
                .where(
                    Job.state == JobState.queued.value,
                    or_(Job.not_before.is_(None), Job.not_before <= now),
                )
                .order_by(Job.created_at, Job.id)
                .limit(limit)
            )
        )


def waiting_jobs(store: Store) -> int:
    """How many jobs are queued, whether their backoff has passed or not."""
    with store.session(readonly=True) as session:
        query = select(func.count()).where(Job.state == JobState.queued.value)
        return int(session.execute(query).scalar_one())


def owned_jobs(store: Store, owner: str) -> list[Job]:
    """The running jobs ``owner`` watches."""
    with store.session(readonly=True) as session:
        return list(
            session.scalars(
                select(Job)
                .where(Job.state == JobState.running.value, Job.owner == owner)
                .order_by(Job.id)
            )
        )


def orphaned_jobs(store: Store, stale_before: datetime) -> list[Job]:
    """Running jobs nobody watches: released by a daemon that stopped, or whose owner's
    heartbeat stopped before ``stale_before`` (it died)."""
    with store.session(readonly=True) as session:
        return list(
            session.scalars(
                select(Job).where(Job.state == JobState.running.value, _orphaned(stale_before))
            )
        )


def claim_job(store: Store, job: Job, owner: str, now: datetime, log_path: str) -> bool:
    """Start attempt ``job.attempt + 1`` of a queued job for ``owner``; False if another
    replica (or an operator's cancel) got there first, in which case the caller must not start
    it."""
    attempt = job.attempt + 1
    return _transition(
        store,
        job.id,
        (Job.state == JobState.queued.value, Job.attempt == job.attempt),
        {
            "state": JobState.running.value,
            "attempt": attempt,
            "owner": owner,
            "handle": None,
            "started_at": now,
            "heartbeat_at": now,
            "finished_at": None,
            "not_before": None,
            "log_path": log_path,
        },
        event=f"job.{JobState.running.value}",
        message=f"{job.kind} job {job.id} attempt {attempt} of {job.max_attempts} started by "
        f"{owner}",
        evidence=_evidence(job) | {"attempt": attempt, "owner": owner, "log_path": log_path},
        ts=now,
    )


def set_handle(store: Store, job_id: int, owner: str, handle: str) -> bool:
    """Record the executor's handle of the job's process; False if ``owner`` lost the job."""
    with store.session() as session:
        return _execute(session.connection(), job_id, _owned_by(owner), {"handle": handle})


def beat(store: Store, job_id: int, owner: str, now: datetime) -> bool:
    """Mark the job as watched at ``now``; False if ``owner`` no longer runs it."""
    with store.session() as session:
        return _execute(session.connection(), job_id, _owned_by(owner), {"heartbeat_at": now})


def adopt_job(store: Store, job: Job, owner: str, now: datetime, stale_before: datetime) -> bool:
    """Take over a running job whose daemon stopped watching it; False if it is watched again
    or another replica adopted it first."""
    return _transition(
        store,
        job.id,
        (Job.state == JobState.running.value, _orphaned(stale_before)),
        {"owner": owner, "heartbeat_at": now},
        event="job.adopted",
        message=f"{job.kind} job {job.id} adopted by {owner} from {job.owner or 'nobody'} "
        f"(heartbeat stopped at {_when(job.heartbeat_at)})",
        evidence=_evidence(job)
        | {"owner": owner, "previous_owner": job.owner, "heartbeat_at": _when(job.heartbeat_at)},
        ts=now,
    )


def release_jobs(store: Store, owner: str) -> int:
    """Stop watching every job ``owner`` runs, so that the next daemon adopts them at once
    instead of waiting for their heartbeats to go stale; returns how many there were."""
    with store.session() as session:
        result = session.connection().execute(
            update(Job)
            .where(Job.state == JobState.running.value, Job.owner == owner)
            .values(owner=None)
        )
        return int(result.rowcount)


def finish_job(
    store: Store,
    job: Job,
    owner: str,
    state: JobState,
    now: datetime,
    message: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """End a running job that ``owner`` watches as succeeded, failed or cancelled."""
    if state not in (JobState.succeeded, JobState.failed, JobState.cancelled):
        raise ValueError(f"a job ends succeeded, failed or cancelled, not {state.value}")
    return _transition(
        store,
        job.id,
        _owned_by(owner),
        {"state": state.value, "finished_at": now, "result": result, "error": error},
        event=f"job.{state.value}",
        message=message,
        evidence=_evidence(job) | {"error": error, "result": result},
        ts=now,
    )


def requeue_job(
    store: Store, job: Job, owner: str, now: datetime, not_before: datetime, error: str
) -> bool:
    """Queue a running job that ``owner`` watches for another attempt after ``not_before``,
    keeping the failed attempt's error."""
    return _transition(
        store,
        job.id,
        _owned_by(owner),
        {
            "state": JobState.queued.value,
            "not_before": not_before,
            "owner": None,
            "handle": None,
            "error": error,
        },
        event=f"job.{JobState.queued.value}",
        message=f"{job.kind} job {job.id} attempt {job.attempt} of {job.max_attempts} failed: "
        f"{error}; retrying from {_when(not_before)}",
        evidence=_evidence(job)
        | {
            "error": error,
            "not_before": _when(not_before),
            "retry_in_s": (not_before - now).total_seconds(),
        },
        ts=now,
    )


def _transition(
    store: Store,
    job_id: int,
    guard: tuple[ColumnElement[bool], ...],
    values: dict[str, Any],
    *,
    event: str,
    message: str,
    evidence: dict[str, Any],
    ts: datetime | None = None,
) -> bool:
    """Apply ``values`` if the job still matches ``guard``, then record the event.

    The event is written in its own transaction after the change commits (through
    ``Store.add_event``, the one writer of events): a crash in between loses the event, never
    the change.
    """
    with store.session() as session:
        connection = session.connection()
        if not _execute(connection, job_id, guard, values):
            return False
        deployment = connection.execute(
            select(Deployment.name)
            .join(Job, Job.deployment_id == Deployment.id)
            .where(Job.id == job_id)
        ).scalar_one()
    store.add_event(deployment, event, message, evidence, ts=ts)
    return True


def _execute(
    connection: Connection,
    job_id: int,
    guard: tuple[ColumnElement[bool], ...],
    values: dict[str, Any],
) -> bool:
    result = connection.execute(update(Job).where(Job.id == job_id, *guard).values(values))
    return int(result.rowcount) == 1


def _owned_by(owner: str) -> tuple[ColumnElement[bool], ...]:
    return (Job.state == JobState.running.value, Job.owner == owner)


def _orphaned(stale_before: datetime) -> ColumnElement[bool]:
    return or_(
        Job.owner.is_(None),
        Job.heartbeat_at.is_(None),
        Job.heartbeat_at < stale_before,
    )


def _refused(store: Store, job_id: int, action: str, allowed: tuple[JobState, ...]) -> StoreError:
    _, job = get_job(store, job_id)
    states = " or ".join(s.value for s in allowed)
    return StoreError(
        f"job {job_id} ({job.kind}) is {job.state}, so it cannot be {action}: only a job that "
        f"is {states} can"
    )


def _evidence(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "kind": job.kind, "trigger": job.trigger, "attempt": job.attempt}


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
