"""The ``evaluate`` job: how well a classifier labels a golden set.

The spec (``job.json``) names:

``golden_set``
    A JSONL, CSV (with a header row) or Parquet file, by its suffix, one example per line or
    row: the input text under ``input_field`` (default ``input``) and the true label under
    ``label_field`` (default ``label``); Banking77's CSV files take ``text`` and ``category``.
``model_dir``
    A transformers sequence-classification model saved with ``save_pretrained``, with its
    tokenizer; its ``config.id2label`` names the labels it predicts.
``output_dir``
    Where ``result.json`` goes; the daemon sets it.
``batch_size`` (32), ``max_length`` (128)
    Examples per forward pass, and tokens per example (longer inputs are truncated).
``pace_s`` (0)
    Seconds to pause after each batch: throttling for shared machines, so that an evaluation
    on the daemon's host leaves CPU to the services it shares the machine with.

The spec is ``retrain.contract.EvaluateSpec``; relative paths are read from the spec's
directory. The result (``EvaluateResult``) holds ``n``, ``model``,
``golden_set`` and ``metrics``: ``accuracy``, ``macro_f1`` and ``per_class`` precision, recall,
F1 and support, from scikit-learn.

torch, transformers and scikit-learn are imported only once the spec is known to be valid, so
a bad spec is reported in a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain.contract import EvaluateResult, EvaluateSpec
from retrain.dataset import data_rows
from retrain.errors import EvaluationError

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Example:
    input: str
    label: str


def read_golden_set(
    path: Path, input_field: str = "input", label_field: str = "label"
) -> list[Example]:
    """The examples of a golden set in JSONL, CSV or Parquet (as ``retrain.dataset.data_rows``
    reads them): the input under ``input_field``, the label under ``label_field``.
    ``EvaluationError`` names the first line or row that cannot be read."""
    examples = []
    for where, row in data_rows(path, what="golden set", error=EvaluationError):
        for field in (input_field, label_field):
            if not isinstance(row.get(field), str) or not row[field]:
                present = ", ".join(map(repr, row)) or "none"
                raise EvaluationError(
                    f"{where} has no text under {field!r} (its columns: {present}); every "
                    f"line needs {input_field!r} and {label_field!r} (set input_field and "
                    "label_field in the spec to read other columns)"
                )
        examples.append(Example(row[input_field], row[label_field]))
    if not examples:
        raise EvaluationError(f"golden set {path} has no examples")
    return examples


class Classifier:
    """A transformers sequence-classification model with its tokenizer, loaded from disk only."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        # Progress bars redraw one line over and over: noise in a job's log file.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, local_files_only=True
            )
        except (OSError, ValueError) as error:
            raise EvaluationError(
                f"cannot load a sequence-classification model and its tokenizer from "
                f"{model_dir}: {error}"
            ) from error
        self.model.eval()
        self.labels = {int(i): str(label) for i, label in self.model.config.id2label.items()}

    def predict(
        self,
        texts: list[str],
        *,
        batch_size: int,
        max_length: int,
        pace_s: float,
        progress: Progress,
    ) -> list[str]:
        """The label of each text, in batches, with a progress line per batch."""
        import torch

        predictions: list[str] = []
        batches = (len(texts) + batch_size - 1) // batch_size
        for batch, start in enumerate(range(0, len(texts), batch_size), start=1):
            encoded = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                logits = self.model(**encoded).logits
            predictions += [self.labels[int(i)] for i in logits.argmax(dim=-1).tolist()]
            progress(f"evaluate: batch {batch}/{batches}, {len(predictions)}/{len(texts)} examples")
            if pace_s:
                time.sleep(pace_s)
        return predictions


def score(truth: list[str], predicted: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class metrics of ``predicted`` against ``truth``.

    Classes are the golden set's labels: a candidate and the active version are then averaged over
    the same classes, whatever else either predicts (a prediction outside them is simply
    wrong, and lowers the recall of the true class).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = sorted(set(truth))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(sum(f1) / len(labels)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
    }


def run(spec: EvaluateSpec, progress: Progress) -> EvaluateResult:
    """Evaluate the spec's model on its golden set; the job's result."""
    started = time.monotonic()
    examples = read_golden_set(spec.golden_set, spec.input_field, spec.label_field)
    truth = [example.label for example in examples]
    progress(
        f"evaluate: {len(examples)} examples of {len(set(truth))} labels from {spec.golden_set}"
    )
    classifier = Classifier(spec.model_dir)
    progress(f"evaluate: model {spec.model_dir} predicts {len(classifier.labels)} labels")
    if not set(truth) & set(classifier.labels.values()):
        raise EvaluationError(
            f"none of the golden set's labels is a label of the model in {spec.model_dir}: "
            "its config.json must name them in id2label"
        )
    predicted = classifier.predict(
        [example.input for example in examples],
        batch_size=spec.batch_size,
        max_length=spec.max_length,
        pace_s=spec.pace_s,
        progress=progress,
    )
    metrics = score(truth, predicted)
    progress(
        f"evaluate: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"on {len(examples)} examples"
    )
    return EvaluateResult(
        model=str(spec.model_dir),
        golden_set=str(spec.golden_set),
        n=len(examples),
        metrics=metrics,
        duration_s=round(time.monotonic() - started, 3),
    )
