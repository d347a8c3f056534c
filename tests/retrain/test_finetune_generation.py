"""``python -m retrain finetune`` for generation: the candidate and the model it must beat answer
the same golden questions, scored by reference answers or by an LLM judge, and the paired
bootstrap decides.

The toy task: "What colour is the sky, case 7?" is answered "blue", one colour per thing. The
causal LM is a GPT-2 of 32 hidden units with MiniLM's tokenizer, built from a config offline;
the job fine-tunes it in a few seconds (100 steps) until it answers every golden question
right, while the untrained base answers none. OpenAI models and the judge are the fake server's
(``tests/fake_openai.py``), told apart by their ids. CPU only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from retrain import finetune
from retrain.contract import FineTuneSpec
from retrain.errors import EXIT_FINAL
from retrain.scoring import normal, reference_match
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI, Succeed
from tests.helpers.jobs import run_retrain, write_spec
from tests.helpers.models import save_tiny_gpt2

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black"}
WRONG = dict(zip(COLOURS, ["green", "white", "black", "blue"], strict=True))
KEY_ENV = "DRIFTD_TEST_OPENAI_KEY"
BASE = "gpt-4o-mini-2024-07-18"
JUDGE = "judge-mini"
TRAINING = {"epochs": 20, "batch_size": 8, "learning_rate": 0.01, "max_length": 32}


def question(thing: str, case: int) -> str:
    return f"What colour is the {thing}, case {case}?"


def rows(cases: range, answers: dict[str, str] = COLOURS) -> list[dict[str, Any]]:
    return [
        {"input": question(thing, case), "output": answers[thing], "sample_id": case}
        for case in cases
        for thing in answers
    ]


def golden_rows() -> list[dict[str, str]]:
    """Twelve questions of cases unseen in training, each with its reference answer."""
    return [{"input": r["input"], "label": r["output"]} for r in rows(range(100, 103))]


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return str(path)


def thing_of(text: str) -> str:
    found = re.search(r"colour is the (\w+)", text)
    return found.group(1) if found else "sky"


@pytest.fixture(scope="module")
def base_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained causal LM: it answers no golden question right."""
    from transformers import GPT2LMHeadModel

    return save_tiny_gpt2(tmp_path_factory.mktemp("base-lm"), GPT2LMHeadModel, width=32)


def trainer_spec(folder: Path, base: Path, answers: dict[str, str] = COLOURS) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "method": "trainer",
        "task": "generation",
        "base_model": str(base),
        "production_file": write_jsonl(folder / "production.jsonl", rows(range(10), answers)),
        "golden_set": write_jsonl(folder / "golden.jsonl", golden_rows()),
        "data": {"production_ratio": 1.0, "validation_share": 0.1},
        "trainer": TRAINING,
        "gate": {"margin": 0.0, "bootstrap_samples": 500},
        "seed": 3,
        "candidate": {"name": "colours-v2"},
        "output_dir": "out",
    }


