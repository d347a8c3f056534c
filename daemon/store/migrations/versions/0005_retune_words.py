"""The words of 0.2 (docs/concepts.md): job kinds ``retrain`` and ``revise_prompt`` become
``finetune`` and ``prompt_revision``, and the policy actions they were become ``retune``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

No table changes shape. Stored jobs take their kind's new name, so a job queued by 0.1 runs under
0.2; so do the job events' evidence and the open job-failure incidents (``job_failed:<kind>``),
so a 0.2 success resolves a 0.1 failure. Policy decisions in the audit log take the new action,
so the cooldown after a 0.1 action still holds and the decision metrics count one action under
one name. The text each event recorded is left as it was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = {"retrain": "finetune", "revise_prompt": "prompt_revision"}
ACTIONS = {"retrain": "retune", "revise_prompt": "retune"}
DECISION = "policy.decision"
BATCH = 1_000

JOB_EVENTS = "job.%"
INCIDENT = "job_failed:"

jobs = sa.table("jobs", sa.column("kind", sa.String))
incidents = sa.table("notification_incidents", sa.column("incident", sa.String))
events = sa.table(
    "events",
    sa.column("id", sa.BigInteger),
    sa.column("kind", sa.String),
    sa.column("evidence", sa.JSON),
)


def _renamed(
    event: str, evidence: dict[str, Any], actions: dict[str, str], kinds: dict[str, str]
) -> bool:
    """Rename the action and job kind words of one event's evidence in place."""
    if event != DECISION:
        value = evidence.get("kind")
        if isinstance(value, str) and value in kinds:
            evidence["kind"] = kinds[value]
            return True
        return False
    changed = False
    for part in (evidence, evidence.get("would_be")):
        if not isinstance(part, dict):
            continue
        for key, names in (("action", actions), ("intended", actions), ("job_kind", kinds)):
            value = part.get(key)
            if isinstance(value, str) and value in names:
                part[key] = names[value]
                changed = True
    return changed


def _rewrite(actions: dict[str, str], kinds: dict[str, str]) -> None:
    connection = op.get_bind()
    for old, new in kinds.items():
        connection.execute(jobs.update().where(jobs.c.kind == old).values(kind=new))
        connection.execute(
            incidents.update()
            .where(incidents.c.incident == INCIDENT + old)
            .values(incident=INCIDENT + new)
        )
    last = -1
    while True:
        rows = connection.execute(
            sa.select(events.c.id, events.c.kind, events.c.evidence)
            .where(
                sa.or_(events.c.kind == DECISION, events.c.kind.like(JOB_EVENTS)),
                events.c.id > last,
            )
            .order_by(events.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for event_id, kind, evidence in rows:
            if isinstance(evidence, dict) and _renamed(kind, evidence, actions, kinds):
                connection.execute(
                    events.update().where(events.c.id == event_id).values(evidence=evidence)
                )
        last = rows[-1][0]


def upgrade() -> None:
    _rewrite(ACTIONS, KINDS)


def downgrade() -> None:
    # Jobs take back their 0.1 kinds. Decisions keep `retune`, which 0.1 did not know: it reads
    # them as no action, so its cooldown starts afresh at its next action.
    _rewrite({}, {new: old for old, new in KINDS.items()})
