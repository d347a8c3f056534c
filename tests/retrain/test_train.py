"""``python -m retrain train``: fine-tuning real (tiny) transformers models, resumably.

The models are GPT-2s of 16 hidden units with MiniLM's tokenizer, built from a config offline
in a second: a sequence classifier that learns three Banking77 intents (``examples/banking77``,
CC BY 4.0) from a data set ``retrain.dataset`` mixes from "production" questions (the test split)
and original ones (the train split), and a causal LM that learns an answer per intent. (A BERT
that small, like ``tiny_classifier``'s, often merges two of the intents for good on this data;
GPT-2's pre-norm layers learned all three from each of the 16 seeds tried.) ``tiny_classifier``'s
BERTs serve where only the head matters. CPU only.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retrain.__main__ import main
from retrain.dataset import DataSet, Example, build_dataset, read_examples, write_jsonl
from retrain.train import last_checkpoint
from tests.helpers import jobs
from tests.helpers.jobs import run_retrain, start_retrain
from tests.helpers.models import save_tiny_gpt2

ClassifierFactory = Callable[[Sequence[str], str], Path]

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77" / "data"
INTENTS = ("card_arrival", "change_pin", "exchange_rate")
ANSWERS = {
    "card_arrival": "You can track your card in the app.",
    "change_pin": "You can change your PIN at any cash machine.",
    "exchange_rate": "Our exchange rates are shown in the app.",
}
CALLER_LINEAGE = {"check_id": 41, "decision_id": 9, "base_version": "v3"}
# Measured over seeds 0-15 with these settings: validation accuracy 0.95 to 1.0 (40 examples,
# chance is 1/3), golden-set accuracy 0.87 to 1.0 (30 examples).
MIN_VALIDATION_ACCURACY = 0.8
MIN_GOLDEN_ACCURACY = 0.75
TRAINING = {
    "epochs": 8,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "evaluate_during_training": True,
}


def questions(split: str, per_intent: int, *, skip: int = 0) -> list[Example]:
    """Banking77 questions of ``INTENTS``: per intent, ``per_intent`` after the first ``skip``."""
    seen = dict.fromkeys(INTENTS, 0)
    chosen = []
    for example in read_examples(
        BANKING77 / f"{split}.csv", input_field="text", label_field="category"
    ):
        if example.label in seen:
            if skip <= seen[example.label] < skip + per_intent:
                chosen.append(example)
            seen[example.label] += 1
    return chosen


@dataclass(frozen=True)
class Banking:
    directory: Path
    data: DataSet
    golden: Path


@pytest.fixture(scope="module")
def banking(tmp_path_factory: pytest.TempPathFactory) -> Banking:
    """210 questions of three intents, 40 % of them production, in train.jsonl and
    validation.jsonl; a golden set of 30 other questions beside them."""
    directory = tmp_path_factory.mktemp("banking")
    production = [
        Example(e.input, e.label, None, "production", 1000 + i)
        for i, e in enumerate(questions("test", 30))
    ]
    golden = questions("test", 10, skip=30)
    data = build_dataset(
        production,
        questions("train", 70),
        [e.input for e in golden],
        production_ratio=0.4,
        max_rows=210,
        validation_share=0.2,
        seed=0,
        lineage=CALLER_LINEAGE,
    )
    write_jsonl(directory / "train.jsonl", data.train)
    write_jsonl(directory / "validation.jsonl", data.validation)
    write_jsonl(directory / "golden.jsonl", golden)
    return Banking(directory, data, directory / "golden.jsonl")


def write_spec(directory: Path, banking: Banking, base_model: Path, **spec: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    defaults = {
        "task": "classification",
        "base_model": str(base_model),
        "train_file": str(banking.directory / "train.jsonl"),
        "validation_file": str(banking.directory / "validation.jsonl"),
        "labels": list(INTENTS),
        "output_dir": "out",
    }
    return jobs.write_spec(directory, **{**defaults, **spec})


@pytest.fixture(scope="module")
def gpt2_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh GPT-2 sequence classifier of two labels (``LABEL_0``, ``LABEL_1``)."""
    from transformers import GPT2ForSequenceClassification

    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2-classifier"), GPT2ForSequenceClassification)


