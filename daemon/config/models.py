"""The pydantic models of ``driftd.yaml``.

Every section is modelled and validated here, including those that later parts of driftd act on,
so that a file accepted today keeps its meaning. Each field's description is the configuration
reference (``driftd config reference`` renders it into docs/configuration.md).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from daemon.config.types import (
    Duration,
    Name,
    Regex,
    RelativePath,
    Schedule,
    ScheduleSpec,
    SecretEnv,
    TimeZone,
    UrlEnv,
    format_duration,
)
from daemon.domain import Kind, Task


class Section(BaseModel):
    """Base of every section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Signal(StrEnum):
    """What a check measures; each signal belongs to a group (data, output, quality)."""

    descriptors = "descriptors"
    text = "text"
    embedding = "embedding"
    prediction = "prediction"
    confidence = "confidence"
    performance = "performance"
    judge = "judge"
    feedback = "feedback"
    format_validity = "format_validity"
    refusal = "refusal"
    errors = "errors"
    latency = "latency"


class SignalGroup(StrEnum):
    data = "data"
    output = "output"
    quality = "quality"


CLASSIFICATION_ONLY = frozenset({Signal.prediction, Signal.confidence, Signal.performance})
GENERATION_ONLY = frozenset(
    {Signal.judge, Signal.format_validity, Signal.refusal, Signal.errors, Signal.latency}
)
DEFAULT_SIGNALS: dict[Task, tuple[Signal, ...]] = {
    Task.classification: (
        Signal.descriptors,
        Signal.text,
        Signal.embedding,
        Signal.prediction,
        Signal.confidence,
        Signal.performance,
    ),
    Task.generation: (
        Signal.descriptors,
        Signal.text,
        Signal.embedding,
        Signal.judge,
        Signal.feedback,
        Signal.format_validity,
        Signal.refusal,
        Signal.errors,
        Signal.latency,
    ),
}


class Server(Section):
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8477, ge=1, le=65535, description="Port the HTTP API listens on.")
    metrics_auth: bool = Field(
        False, description="Whether `/metrics` needs an admin token, like the admin routes."
    )
    shutdown_grace: Duration = Field(
        timedelta(seconds=3),
        description="On SIGTERM, how long requests in flight may take to finish.",
    )


class Proxy(Section):
    """The proxy's limits on what callers send, and the connection pool it forwards through,
    shared by every deployment's upstream."""

    max_connections: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Connections open to upstreams at once; calls beyond wait.",
    )
    keepalive: Duration = Field(
        timedelta(seconds=4),
        description="How long an idle upstream connection is kept for the next call. Keep it "
        "below the upstream's own keep-alive timeout (uvicorn's is 5 s), or a call may meet a "
        "connection the upstream is closing.",
    )
    recorder_capacity: int = Field(
        10_000,
        ge=1,
        description="Finished calls that may wait to be recorded; beyond, samples are dropped "
        "(counted), never the calls.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Size of one proxied request body; more → 413, nothing forwarded.",
    )
    max_depth: int = Field(
        64,
        ge=4,
        le=512,
        description="Nesting of arrays and objects in a proxied JSON body; deeper → 400, "
        "nothing forwarded.",
    )


class Ingest(Section):
    """Limits of the ingest API and of the write queue behind it."""

    max_batch: int = Field(
        1000, ge=1, le=100_000, description="Samples in one request; more → 413."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Size of one request body; more → 413."
    )
    queue_batches: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Batches waiting for the writer; when full the API answers 429 with "
        "`Retry-After`.",
    )
    commit_rows: int = Field(
        5000, ge=1, description="Most samples grouped into one commit (group commit)."
    )
    workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Processes that validate, redact and describe batches; 0 does it in the "
        "server process; unset means one per core, at most four.",
    )


class Storage(Section):
    url: str = Field(
        "sqlite:///driftd.db",
        description=(
            "SQLAlchemy URL of the store: `sqlite:///driftd.db` (relative to the working "
            "directory) or `postgresql://user@host/db`. `DRIFTD_STORAGE_URL` overrides it; put "
            "a password only there, never in the file."
        ),
    )
    busy_timeout: Duration = Field(
        timedelta(seconds=5), description="How long SQLite waits on a locked database."
    )
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full",
        description="SQLite `synchronous`: `full` makes every acknowledged batch survive a "
        "power loss; `normal` only a crash of driftd, for more throughput.",
    )
    retention: Duration = Field(
        timedelta(days=30), description="Samples older than this are deleted on a schedule."
    )
    snapshots: Path = Field(
        Path("driftd-snapshots"),
        description="Folder of the Evidently snapshot saved with each check (relative to the "
        "working directory).",
    )
    evidently_workspace: Path | None = Field(
        None,
        description="Also add each check's Evidently snapshot to this local Evidently workspace "
        "(one project per deployment), so that `evidently ui --workspace PATH` shows the "
        "history; unset means no export.",
    )


