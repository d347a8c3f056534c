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

from daemon.config.models import Deployment
from daemon.store import Store
from daemon.store.quality import Quality, watched

log = logging.getLogger("driftd.watch")

Rollback = Callable[[str], object]
"""Rolls the named deployment back (hooks and fencing included); given by the caller."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One comparison during the watch."""

    version: str
    before: Quality
    after: Quality
    regressed: bool
    check_number: int


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
    found = watched(
        store,
        deployment.name,
        deployment.task,
        when,
        period=settings.period,
        max_checks=settings.checks,
    )
    if found is None:
        return None
    active, previous, number = found.active, found.previous, found.checks
    before, after = found.before, found.after
    if min(after.rows, before.rows) < min_rows or after.value is None or before.value is None:
        return None
    regressed = after.value < before.value - settings.max_drop
    verdict = Verdict(active.name, before, after, regressed, number)
    evidence = {
        "version": active.name,
        "previous": previous.name,
        "before": {"value": before.value, "rows": before.rows},
        "after": {"value": after.value, "rows": after.rows},
        "max_drop": settings.max_drop,
        "check_number": number,
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
