"""A deployment (``deployments[]``): what it is, its model or prompt, its upstream, and what
happens to its samples at ingest (sampling, redaction, descriptors).

Its ``monitor``, ``policy``, ``retune`` and ``judge`` sections have modules of their own.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from daemon.config.sections import Section
from daemon.config.sections.judge import Judge
from daemon.config.sections.monitor import Monitor
from daemon.config.sections.policy import Action, Policy
from daemon.config.sections.retune import Method, Metric, Retune
from daemon.config.types import (
    Duration,
    Name,
    Regex,
    SecretEnv,
    UrlEnv,
)
from daemon.domain import Kind, Task
from monitors.spec import CLASSIFICATION_ONLY, DEFAULT_SIGNALS, GENERATION_ONLY, Signal


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
    def retunes(self) -> bool:
        """Whether re-tuning can run on its own: drift leads to it, or a schedule does."""
        return self.policy.on_drift is Action.retune or self.retune.schedule is not None

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
        retunes = self.retunes
        if method is Method.openai and self.policy.budget.max_usd_per_job is not None:
            api = self.retune.openai
            if api.price_per_million_training_tokens is None or not isinstance(
                api.hyperparameters.get("n_epochs"), int
            ):
                raise ValueError(
                    "policy.budget.max_usd_per_job caps an OpenAI fine-tune only when its cost "
                    "is known before it starts: set retune.openai.price_per_million_training_"
                    "tokens and retune.openai.hyperparameters.n_epochs (a whole number), or "
                    "unset max_usd_per_job"
                )
        if retunes and self.retune.golden_set is None:
            raise ValueError(
                "re-tuning can run (policy.on_drift or retune.schedule) but retune.golden_set "
                "is not set: a candidate cannot be gated without it"
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
