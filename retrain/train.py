"""The ``train`` job: fine-tune a transformers model on a data set, resumably, and save a version.

The spec (``job.json``) names:

``task``
    ``classification`` (a sequence classifier learns the labels) or ``generation`` (a causal
    language model learns to answer each input with its output).
``base_model``
    The model to start from: a directory written by ``save_pretrained`` (with its tokenizer),
    or a hub id.
``train_file``, ``validation_file``
    JSONL files as ``retrain.dataset.write_jsonl`` writes them: ``input`` with ``label``
    (classification) or ``output`` (generation) on every line.
``labels``
    Classification only: the labels the model predicts. When the base is a classifier of the
    same labels its head is kept (in the base's label order); of other labels, or of none, the
    head starts afresh.
``output_dir``
    Where ``result.json``, the checkpoints (``checkpoints/``) and the model (``model/``) go.
``epochs`` (3), ``batch_size`` (32), ``learning_rate`` (5e-5), ``max_length`` (128), ``seed`` (0)
    The training settings; ``max_length`` counts tokens per example (longer ones are truncated).
``max_steps`` (none), ``save_steps`` (none)
    Stop after this many optimiser steps instead of after ``epochs``; checkpoint every this many
    steps instead of at the end of each epoch.
``lineage`` ({})
    Where the data came from (``retrain.dataset.DataSet.lineage``), copied into the version.

The spec is ``retrain.contract.TrainSpec``; relative paths are read from the spec's directory.

The job resumes: a checkpoint is saved at every epoch's end (or every ``save_steps``), at most
two are kept, and a job started again with the same ``output_dir`` (a retry after its machine
died) continues from the last complete one instead of from step 0. The model is evaluated on the
validation file before training and after each epoch. At the end the model and its tokenizer are
saved in ``output_dir/model`` with ``driftd-version.json`` (labels, lineage, metrics, training
time, library versions), and the checkpoints are deleted.

Classification is scored with ``retrain.evaluate.score`` (accuracy, macro-F1, per class), so a
trained model's validation metrics mean what the ``evaluate`` job's mean. Generation is trained
on ``input + "\\n" + output`` with the input's tokens left out of the loss, and scored by the loss
on the validation outputs.

torch and transformers are imported only once the spec is known to be valid.
"""

from __future__ import annotations

import json
import math
import platform
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain.contract import TrainResult, TrainSpec
from retrain.dataset import Example, read_examples
from retrain.errors import DataSetError, TrainingError
from retrain.evaluate import score
from retrain.generate import prompt_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

Progress = Callable[[str], None]

VERSION_FILE = "driftd-version.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
KEEP_CHECKPOINTS = 2
IGNORE_INDEX = -100  # the label value transformers' losses skip

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint: its mark of completion


