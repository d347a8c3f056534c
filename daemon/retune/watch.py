"""Watching a promoted version, and rolling it back when its live quality falls.

For ``retune.watch.checks`` checks after a promotion (and within ``retune.watch.period``), each
check also compares the live quality of the samples the new version served (``model_version``
or ``prompt_version`` equal to its name) with that of the samples the previous version served in
as long a period before the promotion: accuracy on labelled samples for classification, the mean
judge score for generation. A fall of more than ``retune.watch.max_drop`` rolls back to the
previous version — fenced by the leader's epoch, through the promotion hooks — with an audit event
that carries both numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, select

from daemon.config.models import Deployment
from daemon.domain import Task
from daemon.store import Store
from daemon.store.models import Check, Sample, Version
from daemon.store.models import Deployment as DeploymentRow

log = logging.getLogger("driftd.watch")

Rollback = Callable[[str], object]
"""Rolls the named deployment back (hooks and fencing included); given by the caller."""


@dataclass(frozen=True, slots=True)
class Quality:
    """Live quality of the samples one version served: the value and how many it rests on."""

    value: float | None
    rows: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """One comparison during the watch."""

    version: str
    before: Quality
    after: Quality
    regressed: bool
    check_number: int


def quality(
    connection: Connection,
    deployment_id: int,
    task: Task,
    version: str,
    start: datetime,
    end: datetime,
) -> Quality:
    """Accuracy (classification, labelled samples) or mean judge score (generation) of the
    samples ``version`` served in ``[start, end)``."""
    served = (
        Sample.deployment_id == deployment_id,
        Sample.ts >= start,
        Sample.ts < end,
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


def watch(
    store: Store,
    deployment: Deployment,
    rollback: Rollback,
    *,
    min_rows: int,
    now: datetime | None = None,
) -> Verdict | None:
    """Compare the active version with its predecessor if it is being watched; roll back on a
    regression. None when nothing is watched or there is too little data to judge yet."""
    when = now or datetime.now(UTC)
    settings = deployment.retune.watch
    with store.session(readonly=True) as session:
        connection = session.connection()
        found = session.execute(
            select(DeploymentRow.id, Version)
            .join(Version, Version.deployment_id == DeploymentRow.id)
            .where(DeploymentRow.name == deployment.name, Version.state == "active")
        ).first()
        if found is None:
            return None
        deployment_id, active = found
        if active.promoted_at is None or active.parent_id is None:
            return None  # nothing to go back to, or never promoted
        if when - active.promoted_at > settings.period:
            return None
        number = connection.execute(
            select(func.count()).where(
                Check.deployment_id == deployment_id, Check.finished_at > active.promoted_at
            )
        ).scalar_one()
        if number > settings.checks:
            return None
        previous = session.get(Version, active.parent_id)
        if previous is None:
            return None
        served_for = when - active.promoted_at
        after = quality(
            connection, deployment_id, deployment.task, active.name, active.promoted_at, when
        )
        before = quality(
            connection,
            deployment_id,
            deployment.task,
            previous.name,
            active.promoted_at - served_for,
            active.promoted_at,
        )
    if min(after.rows, before.rows) < min_rows or after.value is None or before.value is None:
        return None
    regressed = after.value < before.value - settings.max_drop
    verdict = Verdict(active.name, before, after, regressed, int(number))
    evidence = {
        "version": active.name,
        "previous": previous.name,
        "before": {"value": before.value, "rows": before.rows},
        "after": {"value": after.value, "rows": after.rows},
        "max_drop": settings.max_drop,
        "check_number": int(number),
    }
    if not regressed:
        store.add_event(
            deployment.name,
            "watch.ok",
            f"{active.name}: live quality {after.value:.3f} vs {before.value:.3f} before it",
            evidence,
        )
        return verdict
    store.add_event(
        deployment.name,
        "watch.regressed",
        f"{active.name}: live quality fell to {after.value:.3f} from {before.value:.3f} "
        f"(more than {settings.max_drop}); rolling back to {previous.name}",
        evidence,
    )
    log.warning("promoted version regressed; rolling back", extra=evidence)
    rollback(deployment.name)
    return verdict
