"""A deployment's model and prompt versions, and the one operation that changes which is live.

Promotion and rollback each run in ONE write transaction that retires the active version,
activates another and writes the audit event, so a deployment has exactly one active version
at every commit, whoever reads it. Two promotions of the same deployment at once are serialised
by a row lock on the deployment (PostgreSQL) or by SQLite's write lock, which every writing
transaction takes when it begins.

A leader promoting on its own passes ``fence``: the lease check runs inside the same
transaction, so a deposed leader changes nothing (see ``daemon.store.lease.epoch_is_current``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daemon.domain import VersionKind, VersionState
from daemon.errors import DriftdError, LeaseLost, NotFound
from daemon.store.models import Deployment, Job, Version, utcnow
from daemon.store.repository import Store
from daemon.store.statements import deployment_id_of, write_event

Fence = Callable[[Connection], bool]
"""A check run inside the transaction before anything changes; False refuses the change."""

# Meta keys a rollback writes on the version it retires; a later promotion of that version
# clears them, since from then on it is a version like any other.
ROLLED_BACK = "rolled_back"
_ROLLBACK_KEYS = (ROLLED_BACK, "rolled_back_at", "rolled_back_by", "rolled_back_to")


@dataclass(frozen=True, slots=True)
class VersionChange:
    """What a promotion or a rollback did: the version now active and the one it replaced."""

    deployment: str
    active: Version
    previous: Version | None
    event_id: int


def list_versions(store: Store, deployment: str) -> list[Version]:
    """Every version of ``deployment``, newest first; ``NotFound`` if it is not registered."""
    with store.session(readonly=True) as session:
        deployment_id = deployment_id_of(session.connection(), deployment)
        return list(
            session.scalars(
                select(Version)
                .where(Version.deployment_id == deployment_id)
                .order_by(Version.created_at.desc(), Version.id.desc())
            )
        )


def job_version(store: Store, job_id: int, name: str) -> Version | None:
    """The version named ``name`` that job ``job_id`` built, if it was registered."""
    with store.session(readonly=True) as session:
        return session.scalars(
            select(Version).where(Version.job_id == job_id, Version.name == name)
        ).first()


def add_version(
    store: Store,
    deployment: str,
    *,
    kind: VersionKind | str,
    name: str,
    artifact: str,
    parent: str | None = None,
    state: VersionState | str = VersionState.candidate,
    eval_scores: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    job_id: int | None = None,
) -> Version:
    """Record a new version of ``deployment``; ``parent`` is the name of the version it came from.

    A version starts as a candidate, or as rejected when its gate has already turned it down;
    only ``promote`` makes a version active, so that the one-active rule has one guardian.
    """
    kind = VersionKind(kind).value
    state = VersionState(state).value
    if state not in (VersionState.candidate, VersionState.rejected):
        raise ValueError(
            f"a new version is a candidate or rejected, not {state!r}; promote it to activate it"
        )
    if not name or not name.strip():
        raise ValueError("a version needs a non-empty name")
    try:
        with store.session() as session:
            deployment_id = deployment_id_of(session.connection(), deployment)
            parent_id = None
            if parent is not None:
                parent_id = _named(session, deployment, deployment_id, parent).id
            if job_id is not None and session.get(Job, job_id) is None:
                raise NotFound(
                    f"no job {job_id} in the store for version {name!r} of {deployment!r}; "
                    "pass the id of the job that built it, or none"
                )
            row = Version(
                deployment_id=deployment_id,
                kind=kind,
                name=name,
                artifact=artifact,
                parent_id=parent_id,
                state=state,
                eval_scores=eval_scores,
                meta=meta,
                job_id=job_id,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return row
    except IntegrityError as error:
        raise DriftdError(
            f"deployment {deployment!r} already has a version named {name!r}; "
            "give the new version another name"
        ) from error


def promote(
    store: Store,
    deployment: str,
    name: str,
    *,
    actor: str,
    fence: Fence | None = None,
    force: bool = False,
) -> VersionChange:
    """Make version ``name`` the active version of ``deployment`` and retire the active one.

    Candidates, retired and rolled-back versions can be promoted; a rejected one only with
    ``force`` (its gate turned it down). ``actor`` (who asked: the leader, an operator) goes
    into the audit event. Raises ``LeaseLost`` when ``fence`` refuses, with nothing changed.
    """
    with store.session() as session:
        deployment_id = _lock_deployment(session, deployment)
        _check_fence(session, fence, f"promote version {name!r} of {deployment!r}")
        target = _named(session, deployment, deployment_id, name)
        if target.state == VersionState.active:
            raise DriftdError(
                f"version {name!r} of {deployment!r} is already active; nothing to promote"
            )
        if target.state == VersionState.rejected and not force:
            raise DriftdError(
                f"version {name!r} of {deployment!r} was rejected by its gate "
                f"(eval scores: {target.eval_scores}); promote it with force to override"
            )
        previous = _active(session, deployment_id)
        now = utcnow()
        if previous is not None:
            previous.state = VersionState.retired.value
            # The UPDATE goes first, so no moment ever has two active rows.
            session.flush()
        target.state = VersionState.active.value
        target.promoted_at = now
        if target.meta and any(key in target.meta for key in _ROLLBACK_KEYS):
            target.meta = {k: v for k, v in target.meta.items() if k not in _ROLLBACK_KEYS}
        evidence = {
            "old": _brief(previous),
            "new": _brief(target),
            "actor": actor,
            "force": force,
            "eval_scores": target.eval_scores,
        }
        was = previous.name if previous is not None else "none"
        event = _event(
            session,
            deployment_id,
            "version.promoted",
            f"{deployment}: version {name} promoted by {actor} (was {was})",
            evidence,
        )
        return VersionChange(deployment, target, previous, event)


def rollback(
    store: Store, deployment: str, *, actor: str, fence: Fence | None = None
) -> VersionChange:
    """Re-activate the version that was active before the current one, and retire the current
    one marked ``rolled_back`` in its meta.

    The version rolled back to is the retired one activated most recently, leaving out versions
    that were themselves rolled back: a second rollback goes one step further back, never
    forward to the version that was just abandoned. Raises ``LeaseLost`` when ``fence``
    refuses, with nothing changed.
    """
    with store.session() as session:
        deployment_id = _lock_deployment(session, deployment)
        _check_fence(session, fence, f"roll back {deployment!r}")
        current = _active(session, deployment_id)
        if current is None:
            raise DriftdError(
                f"deployment {deployment!r} has no active version, so there is nothing to roll "
                "back; promote a version first"
            )
        before = [
            version
            for version in session.scalars(
                select(Version)
                .where(
                    Version.deployment_id == deployment_id,
                    Version.state == VersionState.retired.value,
                    Version.promoted_at.is_not(None),
                )
                .order_by(Version.promoted_at.desc(), Version.id.desc())
            )
            if not (version.meta or {}).get(ROLLED_BACK)
        ]
        if not before:
            raise DriftdError(
                f"deployment {deployment!r} has no earlier version to roll back to: "
                f"{current.name!r} is the first active one (versions rolled back from are "
                "skipped); promote a version by name instead"
            )
        target = before[0]
        now = utcnow()
        current.state = VersionState.retired.value
        current.meta = {
            **(current.meta or {}),
            ROLLED_BACK: True,
            "rolled_back_at": now.isoformat(),
            "rolled_back_by": actor,
            "rolled_back_to": target.name,
        }
        session.flush()
        target.state = VersionState.active.value
        target.promoted_at = now
        event = _event(
            session,
            deployment_id,
            "version.rolled_back",
            f"{deployment}: rolled back from version {current.name} to {target.name} by {actor}",
            {"old": _brief(current), "new": _brief(target), "actor": actor},
        )
        return VersionChange(deployment, target, current, event)


def _lock_deployment(session: Session, deployment: str) -> int:
    """The deployment's id, with its row locked until commit on PostgreSQL, so that concurrent
    promotions of one deployment queue instead of both retiring the same active version."""
    found = session.execute(
        select(Deployment.id).where(Deployment.name == deployment).with_for_update()
    ).scalar()
    if found is None:
        # The same message as everywhere else a deployment is looked up.
        return deployment_id_of(session.connection(), deployment)
    return int(found)


def _check_fence(session: Session, fence: Fence | None, action: str) -> None:
    if fence is not None and not fence(session.connection()):
        raise LeaseLost(
            f"refused to {action}: this replica no longer holds the leader lease at the epoch "
            "it started with, so another replica leads now; nothing was changed"
        )


def _named(session: Session, deployment: str, deployment_id: int, name: str) -> Version:
    found = session.scalars(
        select(Version).where(Version.deployment_id == deployment_id, Version.name == name)
    ).first()
    if found is None:
        known = session.scalars(
            select(Version.name)
            .where(Version.deployment_id == deployment_id)
            .order_by(Version.created_at.desc(), Version.id.desc())
            .limit(10)
        ).all()
        raise NotFound(
            f"deployment {deployment!r} has no version {name!r}; "
            f"its latest versions: {', '.join(known) or 'none'} (`driftd versions {deployment}`)"
        )
    return found


def _active(session: Session, deployment_id: int) -> Version | None:
    return session.scalars(
        select(Version).where(
            Version.deployment_id == deployment_id,
            Version.state == VersionState.active.value,
        )
    ).first()


def _brief(version: Version | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return {"id": version.id, "name": version.name, "kind": version.kind}


def _event(
    session: Session, deployment_id: int, kind: str, message: str, evidence: dict[str, Any]
) -> int:
    # Written in the change's own transaction: the audit trail cannot miss a change, nor
    # record one that was rolled back.
    return write_event(session, deployment_id, kind, message, evidence, utcnow())