@pytest.fixture(scope="module")
def gpt2_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh GPT-2 causal language model."""
    from transformers import GPT2LMHeadModel

    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2-lm"), GPT2LMHeadModel)


@dataclass(frozen=True)
class Run:
    done: subprocess.CompletedProcess[str]
    directory: Path
    result: dict[str, Any]


@pytest.fixture(scope="module")
def cli_run(
    banking: Banking, gpt2_classifier: Path, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """One ``python -m retrain train`` run from a classifier whose two-label head must go."""
    directory = tmp_path_factory.mktemp("job")
    spec = write_spec(
        directory,
        banking,
        gpt2_classifier,
        lineage=banking.data.lineage,
        deployment="bank-intents",  # the daemon's bookkeeping, not the job's business
        **TRAINING,
    )
    done = run_retrain("train", "--spec", str(spec))
    result_file = directory / "out" / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return Run(done, directory, result)


def test_python_m_retrain_train_runs_end_to_end(cli_run: Run, banking: Banking) -> None:
    done = cli_run.done

    assert done.returncode == 0, done.stderr
    assert (cli_run.directory / "exit").read_text().strip() == "0"
    assert cli_run.result["status"] == "succeeded"
    steps = TRAINING["epochs"] * math.ceil(len(banking.data.train) / TRAINING["batch_size"])
    assert cli_run.result["global_step"] == steps
    assert cli_run.result["resumed_from"] is None
    assert cli_run.result["train_runtime_s"] > 0
    assert cli_run.result["train_samples_per_second"] > 0
    assert cli_run.result["model_dir"] == str(cli_run.directory / "out" / "model")
    out = done.stdout
    assert "train: evaluation at step 0/" in out
    assert "train: step 2/" in out
    assert f"train: evaluation at step {steps}/{steps}, epoch 8.00: loss " in out
    assert "train: checkpoint saved at step" in out
    assert "gets a new head (it had labels LABEL_0, LABEL_1)" in out
    assert "train: warning: ignoring spec key 'deployment'" in done.stderr
    # The trainer's own log dicts would only repeat the progress lines.
    assert "{'loss'" not in out
    # The version is saved; the checkpoints (optimiser state and all) are gone.
    assert not (cli_run.directory / "out" / "checkpoints").exists()


def test_a_classifier_trained_on_banking77_beats_chance_by_far(cli_run: Run) -> None:
    metrics = cli_run.result["metrics"]

    assert metrics["accuracy"] >= MIN_VALIDATION_ACCURACY
    assert metrics["macro_f1"] >= MIN_VALIDATION_ACCURACY - 0.1
    assert set(metrics["per_class"]) == set(INTENTS)
    # Scored before the first step too, so the gain shows: at least 30 points.
    assert metrics["accuracy"] - metrics["before_training"]["accuracy"] >= 0.3
    assert metrics["eval_loss"] < metrics["before_training"]["loss"]


def test_the_saved_version_loads_and_says_where_it_came_from(
    cli_run: Run, banking: Banking, tmp_path: Path
) -> None:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from retrain.contract import EvaluateSpec
    from retrain.evaluate import run as evaluate

    model_dir = Path(cli_run.result["model_dir"])

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)

    assert model.config.id2label == dict(enumerate(INTENTS))
    version = json.loads((model_dir / "driftd-version.json").read_text())
    assert version["labels"] == list(INTENTS)
    assert version["lineage"] == banking.data.lineage
    assert version["lineage"]["check_id"] == 41
    assert version["metrics"] == cli_run.result["metrics"]
    assert version["train_runtime_s"] == cli_run.result["train_runtime_s"]
    assert version["versions"]["torch"] == torch.__version__
    assert version["versions"]["transformers"] == transformers.__version__
    assert version["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    # The evaluate job reads the version as it is, and it labels golden questions it never saw.
    scored = evaluate(
        EvaluateSpec.parse(
            {"golden_set": str(banking.golden), "model_dir": str(model_dir), "output_dir": "e"},
            tmp_path,
        ),
        lambda _: None,
    )
    assert scored.n == 30
    accuracy = scored.metrics["accuracy"]
    assert isinstance(accuracy, float)
    assert accuracy >= MIN_GOLDEN_ACCURACY


def test_a_killed_run_resumes_from_its_last_checkpoint(
    banking: Banking, gpt2_classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, banking, gpt2_classifier, **TRAINING)
    steps = TRAINING["epochs"] * math.ceil(len(banking.data.train) / TRAINING["batch_size"])
    with (tmp_path / "stderr.log").open("w") as stderr:
        process = start_retrain("train", "--spec", str(spec), stderr=stderr)
        watchdog = threading.Timer(120, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("train: checkpoint saved at step"):
                    os.kill(process.pid, signal.SIGKILL)
                    break
            process.wait(timeout=30)
        finally:
            watchdog.cancel()
            process.kill()
            process.wait(timeout=30)

    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.log").read_text()
    assert not (tmp_path / "out" / "result.json").exists()
    checkpoint = last_checkpoint(tmp_path / "out" / "checkpoints")
    assert checkpoint is not None
    saved_at = int(checkpoint.name.removeprefix("checkpoint-"))
    assert 0 < saved_at < steps

    assert main(["train", "--spec", str(spec)]) == 0

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["resumed_from"] == str(checkpoint)
    assert result["global_step"] == steps
    printed = capsys.readouterr().out
    assert f"train: resuming from {checkpoint}" in printed
    step_lines = [line for line in printed.splitlines() if line.startswith("train: step ")]
    first_step = int(step_lines[0].removeprefix("train: step ").split("/")[0])
    assert first_step > saved_at  # the global step goes on; nothing is trained twice
    assert "evaluation at step 0/" not in printed
    # The score before training came from the first run, through the checkpoint.
    metrics = result["metrics"]
    assert metrics["accuracy"] >= MIN_VALIDATION_ACCURACY
    assert metrics["accuracy"] - metrics["before_training"]["accuracy"] >= 0.3


def test_a_checkpoint_cut_short_is_dropped_for_the_one_before(tmp_path: Path) -> None:
    for step, complete in ((5, True), (10, True), (15, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_text("weights")
        if complete:
            (checkpoint / "trainer_state.json").write_text("{}")

    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert not (tmp_path / "checkpoint-15").exists()
    assert last_checkpoint(tmp_path / "nothing-yet") is None


def predictions(model_dir: Path, texts: list[str]) -> tuple[list[str], list[float]]:
    """The label the saved classifier gives each text, and its probability."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).train(False)
    with torch.inference_mode():
        probabilities = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    best = probabilities.softmax(dim=-1).max(dim=-1)
    labels = [model.config.id2label[int(i)] for i in best.indices]
    return labels, [float(p) for p in best.values]