class LogFormat(StrEnum):
    auto = "auto"
    text = "text"
    json = "json"


class Logging(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )
    format: LogFormat = Field(
        LogFormat.auto,
        description="`text` for people, `json` (one object per line) for collectors; "
        "`auto` picks text on a terminal and JSON otherwise.",
    )


class UpstreamAuth(StrEnum):
    """How the proxy authenticates a caller and what key it sends upstream."""

    key = "key"
    passthrough = "passthrough"
    passthrough_anonymous = "passthrough_anonymous"


class Upstream(Section):
    """An OpenAI-compatible endpoint: the proxy's upstream and the fine-tuning API."""

    base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API; unset means the one in the variable "
        "`base_url_env`, and without that OpenAI's own.",
    )
    base_url_env: UrlEnv = Field(
        "OPENAI_BASE_URL",
        description="Environment variable read for the base URL when `base_url` is unset, as "
        "OpenAI's SDKs read `OPENAI_BASE_URL`; e.g. a local OpenAI-compatible server.",
    )
    api_key_env: SecretEnv = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key (`OPENAI_API_KEY` or `DRIFTD_*`).",
    )
    auth: UpstreamAuth = Field(
        UpstreamAuth.key,
        description="How proxy callers are authenticated. `key`: the caller presents a driftd "
        "proxy token (`DRIFTD_PROXY_TOKENS`, or an admin token) as its API key and driftd sends "
        "the key from `api_key_env` instead. `passthrough`: the caller sends its own upstream "
        "key as its API key and proves itself to driftd with an `X-Driftd-Token` header. "
        "`passthrough_anonymous`: the caller's own key is forwarded and anyone who reaches the "
        "port may call (and write samples); logged as a warning at start-up. driftd's own "
        "tokens are never forwarded.",
    )
    timeout: Duration = Field(timedelta(seconds=60), description="Timeout of one request.")
    max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a request that never reached the upstream (a failed connect, a "
        "kept-alive connection closed before any answer); never of one it answered or timed out "
        "on.",
    )


class Provider(StrEnum):
    transformers = "transformers"
    openai = "openai"


class Model(Section):
    provider: Provider = Field(
        Provider.transformers,
        description="`transformers` (local weights) or `openai` (an OpenAI fine-tuned model).",
    )
    name: str = Field(
        min_length=1,
        description="transformers: a local path (starting with `./` or `../`, relative to this "
        "file) or a hub id; openai: the model id, e.g. `ft:gpt-4o-mini-2024-07-18:acme::abc1`.",
    )

    @field_validator("name")
    @classmethod
    def _local_path(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base_dir")
        if base is not None and value.startswith(("./", "../")):
            return str(Path(base) / value)
        return value


class FewShot(Section):
    input: str = Field(min_length=1, description="Example user message.")
    output: str = Field(min_length=1, description="Expected assistant answer.")


class Prompt(Section):
    model: str = Field(min_length=1, description="Base model the prompt runs on upstream.")
    system: str = Field(min_length=1, description="System message.")
    examples: tuple[FewShot, ...] = Field((), description="Few-shot examples, in order.")


class AlwaysKeep(StrEnum):
    errors = "errors"
    negative_feedback = "negative_feedback"


class Sampling(Section):
    rate: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of requests stored, decided by a hash of `request_id` "
        "(the same request is always in or out).",
    )
    always_keep: tuple[AlwaysKeep, ...] = Field(
        (AlwaysKeep.errors, AlwaysKeep.negative_feedback),
        description="Samples kept whatever the rate.",
    )


class RedactionKind(StrEnum):
    email = "email"
    phone = "phone"
    card = "card"
    iban = "iban"
    ip = "ip"
    api_key = "api_key"


class RedactionPattern(Section):
    name: str = Field(
        pattern=r"^[A-Z][A-Z0-9_]{0,31}$",
        description="Placeholder name, upper case: matches become `<NAME>`.",
    )
    pattern: Regex = Field(description="Python regular expression to redact.")


class DescriptorPattern(Section):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="Lower-case name: hits become the descriptor `regex_<name>`.",
    )
    pattern: Regex = Field(description="Python regular expression searched for in the text.")


