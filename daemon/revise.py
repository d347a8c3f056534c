"""The daemon's half of a prompt revision: what the ``revise_prompt`` job gets to work with.

Like a re-tune, the job never reads the store. When the policy asks for a revision, the daemon
exports the failing production samples of the look-back period (negative feedback, a low judge
score, or a wrong label), and — separately — recent labelled samples that did not fail, so that
the samples that inspire the new prompt are not the ones that score it; it writes a spec naming
them, the golden set, the champion prompt and the models that propose and that run the prompt.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select

from daemon.config import Config
from daemon.config.models import Deployment
from daemon.config.types import format_duration
from daemon.errors import DriftdError
from daemon.prompts import initial_prompt, read_active_prompt
from daemon.retune import absolute_path, job_seed
from daemon.store import Store
from daemon.store.models import Deployment as DeploymentRow
from daemon.store.models import Sample

FAILING_SCORE = 0.5  # feedback or judge scores below this count as failures
FRESH_ROWS = 500
TOKENS_PER_JOB = 200_000


class NothingFailed(DriftdError):
    """No failing production sample to learn from; the revision job is not created."""


def revision_spec(
    config: Config,
    store: Store,
    deployment: Deployment,
    *,
    trigger: str,
    lineage: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Export the failing and fresh samples of ``deployment`` and return the job's spec."""
    when = now or datetime.now(UTC)
    since = when - deployment.retune.data.lookback
    failed = or_(
        Sample.feedback_score < FAILING_SCORE,
        Sample.judge_score < FAILING_SCORE,
        and_(
            Sample.label.is_not(None),
            Sample.prediction.is_not(None),
            Sample.label != Sample.prediction,
        ),
    )
    with store.session(readonly=True) as session:
        in_window = (
            DeploymentRow.name == deployment.name,
            Sample.ts >= since,
            Sample.ts <= when,
        )
        columns = (Sample.id, Sample.input, Sample.output, Sample.label, Sample.prediction)
        failing = session.execute(
            select(*columns, Sample.feedback_score, Sample.judge_score)
            .join(DeploymentRow, DeploymentRow.id == Sample.deployment_id)
            .where(*in_window, failed)
            .order_by(Sample.ts.desc())
            .limit(deployment.retune.data.max_rows)
        ).all()
        fresh = session.execute(
            select(*columns)
            .join(DeploymentRow, DeploymentRow.id == Sample.deployment_id)
            .where(*in_window, Sample.label.is_not(None), ~failed)
            .order_by(Sample.ts.desc())
            .limit(FRESH_ROWS)
        ).all()
    if not failing:
        raise NothingFailed(
            f"deployment {deployment.name!r} has no failing sample (negative feedback, judge "
            f"score under {FAILING_SCORE}, or a wrong label) in the last "
            f"{format_duration(deployment.retune.data.lookback)}: nothing to revise the prompt on"
        )
    name = f"{deployment.name}-prompt-{when:%Y%m%d-%H%M%S}"
    inputs = config.scheduling.jobs_dir.resolve() / "inputs" / f"{name}-{secrets.token_hex(3)}"
    inputs.mkdir(parents=True, exist_ok=True)
    failing_file, fresh_file = inputs / "failing.jsonl", inputs / "fresh.jsonl"
    failing_file.write_text(
        "".join(json.dumps(_failure(row)) + "\n" for row in failing), encoding="utf-8"
    )
    fresh_file.write_text(
        "".join(json.dumps({"input": row.input, "label": row.label}) + "\n" for row in fresh),
        encoding="utf-8",
    )
    active = read_active_prompt(store, deployment.name)
    champion = active.spec if active is not None else initial_prompt(deployment)
    upstream = deployment.upstream
    endpoint = {"base_url": upstream.base_url, "api_key_env": upstream.api_key_env}
    retune = deployment.retune
    return {
        "deployment": deployment.name,
        "trigger": trigger,
        "task": deployment.task.value,
        "champion": champion.to_json(),
        "champion_version": None if active is None else active.version,
        "failing_file": str(failing_file),
        "fresh_file": str(fresh_file),
        "golden_set": absolute_path(retune.golden_set),
        "candidates": retune.candidates,
        "proposer": {"model": deployment.judge.model, **endpoint},
        "target": {"model": champion.model, **endpoint},
        "max_tokens": TOKENS_PER_JOB,
        "gate": {
            "metric": retune.gate.metric.value,
            "margin": retune.gate.margin,
            "bootstrap_samples": retune.gate.bootstrap_samples,
        },
        "seed": job_seed(name),
        "candidate": {"name": name},
        "promote": True,
        "lineage": {**lineage, "failing": len(failing), "fresh": len(fresh)},
        "created_at": when.isoformat(),
    }


def _failure(row: Any) -> dict[str, Any]:
    reasons = []
    if row.feedback_score is not None and row.feedback_score < FAILING_SCORE:
        reasons.append("negative feedback")
    if row.judge_score is not None and row.judge_score < FAILING_SCORE:
        reasons.append("low judge score")
    if row.label is not None and row.prediction is not None and row.label != row.prediction:
        reasons.append("wrong label")
    return {
        "input": row.input,
        "output": row.output or row.prediction,
        "label": row.label,
        "why": ", ".join(reasons),
    }
