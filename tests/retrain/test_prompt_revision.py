"""The prompt revision job against the fake OpenAI-compatible server, spoken to by the real
openai client: the fake plays a target model that labels stolen-card messages right only when
its system prompt tells it how, and a proposer whose candidate prompts the test scripts.
``task: generation``, scored by an LLM judge, is in ``test_prompt_revision_generation.py``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

import retrain.__main__ as job_main
from retrain.errors import JobError, SpecError
from retrain.prompt_revision import parse_proposal, run
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI
from tests.retrain.conftest import (
    ACTIVE_SYSTEM,
    FEW_SHOT,
    KEY_ENV,
    last_user_texts,
    make_spec,
    parsed,
    proposal,
    revise,
    rows,
    truth,
    without_rule,
)

RULE = "A stolen card is always card_lost."


def test_a_revision_that_fixes_the_failing_pattern_passes_the_gate(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(
        "I would make the prompt friendlier.",  # no JSON: an unusable proposal
        "```json\n" + proposal(ACTIVE_SYSTEM + " Be concise.") + "\n```",
        proposal(ACTIVE_SYSTEM + " " + RULE),
    )
    result = revise(tmp_path, fake_openai, make_spec(tmp_path, fake_openai, candidates=3))

    assert result["passed"] is True
    assert result["gate"]["passed"] is True
    assert result["best"] == 3
    assert result["candidate"] == {
        "system": ACTIVE_SYSTEM + " " + RULE,
        "few_shot": FEW_SHOT,
        "model": "target-mini",
    }
    first, second, third = result["candidates"]
    assert first["system"] is None
    assert "no JSON object" in first["error"]
    assert second["scores"]["accuracy"] == result["active"]["scores"]["accuracy"]
    assert third["scores"]["accuracy"] == 1.0
    assert result["active"]["scores"]["accuracy"] == pytest.approx(20 / 32)
    assert result["gate"]["difference"] == pytest.approx(12 / 32)
    assert result["gate"]["ci"][0] > 0
    # The proposer saw the active version's prompt and the failures; the target ran system +
    # few-shot + input, at temperature 0.
    calls = fake_openai.calls(CHAT_ROUTE)
    meta = calls[0].body["messages"][0]["content"]
    assert ACTIVE_SYSTEM in meta
    assert "Someone has stolen my card, case 100" in meta
    assert "right label: card_lost" in meta
    assert calls[0].body["model"] == "proposer-large"
    scoring = calls[3].body
    assert scoring["model"] == "target-mini"
    assert scoring["temperature"] == 0
    assert [m["role"] for m in scoring["messages"]] == ["system", "user", "assistant", "user"]
    assert len(calls) == 3 + 3 * 32  # three proposals; active and two candidates on 32
    assert result["tokens"]["used"] == result["tokens"]["proposer"] + result["tokens"]["target"]
    assert 0 < result["tokens"]["used"] <= 200_000


def test_a_revision_that_scores_worse_is_rejected_not_failed(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # The active version already holds the rule; the proposal drops it.
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal("Answer with a label."))
    raw = make_spec(tmp_path, fake_openai, active_system=ACTIVE_SYSTEM + " " + RULE, candidates=1)
    result = revise(tmp_path, fake_openai, raw)

    assert result["passed"] is False
    assert result["gate"]["passed"] is False
    assert result["gate"]["difference"] < 0
    assert result["candidates"][0]["scores"]["accuracy"] < 1.0
    assert result["active"]["scores"]["accuracy"] == 1.0
    assert "short of the margin" in " ".join(result["gate"]["reasons"])


def test_the_token_cap_stops_the_job_before_it_is_passed(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal(ACTIVE_SYSTEM + " " + RULE), proposal("Label it."))
    raw = make_spec(tmp_path, fake_openai, max_tokens=4000)
    with pytest.raises(JobError, match="token cap reached") as stopped:
        revise(tmp_path, fake_openai, raw)

    found = re.search(r"(\d+) of max_tokens 4000 spent.*needs about (\d+)", str(stopped.value))
    assert found is not None, str(stopped.value)
    spent, needed = int(found.group(1)), int(found.group(2))
    assert spent <= 4000 < spent + needed
    assert "Raise max_tokens" in str(stopped.value)
    # It stopped part-way: fewer calls than the full job's 2 proposals + 3 x 32 answers.
    assert 2 < len(fake_openai.calls(CHAT_ROUTE)) < 2 + 3 * 32


def test_examples_that_wrote_the_prompt_do_not_score_it(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal(ACTIVE_SYSTEM + " " + RULE))
    golden = rows("stolen", 6) + rows("balance", 6)
    fresh = rows("stolen", 3, start=50) + rows("refund", 3, start=50)
    failing = [
        # The same inputs as a golden and a fresh row, but for case and spaces.
        {
            "input": "  someone has STOLEN my card, case 2 ",
            "output": "refund",
            "label": "card_lost",
        },
        {
            "input": "Someone has stolen my card, case 51",
            "output": "refund",
            "expected": "card_lost",
        },
        {"input": "Someone has stolen my card, case 900", "output": "refund", "label": "card_lost"},
    ]
    raw = make_spec(
        tmp_path, fake_openai, failing=failing, golden=golden, fresh=fresh, candidates=1
    )
    result = revise(tmp_path, fake_openai, raw)

    assert result["dropped_overlaps"] == {"golden": 1, "fresh": 1}
    assert result["evaluated_on"] == {"golden": 11, "fresh": 5}
    scored = last_user_texts(fake_openai)[1:]
    assert len(scored) == 2 * 16
    assert "Someone has stolen my card, case 2" not in scored
    assert "Someone has stolen my card, case 51" not in scored
    assert "Someone has stolen my card, case 3" in scored


def test_nothing_left_to_score_after_the_overlap_guard_is_an_error(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    golden = rows("stolen", 2)
    failing = [{**row, "output": "refund"} for row in golden]
    raw = make_spec(tmp_path, fake_openai, failing=failing, golden=golden, fresh=golden)
    with pytest.raises(JobError, match="nothing left to score on"):
        revise(tmp_path, fake_openai, raw)
    assert fake_openai.calls(CHAT_ROUTE) == []


def test_keys_in_the_spec_are_refused(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    raw = make_spec(tmp_path, fake_openai)
    raw["target"] = {**raw["target"], "api_key": "sk-in-the-file"}
    with pytest.raises(SpecError, match=r"target\.api_key must not be in the spec"):
        parsed(tmp_path, raw)


def test_a_missing_key_names_the_variable_to_set(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    spec = parsed(tmp_path, make_spec(tmp_path, fake_openai))
    with pytest.raises(JobError, match=f"set the environment variable {KEY_ENV}"):
        run(spec, lambda _: None, environ={})


def test_a_proposal_is_read_from_prose_around_its_json() -> None:
    assert parse_proposal('Here you go: {"system": "Be exact."} Thanks') == "Be exact."
    with pytest.raises(ValueError, match="non-empty"):
        parse_proposal('{"system": "  "}')


def test_python_m_retrain_prompt_revision_end_to_end(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert job_main.KINDS["prompt_revision"] == "retrain.prompt_revision"
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal("Answer with a label."))
    raw = make_spec(tmp_path, fake_openai, active_system=ACTIVE_SYSTEM + " " + RULE, candidates=1)
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(raw), encoding="utf-8")

    assert job_main.main(["prompt_revision", "--spec", str(spec_path)]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert result["kind"] == "prompt_revision"
    assert result["status"] == "succeeded"
    assert result["passed"] is False  # a rejection is a result
    assert (tmp_path / "exit").read_text(encoding="utf-8") == "0\n"

    spec_path.write_text(json.dumps({**raw, "task": "generation"}), encoding="utf-8")
    assert job_main.main(["prompt_revision", "--spec", str(spec_path)]) == 2


def test_an_empty_fresh_file_leaves_the_golden_set_to_score_alone(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal(ACTIVE_SYSTEM + " " + RULE))
    golden = rows("stolen", 4) + rows("balance", 4)
    raw = make_spec(tmp_path, fake_openai, golden=golden, fresh=[], candidates=1)
    result = revise(tmp_path, fake_openai, raw)
    assert result["evaluated_on"] == {"golden": 8, "fresh": 0}
    assert result["passed"] is True


def test_a_csv_golden_set_is_read_by_the_columns_the_spec_names(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal(ACTIVE_SYSTEM + " " + RULE))
    golden = rows("stolen", 4) + rows("balance", 4)
    with (tmp_path / "test.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["category", "text"])  # Banking77's columns, in another order
        writer.writerows([row["label"], row["input"]] for row in golden)
    raw = make_spec(
        tmp_path,
        fake_openai,
        fresh=[],
        candidates=1,
        golden_set="test.csv",
        golden_input_field="text",
        golden_label_field="category",
    )
    result = revise(tmp_path, fake_openai, raw)

    assert result["evaluated_on"] == {"golden": 8, "fresh": 0}
    assert result["active"]["scores"]["accuracy"] == pytest.approx(4 / 8)
    assert result["passed"] is True
    scored = last_user_texts(fake_openai)[1:]
    assert "Someone has stolen my card, case 3" in scored


def test_golden_columns_must_be_named(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    raw = make_spec(tmp_path, fake_openai, golden_input_field="", golden_label_field=3)
    with pytest.raises(SpecError) as refused:
        parsed(tmp_path, raw)
    assert "'golden_input_field' must name a column of the golden set, got ''" in str(refused.value)
    assert "'golden_label_field' must name a column of the golden set, got 3" in str(refused.value)