class Descriptors(Section):
    """Per-sample text descriptors computed at ingest, for input and output."""

    refusal_phrases: tuple[str, ...] | None = Field(
        None,
        description="Phrases that flag a refusal (case-insensitive); unset means driftd's "
        "built-in English list.",
    )
    patterns: tuple[DescriptorPattern, ...] = Field(
        (), description="Regular expressions whose hits become descriptors `regex_<name>`."
    )


class Redaction(Section):
    enabled: bool = Field(True, description="Redact PII before anything is stored.")
    kinds: tuple[RedactionKind, ...] = Field(
        tuple(RedactionKind), description="Built-in detectors to apply."
    )
    extra: tuple[RedactionPattern, ...] = Field((), description="Additional patterns.")


class ReferenceKind(StrEnum):
    previous_window = "previous_window"
    fixed = "fixed"
    dataset = "dataset"
    baseline = "baseline"


class AfterPromotion(StrEnum):
    """What a check compares with once a version driftd made is active."""

    baseline = "baseline"
    keep = "keep"


class Reference(Section):
    kind: ReferenceKind = Field(
        ReferenceKind.previous_window,
        description="`previous_window` (the window before the current one), `fixed` "
        "(`start`..`end`), `dataset` (a file, e.g. the training data) or `baseline` (the "
        "first `samples` samples of the active version).",
    )
    start: datetime | None = Field(None, description="`fixed`: start, ISO 8601 with zone.")
    end: datetime | None = Field(None, description="`fixed`: end, ISO 8601 with zone.")
    path: RelativePath | None = Field(
        None, description="`dataset`: CSV, JSONL or Parquet file, relative to this file."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="`dataset`: sample field → column of `path` holding it, for a file whose "
        "columns are not named as sample fields, as `driftd ingest --map FIELD=COLUMN` reads "
        "one; e.g. `{input: text, prediction: category}`. A classification training set's "
        "label column maps to `prediction`: the check compares the distribution of predictions "
        "in the window with the reference's, and the labels a model was trained on are the "
        "predictions a healthy model gives. Checked against the file's header at start-up.",
    )
    samples: int = Field(
        1000,
        ge=10,
        description="A version's baseline: its first `samples` samples from its promotion on "
        "(kind `baseline`, and `after_promotion: baseline`).",
    )
    after_promotion: AfterPromotion = Field(
        AfterPromotion.baseline,
        description="What checks compare with while a version made by a re-tune or a prompt "
        "revision (one with a parent or a job) is active: `baseline` (its baseline: the current "
        "window starts after it, and checks say `insufficient_data` until the version has "
        "served `samples` samples) or `keep` (the reference above, over the whole window). A "
        "version without either (the first one, a rollback to it) is checked against the "
        "reference above; kind `baseline` follows every active version.",
    )

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Self:
        if self.kind is ReferenceKind.fixed:
            if self.start is None or self.end is None:
                raise ValueError("kind 'fixed' needs both 'start' and 'end'")
            if self.start.tzinfo is None or self.end.tzinfo is None:
                raise ValueError("'start' and 'end' need a time zone, e.g. 2026-01-01T00:00:00Z")
            if self.start >= self.end:
                raise ValueError("'start' must be before 'end'")
        if self.kind is ReferenceKind.dataset and self.path is None:
            raise ValueError("kind 'dataset' needs 'path'")
        if self.columns and self.kind is not ReferenceKind.dataset:
            raise ValueError("'columns' is only for kind 'dataset'")
        return self


