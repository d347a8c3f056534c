"""Live quality after a promotion: how well the samples a version served fared, against the
samples its predecessor served in as long a period before the promotion.

The quality of a version is the accuracy of its labelled samples (classification) or the mean
judge score of its judged ones (generation); a sample was served by a version when its
``model_version`` or ``prompt_version`` is the version's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select

from daemon.domain import Task, VersionState
from daemon.store.models import Check, Deployment, Sample, Version
from daemon.store.repository import Store
from daemon.store.statements import samples_between


@dataclass(frozen=True, slots=True)
class Quality:
    """Live quality of the samples one version served: the value and how many it rests on."""

    value: float | None
    rows: int


@dataclass(frozen=True, slots=True)
class Watched:
    """The active version under watch, the version it replaced, how many checks finished since
    the promotion, and the quality each version served with (``before``: the predecessor's)."""

    active: Version
    previous: Version
    checks: int
    before: Quality
    after: Quality


def watched(
    store: Store,
    deployment: str,
    task: Task,
    now: datetime,
    *,
    period: timedelta,
    max_checks: int,
) -> Watched | None:
    """The active version of ``deployment`` and its predecessor with their live quality, read
    in one transaction, while the active version is watched: promoted at most ``period`` before
    ``now``, with at most ``max_checks`` checks finished since. None otherwise, and when it has
    no predecessor or was never promoted."""
    with store.session(readonly=True) as session:
        connection = session.connection()
        found = session.execute(
            select(Deployment.id, Version)
            .join(Version, Version.deployment_id == Deployment.id)
            .where(Deployment.name == deployment, Version.state == VersionState.active.value)
        ).first()
        if found is None:
            return None
        deployment_id, active = found
        if active.promoted_at is None or active.parent_id is None:
            return None  # nothing to go back to, or never promoted
        if now - active.promoted_at > period:
            return None
        checks = connection.execute(
            select(func.count()).where(
                Check.deployment_id == deployment_id, Check.finished_at > active.promoted_at
            )
        ).scalar_one()
        if checks > max_checks:
            return None
        previous = session.get(Version, active.parent_id)
        if previous is None:
            return None
        served_for = now - active.promoted_at
        after = _quality(connection, deployment_id, task, active.name, active.promoted_at, now)
        before = _quality(
            connection,
            deployment_id,
            task,
            previous.name,
            active.promoted_at - served_for,
            active.promoted_at,
        )
    return Watched(active, previous, int(checks), before, after)


def _quality(
    connection: Connection,
    deployment_id: int,
    task: Task,
    version: str,
    start: datetime,
    end: datetime,
) -> Quality:
    """The quality of the samples ``version`` served in ``[start, end)``."""
    served = (
        *samples_between(deployment_id, start, end),
        (Sample.model_version == version) | (Sample.prompt_version == version),
    )
    if task is Task.classification:
        labelled = (*served, Sample.label.is_not(None), Sample.prediction.is_not(None))
        rows = connection.execute(select(func.count()).where(*labelled)).scalar_one()
        right = connection.execute(
            select(func.count()).where(*labelled, Sample.label == Sample.prediction)
        ).scalar_one()
        return Quality(right / rows if rows else None, int(rows))
    judged = (*served, Sample.judge_score.is_not(None))
    mean, rows = connection.execute(
        select(func.avg(Sample.judge_score), func.count()).where(*judged)
    ).one()
    return Quality(None if mean is None else float(mean), int(rows))
