"""The loop's state as the leader's metrics export it, read from the store in a handful of
grouped queries: the latest verdict of each deployment, jobs by kind, state and trigger, their
run times, the active versions, and promotions, rollbacks and policy decisions from the audit log.

The queries aggregate in the database (GROUP BY, latest row per deployment), so a scrape costs the
same whether the store holds ten jobs or ten thousand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, select
from sqlalchemy.orm import Session

from daemon.domain import CheckStatus, JobState, VersionState
from daemon.store.models import Check, Deployment, Event, Job, Version
from daemon.store.repository import Store

PROMOTED, ROLLED_BACK, DECISION = "version.promoted", "version.rolled_back", "policy.decision"
FINISHED = (JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value)
UNFINISHED = (JobState.queued.value, JobState.awaiting_approval.value, JobState.running.value)
# A check "completes" when it reaches a verdict; a failed one is no success for staleness alerts.
VERDICTS = (CheckStatus.ok.value, CheckStatus.drift.value, CheckStatus.insufficient_data.value)


@dataclass(frozen=True, slots=True)
class LatestCheck:
    """The latest check of a deployment that reached a verdict, as stored."""

    deployment: str
    status: str
    finished_at: datetime
    signals: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class JobDurations:
    """Run times of the finished jobs of one (deployment, kind), already bucketed."""

    deployment: str
    kind: str
    buckets: tuple[int, ...]  # cumulative counts, one per bucket bound, then +Inf
    total_seconds: float


@dataclass(frozen=True, slots=True)
class Readings:
    """One consistent look at the loop's state, for one scrape (or several, cached)."""

    latest_checks: list[LatestCheck] = field(default_factory=list)
    # (deployment, kind, state, trigger) -> jobs
    jobs: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # (deployment, kind) -> when a job of that kind last succeeded
    job_last_success: dict[tuple[str, str], datetime] = field(default_factory=dict)
    job_durations: list[JobDurations] = field(default_factory=list)
    # (deployment, kind, version name) of each active version
    active_versions: list[tuple[str, str, str]] = field(default_factory=list)
    # (deployment, trigger) -> promotions
    promotions: dict[tuple[str, str], int] = field(default_factory=dict)
    # (deployment, reason) -> rollbacks
    rollbacks: dict[tuple[str, str], int] = field(default_factory=dict)
    last_rollback: dict[str, datetime] = field(default_factory=dict)
    # (deployment, action, reason) -> decisions
    decisions: dict[tuple[str, str, str], int] = field(default_factory=dict)


def read(store: Store, job_buckets: Sequence[float]) -> Readings:
    """Everything the leader exports from the store, in one read-only transaction; job run
    times are counted into histogram buckets with the upper bounds ``job_buckets`` (seconds)."""
    dialect = store.engine.dialect.name
    with store.session(readonly=True) as session:
        jobs, last_success = _jobs(session)
        promotions, rollbacks, last_rollback, decisions = _events(session)
        return Readings(
            latest_checks=_latest_checks(session),
            jobs=jobs,
            job_last_success=last_success,
            job_durations=_job_durations(session, dialect, job_buckets),
            active_versions=_active_versions(session),
            promotions=promotions,
            rollbacks=rollbacks,
            last_rollback=last_rollback,
            decisions=decisions,
        )


def _latest_checks(session: Session) -> list[LatestCheck]:
    # Ids grow with insertion and a check is inserted when it ends: the largest id is the latest.
    latest = (
        select(func.max(Check.id))
        .where(Check.status.in_(VERDICTS), Check.finished_at.is_not(None))
        .group_by(Check.deployment_id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Deployment.name, Check.status, Check.finished_at, Check.signals)
        .join(Deployment, Deployment.id == Check.deployment_id)
        .where(Check.id.in_(latest))
    ).all()
    checks = []
    for name, status, finished_at, stored in rows:
        signals = stored.get("signals") if isinstance(stored, dict) else None
        checks.append(
            LatestCheck(
                deployment=name,
                status=status,
                finished_at=finished_at,
                signals=[s for s in signals or () if isinstance(s, dict)],
            )
        )
    return sorted(checks, key=lambda check: check.deployment)


def _jobs(
    session: Session,
) -> tuple[dict[tuple[str, str, str, str], int], dict[tuple[str, str], datetime]]:
    rows = session.execute(
        select(
            Deployment.name,
            Job.kind,
            Job.state,
            Job.trigger,
            func.count(),
            func.max(Job.finished_at),
        )
        .join(Deployment, Deployment.id == Job.deployment_id)
        .group_by(Deployment.name, Job.kind, Job.state, Job.trigger)
    ).all()
    counts: dict[tuple[str, str, str, str], int] = {}
    last_success: dict[tuple[str, str], datetime] = {}
    for name, kind, state, trigger, count, finished in rows:
        counts[name, kind, state, trigger] = int(count)
        if state == JobState.succeeded.value and finished is not None:
            previous = last_success.get((name, kind))
            last_success[name, kind] = finished if previous is None else max(previous, finished)
    return counts, last_success


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    """``end - start`` in seconds, in SQL: SQLite keeps times as text, PostgreSQL as timestamptz."""
    if dialect == "sqlite":
        return cast((func.julianday(end) - func.julianday(start)) * 86400.0, Float)
    return cast(func.extract("epoch", end - start), Float)


