"""Building a job's spec: what a re-tune or a prompt revision gets to work with.

A re-tune job (``python -m retrain finetune`` or ``prompt_revision``) never reads the store: the
daemon exports what it needs when the job is created — the labelled production samples of the
look-back period, with their ids for lineage — and writes a spec that names them, the original
training data, the golden set, the model to start from and the active version to beat. A retried job
reuses the same export, so every attempt trains on the same data. The spec is
``retrain.contract.FineTuneSpec``, the model the job reads back.

A generation fine-tune is gated on free text: when the deployment has a ``judge.rubric`` the
spec carries its judge (as a prompt revision's: the judge's model on the deployment's upstream),
else the golden set's reference answers score. Its gate's API calls (an OpenAI model's answers,
the judge's scores) share ``retune.gate.max_tokens``, lowered to what the job's spend cap buys
(``gate_max_tokens``).

Like a re-tune, the job never reads the store. When the policy asks for a revision, the daemon
exports the failing production samples of the look-back period (negative feedback, a low judge
score, or a wrong label), and — separately — recent samples that did not fail, so that the
samples that inspire the new prompt are not the ones that score it; it writes a spec naming
them, the golden set, the active prompt and the models that propose and that run the prompt.

The scorer follows the deployment's task. ``classification``: answers must match labels, so the
fresh samples are labelled ones. ``generation``: answers are free text that the deployment's LLM
judge scores against its rubric (``judge`` section: its model, on the deployment's upstream),
so failing samples need no label, the fresh ones are recent production inputs (no label
needed: the judge scores whatever each prompt makes the model answer), and the gate's metric
is ``judge_score``. A generation deployment without a rubric has nothing to score a candidate
with; its revision is skipped, saying so. The spec is ``retrain.contract.PromptRevisionSpec``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from daemon.config import Config
from daemon.config.models import Deployment, Method, Provider
from daemon.config.types import format_duration
from daemon.domain import Task
from daemon.errors import NotEnoughLabels, NothingFailed
from daemon.prompts import initial_prompt, read_active_prompt
from daemon.store import Store
from daemon.store.exports import Exported, labelled_samples, revision_samples
from retrain.contract import (
    SCORE_METRIC,
    ActiveModel,
    Candidate,
    DataSettings,
    Endpoint,
    FineTuneSettings,
    FineTuneSpec,
    GateSettings,
    GoldenSet,
    Json,
    Judge,
    Prompt,
    PromptGate,
    PromptRevisionSpec,
    TrainerSettings,
)

PRODUCTION_FILE = "production.jsonl"
LABEL_GATE_KEYS = ("metric", "guard_metrics")
"""The gate settings a generation fine-tune's spec leaves out: its scorer names its metric."""


def method_of(deployment: Deployment) -> Method:
    """How ``deployment`` is re-tuned: its configured method, else the natural one."""
    if deployment.retune.method is not None:
        return deployment.retune.method
    if deployment.prompt is not None:
        return Method.prompt_revision
    if deployment.model is not None and deployment.model.provider is Provider.openai:
        return Method.openai
    return Method.trainer


