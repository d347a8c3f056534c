"""What jobs report: each kind's result, read back by the daemon with ``read_result``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
)

from retrain.contract.base import (
    Contract,
    Json,
    Metrics,
    Part,
    describe,
    upgraded,
)
from retrain.contract.retunes import Prompt


def _unset(value: Any) -> bool:
    return value is None


class JobResult(Contract):
    """What every ``result.json`` holds: the job's kind and how it ended, with the error that
    ended it when it failed; each kind's result adds what the job found."""

    kind: str | None = None
    status: Literal["succeeded", "failed", "cancelled"] | None = None
    error: str | None = Field(default=None, exclude_if=_unset)


class Side(Part):
    """One model's part in a verdict: its scores, and where it was read from."""

    metrics: Metrics = Field(default_factory=dict)
    model_dir: str | None = Field(default=None, exclude_if=_unset)


class GuardCheck(Part):
    """A metric the candidate may not lose on: both scores and the verdict."""

    active: float
    candidate: float
    difference: float
    tolerance: float
    ok: bool


class Verdict(Part):
    """A gate's verdict and its evidence (``retrain.gate.GateResult``). A job that cannot
    gate its candidate reports ``passed: false`` with its reasons only."""

    passed: bool = False
    metric: str | None = None
    n: int | None = None
    active: Side | None = None
    candidate: Side | None = None
    difference: float | None = None
    ci: tuple[float, float] | None = None
    margin: float | None = None
    min_score: float | None = None
    guards: dict[str, GuardCheck] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    bootstrap_samples: int | None = None
    seed: int | None = None
    golden_set: str | None = Field(default=None, exclude_if=_unset)
    duration_s: float | None = Field(default=None, exclude_if=_unset)
    tokens: int | None = Field(default=None, exclude_if=_unset)
    """What the gate's API calls spent (both models' answers and the judge's scores), when it
    made any."""
    judge_tokens: int | None = Field(default=None, exclude_if=_unset)
    """What the LLM judge spent of ``tokens``, when a judge scored the answers."""
    max_tokens: int | None = Field(default=None, exclude_if=_unset)
    """The cap ``tokens`` was held to."""


class EvaluateResult(JobResult):
    """What ``evaluate`` found: the model's metrics on the golden set."""

    model: str | None = None
    golden_set: str | None = None
    n: int | None = None
    metrics: Metrics = Field(default_factory=dict)
    duration_s: float | None = None


class GateJobResult(JobResult, Verdict):
    """What ``gate`` found: its verdict."""


class Trained(Part):
    """What ``train`` produced: the saved model and its validation metrics."""

    model_dir: str | None = None
    metrics: Metrics = Field(default_factory=dict)
    train_runtime_s: float | None = None
    train_samples_per_second: float | None = None
    global_step: int | None = None
    resumed_from: str | None = None


class TrainResult(JobResult, Trained):
    """The result of ``train``."""


class FineTuned(Part):
    """What ``openai_finetune`` produced: the fine-tuned model's id, what it cost."""

    openai_job_id: str | None = None
    training_file_id: str | None = None
    validation_file_id: str | None = None
    base_model: str | None = None
    base_url: str | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    n_epochs: int | None = None
    training_examples: int | None = None
    validation_examples: int | None = None
    estimated_training_tokens: int | None = None
    token_count: str | None = None
    estimated_cost_usd: float | None = None
    cost_usd: float | None = None
    duration_s: float | None = None


class OpenAIFineTuneResult(JobResult, FineTuned):
    """The result of ``openai_finetune``."""


class Produced(Part):
    """A re-tune's candidate: the version name and the model it is (a folder or a model id)."""

    name: str | None = None
    artifact: str | None = None


class FineTuneResult(JobResult):
    """What ``finetune`` produced: the candidate, the gate's verdict and the data's lineage."""

    candidate: Produced | None = None
    gate: Verdict | None = None
    metrics: Metrics | None = Field(default=None, exclude_if=_unset)
    train: Trained | None = Field(default=None, exclude_if=_unset)
    openai: FineTuned | None = Field(default=None, exclude_if=_unset)
    lineage: Json | None = None
    cost_usd: float | None = Field(default=None, exclude_if=_unset)


class PromptScores(Part):
    """One prompt's scores; for the judge's scores, how many answers it could not score."""

    scores: dict[str, float] = Field(default_factory=dict)
    unscored: int | None = Field(default=None, exclude_if=_unset)
    unscored_errors: list[str] | None = Field(default=None, exclude_if=_unset)


class ProposedPrompt(PromptScores):
    """A candidate the proposer gave, scored; or why it gave none (``system`` null)."""

    index: int
    system: str | None = None
    error: str | None = Field(default=None, exclude_if=_unset)
    scores: dict[str, float] = Field(default_factory=dict, exclude_if=lambda value: not value)


class Tokens(Part):
    """The tokens a revision spent, against its cap."""

    used: int = 0
    limit: int = 0
    proposer: int = 0
    target: int = 0
    judge: int = 0


class PromptRevisionResult(JobResult):
    """What ``revise_prompt`` produced: the best candidate prompt and its verdict."""

    passed: bool = False
    task: str | None = None
    candidate: Prompt | None = None
    best: int | None = None
    gate: Verdict | None = None
    active: PromptScores | None = None
    candidates: list[ProposedPrompt] = Field(default_factory=list)
    tokens: Tokens | None = None
    dropped_overlaps: dict[str, int] = Field(default_factory=dict)
    evaluated_on: dict[str, int] = Field(default_factory=dict)


RESULTS: dict[str, type[JobResult]] = {
    "evaluate": EvaluateResult,
    "gate": GateJobResult,
    "train": TrainResult,
    "openai_finetune": OpenAIFineTuneResult,
    "finetune": FineTuneResult,
    "prompt_revision": PromptRevisionResult,
}
"""Each job kind's result, by the kind's name."""


def read_result(kind: str, data: Mapping[str, Any]) -> JobResult:
    """A job's result as its kind's model; ``ValueError`` naming what cannot be read (a result
    of a newer release, a field of the wrong type). A kind this release does not know is read
    as the common part of every result."""
    model = RESULTS.get(kind, JobResult)
    try:
        return model.model_validate(upgraded(data))
    except ValidationError as error:
        raise ValueError(f"the {kind} job's result: {'; '.join(describe(error))}") from None