def run(spec: TrainSpec, progress: Progress) -> TrainResult:
    """Train the spec's model; the job's result."""
    import torch
    import transformers
    from transformers import set_seed
    from transformers.utils import logging as transformers_logging

    # Progress bars redraw one line over and over: noise in a job's log file.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    set_seed(spec.seed)

    train_examples = _read(spec.train_file, spec)
    validation_examples = _read(spec.validation_file, spec)
    progress(
        f"train: {len(train_examples)} training and {len(validation_examples)} validation "
        f"examples ({spec.task}) from {spec.train_file} and {spec.validation_file}"
    )
    tokenizer = _tokenizer(spec.base_model)
    if spec.task == "classification":
        model, labels = _classifier(spec, tokenizer, progress)
        job: _Task = _Classification(tokenizer, labels, spec.max_length)
    else:
        model, labels = _causal_lm(spec.base_model, tokenizer, progress), ()
        job = _Generation(tokenizer, spec.max_length, progress)
    train_rows = job.rows(train_examples)
    validation_rows = job.rows(validation_examples)

    checkpoints = spec.output / CHECKPOINTS_DIR
    resume = last_checkpoint(checkpoints)
    trainer = _trainer(spec, model, tokenizer, job, train_rows, validation_rows, resume, progress)
    if resume is not None:
        progress(f"train: resuming from {resume}")
    outcome = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    steps = trainer.state.global_step
    runtime = float(outcome.metrics.get("train_runtime", 0.0))
    speed = float(outcome.metrics.get("train_samples_per_second", 0.0))
    progress(f"train: {steps} steps done; this run took {runtime:.1f} s ({speed:.1f} samples/s)")

    metrics = job.final_metrics(trainer, validation_rows)
    before = _evaluation_before_training(trainer.state.log_history)
    if before:
        metrics["before_training"] = before
    progress(f"train: validation {_describe(metrics)}")

    model_dir = spec.output / MODEL_DIR
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    result = {
        "model_dir": str(model_dir),
        "metrics": metrics,
        "train_runtime_s": round(runtime, 3),
        "train_samples_per_second": round(speed, 3),
        "global_step": steps,
        "resumed_from": str(resume) if resume else None,
    }
    version = {
        "task": spec.task,
        "base_model": spec.base_model,
        "labels": list(labels),
        "lineage": spec.lineage,
        "metrics": metrics,
        "train_runtime_s": result["train_runtime_s"],
        "train_samples_per_second": result["train_samples_per_second"],
        "training": {
            "train_rows": len(train_rows),
            "validation_rows": len(validation_rows),
            "epochs": spec.epochs,
            "max_steps": spec.max_steps,
            "global_step": steps,
            "batch_size": spec.batch_size,
            "learning_rate": spec.learning_rate,
            "max_length": spec.max_length,
            "seed": spec.seed,
            "resumed_from": result["resumed_from"],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    # Written last: a model directory with this file holds a complete version.
    (model_dir / VERSION_FILE).write_text(json.dumps(version, indent=2) + "\n", encoding="utf-8")
    # Checkpoints hold the optimiser's state too, twice the model's size each; the version
    # is saved, so nothing is left to resume.
    shutil.rmtree(checkpoints, ignore_errors=True)
    progress(f"train: model saved in {model_dir}")
    return TrainResult.model_validate(result)


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``checkpoints``, or None.

    A checkpoint whose save was cut short (the job was killed while writing it) lacks the
    trainer state written last; it is deleted, so that the run goes on from the one before.
    """
    if not checkpoints.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for path in checkpoints.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match is None or not path.is_dir():
            continue
        if (path / _TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def _evaluation_before_training(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The validation scores at step 0, from the trainer's history (a checkpoint keeps it)."""
    for entry in history:
        if entry.get("step") == 0 and "eval_loss" in entry:
            return {
                key.removeprefix("eval_"): float(value)
                for key, value in entry.items()
                if key in ("eval_loss", "eval_accuracy", "eval_macro_f1")
            }
    return {}


def _read(path: Path, spec: TrainSpec) -> list[Example]:
    """The examples of a train or validation file; a classification label must be a spec label."""
    classification = spec.task == "classification"
    try:
        examples = read_examples(
            path,
            input_field="input",
            label_field="label" if classification else None,
            output_field=None if classification else "output",
        )
    except DataSetError as error:
        raise TrainingError(str(error)) from error
    unknown = sorted({str(e.label) for e in examples} - set(spec.labels)) if classification else []
    if unknown:
        raise TrainingError(
            f"{path} has labels the spec does not list: {', '.join(map(repr, unknown[:10]))}"
            f"{' …' if len(unknown) > 10 else ''}; add them to 'labels' or drop those examples"
        )
    return examples


def _tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"cannot load the tokenizer of base_model {base_model}: {error}"
        ) from error


def _classifier(
    spec: TrainSpec, tokenizer: PreTrainedTokenizerBase, progress: Progress
) -> tuple[PreTrainedModel, tuple[str, ...]]:
    """The base model with a classification head for the spec's labels, and their order.

    A base classifier of the same labels keeps its head, and its label order (its head's rows
    mean those labels); any other base gets a new head for the spec's labels.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(spec.base_model)
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot load base_model {spec.base_model}: {error}") from error
    is_classifier = any(
        name.endswith("ForSequenceClassification") for name in config.architectures or ()
    )
    base_labels = tuple(str(config.id2label[i]) for i in sorted(config.id2label))
    same = is_classifier and set(base_labels) == set(spec.labels)
    labels = base_labels if same else spec.labels
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            spec.base_model,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"cannot load base_model {spec.base_model} as a sequence classifier: {error}"
        ) from error
    if model.config.pad_token_id is None:
        # Decoder classifiers (GPT-2 and kin) find each input's last token by the padding id.
        model.config.pad_token_id = _pad_id(tokenizer)
    if same:
        head = "keeps its head"
    elif is_classifier:
        # A head of as many labels as the new ones loads without complaint, but its rows mean
        # other labels: start it afresh as for any new head.
        _reset_head(model)
        head = f"gets a new head (it had labels {', '.join(base_labels)})"
    else:
        head = "gets a new head"
    progress(
        f"train: base model {spec.base_model} ({type(model).__name__}) {head}; "
        f"labels {', '.join(labels)}"
    )
    return model, labels


def _reset_head(model: PreTrainedModel) -> None:
    """Initialise the linear layers outside the model's backbone, as a new head is."""
    import torch

    std = float(getattr(model.config, "initializer_range", None) or 0.02)
    with torch.no_grad():
        for name, child in model.named_children():
            if name == model.base_model_prefix:
                continue
            for module in child.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(mean=0.0, std=std)
                    if module.bias is not None:
                        module.bias.zero_()


def _causal_lm(
    base_model: str, tokenizer: PreTrainedTokenizerBase, progress: Progress
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(base_model)
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"cannot load base_model {base_model} as a causal language model: {error}"
        ) from error
    if model.config.pad_token_id is None:
        model.config.pad_token_id = _pad_id(tokenizer)
    progress(f"train: base model {base_model} ({type(model).__name__})")
    return model


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0  # padded positions are masked out of attention and loss, so any id will do


Row = dict[str, Any]
"""One tokenised example, as the collator takes it: ``input_ids``, ``labels`` and the like."""


class _Task(ABC):
    """What differs between the tasks: rows, batches, metrics."""

    prediction_loss_only = True
    """Whether evaluation needs the loss alone (not the logits, which compute_metrics reads)."""

    @abstractmethod
    def rows(self, examples: Sequence[Example]) -> list[Row]: ...

    @abstractmethod
    def collate(self, rows: list[Row]) -> dict[str, Any]: ...

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        return {}

    def final_metrics(self, trainer: Trainer, rows: list[Row]) -> dict[str, Any]:
        evaluated = trainer.evaluate()
        return {"eval_loss": float(evaluated["eval_loss"]), "validation_rows": len(rows)}


class _Classification(_Task):
    prediction_loss_only = False

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int
    ) -> None:
        from transformers import DataCollatorWithPadding

        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_length = max_length
        self._pad = DataCollatorWithPadding(tokenizer)

    def rows(self, examples: Sequence[Example]) -> list[Row]:
        encoded = self.tokenizer(
            [e.input for e in examples], truncation=True, max_length=self.max_length
        )
        index = {label: i for i, label in enumerate(self.labels)}
        return [
            {
                **{key: values[i] for key, values in encoded.items()},
                "labels": index[str(example.label)],
            }
            for i, example in enumerate(examples)
        ]

    def collate(self, rows: list[Row]) -> dict[str, Any]:
        return dict(self._pad(rows))

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        truth, predicted = self._names(prediction)
        scored = score(truth, predicted)
        return {"accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"]}

    def final_metrics(self, trainer: Trainer, rows: list[Row]) -> dict[str, Any]:
        output = trainer.predict(rows)  # type: ignore[arg-type]
        truth, predicted = self._names(output)
        return {
            **score(truth, predicted),
            "eval_loss": float((output.metrics or {})["test_loss"]),
            "validation_rows": len(rows),
        }

    def _names(self, prediction: Any) -> tuple[list[str], list[str]]:
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        truth = [self.labels[int(i)] for i in prediction.label_ids]
        return truth, [self.labels[int(i)] for i in logits.argmax(axis=-1)]


