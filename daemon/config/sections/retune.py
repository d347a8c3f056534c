"""``retune``: how a candidate is made (training data, trainer), gated against the active version on
the golden set, promoted (hooks) and watched after its promotion."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator

from daemon.config.sections import Section
from daemon.config.types import (
    Duration,
    RelativePath,
    ScheduleSpec,
)


class Method(StrEnum):
    trainer = "trainer"
    openai = "openai"
    prompt_revision = "prompt_revision"


class Metric(StrEnum):
    accuracy = "accuracy"
    macro_f1 = "macro_f1"
    judge_score = "judge_score"


class Gate(Section):
    metric: Metric = Field(
        Metric.accuracy,
        description="Metric the candidate must improve on the golden set. A generation "
        "candidate is compared on `judge_score` (the judge's rubric), or on `reference_match` "
        "(its answers against the golden set's reference answers) when no rubric is set.",
    )
    margin: float = Field(
        0.0, ge=0.0, le=1.0, description="Required improvement over the active version."
    )
    guard_metrics: tuple[Metric, ...] = Field(
        (), description="Metrics the candidate may not be worse on."
    )
    bootstrap_samples: int = Field(
        1000, ge=100, le=100_000, description="Resamples for the confidence interval."
    )
    max_tokens: int = Field(
        200_000,
        ge=1,
        description="Token cap of the gate's API calls (an OpenAI model's answers, the judge's "
        "scores); the job fails, not passes, when it is reached. Lowered to what "
        "`policy.budget.max_usd_per_job` buys at the higher of `judge.price_per_million_input_"
        "tokens` and `judge.price_per_million_output_tokens` when the cap and a price are set.",
    )


class TrainingData(Section):
    training_data: RelativePath | None = Field(
        None, description="Original training set (CSV, JSONL or Parquet), relative to this file."
    )
    input_field: str = Field("input", min_length=1, description="Input column of training_data.")
    label_field: str = Field(
        "label",
        min_length=1,
        description="Label (classification) or wanted output (generation) column of training_data.",
    )
    production_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of labelled production samples in the mix."
    )
    lookback: Duration = Field(timedelta(days=30), description="How far back samples are taken.")
    min_labelled: int = Field(
        100, ge=1, description="Labelled production samples needed to re-tune."
    )
    max_rows: int = Field(20_000, ge=10, description="Cap on the training set size.")
    validation_share: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share held out for validation."
    )


class Trainer(Section):
    epochs: int = Field(3, ge=1, le=100, description="Training epochs.")
    batch_size: int = Field(32, ge=1, le=4096, description="Per-device batch size.")
    learning_rate: float = Field(5e-5, gt=0.0, lt=1.0, description="Peak learning rate.")
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per input.")


class FineTuningAPI(Section):
    """How the OpenAI fine-tuning API is asked to tune (``method: openai``)."""

    hyperparameters: dict[str, int | float | str] = Field(
        default_factory=dict,
        description="As the fine-tuning API takes them, e.g. `{n_epochs: 3, batch_size: 8, "
        "learning_rate_multiplier: 0.5}`; unset ones are OpenAI's choice (`auto`).",
    )
    poll_interval: Duration = Field(
        timedelta(seconds=10),
        description="How often the job's status is read; it backs off to 2 min while nothing "
        "changes.",
    )
    price_per_million_training_tokens: float | None = Field(
        None,
        gt=0.0,
        description="USD per million training tokens of the base model (OpenAI's price list): "
        "with `hyperparameters.n_epochs`, what lets `policy.budget.max_usd_per_job` refuse a "
        "fine-tune that would cost more, before it starts.",
    )

    @field_validator("hyperparameters")
    @classmethod
    def _known(cls, value: dict[str, int | float | str]) -> dict[str, int | float | str]:
        """The fine-tuning job's own check, at load time rather than after a paid upload."""
        from pydantic import ValidationError

        from retrain.contract import FineTuneSettings

        try:
            FineTuneSettings(hyperparameters=value)
        except ValidationError as error:
            raise ValueError(error.errors()[0]["msg"]) from None
        return value

    @field_validator("poll_interval")
    @classmethod
    def _not_too_long(cls, value: timedelta) -> timedelta:
        if value > timedelta(hours=1):
            raise ValueError("must be at most 1h: a finished fine-tune would wait that long")
        return value