class Monitor(Section):
    schedule: ScheduleSpec = Field(
        Schedule(every=timedelta(hours=1)),
        description="When checks run: `every <duration>` or a cron expression.",
    )
    window: Duration = Field(timedelta(hours=24), description="Length of the current window.")
    reference: Reference = Field(default_factory=Reference, description="What is compared to.")
    signals: tuple[Signal, ...] | None = Field(
        None,
        description="Signals to compute; unset means the task's defaults "
        "(classification: descriptors, text, embedding, prediction, confidence, performance; "
        "generation: descriptors, text, embedding, judge, feedback, format_validity, refusal, "
        "errors, latency).",
    )
    thresholds: dict[Signal, float] = Field(
        default_factory=dict,
        description="Per-signal drift threshold overriding the method's default.",
    )
    quality_drop: float = Field(
        0.05, gt=0.0, le=1.0, description="Absolute fall of a quality metric that counts as drift."
    )
    min_rows: int = Field(
        50, ge=1, description="Fewer rows on either side → status `insufficient_data`."
    )
    max_rows: int = Field(
        5000, ge=10, le=1_000_000, description="Cap of each side's reproducible uniform draw."
    )
    text_max_rows: int = Field(
        1000, ge=10, description="Sub-cap for the text-content drift signal (the slow one)."
    )
    embedding_model: str = Field(
        "default",
        description="`default` (all-MiniLM-L6-v2 shipped with driftd, offline), a hub id, a "
        "local path, or `openai:<model>`.",
    )
    embedding_method: Literal["classifier_cv", "evidently_model", "novelty"] = Field(
        "classifier_cv",
        description="Embedding drift test: `classifier_cv` (a logistic regression cross-fitted "
        "over 5 folds, every row scored; a shift of the whole mix), `evidently_model` "
        "(Evidently's ModelDriftMethod, one train/test split) or `novelty` (the share of "
        "current rows less like their nearest reference row than 95% of reference rows are "
        "like theirs: new kinds of input, such as questions about intents a classifier never "
        "learnt, even spread over many topics). A `thresholds.embedding` is an AUC for the "
        "first two and a share for `novelty`.",
    )
    timeout: Duration = Field(timedelta(minutes=10), description="A check running longer fails.")

    @model_validator(mode="after")
    def _rows(self) -> Self:
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) exceeds max_rows ({self.max_rows})")
        return self


class Action(StrEnum):
    none = "none"
    alert = "alert"
    retrain = "retrain"
    revise_prompt = "revise_prompt"


class Approval(StrEnum):
    auto = "auto"
    manual = "manual"


class Budget(Section):
    max_usd_per_day: float | None = Field(
        None, ge=0.0, description="Spend cap on paid APIs per day; unset means no cap."
    )
    max_usd_per_job: float | None = Field(None, ge=0.0, description="Spend cap of one job.")


class Policy(Section):
    on_drift: Action = Field(Action.alert, description="What drift leads to.")
    act_on: tuple[SignalGroup, ...] = Field(
        (SignalGroup.quality, SignalGroup.output),
        description="Signal groups whose drift may trigger `on_drift`; drift in the others "
        "only alerts.",
    )
    consecutive: int = Field(
        2, ge=1, le=100, description="Drifted checks in a row before acting (hysteresis)."
    )
    cooldown: Duration = Field(timedelta(hours=6), description="Quiet time after an action.")
    max_jobs_per_day: int = Field(2, ge=0, description="Cap on jobs started per day.")
    budget: Budget = Field(default_factory=Budget, description="Spend caps on paid APIs.")
    approval: Approval = Field(
        Approval.auto, description="`manual` holds jobs in `awaiting_approval`."
    )
    dry_run: bool = Field(False, description="Decide and record, but start no job.")


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
        Metric.accuracy, description="Metric the challenger must improve on the golden set."
    )
    margin: float = Field(
        0.0, ge=0.0, le=1.0, description="Required improvement over the champion."
    )
    guard_metrics: tuple[Metric, ...] = Field(
        (), description="Metrics the challenger may not be worse on."
    )
    bootstrap_samples: int = Field(
        1000, ge=100, le=100_000, description="Resamples for the confidence interval."
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
        "version's artifact (atomically, by renaming a new link over it).",
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
        description="Column of the true label (classification); for a generation prompt "
        "revision, of the reference answer shown to the judge (optional there; else "
        "`reference` or `expected`).",
    )


class GoldenSet(Section):
    """The golden set: the fixed file a challenger and its champion are both scored on."""

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
    gate: Gate = Field(default_factory=Gate, description="When a challenger is promoted.")
    trainer: Trainer = Field(default_factory=Trainer, description="transformers settings.")
    candidates: int = Field(4, ge=1, le=20, description="`prompt_revision`: prompts proposed.")
    watch: Watch = Field(default_factory=Watch, description="Rollback after promotion.")
    hooks: Hooks = Field(default_factory=Hooks, description="What promotion and rollback run.")
    timeout: Duration = Field(timedelta(hours=2), description="A job running longer fails.")

    @field_validator("golden_set", mode="before")
    @classmethod
    def _golden_path(cls, value: object) -> object:
        """The short form, a bare path, is a file whose columns are `input` and `label`."""
        return {"path": value} if isinstance(value, str | Path) else value


