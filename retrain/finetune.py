"""Job kind ``finetune``: a whole re-tune — data set, fine-tune, gate — in one process.

The daemon creates this job when its policy decides to re-tune and writes the spec (see
``daemon/retune/specs.py``): the labelled production samples it exported, the original training
data, the golden set, the model to start from and the active version to beat. The job

1. builds the data set (``retrain.dataset``: golden set kept out, deduplicated, mixed at the
   configured ratio, split deterministically, lineage recorded),
2. fine-tunes the candidate (``retrain.train`` with transformers' ``Trainer``, resumable from a
   checkpoint when a killed attempt is retried; or ``retrain.openai_finetune`` for OpenAI models),
3. gates it against the active version on the golden set: a local classifier with
   ``retrain.gate``; a local causal LM and the active version (or, with none, the base it was
   tuned from) answering each golden input with ``retrain.generate``; an OpenAI model and the
   model it was tuned from answering through the API with ``retrain.api_gate``. Generation
   answers are scored as ``retrain.scoring`` says: by the judge when the spec has one, else by
   the golden set's reference answers. A gate the token cap or the API stops fails the job,

and returns the candidate (its name and model folder), the gate's verdict and the lineage. It
promotes nothing: the daemon's leader registers the candidate and promotes it only if the gate
passed, fenced by its lease, through the promotion hooks.

The spec is ``retrain.contract.FineTuneSpec``: ``method`` (trainer | openai), ``task``,
``labels``, ``base_model``, ``active`` ({"model_dir"} or null), ``production_file`` (JSONL:
input, label or output, sample_id), ``original_file`` (JSONL, CSV or Parquet, optional) with
``original_input_field`` / ``original_label_field``, ``golden_set`` (JSONL, CSV or Parquet)
with ``golden_input_field`` (``input``) / ``golden_label_field`` (``label``), ``data``
(production_ratio, max_rows, validation_share), ``trainer`` (epochs, batch_size, learning_rate,
max_length, optional max_steps), ``gate`` (metric, margin, guard_metrics, bootstrap_samples),
``seed``, ``candidate`` ({"name"}), ``lineage``, ``output_dir``; for ``openai``: ``openai`` (the
``openai_finetune`` spec's keys other than the files and output_dir) and ``system_prompt``;
for generation, ``judge`` (optional: model, base_url, api_key_env, rubric); and ``max_tokens``,
the cap of the gate's API calls (``FineTuneSpec.gate_tokens`` when unset). The result is
``FineTuneResult``; its verdict names the metric, the interval and the tokens spent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retrain import dataset, scoring
from retrain.chat import Budget
from retrain.contract import (
    FineTuned,
    FineTuneResult,
    FineTuneSettings,
    FineTuneSpec,
    GateSpec,
    ModelRef,
    OpenAIFineTuneSpec,
    Produced,
    Trained,
    TrainSpec,
    Verdict,
)
from retrain.errors import EvaluationError, JobError

Progress = Callable[[str], None]


def run(spec: FineTuneSpec, progress: Progress) -> FineTuneResult:
    """Build the data set, fine-tune the candidate, gate it; the job's result."""
    # A golden set a generation gate cannot score, or a judge without its key, fails the job
    # before it trains (or pays for) a candidate.
    scored = _Scoring.of(spec) if spec.task == "generation" else None
    built = _dataset(spec, progress)
    data_dir = spec.output / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "lineage.json").write_text(json.dumps(built.lineage, indent=2) + "\n")
    if spec.method == "openai":
        return _openai(spec, built, data_dir, scored, progress)
    train_file, validation_file = data_dir / "train.jsonl", data_dir / "validation.jsonl"
    dataset.write_jsonl(train_file, built.train)
    dataset.write_jsonl(validation_file, built.validation)
    trained = _train(spec, train_file, validation_file, progress)
    verdict = _gate(spec, Path(str(trained.model_dir)), scored, progress)
    candidate = verdict.candidate
    return FineTuneResult(
        candidate=Produced(name=spec.candidate.name, artifact=trained.model_dir),
        gate=verdict,
        metrics=(candidate.metrics if candidate is not None else None) or trained.metrics,
        train=Trained.model_validate(trained.model_dump(include=set(Trained.model_fields))),
        lineage=built.lineage,
    )


