"""``python -m retrain finetune``: a whole re-tune in one job, on the trainer path (a tiny
classifier, so it runs in seconds) and the OpenAI path (against the local fake server)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAI, Succeed
from tests.helpers.jobs import run_retrain, write_spec

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["card_arrival", "exchange_rate", "pin_blocked"]
KEY_ENV = "DRIFTD_TEST_OPENAI_KEY"


def questions(split: str, per_label: int, skip: int = 0) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    counts = dict.fromkeys(LABELS, 0)
    path = ROOT / "examples" / "banking77" / "data" / f"{split}.csv"
    with path.open(encoding="utf-8") as source:
        for row in csv.DictReader(source):
            label = row["category"]
            if label in counts:
                counts[label] += 1
                if skip < counts[label] <= skip + per_label:
                    rows.append({"input": row["text"], "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def run_job(spec: dict[str, Any], folder: Path, env: dict[str, str] | None = None) -> Any:
    path = write_spec(folder, **{**spec, "output_dir": str(folder / "out")})
    done = run_retrain(
        "finetune", "--spec", str(path), timeout=300, env={**os.environ, **(env or {})}
    )
    result = json.loads((folder / "out" / "result.json").read_text())
    return done.returncode, result, done.stdout + done.stderr


def base_spec(tmp_path: Path, method: str) -> dict[str, Any]:
    production = [
        {**row, "sample_id": i + 1} for i, row in enumerate(questions("train", 20, skip=0))
    ]
    return {
        "method": method,
        "task": "classification",
        "labels": LABELS,
        "production_file": write_jsonl(tmp_path / "production.jsonl", production),
        "golden_set": write_jsonl(tmp_path / "golden.jsonl", questions("test", 5)),
        "data": {"production_ratio": 1.0, "max_rows": 1000, "validation_share": 0.2},
        "gate": {"metric": "accuracy", "margin": 0.0, "bootstrap_samples": 200},
        "seed": 7,
        "candidate": {"name": "intents-v2"},
        "lineage": {"check_ids": [3, 4], "decision_event_id": 9},
    }


def test_the_trainer_path_builds_trains_gates_and_names_its_candidate(
    tmp_path: Path, tiny_classifier: Callable[[Sequence[str], str], Path]
) -> None:
    active = tiny_classifier(LABELS, "card_arrival")
    spec = {
        **base_spec(tmp_path, "trainer"),
        "base_model": str(active),
        "active": {"model_dir": str(active)},
        "trainer": {"epochs": 1, "batch_size": 16, "max_length": 32},
    }
    code, result, output = run_job(spec, tmp_path)
    assert code == 0, output
    assert result["candidate"]["name"] == "intents-v2"
    assert Path(result["candidate"]["artifact"], "driftd-version.json").is_file()
    gate = result["gate"]
    assert gate["metric"] == "accuracy"
    assert isinstance(gate["passed"], bool)
    assert len(gate["ci"]) == 2
    lineage = result["lineage"]
    assert lineage["check_ids"] == [3, 4]
    assert lineage["decision_event_id"] == 9
    golden_inputs = {row["input"] for row in questions("test", 5)}
    trained = (tmp_path / "out" / "data" / "train.jsonl").read_text()
    assert not any(text in trained for text in golden_inputs)


BASE = "gpt-4o-mini-2024-07-18"
PER_LABEL = 5
TRUTH = {row["input"]: row["label"] for row in questions("test", PER_LABEL)}
RANK = {text: [t for t in TRUTH if TRUTH[t] == TRUTH[text]].index(text) for text in TRUTH}


def openai_spec(tmp_path: Path, fake: FakeOpenAI) -> dict[str, Any]:
    return {
        **base_spec(tmp_path, "openai"),
        "system_prompt": "Answer with the intent of the customer's banking question.",
        "openai": {
            "base_model": BASE,
            "base_url": fake.base_url,
            "api_key_env": KEY_ENV,
            "poll_interval_s": 0.05,
            "poll_max_interval_s": 0.2,
            "max_retries": 0,
        },
    }


def knows(share: float) -> Callable[[str], str]:
    """A model that answers the right label to the first ``share`` of each label's golden
    questions, and the next label to the rest."""

    def answer(text: str) -> str:
        label = TRUTH.get(text, LABELS[0])
        if RANK.get(text, 0) < share * PER_LABEL:
            return f"{label}."
        return LABELS[(LABELS.index(label) + 1) % len(LABELS)]

    return answer


@pytest.mark.parametrize(
    ("base", "tuned", "passed"), [(0.4, 1.0, True), (1.0, 0.4, False)], ids=["better", "worse"]
)
def test_the_openai_path_gates_the_fine_tune_against_its_base_on_the_golden_set(
    tmp_path: Path, fake_openai: FakeOpenAI, base: float, tuned: float, passed: bool
) -> None:
    fake_openai.script_job(Succeed(after_polls=2))
    fake_openai.script_model(BASE, knows(base))
    fake_openai.script_model(f"ft:{BASE}", knows(tuned))

    code, result, output = run_job(
        openai_spec(tmp_path, fake_openai), tmp_path, {KEY_ENV: fake_openai.api_key}
    )

    assert code == 0, output
    model = result["candidate"]["artifact"]
    assert model.startswith(f"ft:{BASE}")
    gate = result["gate"]
    assert gate["passed"] is passed, gate["reasons"]
    assert gate["metric"] == "accuracy"
    assert (gate["active"]["metrics"]["accuracy"], gate["candidate"]["metrics"]["accuracy"]) == (
        pytest.approx(0.4 if base < 1 else 1.0),
        pytest.approx(0.4 if tuned < 1 else 1.0),
    )
    assert (gate["active"]["model_dir"], gate["candidate"]["model_dir"]) == (BASE, model)
    assert any(reason.startswith("the gate's calls spent") for reason in gate["reasons"])
    # Both models answered every golden question with the deployment's system prompt.
    asked = [r for r in fake_openai.received if r.route == "POST /v1/chat/completions"]
    assert len(asked) == 2 * len(TRUTH)
    uploaded = (tmp_path / "out" / "data" / "train.chat.jsonl").read_text().splitlines()
    first = json.loads(uploaded[0])["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[2]["content"] in LABELS
    assert fake_openai.api_key not in output


def test_answers_that_are_no_label_count_as_wrong_and_are_reported(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_job(Succeed(after_polls=2))
    fake_openai.script_model(BASE, knows(1.0))
    fake_openai.script_model(f"ft:{BASE}", lambda text: "I'm not sure, sorry")

    code, result, output = run_job(
        openai_spec(tmp_path, fake_openai), tmp_path, {KEY_ENV: fake_openai.api_key}
    )

    assert code == 0, output
    gate = result["gate"]
    assert gate["passed"] is False
    assert gate["candidate"]["metrics"]["accuracy"] == 0.0
    assert any(
        reason.startswith(f"{len(TRUTH)} of the candidate's {len(TRUTH)} answers are no label")
        and '"I\'m not sure, sorry"' in reason
        for reason in gate["reasons"]
    ), gate["reasons"]


def test_a_gate_the_api_stops_fails_the_job_with_the_reason(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_job(Succeed(after_polls=2))
    fake_openai.script_error("POST /v1/chat/completions", 401, "invalid api key", times=10)

    code, result, output = run_job(
        openai_spec(tmp_path, fake_openai), tmp_path, {KEY_ENV: fake_openai.api_key}
    )

    assert code == 1, output
    assert result["status"] == "failed"
    assert f"the active model {BASE}" in result["error"]
    assert "answered HTTP 401" in result["error"]
    assert fake_openai.api_key not in output


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("card_arrival", "card_arrival"),
        ("  'Exchange_Rate'. ", "exchange_rate"),
        ("The intent is pin_blocked.", "pin_blocked"),
        ("card_arrival or pin_blocked", None),
        ("no idea", None),
    ],
)
def test_an_answer_is_read_into_the_label_set(answer: str, label: str | None) -> None:
    from retrain.api_gate import label_of

    assert label_of(answer, LABELS) == label


def test_a_bad_spec_names_every_problem(tmp_path: Path) -> None:
    path = write_spec(tmp_path, method="sgd", output_dir="out")
    done = run_retrain("finetune", "--spec", str(path), timeout=60)
    assert done.returncode == 2
    for problem in (
        "'task' is required",
        "'golden_set' is required",
        "'method' must be 'trainer' or 'openai', got 'sgd'",
    ):
        assert problem in done.stderr


def banking77_golden(tmp_path: Path) -> tuple[dict[str, str], set[str]]:
    """The spec keys of a golden set written as Banking77's CSV files are (``text``,
    ``category``), as the daemon names one mapped by ``retune.golden_set.columns``; and its
    questions."""
    rows = questions("test", 5)
    path = tmp_path / "test.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "category"])
        writer.writerows([row["input"], row["label"]] for row in rows)
    keys = {
        "golden_set": str(path),
        "golden_input_field": "text",
        "golden_label_field": "category",
    }
    return keys, {row["input"] for row in rows}


def test_the_trainer_path_gates_on_a_csv_golden_set_by_its_columns(
    tmp_path: Path, tiny_classifier: Callable[[Sequence[str], str], Path]
) -> None:
    active = tiny_classifier(LABELS, "card_arrival")
    golden, golden_inputs = banking77_golden(tmp_path)
    # The golden questions are also in production: the job must know them by their column.
    production = [
        {**row, "sample_id": i + 1}
        for i, row in enumerate(questions("train", 20) + questions("test", 5))
    ]
    spec = {
        **base_spec(tmp_path, "trainer"),
        **golden,
        "production_file": write_jsonl(tmp_path / "production.jsonl", production),
        "base_model": str(active),
        "active": {"model_dir": str(active)},
        "trainer": {"epochs": 1, "batch_size": 16, "max_length": 32},
    }
    code, result, output = run_job(spec, tmp_path)
    assert code == 0, output
    gate = result["gate"]
    assert gate["n"] == len(golden_inputs) == 15
    assert gate["golden_set"] == golden["golden_set"]
    # The active version always answers card_arrival: right on a third of the golden set.
    assert gate["active"]["metrics"]["accuracy"] == pytest.approx(1 / 3)
    assert result["lineage"]["dropped"]["golden"]["production"] == 15
    trained = (tmp_path / "out" / "data" / "train.jsonl").read_text()
    assert not any(text in trained for text in golden_inputs)


def test_the_openai_path_keeps_a_csv_golden_set_out_of_training(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_job(Succeed(after_polls=1))
    golden, golden_inputs = banking77_golden(tmp_path)
    production = [
        {**row, "sample_id": i + 1}
        for i, row in enumerate(questions("train", 20) + questions("test", 5))
    ]
    spec = {
        **base_spec(tmp_path, "openai"),
        **golden,
        "production_file": write_jsonl(tmp_path / "production.jsonl", production),
        "openai": {
            "base_model": "gpt-4o-mini-2024-07-18",
            "base_url": fake_openai.base_url,
            "api_key_env": KEY_ENV,
            "poll_interval_s": 0.05,
            "max_retries": 0,
        },
    }
    code, result, output = run_job(spec, tmp_path, {KEY_ENV: fake_openai.api_key})
    assert code == 0, output
    assert result["lineage"]["dropped"]["golden"]["production"] == 15
    uploaded = (tmp_path / "out" / "data" / "train.chat.jsonl").read_text()
    assert not any(json.dumps(text)[1:-1] in uploaded for text in golden_inputs)