def test_a_base_classifier_of_the_same_labels_keeps_its_head_and_their_order(
    banking: Banking, tiny_classifier: ClassifierFactory, tmp_path: Path
) -> None:
    # The same labels in another order: the base answers card_arrival to everything.
    base = tiny_classifier(["exchange_rate", "card_arrival", "change_pin"], "card_arrival")
    spec = write_spec(tmp_path, banking, base, max_steps=1, learning_rate=1e-6)

    assert main(["train", "--spec", str(spec)]) == 0

    model_dir = tmp_path / "out" / "model"
    version = json.loads((model_dir / "driftd-version.json").read_text())
    assert version["labels"] == ["exchange_rate", "card_arrival", "change_pin"]
    labels, confidence = predictions(model_dir, ["How do I change my PIN?", "Card arrived?"])
    assert labels == ["card_arrival", "card_arrival"]
    assert min(confidence) > 0.95


def test_a_base_classifier_of_other_labels_gets_a_new_head(
    banking: Banking, tiny_classifier: ClassifierFactory, tmp_path: Path
) -> None:
    # As many labels as the spec's, but other ones: its head must not be reused.
    base = tiny_classifier(["billing", "login", "other"], "billing")
    spec = write_spec(tmp_path, banking, base, max_steps=1, learning_rate=1e-6)

    assert main(["train", "--spec", str(spec)]) == 0

    model_dir = tmp_path / "out" / "model"
    labels, confidence = predictions(model_dir, ["How do I change my PIN?", "Card arrived?"])
    assert set(labels) <= set(INTENTS)
    # A fresh head is close to uniform; the old one was 98.7 % sure of "billing".
    assert max(confidence) < 0.5