class Judge(Section):
    rubric: str | None = Field(
        None,
        min_length=1,
        description="What a good output is, for the LLM judge; unset means no judging.",
    )
    model: str = Field(
        "gpt-4o-mini",
        min_length=1,
        description="Chat model that judges, served by the deployment's upstream.",
    )
    schedule: ScheduleSpec = Field(
        Schedule(every=timedelta(minutes=15)), description="When recent outputs are judged."
    )
    sample_size: int = Field(
        50, ge=1, le=10_000, description="Unjudged recent samples scored per run, newest first."
    )
    lookback: Duration = Field(
        timedelta(hours=24), description="How far back unjudged samples are taken."
    )
    max_tokens_per_day: int | None = Field(
        200_000, ge=1, description="Cap on the judge's tokens in any 24 h; unset means no cap."
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="Requests per sample before it counts as failed."
    )
    price_per_million_input_tokens: float | None = Field(
        None, ge=0.0, description="For the cost in the audit trail."
    )
    price_per_million_output_tokens: float | None = Field(
        None, ge=0.0, description="For the cost in the audit trail."
    )


class Deployment(Section):
    name: Name = Field(description="Unique name; used in URLs and metric labels.")
    kind: Kind = Field(description="`finetuned` (tuned weights) or `prompted` (model + prompt).")
    task: Task = Field(description="`classification` (labels) or `generation` (free text).")
    model: Model | None = Field(None, description="`finetuned`: the deployed model.")
    prompt: Prompt | None = Field(None, description="`prompted`: the deployed prompt.")
    upstream: Upstream = Field(
        default_factory=Upstream, description="OpenAI-compatible endpoint of this deployment."
    )
    labels: tuple[str, ...] = Field(
        (), description="`classification`: the label set, at least two, unique."
    )
    sampling: Sampling = Field(default_factory=Sampling, description="What is stored.")
    redaction: Redaction = Field(default_factory=Redaction, description="PII removal.")
    descriptors: Descriptors = Field(
        default_factory=Descriptors, description="Text descriptors computed at ingest."
    )
    monitor: Monitor = Field(default_factory=Monitor, description="Drift checks.")
    policy: Policy = Field(default_factory=Policy, description="What drift leads to.")
    retune: Retune = Field(default_factory=Retune, description="Re-tuning and promotion.")
    judge: Judge = Field(default_factory=Judge, description="LLM judge of outputs (generation).")

    @property
    def signals(self) -> tuple[Signal, ...]:
        return self.monitor.signals or DEFAULT_SIGNALS[self.task]

    @property
    def proxied(self) -> bool:
        """Whether the proxy serves this deployment: it is prompted, served by OpenAI, or its
        ``upstream`` is configured (a transformers model behind an OpenAI-compatible server)."""
        return (
            self.kind is Kind.prompted
            or (self.model is not None and self.model.provider is Provider.openai)
            or "upstream" in self.model_fields_set
        )

    @property
    def method(self) -> Method:
        if self.retune.method is not None:
            return self.retune.method
        if self.kind is Kind.prompted:
            return Method.prompt_revision
        assert self.model is not None
        return Method.openai if self.model.provider is Provider.openai else Method.trainer

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        if self.kind is Kind.finetuned:
            if self.model is None:
                problems.append("kind 'finetuned' needs a 'model' section")
            if self.prompt is not None:
                problems.append("'prompt' is only for kind 'prompted'")
        else:
            if self.prompt is None:
                problems.append("kind 'prompted' needs a 'prompt' section")
            if self.model is not None:
                problems.append("'model' is only for kind 'finetuned'; use prompt.model")
        if self.task is Task.classification:
            if len(self.labels) < 2:
                problems.append("task 'classification' needs 'labels' (at least two)")
            elif len(set(self.labels)) != len(self.labels):
                dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})
                problems.append(f"'labels' repeats {', '.join(map(repr, dupes))}")
        elif self.labels:
            problems.append("'labels' is only for task 'classification'")
        wrong = CLASSIFICATION_ONLY if self.task is Task.generation else GENERATION_ONLY
        bad = [s.value for s in (self.monitor.signals or ()) if s in wrong]
        if bad:
            problems.append(f"monitor.signals {bad} do not apply to task '{self.task}'")
        if problems:
            raise ValueError("; ".join(problems))
        self._check_actions()
        return self

    def _check_actions(self) -> None:
        action = self.policy.on_drift
        if action is Action.retrain and self.kind is not Kind.finetuned:
            raise ValueError("policy.on_drift 'retrain' needs kind 'finetuned'; use revise_prompt")
        if action is Action.revise_prompt and self.kind is not Kind.prompted:
            raise ValueError("policy.on_drift 'revise_prompt' needs kind 'prompted'; use retrain")
        method = self.method
        if (method is Method.prompt_revision) != (self.kind is Kind.prompted):
            raise ValueError(f"retune.method '{method}' does not fit kind '{self.kind}'")
        if self.model is not None and method is not Method.prompt_revision:
            wanted = Provider.openai if method is Method.openai else Provider.transformers
            if self.model.provider is not wanted:
                raise ValueError(
                    f"retune.method '{method}' needs model.provider '{wanted}', "
                    f"got '{self.model.provider}'"
                )
        retunes = action in (Action.retrain, Action.revise_prompt) or self.retune.schedule
        if retunes and self.retune.golden_set is None:
            raise ValueError(
                "re-tuning can run (policy.on_drift or retune.schedule) but retune.golden_set "
                "is not set: a challenger cannot be gated without it"
            )
        revises = retunes and self.kind is Kind.prompted and self.task is Task.generation
        if revises and self.judge.rubric is None:
            raise ValueError(
                "a generation deployment's prompt revision is scored by the LLM judge, but "
                "judge.rubric is not set: say what a good answer is, or turn re-tuning off"
            )
        if self.task is Task.classification and Metric.judge_score in (
            self.retune.gate.metric,
            *self.retune.gate.guard_metrics,
        ):
            raise ValueError(
                "retune.gate metric 'judge_score' scores free text; a classification "
                "deployment is gated on accuracy or macro_f1"
            )


