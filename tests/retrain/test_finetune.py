"""``python -m retrain retrain``: a whole re-tune in one job, on the trainer path (a tiny
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


def test_the_openai_path_fine_tunes_and_keeps_the_model_for_an_operator(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_job(Succeed(after_polls=2))
    spec = {
        **base_spec(tmp_path, "openai"),
        "system_prompt": "Answer with the intent of the customer's banking question.",
        "openai": {
            "base_model": "gpt-4o-mini-2024-07-18",
            "base_url": fake_openai.base_url,
            "api_key_env": KEY_ENV,
            "poll_interval_s": 0.05,
            "poll_max_interval_s": 0.2,
            "max_retries": 0,
        },
    }
    code, result, output = run_job(spec, tmp_path, {KEY_ENV: fake_openai.api_key})
    assert code == 0, output
    assert result["candidate"]["artifact"].startswith("ft:gpt-4o-mini-2024-07-18")
    assert result["gate"]["passed"] is False
    assert "cannot score OpenAI models" in result["gate"]["reasons"][0]
    uploaded = (tmp_path / "out" / "data" / "train.chat.jsonl").read_text().splitlines()
    first = json.loads(uploaded[0])["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[2]["content"] in LABELS
    assert fake_openai.api_key not in output


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
