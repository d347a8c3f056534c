"""The demo's world: Banking77 questions split into what the model learnt, what the app serves
before and after the traffic shifts, the golden set, and held-out questions to score on.

The data is the copy in ``examples/banking77/data`` (CC BY 4.0, attribution in its README). The
intents are fixed, not drawn, so every run tells the same story: the classifier learns a few
intents, the traffic later brings others it never saw. Questions are taken in file order, each
used for one purpose only, so nothing the model trained on is counted as traffic it got right.

``Predictor`` is the app's side: the active model labels each question with a confidence.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import DemoError

Example = tuple[str, str]
"""A question and its true intent."""

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "examples" / "banking77" / "data"
_SPLITS = ("train.csv", "test.csv")


@dataclass(frozen=True, slots=True)
class Size:
    """How big a run is: intents, questions per intent for each purpose, training settings.

    Rows are per intent. ``known`` intents are what the first model learns and the traffic
    first brings; ``unseen`` ones arrive with the shift.
    """

    name: str
    known: tuple[str, ...]
    unseen: tuple[str, ...]
    active_rows: int
    reference_rows: int
    normal_rows: int
    shifted_known_rows: int
    shifted_unseen_rows: int
    eval_known_rows: int
    eval_unseen_rows: int
    golden_rows: int
    baseline_samples: int
    """The promoted version's baseline: its first samples of the held-out traffic."""
    quality_drop: float
    """The fall of accuracy that is quality drift: wider for the small run, whose 30 labels a
    side measure accuracy only to about ±0.1 (the fall of two such windows varies by as much)."""
    epochs: int
    batch_size: int
    learning_rate: float
    max_length: int
    retune_max_rows: int
    min_labelled: int
    min_rows: int

    @property
    def labels(self) -> tuple[str, ...]:
        return self.known + self.unseen

    def trainer(self) -> dict[str, Any]:
        """The training settings, as the train job's spec and ``retune.trainer`` name them."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "max_length": self.max_length,
        }


FULL = Size(
    name="full",
    known=(
        "card_arrival",
        "exchange_rate",
        "pin_blocked",
        "cancel_transfer",
        "age_limit",
        "apple_pay_or_google_pay",
    ),
    unseen=("lost_or_stolen_card", "top_up_failed", "terminate_account"),
    active_rows=40,
    reference_rows=30,
    normal_rows=10,
    shifted_known_rows=20,
    shifted_unseen_rows=40,
    eval_known_rows=15,
    eval_unseen_rows=30,
    golden_rows=10,
    baseline_samples=90,
    quality_drop=0.1,
    epochs=3,
    batch_size=16,
    learning_rate=1e-4,
    max_length=32,
    retune_max_rows=400,
    min_labelled=100,
    min_rows=40,
)

SMALL = Size(
    name="small",
    known=("card_arrival", "exchange_rate", "pin_blocked"),
    unseen=("lost_or_stolen_card", "top_up_failed"),
    active_rows=30,
    reference_rows=20,
    normal_rows=10,
    shifted_known_rows=10,
    shifted_unseen_rows=30,
    eval_known_rows=10,
    eval_unseen_rows=15,
    golden_rows=10,
    baseline_samples=30,
    quality_drop=0.2,
    epochs=3,
    batch_size=16,
    learning_rate=1e-4,
    max_length=24,
    retune_max_rows=200,
    min_labelled=60,
    min_rows=25,
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Every question of a run, by purpose; traffic is in the order the app serves it."""

    size: Size
    active: list[Example]
    reference: list[Example]
    normal: list[Example]
    shifted: list[Example]
    golden: list[Example]
    held_out: list[Example]
    """Shifted traffic the app serves after the re-tune: scored with both models."""

    def unseen_share(self, examples: Sequence[Example]) -> float:
        unseen = set(self.size.unseen)
        return sum(label in unseen for _, label in examples) / len(examples) if examples else 0.0


def data_dir(override: Path | None = None) -> Path:
    """The folder of Banking77's ``train.csv`` and ``test.csv``: ``override``, else the copy in
    this checkout's ``examples/banking77/data``."""
    folder = override if override is not None else DEFAULT_DATA
    missing = [name for name in _SPLITS if not (folder / name).is_file()]
    if missing:
        raise DemoError(
            f"Banking77 data not found: {', '.join(str(folder / m) for m in missing)} missing; "
            "run the demo from a driftd checkout, or pass --data with the folder holding "
            "Banking77's train.csv and test.csv (columns text,category)"
        )
    return folder


