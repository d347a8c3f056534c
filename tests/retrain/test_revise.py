"""The prompt revision job against the fake OpenAI-compatible server, spoken to by the real
openai client: the fake plays a target model that labels stolen-card messages right only when
its system prompt tells it how, and a proposer whose candidate prompts the test scripts."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import retrain.__main__ as job_main
from retrain.errors import JobError, SpecError
from retrain.revise import RevisionSpec, parse_proposal, parse_spec, run

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

fakes = sys.modules["fake_openai"]  # loaded by tests/conftest.py, with its fixture

RULE = "A stolen card is always card_lost."
CHAMPION_SYSTEM = "Label the customer's message: card_lost, refund or balance. Answer the label."
FEW_SHOT = [{"input": "I want my money back for order 1", "output": "refund"}]
KEY_ENV = "DRIFTD_TEST_LLM_KEY"


def truth(text: str) -> str:
    lowered = text.casefold()
    if "stolen" in lowered or "lost my card" in lowered:
        return "card_lost"
    return "refund" if "refund" in lowered else "balance"


def without_rule(text: str) -> str:
    """The target model's blind spot: it takes a stolen card for a refund request."""
    return "refund" if "stolen" in text.casefold() else truth(text)


def rows(kind: str, count: int, start: int = 0) -> list[dict[str, str]]:
    texts = {
        "stolen": "Someone has stolen my card, case {}",
        "lost": "I lost my card on the bus, case {}",
        "refund": "Please refund purchase number {}",
        "balance": "What is my balance on account {}?",
    }
    return [
        {"input": texts[kind].format(i), "label": truth(texts[kind].format(i))}
        for i in range(start, start + count)
    ]


def write_jsonl(path: Path, items: list[dict[str, str]]) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path.name


def proposal(system: str) -> str:
    return json.dumps({"system": system})