class ExecutorKind(StrEnum):
    """Where job processes run."""

    local = "local"
    kubernetes = "kubernetes"


# A Kubernetes resource quantity: 2, 500m, 1.5, 4Gi, 1e3.
_QUANTITY = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?")
# Kubernetes object names: a namespace is a DNS-1123 label, a claim or service account a
# DNS-1123 subdomain (dots allowed).
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


class KubernetesResources(Section):
    """Compute resources of a job's container, as in a Pod spec (`cpu: "2"`, `memory: 8Gi`)."""

    requests: dict[str, str] = Field(
        default_factory=dict, description="Resources the scheduler reserves for the job."
    )
    limits: dict[str, str] = Field(
        default_factory=dict, description="Most the job may use; memory beyond it is OOM-killed."
    )

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [
            f"{name}: {amount!r}"
            for name, amount in value.items()
            if not _QUANTITY.fullmatch(amount)
        ]
        if bad:
            raise ValueError(
                f"not Kubernetes quantities ({', '.join(bad)}); write e.g. '2', '500m' or '8Gi'"
            )
        return value


class Kubernetes(Section):
    """Jobs as Kubernetes Jobs (`executor: kubernetes`); `jobs_dir` must be a shared volume.

    Each attempt of a job is a `batch/v1` Job running `python -m retrain` in `image`. The job
    reads its spec from, and writes its result to, `scheduling.jobs_dir`, so that folder must
    be a ReadWriteMany volume (`jobs_volume_claim`) that the daemon mounts at the same path.
    """

    namespace: str = Field(
        "default",
        description="Namespace of the Jobs; driftd's service account needs `create`, `get` and "
        "`delete` on `jobs`, `get` and `list` on `pods` and `get` on `pods/log` there.",
    )
    image: str | None = Field(
        None,
        min_length=1,
        description="Container image of the jobs (driftd's own image holds `retrain`); "
        "required with `executor: kubernetes`.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="The container's `imagePullPolicy`; unset leaves Kubernetes' default."
    )
    service_account: str | None = Field(
        None,
        description="Service account the job's pod runs as; unset means the namespace's default.",
    )
    resources: KubernetesResources = Field(
        default_factory=KubernetesResources, description="The job container's resources."
    )
    gpus: int = Field(
        0, ge=0, le=64, description="GPUs per job, requested as `gpu_resource`; 0 asks for none."
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        min_length=1,
        description="Extended resource name of a GPU (`nvidia.com/gpu`, `amd.com/gpu`).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a job's pod must match, e.g. GPU nodes."
    )
    tolerations: tuple[dict[str, str | int], ...] = Field(
        (),
        description="Tolerations of the job's pod, spelled as in a Pod spec (`key`, `operator`, "
        "`value`, `effect`, `tolerationSeconds`), e.g. for tainted GPU nodes.",
    )
    jobs_volume_claim: str | None = Field(
        None,
        description="PersistentVolumeClaim (ReadWriteMany) holding `scheduling.jobs_dir`, mounted "
        "in each job at that same path; required with `executor: kubernetes`.",
    )
    env_from_secrets: tuple[str, ...] = Field(
        (),
        description="Secrets whose keys become environment variables of every job's container "
        "(`envFrom`), e.g. the one holding OPENAI_API_KEY for OpenAI fine-tuning and prompt "
        "revision: a job does not inherit the daemon's environment.",
    )
    ttl_after_finished: Duration = Field(
        timedelta(days=1),
        description="A finished Job and its pod are deleted this long after it ended; keep it "
        "well above `job_stale_after` so a new leader still finds them.",
    )
    active_deadline: Duration | None = Field(
        None,
        description="Kubernetes stops a job running longer than this (`activeDeadlineSeconds`); "
        "unset means no limit beyond the job's own timeout.",
    )
    kubeconfig: RelativePath | None = Field(
        None,
        description="Kubeconfig file to reach the cluster from outside it (relative to this "
        "file); unset means the in-cluster service account.",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _DNS_LABEL.fullmatch(value):
            raise ValueError(
                "expected a Kubernetes namespace: at most 63 lowercase letters, digits or '-', "
                f"starting and ending with a letter or digit, got {value!r}"
            )
        return value

    @field_validator("service_account", "jobs_volume_claim")
    @classmethod
    def _object_name(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_SUBDOMAIN.fullmatch(value):
            raise ValueError(
                "expected a Kubernetes object name: lowercase letters, digits, '-' or '.', "
                f"starting and ending with a letter or digit, got {value!r}"
            )
        return value

    @field_validator("env_from_secrets")
    @classmethod
    def _secret_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            cls._object_name(name)
        return value

    @field_validator("tolerations")
    @classmethod
    def _tolerations(
        cls, value: tuple[dict[str, str | int], ...]
    ) -> tuple[dict[str, str | int], ...]:
        for i, toleration in enumerate(value):
            unknown = sorted(set(toleration) - _TOLERATION_KEYS)
            if unknown:
                raise ValueError(
                    f"entry {i} has unknown key(s) {', '.join(unknown)}; a toleration has "
                    f"{', '.join(sorted(_TOLERATION_KEYS))}"
                )
            for key, item in toleration.items():
                if (key == "tolerationSeconds") != isinstance(item, int):
                    wanted = "a whole number" if key == "tolerationSeconds" else "a string"
                    raise ValueError(f"entry {i}: {key} should be {wanted}, got {item!r}")
        return value


class Scheduling(Section):
    lease_ttl: Duration = Field(
        timedelta(seconds=15),
        description="Leader lease: a replica that stops renewing loses it after this long, and "
        "another takes over; renewed every third of it.",
    )
    check_workers: int = Field(
        1, ge=1, le=16, description="Worker processes that run checks (off the API's event loop)."
    )
    jobs_dir: Path = Field(
        Path("driftd-jobs"),
        description="Folder of the jobs' specs, logs and results (relative to the working "
        "directory). With `executor: kubernetes` the jobs read and write it too, so it must be "
        "a ReadWriteMany volume (`kubernetes.jobs_volume_claim`) mounted at this same path in "
        "the daemon.",
    )
    job_poll: Duration = Field(
        timedelta(seconds=2), description="How often the leader starts and watches jobs."
    )
    job_heartbeat: Duration = Field(
        timedelta(seconds=5), description="How often the leader renews a running job's heartbeat."
    )
    job_stale_after: Duration = Field(
        timedelta(seconds=30),
        description="A running job whose heartbeat is older than this lost its daemon: the "
        "leader adopts it (still running) or retries or fails it (its process is gone).",
    )
    catch_up: bool = Field(
        True,
        description="After downtime or a change of leader, run a missed check or re-tuning "
        "once (the latest missed tick), not once per missed tick.",
    )
    executor: ExecutorKind = Field(
        ExecutorKind.local,
        description="Where jobs run: `local` (subprocesses of the leader) or `kubernetes` "
        "(a Job per attempt, see `scheduling.kubernetes`; needs the `driftd[kubernetes]` extra).",
    )
    kubernetes: Kubernetes = Field(
        default_factory=Kubernetes, description="The Kubernetes Jobs of `executor: kubernetes`."
    )

    @model_validator(mode="after")
    def _heartbeat(self) -> Self:
        if self.job_stale_after <= self.job_heartbeat:
            raise ValueError(
                f"job_stale_after ({format_duration(self.job_stale_after)}) must be longer than "
                f"job_heartbeat ({format_duration(self.job_heartbeat)}), or the jobs of a live "
                "daemon would be taken for orphans"
            )
        return self

    @model_validator(mode="after")
    def _executor(self) -> Self:
        if self.executor is ExecutorKind.kubernetes:
            needed = {
                "image": "the container image the jobs run in",
                "jobs_volume_claim": "the ReadWriteMany claim holding jobs_dir, which the "
                "daemon and its jobs share",
            }
            missing = [
                f"scheduling.kubernetes.{name} ({why})"
                for name, why in needed.items()
                if getattr(self.kubernetes, name) is None
            ]
            if missing:
                raise ValueError(f"executor 'kubernetes' needs {' and '.join(missing)}")
        return self


class Metrics(Section):
    """What ``/metrics`` exports, and how often it reads the store for it."""

    max_signals_per_deployment: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Per-signal series kept per deployment (drifted signals first); "
        "`driftd_signals_monitored` still counts them all, so a cap that bites is visible.",
    )
    store_cache: Duration = Field(
        timedelta(seconds=10),
        description="How long the store-derived metrics of one scrape are reused: several "
        "Prometheus servers scraping every few seconds cost one set of queries per interval.",
    )


class NotifyOn(StrEnum):
    """What the daemon sends notifications about."""

    drift = "drift"
    job_failed = "job_failed"
    promotion = "promotion"
    rollback = "rollback"


_URL_ENV = (
    "Environment variable holding the channel's URL (a secret, so never in this file); unset "
    "or empty turns the channel off."
)


class WebhookChannel(Section):
    """The generic webhook: a POST of a JSON document per message."""

    url_env: SecretEnv = Field("DRIFTD_WEBHOOK_URL", description=_URL_ENV)


class SlackChannel(Section):
    """A Slack-compatible incoming webhook: a POST of `{"text": ...}` per message."""

    url_env: SecretEnv = Field("DRIFTD_SLACK_WEBHOOK_URL", description=_URL_ENV)


class AlertmanagerChannel(Section):
    """Alertmanager's v2 API: alerts are posted to `<url>/api/v2/alerts`."""

    url_env: SecretEnv = Field(
        "DRIFTD_ALERTMANAGER_URL", description=_URL_ENV + " The URL is Alertmanager's base URL."
    )


class Notifications(Section):
    """Messages the daemon sends itself: a generic webhook, Slack, Alertmanager's v2 API."""

    webhook: WebhookChannel = Field(
        default_factory=WebhookChannel, description="The generic JSON webhook."
    )
    slack: SlackChannel = Field(
        default_factory=SlackChannel, description="The Slack-compatible webhook."
    )
    alertmanager: AlertmanagerChannel = Field(
        default_factory=AlertmanagerChannel, description="Alertmanager."
    )
    # Not called `on`: YAML 1.1 reads a bare `on` key as the boolean true.
    events: tuple[NotifyOn, ...] = Field(
        tuple(NotifyOn),
        description="What to send: `drift` (and its resolution), `job_failed` (and the next "
        "success), `promotion`, `rollback`.",
    )
    poll: Duration = Field(
        timedelta(seconds=5),
        description="How often the leader turns new audit events into messages.",
    )
    timeout: Duration = Field(timedelta(seconds=10), description="Timeout of one delivery.")
    max_attempts: int = Field(
        8, ge=1, le=100, description="Deliveries tried per message before it is given up."
    )
    backoff: Duration = Field(
        timedelta(seconds=5),
        description="Wait before the first retry; doubled after each failure, at most 1h.",
    )
    driftd_url: str | None = Field(
        None, description="driftd's address as people reach it, linked from every message."
    )

    @field_validator("driftd_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value


class Config(Section):
    """The whole of ``driftd.yaml``."""

    server: Server = Field(default_factory=Server, description="The HTTP API.")
    storage: Storage = Field(default_factory=Storage, description="The store.")
    ingest: Ingest = Field(default_factory=Ingest, description="The ingest API's limits.")
    proxy: Proxy = Field(default_factory=Proxy, description="The OpenAI-compatible proxy.")
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Leader lease, check workers and jobs."
    )
    logging: Logging = Field(default_factory=Logging, description="Log output.")
    notifications: Notifications = Field(
        default_factory=Notifications, description="Messages sent by the daemon itself."
    )
    metrics: Metrics = Field(default_factory=Metrics, description="The `/metrics` endpoint.")
    timezone: TimeZone = Field("UTC", description="Time zone of cron schedules (IANA name).")
    deployments: tuple[Deployment, ...] = Field((), description="The deployments driftd watches.")

    def deployment(self, name: str) -> Deployment:
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        raise KeyError(name)