def test_training_data_with_a_label_the_spec_does_not_list_fails_the_job(
    banking: Banking, tiny_classifier: ClassifierFactory, tmp_path: Path
) -> None:
    base = tiny_classifier(["LABEL_0", "LABEL_1"], "LABEL_0")
    spec = write_spec(tmp_path, banking, base, labels=["card_arrival", "exchange_rate"])

    assert main(["train", "--spec", str(spec)]) == 1

    error = json.loads((tmp_path / "out" / "result.json").read_text())["error"]
    assert error == (
        f"{banking.directory / 'train.jsonl'} has labels the spec does not list: 'change_pin'; "
        "add them to 'labels' or drop those examples"
    )


def answered(examples: list[Example]) -> list[Example]:
    return [Example(e.input, None, ANSWERS[str(e.label)]) for e in examples]


def test_generation_fine_tuning_lowers_the_loss_on_the_answers_only(
    gpt2_lm: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_jsonl(tmp_path / "train.jsonl", answered(questions("train", 15)))
    validation = answered(questions("test", 5))
    write_jsonl(tmp_path / "validation.jsonl", validation)
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "task": "generation",
                "base_model": str(gpt2_lm),
                "train_file": "train.jsonl",
                "validation_file": "validation.jsonl",
                "output_dir": "out",
                "epochs": 3,
                "batch_size": 8,
                "learning_rate": 0.01,
                "max_length": 64,
                "evaluate_during_training": True,
            }
        )
    )

    assert main(["train", "--spec", str(tmp_path / "job.json")]) == 0

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    metrics = result["metrics"]
    assert metrics["eval_loss"] < 0.85 * metrics["before_training"]["loss"]
    model_dir = Path(result["model_dir"])
    assert json.loads((model_dir / "driftd-version.json").read_text())["task"] == "generation"

    # The validation loss counts the answers' tokens alone, not the questions'.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).train(False)

    def loss(*, answers_only: bool) -> float:
        batches = []
        for start in range(0, len(validation), 8):
            ids, labels = [], []
            for example in validation[start : start + 8]:
                prompt = tokenizer(example.input + "\n")["input_ids"]
                answer = tokenizer(str(example.output), add_special_tokens=False)["input_ids"]
                answer += [tokenizer.sep_token_id]
                ids.append(prompt + answer)
                labels.append(([-100] * len(prompt) if answers_only else prompt) + answer)
            width = max(map(len, ids))
            with torch.inference_mode():
                out = model(
                    input_ids=torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                    attention_mask=torch.tensor(
                        [[1] * len(i) + [0] * (width - len(i)) for i in ids]
                    ),
                    labels=torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
                )
            batches += [float(out.loss)] * len(ids)
        return sum(batches) / len(batches)

    assert metrics["eval_loss"] == pytest.approx(loss(answers_only=True), rel=1e-3)
    assert abs(metrics["eval_loss"] - loss(answers_only=False)) > 0.1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": None}, "'task' is required"),
        (
            {"task": "regression"},
            "'task' must be 'classification' or 'generation', got 'regression'",
        ),
        ({"labels": None}, "'labels' must list the classifier's labels (two or more strings)"),
        ({"labels": ["a", "b", "a"]}, "'labels' names 'a' more than once"),
        ({"train_file": "missing.jsonl"}, "missing.jsonl is not a file"),
        ({"base_model": "./nowhere"}, "nowhere is not a directory"),
        ({"batch_size": 0}, "'batch_size' must be a whole number from 1 to 4096, got 0"),
        ({"learning_rate": 2}, "'learning_rate' must be a number above 0 and below 1, got 2"),
        ({"max_steps": 0}, "'max_steps' must be a whole number of steps, 1 or more, got 0"),
        ({"lineage": "check 41"}, "'lineage' must be a JSON object, got 'check 41'"),
    ],
)
def test_a_bad_spec_exits_2_and_says_what_is_wrong(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    (tmp_path / "base").mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        (tmp_path / name).write_text('{"input": "Where is my card?", "label": "card_arrival"}\n')
    spec = {
        "task": "classification",
        "base_model": "base",
        "train_file": "train.jsonl",
        "validation_file": "validation.jsonl",
        "labels": list(INTENTS),
        "output_dir": "out",
    } | change
    path = tmp_path / "job.json"
    path.write_text(json.dumps({key: value for key, value in spec.items() if value is not None}))

    done = run_retrain("train", "--spec", str(path))

    assert done.returncode == 2
    assert f"invalid spec {path}" in done.stderr
    assert message in done.stderr
    assert (tmp_path / "exit").read_text().strip() == "2"
    assert not (tmp_path / "out").exists()