def _job_durations(session: Session, dialect: str, buckets: Sequence[float]) -> list[JobDurations]:
    seconds = _seconds_between(Job.started_at, Job.finished_at, dialect)
    per_bucket = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in buckets]
    rows = session.execute(
        select(Deployment.name, Job.kind, func.count(), func.sum(seconds), *per_bucket)
        .join(Deployment, Deployment.id == Job.deployment_id)
        .where(
            Job.state.in_(FINISHED),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .group_by(Deployment.name, Job.kind)
    ).all()
    durations = []
    for name, kind, count, total, *bucketed in rows:
        counts = (*(int(n or 0) for n in bucketed), int(count))
        durations.append(JobDurations(name, kind, counts, max(0.0, float(total or 0.0))))
    return sorted(durations, key=lambda d: (d.deployment, d.kind))


def _active_versions(session: Session) -> list[tuple[str, str, str]]:
    rows = session.execute(
        select(Deployment.name, Version.kind, Version.name)
        .join(Deployment, Deployment.id == Version.deployment_id)
        .where(Version.state == VersionState.active.value)
        .order_by(Deployment.name, Version.kind)
    ).all()
    return [(str(d), str(k), str(v)) for d, k, v in rows]


def _actor_class(actor: ColumnElement[str]) -> ColumnElement[str]:
    """Who changed a version, as a bounded word: the leader, an operator, or the config."""
    return case(
        (actor.like("leader:%"), "leader"),
        (actor.like("api%"), "manual"),
        (actor.like("cli%"), "manual"),
        (actor.like("driftd:config"), "config"),
        else_="other",
    )


def _events(
    session: Session,
) -> tuple[
    dict[tuple[str, str], int],
    dict[tuple[str, str], int],
    dict[str, datetime],
    dict[tuple[str, str, str], int],
]:
    """Promotions, rollbacks and policy decisions counted from the audit log.

    A promotion's trigger is the trigger of the job that produced its version when the leader
    promoted it (``drift``, ``schedule``), ``manual`` from the admin API or CLI, ``config`` for
    a prompted deployment's first prompt. A rollback's reason is ``watch`` when the leader rolled
    back (only the post-promotion watch does), ``manual`` when an operator did.
    """
    actor = _actor_class(Event.evidence["actor"].as_string())
    new_version = Event.evidence[("new", "id")].as_integer()
    promoted = session.execute(
        select(Deployment.name, actor, Job.trigger, func.count())
        .join(Deployment, Deployment.id == Event.deployment_id)
        .outerjoin(Version, Version.id == new_version)
        .outerjoin(Job, Job.id == Version.job_id)
        .where(Event.kind == PROMOTED)
        .group_by(Deployment.name, actor, Job.trigger)
    ).all()
    promotions: dict[tuple[str, str], int] = {}
    for name, who, job_trigger, count in promoted:
        trigger = (job_trigger or "auto") if who == "leader" else who
        promotions[name, trigger] = promotions.get((name, trigger), 0) + int(count)

    rolled = session.execute(
        select(Deployment.name, actor, func.count(), func.max(Event.ts))
        .join(Deployment, Deployment.id == Event.deployment_id)
        .where(Event.kind == ROLLED_BACK)
        .group_by(Deployment.name, actor)
    ).all()
    rollbacks: dict[tuple[str, str], int] = {}
    last_rollback: dict[str, datetime] = {}
    for name, who, count, latest in rolled:
        reason = "watch" if who == "leader" else who
        rollbacks[name, reason] = rollbacks.get((name, reason), 0) + int(count)
        if latest is not None and (name not in last_rollback or latest > last_rollback[name]):
            last_rollback[name] = latest

    action = Event.evidence["action"].as_string()
    reason = Event.evidence["reason"].as_string()
    decided = session.execute(
        select(Deployment.name, action, reason, func.count())
        .join(Deployment, Deployment.id == Event.deployment_id)
        .where(Event.kind == DECISION)
        .group_by(Deployment.name, action, reason)
    ).all()
    decisions = {
        (name, str(act or "unknown"), str(why or "unknown")): int(count)
        for name, act, why, count in decided
    }
    return promotions, rollbacks, last_rollback, decisions