def fine_tune(folder: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The job run in this process; its result as ``result.json`` holds it."""
    result = finetune.run(FineTuneSpec.parse(raw, folder), lambda _: None)
    found: dict[str, Any] = json.loads(result.model_dump_json())
    return found


@pytest.fixture(scope="module")
def well_trained(base_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The result of a job that tuned the base on the right answers, gated against the base."""
    folder = tmp_path_factory.mktemp("well-trained")
    return fine_tune(folder, trainer_spec(folder, base_lm))


def test_a_fine_tune_that_learned_the_answers_passes_against_its_base(
    well_trained: dict[str, Any], base_lm: Path
) -> None:
    gate = well_trained["gate"]
    assert gate["passed"] is True, gate["reasons"]
    assert gate["metric"] == "reference_match"
    assert gate["n"] == len(golden_rows())
    assert gate["active"]["model_dir"] == str(base_lm)  # no active version: its base
    assert gate["active"]["metrics"]["reference_match"] == 0.0
    assert gate["candidate"]["metrics"]["reference_match"] >= 0.75
    low, high = gate["ci"]
    assert 0.0 < low <= gate["difference"] <= high
    assert gate["reasons"][0].startswith("reference_match: the candidate scores")
    assert "tokens" not in gate  # no API was called
    assert "judge_tokens" not in gate
    assert well_trained["metrics"] == gate["candidate"]["metrics"]


def test_a_fine_tune_on_wrong_answers_is_rejected_against_a_good_active_version(
    well_trained: dict[str, Any], base_lm: Path, tmp_path: Path
) -> None:
    good = well_trained["candidate"]["artifact"]
    raw = {**trainer_spec(tmp_path, base_lm, WRONG), "active": {"model_dir": good}}

    gate = fine_tune(tmp_path, raw)["gate"]

    assert gate["passed"] is False
    assert gate["metric"] == "reference_match"
    assert gate["active"]["model_dir"] == good
    assert gate["difference"] < 0
    assert gate["ci"][0] < 0.0
    assert "short of the margin" in gate["reasons"][0], gate["reasons"]


def judge_answer(prompt: str) -> str:
    """The scripted judge: 1 when the answer names the reference's colour, else 0."""
    output = re.search(r"ASSISTANT OUTPUT:\n<<<\n(.*?)\n>>>", prompt, re.DOTALL)
    reference = re.search(r"REFERENCE ANSWER[^\n]*\n<<<\n(.*?)\n>>>", prompt, re.DOTALL)
    said = output.group(1).casefold() if output else ""
    right = reference is not None and reference.group(1).casefold() in said
    return json.dumps({"score": 1.0 if right else 0.0, "reason": "scripted"})


def test_with_a_judge_the_judge_scores_and_its_tokens_are_reported(
    base_lm: Path, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_model(JUDGE, judge_answer)
    raw = {
        **trainer_spec(tmp_path, base_lm),
        "judge": {
            "model": JUDGE,
            "base_url": fake_openai.base_url,
            "api_key_env": KEY_ENV,
            "rubric": "The answer names the colour of the thing asked about.",
        },
        "output_dir": str(tmp_path / "out"),
    }
    path = write_spec(tmp_path, **raw)
    env = {**os.environ, KEY_ENV: fake_openai.api_key}

    done = run_retrain("finetune", "--spec", str(path), timeout=300, env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    gate = json.loads((tmp_path / "out" / "result.json").read_text())["gate"]
    assert gate["passed"] is True, gate["reasons"]
    assert gate["metric"] == "judge_score"
    assert gate["candidate"]["metrics"]["judge_score"] >= 0.75
    assert gate["judge_tokens"] > 0
    assert gate["tokens"] == gate["judge_tokens"]  # local models: only the judge calls an API
    assert gate["judge_tokens"] <= gate["max_tokens"]
    assert any(f"of them the judge's ({JUDGE})" in reason for reason in gate["reasons"])
    # Both models' answers to every golden question were judged, shown the reference.
    judged = [call.body for call in fake_openai.calls(CHAT_ROUTE)]
    assert len(judged) == 2 * len(golden_rows())
    assert all("REFERENCE ANSWER" in body["messages"][-1]["content"] for body in judged)
    assert fake_openai.api_key not in done.stdout + done.stderr


def test_without_a_judge_a_golden_example_without_a_reference_fails_before_training(
    base_lm: Path, tmp_path: Path
) -> None:
    raw = trainer_spec(tmp_path, base_lm)
    golden = [*golden_rows(), {"input": "What colour is the sea?"}]
    raw["golden_set"] = write_jsonl(tmp_path / "golden.jsonl", golden)

    with pytest.raises(Exception, match=r"golden\.jsonl line 13 has no reference answer"):
        fine_tune(tmp_path, raw)
    assert not (tmp_path / "out" / "train").exists()


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [
        ("Blue.", "blue", 1.0),
        ('  "blue" ', "Blue", 1.0),
        ("light  blue", "light blue", 1.0),
        ("blue-ish", "blue", 0.0),
        ("It is blue.", "blue", 0.0),
    ],
)
def test_a_reference_matches_after_normalisation(answer: str, reference: str, score: float) -> None:
    assert reference_match(answer, reference) == score
    assert normal("  'Light\tBLUE'?! ") == "light blue"


# The OpenAI method: the fine-tuned model and its base answer through the (fake) API.


def openai_spec(folder: Path, fake: FakeOpenAI, **overrides: Any) -> dict[str, Any]:
    return {
        "method": "openai",
        "task": "generation",
        "production_file": write_jsonl(folder / "production.jsonl", rows(range(10))),
        "golden_set": write_jsonl(folder / "golden.jsonl", golden_rows()),
        "data": {"production_ratio": 1.0, "validation_share": 0.1},
        "gate": {"margin": 0.0, "bootstrap_samples": 500},
        "seed": 3,
        "candidate": {"name": "colours-v2"},
        "system_prompt": "Answer with the colour of the thing asked about.",
        "openai": {
            "base_model": BASE,
            "base_url": fake.base_url,
            "api_key_env": KEY_ENV,
            "poll_interval_s": 0.05,
            "poll_max_interval_s": 0.2,
            "max_retries": 0,
        },
        "output_dir": str(folder / "out"),
        **overrides,
    }


def run_job(folder: Path, fake: FakeOpenAI, raw: dict[str, Any]) -> tuple[int, Any, str]:
    path = write_spec(folder, **raw)
    env = {**os.environ, KEY_ENV: fake.api_key}
    done = run_retrain("finetune", "--spec", str(path), timeout=300, env=env)
    result = json.loads((folder / "out" / "result.json").read_text())
    return done.returncode, result, done.stdout + done.stderr


def knows(text: str) -> str:
    return f"{COLOURS[thing_of(text)].capitalize()}."


def guesses(text: str) -> str:
    return "It depends on the light."


@pytest.mark.parametrize(
    ("base", "tuned", "passed"), [(guesses, knows, True), (knows, guesses, False)]
)
def test_the_openai_generation_fine_tune_is_gated_against_its_base(
    tmp_path: Path, fake_openai: FakeOpenAI, base: Any, tuned: Any, passed: bool
) -> None:
    fake_openai.script_job(Succeed(after_polls=1))
    fake_openai.script_model(BASE, base)
    fake_openai.script_model(f"ft:{BASE}", tuned)

    code, result, output = run_job(tmp_path, fake_openai, openai_spec(tmp_path, fake_openai))

    assert code == 0, output
    gate = result["gate"]
    assert gate["passed"] is passed, gate["reasons"]
    assert gate["metric"] == "reference_match"
    scores = (gate["active"]["metrics"], gate["candidate"]["metrics"])
    assert scores == ({"reference_match": 0.0}, {"reference_match": 1.0})[:: 1 if passed else -1]
    assert len(gate["ci"]) == 2
    assert (gate["active"]["model_dir"], gate["candidate"]["model_dir"]) == (
        BASE,
        result["candidate"]["artifact"],
    )
    assert 0 < gate["tokens"] <= gate["max_tokens"]
    assert "judge_tokens" not in gate
    asked = fake_openai.calls(CHAT_ROUTE)
    assert len(asked) == 2 * len(golden_rows())
    assert all(call.body["messages"][0]["role"] == "system" for call in asked)


def test_an_openai_generation_gate_stopped_by_the_token_cap_fails_the_job(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_job(Succeed(after_polls=1))
    fake_openai.script_model(f"ft:{BASE}", knows)

    code, result, output = run_job(
        tmp_path, fake_openai, openai_spec(tmp_path, fake_openai, max_tokens=50)
    )

    assert code == EXIT_FINAL, output  # a retry would stop at the same place: not retried
    assert result["status"] == "failed"
    assert "token cap reached: 0 of max_tokens 50 spent" in result["error"]
    assert "retune.gate.max_tokens" in result["error"]
    assert fake_openai.calls(CHAT_ROUTE) == []


def test_the_openai_answers_and_the_judge_spend_from_one_cap(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_job(Succeed(after_polls=1))
    fake_openai.script_model(BASE, guesses)
    fake_openai.script_model(f"ft:{BASE}", knows)
    fake_openai.script_model(JUDGE, judge_answer)
    judge = {"model": JUDGE, "base_url": fake_openai.base_url, "api_key_env": KEY_ENV}
    raw = openai_spec(tmp_path, fake_openai, judge={**judge, "rubric": "Names the colour."})

    code, result, output = run_job(tmp_path, fake_openai, raw)

    assert code == 0, output
    gate = result["gate"]
    assert gate["passed"] is True, gate["reasons"]
    assert gate["metric"] == "judge_score"
    assert 0 < gate["judge_tokens"] < gate["tokens"] <= gate["max_tokens"]
    models = [call.body["model"] for call in fake_openai.calls(CHAT_ROUTE)]
    assert models.count(JUDGE) == 2 * len(golden_rows())