class _Generation(_Task):
    """Supervised fine-tuning of a causal LM: the loss counts the output's tokens only."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, progress: Progress
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.progress = progress
        self.pad_id = _pad_id(tokenizer)
        # The answer ends with the end-of-text token, so that the model learns to stop;
        # BERT-style tokenizers have none and end a text with [SEP].
        end = tokenizer.eos_token_id
        if end is None:
            end = tokenizer.sep_token_id
        self.end: list[int] = [end] if isinstance(end, int) else []

    def rows(self, examples: Sequence[Example]) -> list[Row]:
        rows: list[Row] = []
        for example in examples:
            prompt = self.tokenizer(prompt_text(example.input))["input_ids"]
            answer = self.tokenizer(str(example.output), add_special_tokens=False)["input_ids"]
            ids = (list(prompt) + list(answer) + self.end)[: self.max_length]
            labels = ([IGNORE_INDEX] * len(prompt) + list(answer) + self.end)[: self.max_length]
            if all(label == IGNORE_INDEX for label in labels):
                continue  # the input alone fills max_length: nothing of the output to learn
            rows.append({"input_ids": ids, "labels": labels})
        skipped = len(examples) - len(rows)
        if skipped:
            self.progress(
                f"train: warning: {skipped} examples skipped, their input alone is "
                f"{self.max_length} tokens or more (raise max_length to keep them)"
            )
        if not rows:
            raise TrainingError(
                f"every example's input is {self.max_length} tokens or more, leaving none of "
                "its output to learn; raise max_length"
            )
        return rows

    def collate(self, rows: list[Row]) -> dict[str, Any]:
        import torch

        width = max(len(row["input_ids"]) for row in rows)

        def padded(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))

        return {
            "input_ids": torch.tensor([padded(r["input_ids"], self.pad_id) for r in rows]),
            "attention_mask": torch.tensor([padded([1] * len(r["input_ids"]), 0) for r in rows]),
            "labels": torch.tensor([padded(r["labels"], IGNORE_INDEX) for r in rows]),
        }


def _trainer(
    spec: TrainSpec,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    job: _Task,
    train_rows: list[Row],
    validation_rows: list[Row],
    resume: Path | None,
    progress: Progress,
) -> Trainer:
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments

    steps_per_epoch = math.ceil(len(train_rows) / spec.batch_size)
    arguments = TrainingArguments(
        output_dir=str(spec.output / CHECKPOINTS_DIR),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps if spec.max_steps is not None else -1,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        seed=spec.seed,
        eval_strategy="epoch" if spec.evaluate_during_training else "no",
        # The score before training is the yardstick of what training did; a resumed run
        # has it in the checkpoint's history already.
        eval_on_start=spec.evaluate_during_training and resume is None,
        save_strategy="steps" if spec.save_steps is not None else "epoch",
        save_steps=spec.save_steps or 500,
        save_total_limit=KEEP_CHECKPOINTS,
        logging_strategy="steps",
        logging_steps=max(1, min(50, steps_per_epoch // 4)),
        report_to="none",
        disable_tqdm=True,
        prediction_loss_only=job.prediction_loss_only,
        # Each Row is already what the collator wants; there are no columns to drop.
        remove_unused_columns=False,
        # Pinned memory speeds copies to a GPU; without one torch warns about it at every epoch.
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        data_collator=job.collate,
        train_dataset=train_rows,
        eval_dataset=validation_rows,
        processing_class=tokenizer,
        compute_metrics=None if job.prediction_loss_only else job.compute_metrics,
        callbacks=[_progress_lines(progress)],
    )
    # Our progress lines replace the dicts the trainer prints when it has no progress bar.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _describe(metrics: Mapping[str, Any]) -> str:
    shown = [
        f"{name} {metrics[name]:.4f}"
        for name in ("accuracy", "macro_f1", "eval_loss")
        if isinstance(metrics.get(name), float)
    ]
    return ", ".join(shown) + f" on {metrics.get('validation_rows')} examples"


def _progress_lines(progress: Progress) -> TrainerCallback:
    """A callback that prints a line per logged step, evaluation and checkpoint, so that the
    job's log shows how far training is."""
    from transformers import TrainerCallback

    class ProgressLines(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            logs = logs or {}
            where = f"step {state.global_step}/{state.max_steps}, epoch {state.epoch or 0:.2f}"
            if "loss" in logs:
                progress(
                    f"train: {where}: loss {logs['loss']:.4f}, "
                    f"learning rate {logs.get('learning_rate', 0.0):.2e}"
                )
            elif "eval_loss" in logs:
                shown = ", ".join(
                    f"{key.removeprefix('eval_')} {value:.4f}"
                    for key, value in logs.items()
                    if key in ("eval_loss", "eval_accuracy", "eval_macro_f1")
                )
                progress(f"train: evaluation at {where}: {shown}")

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            progress(f"train: checkpoint saved at step {state.global_step} in {args.output_dir}")

    return ProgressLines()
