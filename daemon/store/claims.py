"""Run claims while their run is under way: heartbeats, the end of a run, stale claims of dead
replicas and the leader's follow-up after a check.

``Store.claim_run`` inserts a claim, unique on (deployment, job kind, scheduled time); this module
is what happens to it next, by the rules the job runner follows for jobs (``daemon.store.jobs``):
the replica running a claimed tick renews its heartbeat, a claim whose heartbeat went stale before
it finished lost its replica, and one guarded ``UPDATE`` lets exactly one other replica adopt it
and run it again as the next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Row, Select, and_, select, update

from daemon.store.models import Check, Deployment, RunClaim, utcnow
from daemon.store.repository import Store
from daemon.store.statements import deployment_id_of


@dataclass(frozen=True, slots=True)
class Claim:
    """One stored claim, as a replica that may re-run or follow up on it reads it."""

    id: int
    deployment: str
    job_kind: str
    scheduled_for: datetime
    owner: str
    attempt: int


def beat_claims(store: Store, owner: str, now: datetime | None = None) -> int:
    """Renew the heartbeat of every unfinished claim ``owner`` runs; returns how many."""
    with store.session() as session:
        result = session.connection().execute(
            update(RunClaim)
            .where(RunClaim.owner == owner, RunClaim.finished_at.is_(None))
            .values(heartbeat_at=now or utcnow())
        )
        return int(result.rowcount)


def finish_claim(
    store: Store, deployment: str, job_kind: str, scheduled_for: datetime, owner: str
) -> bool:
    """Mark the run of a claim ``owner`` holds as finished; False if another replica adopted it
    meanwhile (this replica's heartbeat had gone stale): its outcome is then not the one kept."""
    with store.session() as session:
        connection = session.connection()
        result = connection.execute(
            update(RunClaim)
            .where(
                _tick(connection, deployment, job_kind, scheduled_for),
                RunClaim.owner == owner,
                RunClaim.finished_at.is_(None),
            )
            .values(finished_at=utcnow())
        )
        return int(result.rowcount) == 1


def claimed_among(
    store: Store, job_kind: str, ticks: set[tuple[str, datetime]]
) -> set[tuple[str, datetime]]:
    """Which of ``ticks`` (deployment, scheduled time) of ``job_kind`` are claimed already."""
    if not ticks:
        return set()
    earliest = min(when for _, when in ticks)
    with store.session(readonly=True) as session:
        found = session.execute(
            select(Deployment.name, RunClaim.scheduled_for)
            .join(Deployment, Deployment.id == RunClaim.deployment_id)
            .where(
                RunClaim.job_kind == job_kind,
                RunClaim.scheduled_for >= earliest,
                Deployment.name.in_({name for name, _ in ticks}),
            )
        ).all()
    return {(str(name), when) for name, when in found} & ticks


def stale_claims(store: Store, job_kind: str, stale_before: datetime, limit: int) -> list[Claim]:
    """Unfinished claims of ``job_kind`` whose heartbeat stopped before ``stale_before``: their
    replica died in the middle of the run. Oldest first."""
    with store.session(readonly=True) as session:
        rows = session.execute(
            _claims()
            .where(RunClaim.job_kind == job_kind, _stale(stale_before))
            .order_by(RunClaim.scheduled_for)
            .limit(limit)
        ).all()
    return [_claim(row) for row in rows]


def adopt_claim(store: Store, claim: Claim, owner: str, stale_before: datetime) -> bool:
    """Take over ``claim`` as its next attempt; False if its replica beat again or another
    replica adopted it first, in which case the caller must not run it."""
    with store.session() as session:
        result = session.connection().execute(
            update(RunClaim)
            .where(
                RunClaim.id == claim.id,
                RunClaim.attempt == claim.attempt,
                _stale(stale_before),
            )
            .values(owner=owner, heartbeat_at=utcnow(), attempt=claim.attempt + 1)
        )
        return int(result.rowcount) == 1


def check_recorded(store: Store, deployment: str, scheduled_for: datetime) -> bool:
    """Whether a check of ``deployment`` for ``scheduled_for`` is stored (its replica died
    after recording it, before marking its claim finished)."""
    with store.session(readonly=True) as session:
        found = session.execute(
            select(Check.id)
            .join(Deployment, Deployment.id == Check.deployment_id)
            .where(Deployment.name == deployment, Check.scheduled_for == scheduled_for)
            .limit(1)
        ).first()
    return found is not None


def to_follow_up(store: Store, job_kind: str, limit: int) -> list[Claim]:
    """Finished claims of ``job_kind`` the leader has not followed up on yet, oldest first."""
    with store.session(readonly=True) as session:
        rows = session.execute(
            _claims()
            .where(
                RunClaim.job_kind == job_kind,
                RunClaim.followed_up_at.is_(None),
                RunClaim.finished_at.is_not(None),
            )
            .order_by(RunClaim.scheduled_for)
            .limit(limit)
        ).all()
    return [_claim(row) for row in rows]


def followed_up(store: Store, claim_ids: list[int]) -> int:
    """Mark claims as followed up on; returns how many were not already."""
    if not claim_ids:
        return 0
    with store.session() as session:
        result = session.connection().execute(
            update(RunClaim)
            .where(RunClaim.id.in_(claim_ids), RunClaim.followed_up_at.is_(None))
            .values(followed_up_at=utcnow())
        )
        return int(result.rowcount)


def _tick(
    connection: Connection, deployment: str, job_kind: str, scheduled_for: datetime
) -> ColumnElement[bool]:
    return and_(
        RunClaim.deployment_id == deployment_id_of(connection, deployment),
        RunClaim.job_kind == job_kind,
        RunClaim.scheduled_for == scheduled_for,
    )


def _stale(stale_before: datetime) -> ColumnElement[bool]:
    return and_(
        RunClaim.finished_at.is_(None),
        RunClaim.heartbeat_at.is_not(None),
        RunClaim.heartbeat_at < stale_before,
    )


def _claims() -> Select[int, str, str, datetime, str, int]:
    return select(
        RunClaim.id,
        Deployment.name,
        RunClaim.job_kind,
        RunClaim.scheduled_for,
        RunClaim.owner,
        RunClaim.attempt,
    ).join(Deployment, Deployment.id == RunClaim.deployment_id)


def _claim(row: Row[int, str, str, datetime, str, int]) -> Claim:
    claim_id, deployment, job_kind, scheduled_for, owner, attempt = row
    return Claim(
        int(claim_id), str(deployment), str(job_kind), scheduled_for, str(owner), int(attempt)
    )
