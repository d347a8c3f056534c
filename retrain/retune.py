"""Job kind ``retrain``: a whole re-tune — data set, fine-tune, gate — in one process.

The daemon creates this job when its policy decides to re-tune and writes the spec (see
``daemon/retune.py``): the labelled production samples it exported, the original training data,
the golden set, the model to start from and the champion to beat. The job

1. builds the data set (``retrain.dataset``: golden set kept out, deduplicated, mixed at the
   configured ratio, split deterministically, lineage recorded),
2. fine-tunes the challenger (``retrain.train`` with transformers' ``Trainer``, resumable from a
   checkpoint when a killed attempt is retried; or ``retrain.openai_finetune`` for OpenAI models),
3. gates it against the champion on the golden set (``retrain.gate``),

and returns the candidate (its name and model folder), the gate's verdict and the lineage. It
promotes nothing: the daemon's leader registers the candidate and promotes it only if the gate
passed, fenced by its lease, through the promotion hooks.

Spec keys: ``method`` (trainer | openai), ``task``, ``labels``, ``base_model``, ``champion``
({"model_dir"} or null), ``production_file`` (JSONL: input, label or output, sample_id),
``original_file`` (JSONL, CSV or Parquet, optional) with ``original_input_field`` /
``original_label_field``, ``golden_set`` (JSONL, CSV or Parquet) with ``golden_input_field``
(``input``) / ``golden_label_field`` (``label``), ``data`` (production_ratio, max_rows,
validation_share), ``trainer`` (epochs, batch_size, learning_rate, max_length, optional
max_steps), ``gate`` (metric, margin, guard_metrics, bootstrap_samples), ``seed``, ``candidate``
({"name"}), ``lineage``, ``output_dir``; for ``openai``: ``openai`` (the ``openai_finetune``
spec's keys other than the files and output_dir) and ``system_prompt``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrain import dataset
from retrain.errors import JobError, SpecError

Progress = Callable[[str], None]
METHODS = ("trainer", "openai")
_REQUIRED = ("method", "task", "production_file", "golden_set", "output_dir", "candidate")


@dataclass(frozen=True, slots=True)
class RetuneSpec:
    method: str
    task: str
    production_file: Path
    golden_set: Path
    output_dir: Path
    candidate: str
    labels: tuple[str, ...] = ()
    base_model: str | None = None
    champion: Path | None = None
    original_file: Path | None = None
    original_input_field: str = "input"
    original_label_field: str = "label"
    golden_input_field: str = "input"
    golden_label_field: str = "label"
    data: Mapping[str, Any] = field(default_factory=dict)
    trainer: Mapping[str, Any] = field(default_factory=dict)
    gate: Mapping[str, Any] = field(default_factory=dict)
    openai: Mapping[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    seed: int = 0
    lineage: Mapping[str, Any] = field(default_factory=dict)


def parse_spec(
    raw: Mapping[str, Any], base: Path, *, warn: Callable[[str], None] = lambda _: None
) -> RetuneSpec:
    """Check a spec; ``SpecError`` lists every problem. Unknown keys are passed to ``warn``."""
    problems = [f"{key!r} is required" for key in _REQUIRED if raw.get(key) is None]
    known = {*RetuneSpec.__dataclass_fields__, *_REQUIRED, "deployment", "trigger"}
    known |= {"champion_version", "promote", "created_at", "kind", "decision_event_id"}
    known |= {"check_ids"}
    unknown = sorted(key for key in raw if key not in known)
    if unknown:
        warn(f"ignoring spec keys {', '.join(map(repr, unknown))}")
    if raw.get("method") not in (None, *METHODS):
        problems.append(f"'method' must be one of {', '.join(METHODS)}, got {raw['method']!r}")
    if raw.get("task") not in (None, "classification", "generation"):
        problems.append(f"'task' must be classification or generation, got {raw['task']!r}")

    def path(key: str, *, folder: bool = False) -> Path | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            problems.append(f"{key!r} must be a path, got {value!r}")
            return None
        found = base.absolute() / value
        if key != "output_dir" and not (found.is_dir() if folder else found.is_file()):
            problems.append(f"{key} {found} is not a {'folder' if folder else 'file'}")
        return found

    production, golden = path("production_file"), path("golden_set")
    original, output = path("original_file"), path("output_dir")
    champion_raw = raw.get("champion")
    champion = None
    if champion_raw is not None:
        if not isinstance(champion_raw, Mapping) or not champion_raw.get("model_dir"):
            problems.append(
                f"'champion' must be null or {{'model_dir': ...}}, got {champion_raw!r}"
            )
        else:
            champion = base.absolute() / str(champion_raw["model_dir"])
    candidate = raw.get("candidate")
    name = candidate.get("name") if isinstance(candidate, Mapping) else None
    if candidate is not None and not (isinstance(name, str) and name):
        problems.append(f"'candidate' must be {{'name': ...}}, got {candidate!r}")
    if raw.get("method") == "trainer" and not raw.get("base_model"):
        problems.append("'base_model' is required by the trainer method (a folder or hub id)")
    if problems:
        raise SpecError("; ".join(problems))
    assert production is not None
    assert golden is not None
    assert output is not None
    return RetuneSpec(
        method=str(raw["method"]),
        task=str(raw["task"]),
        production_file=production,
        golden_set=golden,
        output_dir=output,
        candidate=str(name),
        labels=tuple(raw.get("labels") or ()),
        base_model=raw.get("base_model"),
        champion=champion,
        original_file=original,
        original_input_field=str(raw.get("original_input_field") or "input"),
        original_label_field=str(raw.get("original_label_field") or "label"),
        golden_input_field=str(raw.get("golden_input_field") or "input"),
        golden_label_field=str(raw.get("golden_label_field") or "label"),
        data=dict(raw.get("data") or {}),
        trainer=dict(raw.get("trainer") or {}),
        gate=dict(raw.get("gate") or {}),
        openai=dict(raw.get("openai") or {}),
        system_prompt=raw.get("system_prompt"),
        seed=int(raw.get("seed") or 0),
        lineage=dict(raw.get("lineage") or {}),
    )


def run(spec: RetuneSpec, progress: Progress) -> dict[str, Any]:
    """Build the data set, fine-tune the challenger, gate it; the job's result."""
    built = _dataset(spec, progress)
    data_dir = spec.output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "lineage.json").write_text(json.dumps(built.lineage, indent=2) + "\n")
    if spec.method == "openai":
        return _openai(spec, built, data_dir, progress)
    train_file, validation_file = data_dir / "train.jsonl", data_dir / "validation.jsonl"
    dataset.write_jsonl(train_file, built.train)
    dataset.write_jsonl(validation_file, built.validation)
    trained = _train(spec, train_file, validation_file, progress)
    candidate = {"name": spec.candidate, "artifact": trained["model_dir"]}
    verdict = _gate(spec, Path(trained["model_dir"]), progress)
    return {
        "candidate": candidate,
        "gate": verdict,
        "metrics": verdict.get("challenger", {}).get("metrics") or trained.get("metrics"),
        "train": trained,
        "lineage": built.lineage,
    }