def finetune_spec(
    config: Config,
    store: Store,
    deployment: Deployment,
    *,
    trigger: str,
    lineage: Json,
    now: datetime | None = None,
) -> FineTuneSpec:
    """Export the training inputs of a re-tune of ``deployment`` and return the job's spec.

    ``NotEnoughLabels`` when fewer than ``retune.data.min_labelled`` labelled samples exist.
    """
    when = now or datetime.now(UTC)
    retune = deployment.retune
    data = retune.data
    rows = [
        {"sample_id": row.id, "input": row.input, "label": row.label, "output": row.output}
        for row in labelled_samples(
            store, deployment.name, when - data.lookback, when, data.max_rows
        )
    ]
    if len(rows) < data.min_labelled:
        raise NotEnoughLabels(
            f"deployment {deployment.name!r} has {len(rows)} labelled samples in the last "
            f"{format_duration(data.lookback)}; retune.data.min_labelled is "
            f"{data.min_labelled}: send labels through the feedback API, or lower min_labelled"
        )
    inputs = (
        config.scheduling.jobs_dir.resolve()
        / "inputs"
        / (f"{deployment.name}-{when:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")
    )
    inputs.mkdir(parents=True, exist_ok=True)
    production = inputs / PRODUCTION_FILE
    production.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    name = f"{deployment.name}-{when:%Y%m%d-%H%M%S}"
    serving = store.active_version(deployment.name)
    configured = deployment.model.name if deployment.model is not None else None
    active = _local_or_hub(serving.artifact if serving is not None else configured)
    method = method_of(deployment)
    openai = method is Method.openai
    upstream = deployment.upstream
    generation = deployment.task is Task.generation
    gate = retune.gate.model_dump(mode="json", exclude={"max_tokens"})
    if generation:
        # Free-text answers have no label to be accurate against: the judge's score, or the
        # match with the golden set's reference answers, is what the job compares.
        gate = {key: value for key, value in gate.items() if key not in LABEL_GATE_KEYS}
    return FineTuneSpec(
        deployment=deployment.name,
        trigger=trigger,
        method=method.value,
        task=deployment.task.value,
        labels=tuple(deployment.labels),
        # OpenAI fine-tunes a fine-tuned model further: there the active version is its base.
        base_model=None if openai else active,
        active=None if openai or active is None else ActiveModel(model_dir=Path(active)),
        active_version=None if serving is None else serving.name,
        production_file=production,
        original_file=absolute_path(data.training_data),
        original_input_field=data.input_field,
        original_label_field=data.label_field,
        **golden_set_keys(deployment).model_dump(),
        data=DataSettings(
            production_ratio=data.production_ratio,
            max_rows=data.max_rows,
            validation_share=data.validation_share,
        ),
        trainer=TrainerSettings.model_validate(retune.trainer.model_dump(mode="json")),
        gate=GateSettings.model_validate(gate),
        judge=judge_of(deployment) if generation else None,
        max_tokens=gate_max_tokens(deployment),
        openai=FineTuneSettings(
            base_model=active,
            base_url=upstream.base_url,
            api_key_env=upstream.api_key_env,
            suffix=deployment.name[:18],
            hyperparameters=retune.openai.hyperparameters,
            poll_interval_s=retune.openai.poll_interval.total_seconds(),
            max_retries=upstream.max_retries,
            timeout_s=retune.timeout.total_seconds(),
            # The configuration refuses a cap it cannot enforce (no price or epochs).
            max_cost_usd=deployment.policy.budget.max_usd_per_job,
            price_per_million_training_tokens=retune.openai.price_per_million_training_tokens,
        )
        if openai
        else None,
        seed=job_seed(name),
        candidate=Candidate(name=name),
        promote=True,
        lineage={**lineage, "base_version": None if serving is None else serving.name},
        created_at=when,
    )


def judge_of(deployment: Deployment) -> Judge | None:
    """The deployment's LLM judge as a job gets it, or None when no rubric is configured: the
    same judge as the scheduled judging (``daemon.judging``), its model on the deployment's
    upstream, scoring against the rubric of the config."""
    rubric = deployment.judge.rubric
    if rubric is None:
        return None
    upstream = deployment.upstream
    return Judge(
        model=deployment.judge.model,
        rubric=rubric,
        base_url=upstream.base_url,
        api_key_env=upstream.api_key_env,
    )


def gate_max_tokens(deployment: Deployment) -> int:
    """The token cap of a fine-tune's gate: ``retune.gate.max_tokens``, lowered to what
    ``policy.budget.max_usd_per_job`` buys at the judge's price per token (the higher of its
    input and output prices, so that the cap holds whichever the tokens are) when both are
    set. The judge's prices stand for the OpenAI models' too: the config prices no other."""
    cap = deployment.retune.gate.max_tokens
    usd = deployment.policy.budget.max_usd_per_job
    judge = deployment.judge
    prices = [
        price
        for price in (judge.price_per_million_input_tokens, judge.price_per_million_output_tokens)
        if price is not None
    ]
    if usd is None or not prices or max(prices) <= 0:
        return cap
    return max(1, min(cap, int(usd / max(prices) * 1_000_000)))


