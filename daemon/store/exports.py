"""Production samples exported for a job, which never reads the store itself: the labelled ones a
re-tune trains on, and the failing and fresh ones a prompt revision learns from and is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select

from daemon.store.models import Deployment, Sample
from daemon.store.repository import Store


@dataclass(frozen=True, slots=True)
class Exported:
    """A sample's text and what is known of how it fared, as a job's input file needs them."""

    id: int
    input: str
    output: str | None
    label: str | None
    prediction: str | None = None
    feedback_score: float | None = None
    judge_score: float | None = None


@dataclass(frozen=True, slots=True)
class RevisionSamples:
    """The samples a prompt revision works with, each list newest first: ``failing`` ones to
    learn from, and ``fresh`` ones that did not fail, to score the candidates on."""

    failing: list[Exported]
    fresh: list[Exported]


def labelled_samples(
    store: Store, deployment: str, since: datetime, until: datetime, limit: int
) -> list[Exported]:
    """The newest ``limit`` labelled samples of ``deployment`` with ``since <= ts <= until``,
    oldest first; none for a deployment that is not registered."""
    with store.session(readonly=True) as session:
        rows = session.execute(
            select(Sample.id, Sample.input, Sample.output, Sample.label)
            .join(Deployment, Deployment.id == Sample.deployment_id)
            .where(
                Deployment.name == deployment,
                Sample.ts >= since,
                Sample.ts <= until,
                Sample.label.is_not(None),
            )
            .order_by(Sample.ts.desc(), Sample.id.desc())
            .limit(limit)
        ).all()
    return [Exported(*row) for row in reversed(rows)]


def revision_samples(
    store: Store,
    deployment: str,
    since: datetime,
    until: datetime,
    *,
    failing_below: float,
    max_failing: int,
    max_fresh: int,
    fresh_labelled: bool,
) -> RevisionSamples:
    """Read, in one transaction, ``deployment``'s samples with ``since <= ts <= until`` that
    failed (feedback or judge score under ``failing_below``, or a label other than the
    prediction), at most ``max_failing``, and at most ``max_fresh`` that did not, with a label
    when ``fresh_labelled`` (else with a non-empty input)."""
    # Each term is true or false, never NULL: a sample with no feedback, no judge score or no
    # label is simply not failing on that count, and NOT(...) of it selects it as fresh.
    failed = or_(
        and_(Sample.feedback_score.is_not(None), Sample.feedback_score < failing_below),
        and_(Sample.judge_score.is_not(None), Sample.judge_score < failing_below),
        and_(
            Sample.label.is_not(None),
            Sample.prediction.is_not(None),
            Sample.label != Sample.prediction,
        ),
    )
    fresh_wanted = Sample.label.is_not(None) if fresh_labelled else Sample.input != ""
    in_window = (Deployment.name == deployment, Sample.ts >= since, Sample.ts <= until)
    columns = (Sample.id, Sample.input, Sample.output, Sample.label, Sample.prediction)
    with store.session(readonly=True) as session:
        failing = session.execute(
            select(*columns, Sample.feedback_score, Sample.judge_score)
            .join(Deployment, Deployment.id == Sample.deployment_id)
            .where(*in_window, failed)
            .order_by(Sample.ts.desc())
            .limit(max_failing)
        ).all()
        fresh = session.execute(
            select(*columns)
            .join(Deployment, Deployment.id == Sample.deployment_id)
            .where(*in_window, fresh_wanted, ~failed)
            .order_by(Sample.ts.desc())
            .limit(max_fresh)
        ).all()
    return RevisionSamples(
        failing=[Exported(*row) for row in failing], fresh=[Exported(*row) for row in fresh]
    )