def make_spec(
    tmp_path: Path,
    fake: FakeOpenAI,
    *,
    champion_system: str = CHAMPION_SYSTEM,
    failing: list[dict[str, str]] | None = None,
    golden: list[dict[str, str]] | None = None,
    fresh: list[dict[str, str]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    if failing is None:
        failing = [
            {**row, "output": "refund", "why": "negative feedback"}
            for row in rows("stolen", 4, start=100)
        ]
    if golden is None:
        golden = rows("stolen", 8) + rows("lost", 4) + rows("refund", 6) + rows("balance", 6)
    if fresh is None:
        fresh = rows("stolen", 4, start=50) + rows("balance", 4, start=50)
    endpoint = {"base_url": fake.base_url, "api_key_env": KEY_ENV}
    return {
        "task": "classification",
        "champion": {"system": champion_system, "few_shot": FEW_SHOT, "model": "target-mini"},
        "failing_file": write_jsonl(tmp_path / "failing.jsonl", failing),
        "golden_set": write_jsonl(tmp_path / "golden.jsonl", golden),
        "fresh_file": write_jsonl(tmp_path / "fresh.jsonl", fresh),
        "candidates": 2,
        "proposer": {"model": "proposer-large", **endpoint},
        "target": {"model": "target-mini", **endpoint},
        "max_tokens": 200_000,
        "gate": {"metric": "accuracy", "margin": 0.0, "bootstrap_samples": 500},
        "seed": 7,
        "output_dir": "out",
        **overrides,
    }


def parsed(tmp_path: Path, raw: dict[str, Any]) -> RevisionSpec:
    return parse_spec(raw, tmp_path)


def revise(tmp_path: Path, fake: FakeOpenAI, raw: dict[str, Any]) -> dict[str, Any]:
    return run(parsed(tmp_path, raw), lambda _: None, environ={KEY_ENV: fake.api_key})


def last_user_texts(fake: FakeOpenAI) -> list[str]:
    return [
        [m for m in call.body["messages"] if m["role"] == "user"][-1]["content"]
        for call in fake.calls(fakes.CHAT_ROUTE)
    ]


def test_a_revision_that_fixes_the_failing_pattern_passes_the_gate(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(
        "I would make the prompt friendlier.",  # no JSON: an unusable proposal
        "```json\n" + proposal(CHAMPION_SYSTEM + " Be concise.") + "\n```",
        proposal(CHAMPION_SYSTEM + " " + RULE),
    )
    result = revise(tmp_path, fake_openai, make_spec(tmp_path, fake_openai, candidates=3))

    assert result["passed"] is True
    assert result["gate"]["passed"] is True
    assert result["best"] == 3
    assert result["candidate"] == {
        "system": CHAMPION_SYSTEM + " " + RULE,
        "few_shot": FEW_SHOT,
        "model": "target-mini",
    }
    first, second, third = result["candidates"]
    assert first["system"] is None
    assert "no JSON object" in first["error"]
    assert second["scores"]["accuracy"] == result["champion"]["scores"]["accuracy"]
    assert third["scores"]["accuracy"] == 1.0
    assert result["champion"]["scores"]["accuracy"] == pytest.approx(20 / 32)
    assert result["gate"]["difference"] == pytest.approx(12 / 32)
    assert result["gate"]["ci"][0] > 0
    # The proposer saw the champion's prompt and the failures; the target ran system +
    # few-shot + input, at temperature 0.
    calls = fake_openai.calls(fakes.CHAT_ROUTE)
    meta = calls[0].body["messages"][0]["content"]
    assert CHAMPION_SYSTEM in meta
    assert "Someone has stolen my card, case 100" in meta
    assert "right label: card_lost" in meta
    assert calls[0].body["model"] == "proposer-large"
    scoring = calls[3].body
    assert scoring["model"] == "target-mini"
    assert scoring["temperature"] == 0
    assert [m["role"] for m in scoring["messages"]] == ["system", "user", "assistant", "user"]
    assert len(calls) == 3 + 3 * 32  # three proposals; champion and two candidates on 32
    assert result["tokens"]["used"] == result["tokens"]["proposer"] + result["tokens"]["target"]
    assert 0 < result["tokens"]["used"] <= 200_000


def test_a_revision_that_scores_worse_is_rejected_not_failed(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # The champion already holds the rule; the proposal drops it.
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal("Answer with a label."))
    raw = make_spec(
        tmp_path, fake_openai, champion_system=CHAMPION_SYSTEM + " " + RULE, candidates=1
    )
    result = revise(tmp_path, fake_openai, raw)

    assert result["passed"] is False
    assert result["gate"]["passed"] is False
    assert result["gate"]["difference"] < 0
    assert result["candidates"][0]["scores"]["accuracy"] < 1.0
    assert result["champion"]["scores"]["accuracy"] == 1.0
    assert "short of the margin" in " ".join(result["gate"]["reasons"])


def test_the_token_cap_stops_the_job_before_it_is_passed(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal(CHAMPION_SYSTEM + " " + RULE), proposal("Label it."))
    raw = make_spec(tmp_path, fake_openai, max_tokens=4000)
    with pytest.raises(JobError, match="token cap reached") as stopped:
        revise(tmp_path, fake_openai, raw)

    found = re.search(r"(\d+) of max_tokens 4000 spent.*needs about (\d+)", str(stopped.value))
    assert found is not None, str(stopped.value)
    spent, needed = int(found.group(1)), int(found.group(2))
    assert spent <= 4000 < spent + needed
    assert "Raise max_tokens" in str(stopped.value)
    # It stopped part-way: fewer calls than the full job's 2 proposals + 3 x 32 answers.
    assert 2 < len(fake_openai.calls(fakes.CHAT_ROUTE)) < 2 + 3 * 32


def test_examples_that_wrote_the_prompt_do_not_score_it(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal(CHAMPION_SYSTEM + " " + RULE))
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
    assert fake_openai.calls(fakes.CHAT_ROUTE) == []


def test_generation_and_keys_in_the_spec_are_refused(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    with pytest.raises(SpecError, match="task 'generation' is not supported") as refused:
        parsed(tmp_path, make_spec(tmp_path, fake_openai, task="generation"))
    assert "classification" in str(refused.value)
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


def test_python_m_retrain_revise_prompt_end_to_end(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert job_main.KINDS["revise_prompt"] == "retrain.revise"
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    fake_openai.script_rule(RULE, truth, without_rule)
    fake_openai.script_chat(proposal("Answer with a label."))
    raw = make_spec(
        tmp_path, fake_openai, champion_system=CHAMPION_SYSTEM + " " + RULE, candidates=1
    )
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(raw), encoding="utf-8")

    assert job_main.main(["revise_prompt", "--spec", str(spec_path)]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert result["kind"] == "revise_prompt"
    assert result["status"] == "succeeded"
    assert result["passed"] is False  # a rejection is a result
    assert (tmp_path / "exit").read_text(encoding="utf-8") == "0\n"

    spec_path.write_text(json.dumps({**raw, "task": "generation"}), encoding="utf-8")
    assert job_main.main(["revise_prompt", "--spec", str(spec_path)]) == 2
