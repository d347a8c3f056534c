"""The specs the daemon builds: a whole re-tune (``retrain``) and a prompt revision
(``revise_prompt``), with the bookkeeping the daemon reads back to settle their candidates."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    Field,
    ValidationInfo,
    model_validator,
)

from retrain.contract.base import (
    LABEL_METRICS,
    OPENAI_KEY_ENV,
    SCORE_METRIC,
    Column,
    Contract,
    InputFile,
    Json,
    OutputPath,
    Part,
    RefusedKey,
    Seed,
    Share,
    Task,
    number,
    stated,
    text,
    warn,
    whole,
)
from retrain.contract.specs import (
    FineTuneSettings,
    GateSettings,
    JobSpec,
    TrainerSettings,
)


class Candidate(Part):
    """The version a job's candidate becomes: its name, and its artifact when known already."""

    name: Annotated[str, text("be a version name")]
    artifact: str | None = None


class Bookkeeping(Part):
    """What the daemon records in a spec it builds, and reads back when the job succeeds."""

    deployment: str | None = None
    trigger: str | None = None
    candidate: Candidate | None = None
    promote: bool = False
    """Register the job's candidate as a version and promote it if it passes."""
    active_version: str | None = None
    lineage: Json = Field(default_factory=dict)
    """Why the job ran (trigger, decision event, checks, base version): copied into the
    candidate's lineage."""
    created_at: datetime | None = None


class Named(Part):
    """A candidate as a hand-written spec may name it: a job without a name names it."""

    name: str | None = None
    artifact: str | None = None


class Settlement(Contract, Bookkeeping):
    """The daemon's reading of any succeeded job's spec (a hand-written one too): whether it
    has a candidate to register and promote, and what the candidate needs."""

    candidate: Named | None = None  # type: ignore[assignment]

    min_accuracy: float = 0.0
    """For a job without a gate (an ``evaluate``): the accuracy its candidate must reach."""
    model_dir: str | None = None
    """For a job whose result names no artifact: the model its candidate is."""


class DataSettings(Part):
    """How production and original examples are mixed (``retrain.dataset.build_dataset``)."""

    production_ratio: Share = 0.5
    max_rows: Annotated[int, whole(1)] = 20_000
    validation_share: Annotated[
        float, number(0.0, 1.0, says="a number from 0 to below 1", open_high=True)
    ] = 0.1


GoldenColumn = Annotated[str, text("name a column of the golden set")]


class GoldenSet(Part):
    """The golden set a job scores on, and its columns (a spec needs it to run)."""

    golden_set: InputFile | None = None
    golden_input_field: GoldenColumn = "input"
    golden_label_field: GoldenColumn = "label"

    @property
    def golden(self) -> Path:
        """``golden_set``, which ``parse`` guarantees a job has."""
        if self.golden_set is None:
            raise ValueError("the spec names no golden_set")
        return self.golden_set


class Endpoint(Part):
    """An OpenAI-compatible chat model: its name, where it is served, where its key is."""

    model: Annotated[str, text("name a chat model")]
    base_url: Annotated[str | None, text("be a URL")] = None
    api_key_env: Annotated[str, text("name an environment variable")] = OPENAI_KEY_ENV
    api_key: RefusedKey = None


class Judge(Endpoint):
    """The LLM judge that scores a generation deployment's answers: its model and rubric."""

    rubric: Annotated[
        str, text("say what a good answer is (the judge scores against it)", strip=True)
    ]


AtLeastOne = Annotated[int, whole(1)]
GATE_TOKENS_PER_EXAMPLE = 2_000
"""A gate's allowance for one API answer to a golden example: its prompt (the system prompt
and the question) and the answer; it bounds a runaway, not a budget."""
JUDGE_TOKENS_PER_EXAMPLE = 1_500
"""A gate's allowance for the judge's score of one answer: the rubric, the question, the
answer, the reference and a short verdict."""


class ActiveModel(Part):
    """The model a re-tune must beat: a folder (or an id the gate will refuse, saying so)."""

    model_dir: OutputPath