class Watch(Section):
    period: Duration = Field(
        timedelta(hours=24), description="How long a promoted version is watched."
    )
    checks: int = Field(
        3, ge=1, le=100, description="Checks after a promotion whose quality is compared."
    )
    max_drop: float = Field(
        0.02, gt=0.0, le=1.0, description="Quality fall versus the gate that rolls back."
    )


class Hooks(Section):
    models_dir: RelativePath | None = Field(
        None,
        description="On promotion, point the symlink `current` in this folder at the new "
        "version's artifact (atomically, by renaming a new link over it); skipped for an OpenAI "
        "model id, which the proxy calls by its id.",
    )
    webhook: str | None = Field(
        None,
        description="On promotion and rollback, POST JSON with the old and new version here.",
    )
    command: tuple[str, ...] | None = Field(
        None,
        description="On promotion and rollback, run this argument list (no shell); the "
        "versions arrive as DRIFTD_* environment variables.",
    )
    timeout: Duration = Field(timedelta(seconds=30), description="Timeout of each hook.")

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("command")
    @classmethod
    def _argument_list(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError("expected a non-empty argument list such as [/usr/bin/reload, x]")
        return value


class GoldenColumns(Section):
    """The columns of the golden set that hold its input and its label."""

    input: str = Field("input", min_length=1, description="Column of the input text.")
    label: str = Field(
        "label",
        min_length=1,
        description="Column of the true label (classification); for generation, of the "
        "reference answer (else `reference` or `expected`): shown to the judge, or, for a "
        "fine-tuned deployment without `judge.rubric`, what each answer must match (required "
        "then).",
    )


class GoldenSet(Section):
    """The golden set: the fixed file a candidate and the active version are both scored on."""

    path: RelativePath = Field(
        description="JSONL, CSV (with a header row) or Parquet file, relative to this file."
    )
    columns: GoldenColumns = Field(
        default_factory=GoldenColumns,
        description="Its columns, when they are not `input` and `label`: e.g. `{input: text, "
        "label: category}`. Checked against the file's header at start-up.",
    )


class Retune(Section):
    schedule: ScheduleSpec | None = Field(
        None, description="Scheduled re-tuning (cron or `every`); unset means only on drift."
    )
    method: Method | None = Field(
        None,
        description="`trainer`, `openai` or `prompt_revision`; unset means the deployment's "
        "natural one (by kind and model provider).",
    )
    data: TrainingData = Field(default_factory=TrainingData, description="The training set.")
    golden_set: GoldenSet | None = Field(
        None,
        description="Fixed evaluation file that never enters training; needed when "
        "re-tuning can run. A path (its columns `input` and `label`), or `{path: FILE, "
        "columns: {input: COLUMN, label: COLUMN}}`, e.g. `{path: data/test.csv, columns: "
        "{input: text, label: category}}`.",
    )
    gate: Gate = Field(default_factory=Gate, description="When a candidate is promoted.")
    trainer: Trainer = Field(default_factory=Trainer, description="transformers settings.")
    openai: FineTuningAPI = Field(
        default_factory=FineTuningAPI, description="OpenAI fine-tuning API settings."
    )
    candidates: int = Field(4, ge=1, le=20, description="`prompt_revision`: prompts proposed.")
    watch: Watch = Field(default_factory=Watch, description="Rollback after promotion.")
    hooks: Hooks = Field(default_factory=Hooks, description="What promotion and rollback run.")
    timeout: Duration = Field(timedelta(hours=2), description="A job running longer fails.")

    @field_validator("golden_set", mode="before")
    @classmethod
    def _golden_path(cls, value: object) -> object:
        """The short form, a bare path, is a file whose columns are `input` and `label`."""
        return {"path": value} if isinstance(value, str | Path) else value