def by_intent(path: Path, labels: Iterable[str]) -> dict[str, list[str]]:
    """The questions of ``labels`` in one Banking77 CSV file, per intent, in file order."""
    wanted = set(labels)
    rows: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8", newline="") as source:
        for row in csv.DictReader(source):
            if row["category"] in wanted:
                rows[row["category"]].append(row["text"])
    return dict(rows)


def build_scenario(size: Size, folder: Path) -> Scenario:
    """Split Banking77's questions for one run of ``size``; ``DemoError`` if too few exist."""
    train = by_intent(folder / "train.csv", size.labels)
    test = by_intent(folder / "test.csv", size.labels)
    known_train = size.active_rows + size.reference_rows + size.normal_rows
    needs = {
        **dict.fromkeys(size.known, (known_train + size.shifted_known_rows, size.eval_known_rows)),
        **dict.fromkeys(size.unseen, (size.shifted_unseen_rows, size.eval_unseen_rows)),
    }
    for intent, (train_rows, test_rows) in needs.items():
        have = (len(train.get(intent, [])), len(test.get(intent, [])))
        if have[0] < train_rows or have[1] < size.golden_rows + test_rows:
            raise DemoError(
                f"{folder}: intent {intent!r} has {have[0]} training and {have[1]} test "
                f"questions; the {size.name} demo needs {train_rows} and "
                f"{size.golden_rows + test_rows}: is this Banking77?"
            )

    def take(
        split: Mapping[str, list[str]], intents: Sequence[str], start: int, count: int
    ) -> list[Example]:
        return [(text, i) for i in intents for text in split[i][start : start + count]]

    active = take(train, size.known, 0, size.active_rows)
    reference = take(train, size.known, size.active_rows, size.reference_rows)
    normal = take(train, size.known, size.active_rows + size.reference_rows, size.normal_rows)
    shifted = take(train, size.known, known_train, size.shifted_known_rows) + take(
        train, size.unseen, 0, size.shifted_unseen_rows
    )
    golden = take(test, size.labels, 0, size.golden_rows)
    held_out = take(test, size.known, size.golden_rows, size.eval_known_rows) + take(
        test, size.unseen, size.golden_rows, size.eval_unseen_rows
    )
    return Scenario(
        size=size,
        active=active,
        reference=_mixed(reference, "reference"),
        normal=_mixed(normal, "normal"),
        shifted=_mixed(shifted, "shifted"),
        golden=golden,
        held_out=_mixed(held_out, "held_out"),
    )


def _mixed(examples: list[Example], salt: str) -> list[Example]:
    """The examples in a seeded order, so that each batch of traffic mixes the intents."""
    mixed = list(examples)
    random.Random(f"driftd-demo:{salt}").shuffle(mixed)  # noqa: S311 - an order, not a secret
    return mixed


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def labelled_rows(examples: Iterable[Example]) -> list[dict[str, str]]:
    """Examples as the jobs read them: ``input`` and ``label``."""
    return [{"input": text, "label": label} for text, label in examples]


class Predictor:
    """The deployed app's side: a classifier that labels each question, with its confidence.

    Loading is ``retrain.evaluate.Classifier``'s (local files only, a clear error otherwise);
    torch and transformers are imported when one is built, not with this module.
    """

    def __init__(self, model_dir: str | Path, *, max_length: int = 32) -> None:
        from retrain.errors import JobError
        from retrain.evaluate import Classifier

        try:
            self._classifier = Classifier(Path(model_dir))
        except JobError as error:
            raise DemoError(str(error)) from error
        self.max_length = max_length

    def __call__(self, texts: Sequence[str], *, batch_size: int = 128) -> list[tuple[str, float]]:
        """The most likely label of each text and its probability."""
        import torch

        classifier = self._classifier
        answers: list[tuple[str, float]] = []
        for start in range(0, len(texts), batch_size):
            batch = classifier.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                best = classifier.model(**batch).logits.softmax(-1).max(-1)
            answers += [
                (classifier.labels[int(i)], float(p))
                for p, i in zip(best.values, best.indices, strict=True)
            ]
        return answers

    def accuracy(self, examples: Sequence[Example]) -> float:
        """The share of ``examples`` this model labels right."""
        return share_right(examples, self([text for text, _ in examples]))


def share_right(examples: Sequence[Example], answers: Sequence[tuple[str, float]]) -> float:
    """The share of ``examples`` that ``answers`` (a label and its probability each) get right."""
    pairs = zip(examples, answers, strict=True)
    return sum(label == guess for (_, label), (guess, _) in pairs) / max(1, len(examples))