def job_seed(name: str) -> int:
    """The job's seed (data split, training), from the candidate's name: recorded, repeatable."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big") % 2**31


def golden_set_keys(deployment: Deployment) -> GoldenSet:
    """The spec keys that name the golden set and its columns, for the jobs that score on it
    (``finetune`` and ``prompt_revision`` read the same keys)."""
    golden = deployment.retune.golden_set
    if golden is None:
        return GoldenSet()
    return GoldenSet(
        golden_set=absolute_path(golden.path),
        golden_input_field=golden.columns.input,
        golden_label_field=golden.columns.label,
    )


def absolute_path(path: Path | None) -> str | None:
    """The job runs in another folder: every path it gets is absolute."""
    return None if path is None else str(path.resolve())


def _local_or_hub(model: str | None) -> str | None:
    """A model folder made absolute; a hub id (or an OpenAI model id) as it is."""
    if model is None or not Path(model).exists():
        return model
    return str(Path(model).resolve())


FAILING_SCORE = 0.5  # feedback or judge scores below this count as failures
FRESH_ROWS = 500
TOKENS_PER_JOB = 200_000
JUDGE_METRIC = SCORE_METRIC  # what retrain.gate.compare_scores reports


def prompt_revision_spec(
    config: Config,
    store: Store,
    deployment: Deployment,
    *,
    trigger: str,
    lineage: Json,
    now: datetime | None = None,
) -> PromptRevisionSpec:
    """Export the failing and fresh samples of ``deployment`` and return the job's spec."""
    generation = deployment.task is Task.generation
    rubric = deployment.judge.rubric
    if generation and rubric is None:
        # The configuration refuses a revisable generation deployment without one.
        raise ValueError(f"deployment {deployment.name!r}: generation without judge.rubric")
    when = now or datetime.now(UTC)
    since = when - deployment.retune.data.lookback
    exported = revision_samples(
        store,
        deployment.name,
        since,
        when,
        failing_below=FAILING_SCORE,
        max_failing=deployment.retune.data.max_rows,
        max_fresh=FRESH_ROWS,
        fresh_labelled=not generation,
    )
    failing, fresh = exported.failing, exported.fresh
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
    serving = read_active_prompt(store, deployment.name)
    active = serving.spec if serving is not None else initial_prompt(deployment)
    upstream = deployment.upstream
    endpoint = {"base_url": upstream.base_url, "api_key_env": upstream.api_key_env}
    retune = deployment.retune
    judge = judge_of(deployment) if generation else None
    return PromptRevisionSpec(
        deployment=deployment.name,
        trigger=trigger,
        task=deployment.task.value,
        active=Prompt.model_validate(active.to_json()),
        active_version=None if serving is None else serving.version,
        failing_file=failing_file,
        fresh_file=fresh_file,
        **golden_set_keys(deployment).model_dump(),
        candidates=retune.candidates,
        proposer=Endpoint(model=deployment.judge.model, **endpoint),
        target=Endpoint(model=active.model, **endpoint),
        judge=judge,
        max_tokens=TOKENS_PER_JOB,
        gate=PromptGate(
            # A generation prompt's answers have no label to be accurate against: whatever
            # retune.gate.metric says, the judge's mean score is what is compared.
            metric=JUDGE_METRIC if generation else retune.gate.metric.value,
            margin=retune.gate.margin,
            bootstrap_samples=retune.gate.bootstrap_samples,
        ),
        seed=job_seed(name),
        candidate=Candidate(name=name),
        promote=True,
        lineage={**lineage, "failing": len(failing), "fresh": len(fresh)},
        created_at=when,
    )


def _failure(row: Exported) -> dict[str, str | None]:
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