def _dataset(spec: FineTuneSpec, progress: Progress) -> dataset.DataSet:
    generation = spec.task == "generation"
    production = dataset.read_examples(
        spec.production_file,
        label_field=None if generation else "label",
        output_field="output" if generation else None,
        source="production",
    )
    original: list[dataset.Example] = []
    if spec.original_file is not None:
        original = dataset.read_examples(
            spec.original_file,
            input_field=spec.original_input_field,
            label_field=None if generation else spec.original_label_field,
            output_field=spec.original_label_field if generation else None,
        )
    golden = [
        row.input
        for row in dataset.read_examples(
            spec.golden,
            input_field=spec.golden_input_field,
            label_field=None,
            what="golden set",
        )
    ]
    data = spec.data
    built = dataset.build_dataset(
        production,
        original,
        golden,
        production_ratio=data.production_ratio,
        max_rows=data.max_rows,
        validation_share=data.validation_share,
        seed=spec.seed,
        lineage=spec.lineage,
    )
    if not built.train:
        raise JobError(
            f"no training examples are left from {spec.production_file} and "
            f"{spec.original_file} once unlabelled, golden and duplicate rows are dropped"
        )
    progress(
        f"retrain: data set of {len(built.train)} training and {len(built.validation)} "
        f"validation examples ({len(production)} production, {len(original)} original read)"
    )
    return built


def _train(
    spec: FineTuneSpec, train_file: Path, validation_file: Path, progress: Progress
) -> Trained:
    from retrain import train

    settings = spec.trainer
    train_spec = TrainSpec.build(
        task=spec.task,
        base_model=str(spec.base_model),
        train_file=train_file,
        validation_file=validation_file,
        labels=spec.labels,
        output_dir=spec.output / "train",
        seed=spec.seed,
        lineage=spec.lineage,
        **settings.model_dump(),
    )
    return train.run(train_spec, progress)


def _gate(
    spec: FineTuneSpec, candidate: Path, scored: _Scoring | None, progress: Progress
) -> Verdict:
    if scored is not None:
        return _generation_gate(spec, candidate, scored, progress)
    from retrain import gate

    gate_spec = GateSpec.build(
        golden_set=spec.golden,
        input_field=spec.golden_input_field,
        label_field=spec.golden_label_field,
        active=None if spec.active is None else ModelRef(model_dir=spec.active.model_dir),
        candidate=ModelRef(model_dir=candidate),
        seed=spec.seed,
        output_dir=spec.output / "gate",
        max_length=spec.trainer.max_length,
        **spec.gate.model_dump(),
    )
    return gate.run(gate_spec, progress)


@dataclass(frozen=True, slots=True)
class _Scoring:
    """How a generation gate scores: the golden examples, the judge (when the spec has one)
    and the token cap the judge and any API model spend from."""

    queries: list[scoring.Query]
    judged: scoring.JudgeModel | None
    spending: Budget

    @classmethod
    def of(cls, spec: FineTuneSpec) -> _Scoring:
        """Read from the spec: a reference answer is required of every golden example when
        no judge scores, and the judge's key from the job's environment."""
        queries = scoring.read_queries(
            spec.golden,
            False,
            spec.golden_input_field,
            spec.golden_label_field,
            error=EvaluationError,
            require_reference=spec.judge is None,
        )
        spending = scoring.gate_budget(spec.gate_tokens(len(queries)))
        if spec.judge is None:
            return cls(queries, None, spending)
        key = os.environ.get(spec.judge.api_key_env, "").strip()
        if not key:
            raise EvaluationError(
                f"no API key for the judge: set the environment variable "
                f"{spec.judge.api_key_env} for the job (judge.api_key_env in the spec names it)"
            )
        return cls(queries, scoring.JudgeModel(spec.judge, key, spending), spending)


