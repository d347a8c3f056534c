"""What a deployment has done lately, as the policy weighs it: the jobs it created and what they
cost, and when it last acted."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select

from daemon.store.models import Deployment, Event, Job
from daemon.store.repository import Store


@dataclass(frozen=True, slots=True)
class Activity:
    """A deployment's jobs and decisions up to a moment: the jobs created in the period before
    it and their cost, the last job's creation, and the last acting decision."""

    jobs: int
    spent_usd: float
    last_job_at: datetime | None
    last_decision_at: datetime | None


def activity(
    store: Store,
    deployment: str,
    until: datetime,
    *,
    since: datetime,
    decision_kind: str,
    acting: Collection[str],
) -> Activity:
    """``deployment``'s jobs created in ``(since, until]`` and their summed ``cost_usd``, when it
    last created a job, and when it last recorded an event of ``decision_kind`` whose evidence's
    ``action`` (or ``would_be.action``, a dry run's) is one of ``acting``; all at or before
    ``until``. An unregistered deployment has done nothing."""
    with store.session(readonly=True) as session:
        deployment_id = select(Deployment.id).where(Deployment.name == deployment).scalar_subquery()
        jobs_until = (Job.deployment_id == deployment_id, Job.created_at <= until)
        jobs, spent = session.execute(
            select(func.count(Job.id), func.coalesce(func.sum(Job.cost_usd), 0.0)).where(
                *jobs_until, Job.created_at > since
            )
        ).one()
        last_job = session.execute(select(func.max(Job.created_at)).where(*jobs_until)).scalar()
        actions = list(acting)
        last_decision = session.execute(
            select(func.max(Event.ts)).where(
                Event.deployment_id == deployment_id,
                Event.kind == decision_kind,
                Event.ts <= until,
                or_(
                    Event.evidence["action"].as_string().in_(actions),
                    Event.evidence[("would_be", "action")].as_string().in_(actions),
                ),
            )
        ).scalar()
    return Activity(
        jobs=int(jobs),
        spent_usd=float(spent or 0.0),
        last_job_at=last_job,
        last_decision_at=last_decision,
    )
