"""The daemon's half of a prompt revision: what the ``revise_prompt`` job gets to work with.

Like a re-tune, the job never reads the store. When the policy asks for a revision, the daemon
exports the failing production samples of the look-back period (negative feedback, a low judge
score, or a wrong label), and — separately — recent samples that did not fail, so that the
samples that inspire the new prompt are not the ones that score it; it writes a spec naming
them, the golden set, the champion prompt and the models that propose and that run the prompt.

The scorer follows the deployment's task. ``classification``: answers must match labels, so the
fresh samples are labelled ones. ``generation``: answers are free text that the deployment's LLM
judge scores against its rubric (``judge`` section: its model, on the deployment's upstream),
so failing samples need no label, the fresh ones are recent production inputs (no label
needed: the judge scores whatever each prompt makes the model answer), and the gate's metric
is ``judge_score``. A generation deployment without a rubric has nothing to score a candidate
with; its revision is skipped, saying so.
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
from daemon.domain import Task
from daemon.errors import DriftdError
from daemon.prompts import initial_prompt, read_active_prompt
from daemon.retune import golden_set_keys, job_seed
from daemon.store import Store
from daemon.store.models import Deployment as DeploymentRow
from daemon.store.models import Sample

FAILING_SCORE = 0.5  # feedback or judge scores below this count as failures
FRESH_ROWS = 500
TOKENS_PER_JOB = 200_000
JUDGE_METRIC = "judge_score"  # what retrain.gate.compare_scores reports


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
    generation = deployment.task is Task.generation
    rubric = deployment.judge.rubric
    if generation and rubric is None:
        # The configuration refuses a revisable generation deployment without one.
        raise ValueError(f"deployment {deployment.name!r}: generation without judge.rubric")
    when = now or datetime.now(UTC)
    since = when - deployment.retune.data.lookback
    # Each term is true or false, never NULL: a sample with no feedback, no judge score or no
    # label is simply not failing on that count, and NOT(...) of it selects it as fresh.
    failed = or_(
        and_(Sample.feedback_score.is_not(None), Sample.feedback_score < FAILING_SCORE),
        and_(Sample.judge_score.is_not(None), Sample.judge_score < FAILING_SCORE),
        and_(
            Sample.label.is_not(None),
            Sample.prediction.is_not(None),
            Sample.label != Sample.prediction,
        ),
    )
    fresh_wanted = Sample.input != "" if generation else Sample.label.is_not(None)
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
            .where(*in_window, fresh_wanted, ~failed)
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
    fresh_rows = [
        {"input": row.input} if generation else {"input": row.input, "label": row.label}
        for row in fresh
    ]
    fresh_file.write_text("".join(json.dumps(row) + "\n" for row in fresh_rows), encoding="utf-8")
    active = read_active_prompt(store, deployment.name)
    champion = active.spec if active is not None else initial_prompt(deployment)
    upstream = deployment.upstream
    endpoint = {"base_url": upstream.base_url, "api_key_env": upstream.api_key_env}
    retune = deployment.retune
    spec: dict[str, Any] = {
        "deployment": deployment.name,
        "trigger": trigger,
        "task": deployment.task.value,
        "champion": champion.to_json(),
        "champion_version": None if active is None else active.version,
        "failing_file": str(failing_file),
        "fresh_file": str(fresh_file),
        **golden_set_keys(deployment),
        "candidates": retune.candidates,
        "proposer": {"model": deployment.judge.model, **endpoint},
        "target": {"model": champion.model, **endpoint},
        "max_tokens": TOKENS_PER_JOB,
        "gate": {
            # A generation prompt's answers have no label to be accurate against: whatever
            # retune.gate.metric says, the judge's mean score is what is compared.
            "metric": JUDGE_METRIC if generation else retune.gate.metric.value,
            "margin": retune.gate.margin,
            "bootstrap_samples": retune.gate.bootstrap_samples,
        },
        "seed": job_seed(name),
        "candidate": {"name": name},
        "promote": True,
        "lineage": {**lineage, "failing": len(failing), "fresh": len(fresh)},
        "created_at": when.isoformat(),
    }
    if generation:
        # The same judge as the scheduled judging (daemon.judging): its model on the
        # deployment's upstream, and the rubric of the config.
        spec["judge"] = {"model": deployment.judge.model, **endpoint, "rubric": rubric}
    return spec


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