def _dataset(spec: RetuneSpec, progress: Progress) -> dataset.DataSet:
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
            spec.golden_set,
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
        production_ratio=float(data.get("production_ratio", 0.5)),
        max_rows=int(data.get("max_rows", 20_000)),
        validation_share=float(data.get("validation_share", 0.1)),
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
    spec: RetuneSpec, train_file: Path, validation_file: Path, progress: Progress
) -> dict[str, Any]:
    from retrain import train

    raw = {
        "task": spec.task,
        "base_model": spec.base_model,
        "train_file": str(train_file),
        "validation_file": str(validation_file),
        "labels": list(spec.labels),
        "output_dir": str(spec.output_dir / "train"),
        "seed": spec.seed,
        "lineage": dict(spec.lineage),
        **{k: v for k, v in spec.trainer.items() if v is not None},
    }
    result: dict[str, Any] = train.run(train.parse_spec(raw, Path("/")), progress)
    return result


def _gate(spec: RetuneSpec, challenger: Path, progress: Progress) -> dict[str, Any]:
    from retrain import gate

    if spec.task != "classification":
        return {
            "passed": False,
            "reasons": [
                "the golden-set gate scores classification models only so far; a generation "
                "candidate is kept for an operator to promote"
            ],
        }
    settings = spec.gate
    raw = {
        "golden_set": str(spec.golden_set),
        "input_field": spec.golden_input_field,
        "label_field": spec.golden_label_field,
        "champion": None if spec.champion is None else {"model_dir": str(spec.champion)},
        "challenger": {"model_dir": str(challenger)},
        "metric": settings.get("metric", "accuracy"),
        "margin": settings.get("margin", 0.0),
        "guard_metrics": list(settings.get("guard_metrics") or ()),
        "bootstrap_samples": settings.get("bootstrap_samples", 1000),
        "seed": spec.seed,
        "output_dir": str(spec.output_dir / "gate"),
    }
    if spec.trainer.get("max_length"):
        raw["max_length"] = spec.trainer["max_length"]
    result: dict[str, Any] = gate.run(gate.parse_spec(raw, Path("/")), progress)
    return result


def _openai(
    spec: RetuneSpec, built: dataset.DataSet, data_dir: Path, progress: Progress
) -> dict[str, Any]:
    from retrain import openai_finetune

    train_file, validation_file = data_dir / "train.chat.jsonl", data_dir / "validation.chat.jsonl"
    dataset.write_chat_jsonl(train_file, built.train, system_prompt=spec.system_prompt)
    dataset.write_chat_jsonl(validation_file, built.validation, system_prompt=spec.system_prompt)
    raw = {
        **spec.openai,
        "training_file": str(train_file),
        "validation_file": str(validation_file) if built.validation else None,
        "output_dir": str(spec.output_dir / "openai"),
    }
    raw = {k: v for k, v in raw.items() if v is not None}
    tuned: dict[str, Any] = openai_finetune.run(
        openai_finetune.parse_spec(raw, Path("/")), progress
    )
    return {
        "candidate": {"name": spec.candidate, "artifact": tuned["fine_tuned_model"]},
        "gate": {
            "passed": False,
            "reasons": [
                "the golden-set gate cannot score OpenAI models yet; the fine-tuned model is "
                "kept as a candidate for an operator to promote"
            ],
        },
        "openai": tuned,
        "lineage": built.lineage,
        "cost_usd": tuned.get("cost_usd"),
    }
