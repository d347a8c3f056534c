"""The contract between driftd and its jobs: every job kind's spec and result, as pydantic models.

The daemon builds a spec as one of these models and stores it as JSON; its job runner writes it
as ``job.json`` with ``output_dir`` added; ``python -m retrain <kind>`` reads it back with
``JobSpec.parse`` (``model_validate_json``), so a bad spec is refused naming each field and what
was wrong with it, before anything runs. A job returns its kind's result model, written as
``result.json``; the daemon reads it back typed with ``read_result``.

Specs and results carry ``spec_version``. One without it was written before the key existed and
is read as version 1 (its shape is version 1's); one newer than ``SPEC_VERSION`` is refused with
a message saying which release can read it, never half understood.

Paths: a job resolves the relative paths of its spec against the spec's folder and checks there
that the files and folders it reads exist. A spec the daemon builds is not checked where it is
built (its paths are absolute; the job checks them where it runs).

Never imports ``daemon``.
"""

from __future__ import annotations

from retrain.contract.base import (
    LABEL_METRICS,
    OPENAI_KEY_ENV,
    REFERENCE_KEYS,
    REFERENCE_METRIC,
    SCORE_METRIC,
    SPEC_VERSION,
    Contract,
    Json,
    Metrics,
    Part,
    Task,
    describe,
    upgraded,
)
from retrain.contract.results import (
    RESULTS,
    EvaluateResult,
    FineTuned,
    FineTuneResult,
    GateJobResult,
    GuardCheck,
    JobResult,
    OpenAIFineTuneResult,
    Produced,
    PromptRevisionResult,
    PromptScores,
    ProposedPrompt,
    Side,
    Tokens,
    Trained,
    TrainResult,
    Verdict,
    read_result,
)
from retrain.contract.retunes import (
    ANSWER_MAX_TOKENS,
    GENERATION_ANSWER_MAX_TOKENS,
    ActiveModel,
    Bookkeeping,
    Candidate,
    DataSettings,
    Endpoint,
    FineTuneSpec,
    GoldenSet,
    Judge,
    Named,
    Prompt,
    PromptGate,
    PromptRevisionSpec,
    Settlement,
    Shot,
)
from retrain.contract.specs import (
    EvaluateSpec,
    FineTuneSettings,
    GateSettings,
    GateSpec,
    JobSpec,
    ModelRef,
    OpenAIFineTuneSpec,
    TrainerSettings,
    TrainSpec,
)

SPECS: dict[str, type[JobSpec]] = {
    spec.KIND: spec
    for spec in (
        EvaluateSpec,
        GateSpec,
        TrainSpec,
        OpenAIFineTuneSpec,
        FineTuneSpec,
        PromptRevisionSpec,
    )
}
"""Each job kind's spec, by the kind's name (``python -m retrain <kind>``)."""

__all__ = [
    "ANSWER_MAX_TOKENS",
    "GENERATION_ANSWER_MAX_TOKENS",
    "LABEL_METRICS",
    "OPENAI_KEY_ENV",
    "REFERENCE_KEYS",
    "REFERENCE_METRIC",
    "RESULTS",
    "SCORE_METRIC",
    "SPECS",
    "SPEC_VERSION",
    "ActiveModel",
    "Bookkeeping",
    "Candidate",
    "Contract",
    "DataSettings",
    "Endpoint",
    "EvaluateResult",
    "EvaluateSpec",
    "FineTuneResult",
    "FineTuneSettings",
    "FineTuneSpec",
    "FineTuned",
    "GateJobResult",
    "GateSettings",
    "GateSpec",
    "GoldenSet",
    "GuardCheck",
    "JobResult",
    "JobSpec",
    "Json",
    "Judge",
    "Metrics",
    "ModelRef",
    "Named",
    "OpenAIFineTuneResult",
    "OpenAIFineTuneSpec",
    "Part",
    "Produced",
    "Prompt",
    "PromptGate",
    "PromptRevisionResult",
    "PromptRevisionSpec",
    "PromptScores",
    "ProposedPrompt",
    "Settlement",
    "Shot",
    "Side",
    "Task",
    "Tokens",
    "TrainResult",
    "TrainSpec",
    "Trained",
    "TrainerSettings",
    "Verdict",
    "describe",
    "read_result",
    "upgraded",
]