class FineTuneSpec(JobSpec, Bookkeeping, GoldenSet):
    """Job kind ``finetune``: a whole re-tune (data set, fine-tune, gate) in one process."""

    KIND: ClassVar[str] = "finetune"
    NEEDED: ClassVar[tuple[str, ...]] = ("output_dir", "golden_set")
    method: Literal["trainer", "openai"]
    task: Task
    production_file: InputFile
    candidate: Candidate
    labels: tuple[str, ...] = ()
    base_model: str | None = None
    """The model to fine-tune: a folder or a hub id (the trainer method)."""
    active: ActiveModel | None = None
    original_file: InputFile | None = None
    original_input_field: Column = "input"
    original_label_field: Column = "label"
    data: DataSettings = DataSettings()
    trainer: TrainerSettings = TrainerSettings()
    gate: GateSettings = GateSettings()
    openai: FineTuneSettings | None = None
    """The openai method's settings; the job adds the files it writes."""
    system_prompt: str | None = None
    judge: Judge | None = None
    """Generation: the LLM judge that scores both models' answers on the golden set against
    its rubric; unset, the golden set's reference answers score them."""
    max_tokens: AtLeastOne | None = None
    """The token cap of the gate's API calls (an OpenAI model's answers, the judge's scores);
    unset: ``GATE_TOKENS_PER_EXAMPLE`` per answer and ``JUDGE_TOKENS_PER_EXAMPLE`` per
    judged answer of the golden set."""
    seed: Seed = 0

    @model_validator(mode="after")
    def _base_for_the_trainer(self, info: ValidationInfo) -> Self:
        if self.method == "trainer" and not self.base_model:
            raise stated("'base_model' is required by the trainer method (a folder or hub id)")
        if self.task == "classification" and self.judge is not None:
            warn(info, "ignoring 'judge': a classifier is scored by its labels")
            self.judge = None
        return self

    def gate_tokens(self, examples: int) -> int:
        """The gate's token cap for a golden set of ``examples``: ``max_tokens``, or enough
        for each API answer and each judged answer of both models."""
        if self.max_tokens is not None:
            return self.max_tokens
        answers = 2 * examples if self.method == "openai" else 0
        judged = 2 * examples if self.judge is not None else 0
        return GATE_TOKENS_PER_EXAMPLE * answers + JUDGE_TOKENS_PER_EXAMPLE * judged


class Shot(Part):
    """A few-shot example of a prompt: an input and the answer to it."""

    input: str
    output: str

    @model_validator(mode="before")
    @classmethod
    def _label_is_an_output(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "output" not in value and "label" in value:
            return {**value, "output": value["label"]}
        return value


class Prompt(Part):
    """A prompted deployment's prompt: system prompt, few-shot examples, model."""

    system: str
    few_shot: list[Shot] = Field(default_factory=list)
    model: str | None = None
    """Unset in a spec: the target's model."""


class PromptGate(Part):
    """How a revised prompt is gated: by its task's metric (``judge_score`` for generation)."""

    metric: str | None = None
    margin: Annotated[float, number()] = 0.0
    bootstrap_samples: Annotated[int, whole(1)] = 1000


ANSWER_MAX_TOKENS = 32
"""The cap on one label answer: a label is a few words, and a model that rambles is wrong."""
GENERATION_ANSWER_MAX_TOKENS = 300
"""The default cap on one free-text answer: a few paragraphs, enough for the judge to tell a
good answer from a bad one, without paying for essays on every example of every candidate."""


class PromptRevisionSpec(JobSpec, Bookkeeping, GoldenSet):
    """Job kind ``prompt_revision``: revised prompts proposed, scored, the best one gated."""

    KIND: ClassVar[str] = "prompt_revision"
    NEEDED: ClassVar[tuple[str, ...]] = ("output_dir", "golden_set")
    task: Task
    active: Prompt
    failing_file: InputFile
    fresh_file: InputFile | None = None
    proposer: Endpoint
    target: Endpoint
    judge: Judge | None = None
    """Required for generation: free-text answers are scored by an LLM judge."""
    max_tokens: AtLeastOne
    """The token cap of the whole job: proposer, target and judge."""
    candidates: AtLeastOne = 3
    failures_shown: AtLeastOne = 20
    answer_max_tokens: Annotated[int | None, whole(1)] = None
    """Unset: 32 for a label, 300 for free text."""
    gate: PromptGate = PromptGate()
    seed: Annotated[int, whole(-(2**63), 2**63 - 1, says="an integer")] = 0
    api_key: RefusedKey = None

    @property
    def metric(self) -> str:
        return self.gate.metric or SCORE_METRIC

    @property
    def margin(self) -> float:
        return self.gate.margin

    @property
    def bootstrap_samples(self) -> int:
        return self.gate.bootstrap_samples

    @property
    def answer_cap(self) -> int:
        return self.answer_max_tokens or ANSWER_MAX_TOKENS

    @model_validator(mode="after")
    def _scored_by_the_task(self, info: ValidationInfo) -> Self:
        generation = self.task == "generation"
        problems = []
        if generation and self.judge is None:
            problems.append(
                "task 'generation' needs 'judge' ({'model', 'base_url', 'api_key_env', "
                "'rubric'}): free-text answers are scored by an LLM judge against the rubric, "
                "got None"
            )
        elif not generation and self.judge is not None:
            warn(info, "ignoring 'judge': a classification prompt is scored by exact match")
            self.judge = None
        allowed = (SCORE_METRIC,) if generation else LABEL_METRICS
        metric = self.gate.metric or allowed[0]
        if metric not in allowed:
            why = (
                ": a generation prompt's answers are free text, scored by the judge"
                if generation
                else ": a classification prompt is scored by exact match with labels"
            )
            problems.append(
                f"gate.metric must be {' or '.join(allowed)} for task {self.task}, "
                f"got {metric!r}{why}"
            )
        if problems:
            raise stated("; ".join(problems))
        self.gate.metric = metric
        if self.answer_max_tokens is None:
            cap = GENERATION_ANSWER_MAX_TOKENS if generation else ANSWER_MAX_TOKENS
            self.answer_max_tokens = cap
        if self.active.model is None:
            self.active.model = self.target.model
        return self