def _generation_gate(
    spec: FineTuneSpec, candidate: Path, scored: _Scoring, progress: Progress
) -> Verdict:
    """The trained causal LM against the active version (or, with none, the base it was tuned
    from), both answering the golden set locally (``retrain.generate``), scored as
    ``retrain.scoring`` says."""
    from retrain import generate

    active = str(spec.active.model_dir if spec.active is not None else spec.base_model)
    inputs = [query.input for query in scored.queries]
    said: dict[str, list[str]] = {}
    for role, model in (("active", active), ("candidate", str(candidate))):
        progress(f"gate: the {role} ({model}) answers {len(inputs)} examples")
        said[role] = generate.answer(model, inputs, max_length=spec.trainer.max_length)
    found = scoring.compare_answers(
        scored.queries,
        said["active"],
        said["candidate"],
        judged=scored.judged,
        settings=spec.gate,
        seed=spec.seed,
    )
    found.golden_set = str(spec.golden)
    return scoring.finish_verdict(
        found, active, str(candidate), scored.spending, scored.judged, progress
    )


def _openai(
    spec: FineTuneSpec,
    built: dataset.DataSet,
    data_dir: Path,
    scored: _Scoring | None,
    progress: Progress,
) -> FineTuneResult:
    from retrain import openai_finetune

    train_file, validation_file = data_dir / "train.chat.jsonl", data_dir / "validation.chat.jsonl"
    dataset.write_chat_jsonl(train_file, built.train, system_prompt=spec.system_prompt)
    dataset.write_chat_jsonl(validation_file, built.validation, system_prompt=spec.system_prompt)
    finetune_spec = OpenAIFineTuneSpec.build(
        **(spec.openai or FineTuneSettings()).model_dump(exclude={"api_key"}),
        training_file=str(train_file),
        validation_file=str(validation_file) if built.validation else None,
        output_dir=str(spec.output / "openai"),
    )
    tuned = openai_finetune.run(finetune_spec, progress)
    model = tuned.fine_tuned_model
    if model is None:  # openai_finetune refuses a succeeded job without one
        raise JobError("the fine-tuning job succeeded but named no fine-tuned model")
    return FineTuneResult(
        candidate=Produced(name=spec.candidate.name, artifact=model),
        gate=_openai_gate(spec, finetune_spec, model, scored, progress),
        openai=FineTuned.model_validate(tuned.model_dump(include=set(FineTuned.model_fields))),
        lineage=built.lineage,
        cost_usd=tuned.cost_usd,
    )


def _openai_gate(
    spec: FineTuneSpec,
    tuned: OpenAIFineTuneSpec,
    candidate: str,
    scored: _Scoring | None,
    progress: Progress,
) -> Verdict:
    """The fine-tuned model against the model it was tuned from (the active version), both
    through the same OpenAI-compatible API, on the golden set (``retrain.api_gate``)."""
    from retrain import api_gate
    from retrain.evaluate import read_golden_set

    key = os.environ.get(tuned.api_key_env, "")
    endpoint = {"base_url": tuned.base_url, "api_key_env": tuned.api_key_env}
    if scored is not None:
        found = api_gate.gate_generation(
            scored.queries,
            active=tuned.base_model,
            candidate=candidate,
            endpoint=endpoint,
            key=key,
            system=spec.system_prompt,
            judged=scored.judged,
            settings=spec.gate,
            seed=spec.seed,
            spending=scored.spending,
            progress=progress,
        )
    else:
        examples = read_golden_set(spec.golden, spec.golden_input_field, spec.golden_label_field)
        found = api_gate.gate(
            examples,
            spec.labels,
            active=tuned.base_model,
            candidate=candidate,
            endpoint=endpoint,
            key=key,
            system=spec.system_prompt,
            settings=spec.gate,
            seed=spec.seed,
            spending=scoring.gate_budget(spec.gate_tokens(len(examples))),
            progress=progress,
        )
    found.golden_set = str(spec.golden)
    return found
