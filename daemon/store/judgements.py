"""The LLM judge's side of the store: the outputs it has yet to score, and its ledger.

A run's scores and its audit event are written in one transaction, and the events are the
ledger: the tokens spent and the samples the judge failed on are read back from them, so the
daily cap never misses tokens whose scores were stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update

from daemon.store.models import Base, Event, Sample
from daemon.store.repository import Store
from daemon.store.statements import deployment_id_of, samples_between, write_event
from daemon.store.types import require_aware


@dataclass(frozen=True, slots=True)
class Ledger:
    """What the judge's runs in a period record: the tokens spent, and the ids of the samples
    they failed to score."""

    tokens: int
    failed: set[int]


def ledger(store: Store, deployment: str, kind: str, since: datetime, until: datetime) -> Ledger:
    """Sum the evidence of ``deployment``'s events of ``kind`` with ``since < ts <= until``;
    ``NotFound`` if the deployment is not registered."""
    require_aware("until", until)
    with store.session(readonly=True) as session:
        deployment_id = deployment_id_of(session.connection(), deployment)
        evidence = session.scalars(
            select(Event.evidence).where(
                Event.deployment_id == deployment_id,
                Event.kind == kind,
                Event.ts > since,
                Event.ts <= until,
            )
        ).all()
    return Ledger(
        tokens=sum(int(e.get("tokens") or 0) for e in evidence),
        failed={int(i) for e in evidence for i in e.get("failed_ids") or ()},
    )


def unjudged_samples(
    store: Store, deployment: str, since: datetime, until: datetime, limit: int, skip: set[int]
) -> list[Sample]:
    """The newest samples in ``[since, until)`` with an output, no error and no judge score,
    leaving out the ids in ``skip``; at most ``limit``."""
    with store.session(readonly=True) as session:
        deployment_id = deployment_id_of(session.connection(), deployment)
        query = (
            select(Sample)
            .where(
                *samples_between(deployment_id, since, until),
                Sample.output.is_not(None),
                Sample.output != "",
                Sample.error.is_(None),
                Sample.judge_score.is_(None),
            )
            .order_by(Sample.ts.desc(), Sample.id.desc())
            .limit(limit)
        )
        if skip:
            query = query.where(Sample.id.not_in(sorted(skip)))
        return list(session.scalars(query))


def record_run(
    store: Store,
    deployment: str,
    scores: Mapping[int, float | None],
    *,
    kind: str,
    ts: datetime,
    message: str,
    evidence: dict[str, Any],
) -> int:
    """Store the judge scores of samples (by id) and the run's event of ``kind`` in one
    transaction; returns the event's id. A score that arrived through the feedback API in the
    meantime is kept."""
    table = Base.metadata.tables["samples"]
    with store.session() as session:
        deployment_id = deployment_id_of(session.connection(), deployment)
        if scores:
            session.connection().execute(
                update(table)
                .where(
                    table.c.id == bindparam("sample_id"),
                    table.c.deployment_id == deployment_id,
                    table.c.judge_score.is_(None),
                )
                .values(judge_score=bindparam("score")),
                [{"sample_id": i, "score": s} for i, s in scores.items()],
            )
        return write_event(session, deployment_id, kind, message, evidence, ts)
