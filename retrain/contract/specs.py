"""The specs of the jobs that do one thing: ``evaluate``, ``gate``, ``train``,
``openai_finetune``; each names its kind (``KIND``) and is read by ``JobSpec.parse``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from retrain.contract.base import (
    OPENAI_KEY_ENV,
    BatchSize,
    Column,
    Contract,
    InputDir,
    InputFile,
    Json,
    LabelMetric,
    LabelMetrics,
    MaxLength,
    OutputPath,
    Pace,
    Part,
    RefusedKey,
    Seed,
    Share,
    Task,
    describe,
    number,
    problem,
    spec_folder,
    stated,
    text,
    upgraded,
    warn,
    whole,
)
from retrain.errors import SpecError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HYPERPARAMETERS: dict[str, type] = {
    "n_epochs": int,
    "batch_size": int,
    "learning_rate_multiplier": float,
}


class JobSpec(Contract):
    """What every job is given: where its result goes (the daemon's runner sets it)."""

    KIND: ClassVar[str] = ""
    NEEDED: ClassVar[tuple[str, ...]] = ("output_dir",)
    """Keys a job needs that a spec may still lack while the daemon builds it."""

    output_dir: OutputPath | None = None

    @property
    def output(self) -> Path:
        """``output_dir``, which ``parse`` guarantees a job has."""
        if self.output_dir is None:
            raise ValueError(f"the {self.KIND} spec has no output_dir")
        return self.output_dir

    @classmethod
    def parse(
        cls,
        source: str | bytes | Mapping[str, Any],
        base: Path,
        *,
        warn: Callable[[str], None] = lambda _: None,
    ) -> Self:
        """A job's spec read from its JSON, relative paths resolved against ``base``.

        ``SpecError`` lists every problem found, each naming its field; keys the kind does not
        read are passed to ``warn``, not refused (a spec may carry the daemon's bookkeeping).
        """
        text = source if isinstance(source, str | bytes) else json.dumps(dict(source))
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise SpecError(f"it is not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"it must be a JSON object, not {type(raw).__name__}")
        raw = upgraded(raw)
        text = json.dumps(raw)
        known = set(cls.model_fields)
        unknown = sorted(key for key in raw if key not in known)
        if unknown:
            warn(
                f"ignoring spec key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))} ({cls.KIND} reads "
                f"{', '.join(sorted(known - {'api_key'}))})"
            )
        if "spec_version" in raw:
            # A spec of another version may differ anywhere: its version is the one problem.
            try:
                Contract.model_validate({"spec_version": raw["spec_version"]})
            except ValidationError as error:
                raise SpecError("; ".join(describe(error))) from None
        problems = [f"{key!r} is required" for key in cls.NEEDED if raw.get(key) is None]
        context = {"base": base.absolute(), "warn": warn}
        try:
            spec = cls.model_validate_json(text, context=context)
        except ValidationError as error:
            problems += describe(error)
            raise SpecError("; ".join(problems)) from None
        if problems:
            raise SpecError("; ".join(problems))
        return spec

    @classmethod
    def build(cls, **values: Any) -> Self:
        """A spec one job writes for another in its own process; ``SpecError`` naming each
        problem, as ``parse`` does."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise SpecError("; ".join(describe(error))) from None

    def to_json(self) -> Json:
        """The spec as the daemon stores it for its runner, which adds ``output_dir``."""
        data: Json = json.loads(self.model_dump_json(exclude={"output_dir"}))
        return data


class EvaluateSpec(JobSpec):
    """Job kind ``evaluate``: how well a classifier labels a golden set."""

    KIND: ClassVar[str] = "evaluate"
    golden_set: InputFile
    model_dir: InputDir
    input_field: Column = "input"
    label_field: Column = "label"
    batch_size: BatchSize = 32
    max_length: MaxLength = 128
    pace_s: Pace = 0.0


def _model_ref(nullable: bool) -> BeforeValidator:
    def check(value: Any) -> Any:
        if value is None and nullable:
            return value
        if isinstance(value, ModelRef):
            return value
        if not isinstance(value, Mapping) or "model_dir" not in value:
            null = " or null (no active version yet)" if nullable else ""
            raise problem(f'must be {{"model_dir": PATH}}{null}, got {value!r}')
        return value

    return BeforeValidator(check)


class ModelRef(Part):
    """A saved model a job reads: ``{"model_dir": PATH}``."""

    model_dir: InputDir


class GateSettings(Part):
    """When a candidate beats its active version (``retune.gate`` of ``driftd.yaml``)."""

    metric: LabelMetric = "accuracy"
    margin: Share = 0.0
    guard_metrics: LabelMetrics = ()
    bootstrap_samples: Annotated[int, whole(100, 100_000)] = 1000
    min_score: Annotated[float | None, number(0.0, 1.0, nullable=True)] = None


class GateSpec(JobSpec, GateSettings):
    """Job kind ``gate``: does a candidate beat the active version on the golden set."""

    KIND: ClassVar[str] = "gate"
    golden_set: InputFile
    active: Annotated[ModelRef | None, _model_ref(True)]
    """Required, and null when there is no active version yet: a misspelt key cannot turn a
    comparison into a first promotion."""
    candidate: Annotated[ModelRef, _model_ref(False)]
    seed: Seed = 0
    input_field: Column = "input"
    label_field: Column = "label"
    batch_size: BatchSize = 32
    max_length: MaxLength = 128
    pace_s: Pace = 0.0


def _base_model(value: Any, info: ValidationInfo) -> Any:
    """A folder the spec names, made absolute, or a hub id."""
    if not isinstance(value, str) or not value:
        raise problem(f"must be a directory or a hub id, got {value!r}")
    base = spec_folder(info)
    if base is None:
        return value
    folder = base / value
    if folder.is_dir():
        return str(folder)
    if _HUB_ID.match(value) and not value.startswith((".", "~")):
        return value
    raise problem(
        f": {folder} is not a directory (nor a hub id such as "
        "'sentence-transformers/all-MiniLM-L6-v2')"
    )


def _labels(value: Any) -> Any:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise problem(f"must list the classifier's labels (two or more strings), got {value!r}")
    twice = sorted({label for label in value if list(value).count(label) > 1})
    if twice:
        raise problem(f"names {', '.join(map(repr, twice))} more than once")
    return value


Steps = Annotated[int | None, whole(1, 10**9, says="a whole number of steps, 1 or more")]


class TrainerSettings(Part):
    """How a model is fine-tuned with transformers (``retune.trainer`` of ``driftd.yaml``)."""

    epochs: Annotated[int, whole(1, 100)] = 3
    batch_size: BatchSize = 32
    learning_rate: Annotated[
        float, number(0.0, 1.0, says="a number above 0 and below 1", open_low=True, open_high=True)
    ] = 5e-5
    max_length: MaxLength = 128
    max_steps: Steps = None
    save_steps: Steps = None
    evaluate_during_training: StrictBool = False
    """Also score the validation set before training and after each epoch (progress lines,
    ``metrics.before_training``); off by default: each pass over the validation set costs
    about a third of a training pass per example, and the final score is always computed."""


class TrainSpec(JobSpec, TrainerSettings):
    """Job kind ``train``: fine-tune a transformers model on a data set, resumably."""

    KIND: ClassVar[str] = "train"
    task: Task
    base_model: Annotated[str, BeforeValidator(_base_model)]
    """A directory (absolute once parsed) or a hub id."""
    train_file: InputFile
    validation_file: InputFile
    labels: Annotated[tuple[str, ...], BeforeValidator(_labels)] = ()
    seed: Seed = 0
    lineage: Json = Field(default_factory=dict)

    @model_validator(mode="after")
    def _labels_fit_the_task(self, info: ValidationInfo) -> Self:
        if self.task == "classification" and len(self.labels) < 2:
            raise stated(
                "'labels' must list the classifier's labels (two or more strings), "
                f"got {list(self.labels) or None!r}"
            )
        if self.task == "generation" and self.labels:
            warn(info, "ignoring 'labels': a generation model has none")
            self.labels = ()
        return self


def _hyperparameters(value: Any) -> Any:
    if not isinstance(value, dict):
        raise problem(f"must be a JSON object, got {value!r}")
    problems = []
    for key, given in value.items():
        kind = _HYPERPARAMETERS.get(key)
        if kind is None:
            problems.append(
                f"hyperparameters.{key} is not one OpenAI takes "
                f"({', '.join(sorted(_HYPERPARAMETERS))})"
            )
        elif given != "auto" and (
            isinstance(given, bool)
            or not isinstance(given, int if kind is int else int | float)
            or given <= 0
        ):
            what = "a whole number" if kind is int else "a number"
            problems.append(
                f"hyperparameters.{key} must be {what} above 0 or 'auto', got {given!r}"
            )
    if problems:
        raise stated("; ".join(problems))
    return value


def _url(value: Any) -> Any:
    if value is not None and (
        not isinstance(value, str) or not value.startswith(("http://", "https://"))
    ):
        raise problem(f"must be an http(s) URL, got {value!r}")
    return value


def _env_name(value: Any) -> Any:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise problem(f"must name an environment variable, got {value!r}")
    return value


def _suffix(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 64):
        raise problem(f"must be 1 to 64 characters, got {value!r}")
    return value


def _seed(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise problem(f"must be a whole number, got {value!r}")
    return value


class FineTuneSettings(Part):
    """How OpenAI fine-tunes a model: the ``openai_finetune`` spec's keys other than its files."""

    base_model: Annotated[str | None, text("be a model name")] = None
    suffix: Annotated[str | None, BeforeValidator(_suffix)] = None
    hyperparameters: Annotated[dict[str, int | float | str], BeforeValidator(_hyperparameters)] = (
        Field(default_factory=dict)
    )
    seed: Annotated[int | None, BeforeValidator(_seed)] = None
    base_url: Annotated[str | None, BeforeValidator(_url)] = None
    api_key_env: Annotated[str, BeforeValidator(_env_name)] = OPENAI_KEY_ENV
    poll_interval_s: Annotated[float, number(0.01, 3600.0)] = 10.0
    poll_max_interval_s: Annotated[float | None, number(0.01, 86400.0, nullable=True)] = None
    """Unset: 120 s, or ``poll_interval_s`` when that is longer."""
    timeout_s: Annotated[float, number(0.1, 30 * 86400.0)] = 86400.0
    request_timeout_s: Annotated[float, number(0.1, 3600.0)] = 300.0
    max_retries: Annotated[int, whole(0, 20)] = 3
    max_cost_usd: Annotated[float | None, number(0.0, nullable=True)] = None
    price_per_million_training_tokens: Annotated[float | None, number(0.0, nullable=True)] = None
    api_key: RefusedKey = None

    @property
    def n_epochs(self) -> int | None:
        """The epochs asked for, or None when OpenAI picks them (``auto`` or unset)."""
        epochs = self.hyperparameters.get("n_epochs")
        return epochs if isinstance(epochs, int) else None

    @property
    def max_interval_s(self) -> float:
        """How far polling backs off while nothing changes."""
        if self.poll_max_interval_s is not None:
            return self.poll_max_interval_s
        return max(120.0, self.poll_interval_s)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        cap = self.poll_max_interval_s
        if cap is not None and cap < self.poll_interval_s:
            problems.append(
                f"'poll_max_interval_s' ({cap:g}) must not be below 'poll_interval_s' "
                f"({self.poll_interval_s:g})"
            )
        if self.max_cost_usd is not None:
            if self.price_per_million_training_tokens is None:
                problems.append(
                    "'max_cost_usd' needs 'price_per_million_training_tokens' to estimate the "
                    f"cost of training {self.base_model!r}"
                )
            if self.n_epochs is None:
                problems.append(
                    "'max_cost_usd' needs hyperparameters.n_epochs as a whole number: with "
                    "'auto' OpenAI picks the epochs, and the cost has no bound before the job runs"
                )
        if problems:
            raise stated("; ".join(problems))
        return self


class OpenAIFineTuneSpec(JobSpec, FineTuneSettings):
    """Job kind ``openai_finetune``: fine-tune a model through the OpenAI fine-tuning API."""

    KIND: ClassVar[str] = "openai_finetune"
    base_model: Annotated[str, text("be a model name")]
    training_file: InputFile
    validation_file: InputFile | None = None
    cancel_file: OutputPath | None = None
    """A path the daemon creates to cancel the job."""
