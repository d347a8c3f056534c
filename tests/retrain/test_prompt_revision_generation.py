"""The prompt revision job for ``task: generation``, against the fake OpenAI-compatible server:
it plays the target model, a proposer whose candidate prompts the test scripts, and the LLM
judge, told apart by the rubric in its system prompt, which scores an answer high only when it
ends with the sign-off the rubric asks for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from retrain.errors import JobError, SpecError
from retrain.prompt_revision import run
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI
from tests.retrain.conftest import (
    KEY_ENV,
    last_user_texts,
    make_spec,
    parsed,
    proposal,
    revise,
)

SIGN_OFF = "Kind regards, the support team."
GENERATION_RULE = "End every answer with: " + SIGN_OFF
GENERATION_SYSTEM = "You answer customers' questions about their bank account, briefly."
RUBRIC = "The answer helps the customer and ends with the sign-off: " + SIGN_OFF
UNSCORABLE = "gibberish"
"""Inputs holding this word get an answer from the judge that holds no score."""


def answer_signed(text: str) -> str:
    return f"Here is how to go about it: {text}. {SIGN_OFF}"


def answer_unsigned(text: str) -> str:
    return f"Here is how to go about it: {text}."


def judge_verdict(message: str) -> str:
    """The judge: 1.0 for an answer that ends with the sign-off, 0.1 for one that does not,
    prose with no score at all for an input with ``UNSCORABLE`` in it."""
    given = message.split("USER INPUT:", 1)[1].split(">>>", 1)[0]
    output = message.split("ASSISTANT OUTPUT:", 1)[1].split(">>>", 1)[0].strip()
    if UNSCORABLE in given:
        return "I cannot judge this one."
    if output.endswith(SIGN_OFF):
        return json.dumps({"score": 1.0, "reason": "signed off"})
    return json.dumps({"score": 0.1, "reason": "no sign-off"})


def play_generation(fake: FakeOpenAI, *proposals: str) -> None:
    fake.script_rule(GENERATION_RULE, answer_signed, answer_unsigned)
    fake.script_system(RUBRIC, judge_verdict)
    fake.script_chat(*proposals)


def questions(topic: str, count: int, start: int = 0) -> list[dict[str, str]]:
    return [{"input": f"How do I {topic}, case {i}?"} for i in range(start, start + count)]


def make_generation_spec(
    tmp_path: Path,
    fake: FakeOpenAI,
    *,
    active_system: str = GENERATION_SYSTEM,
    failing: list[dict[str, str]] | None = None,
    golden: list[dict[str, str]] | None = None,
    fresh: list[dict[str, str]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    if failing is None:
        failing = [
            {**row, "output": answer_unsigned(row["input"]), "why": "low judge score"}
            for row in questions("close my account", 3, start=100)
        ]
    if golden is None:
        golden = [
            {**row, "reference": answer_signed(row["input"])}
            for row in questions("reset my PIN", 4)
        ] + questions("order a card", 4)
    if fresh is None:
        fresh = questions("raise my limit", 4, start=50)
    endpoint = {"base_url": fake.base_url, "api_key_env": KEY_ENV}
    raw = make_spec(
        tmp_path,
        fake,
        active_system=active_system,
        failing=failing,
        golden=golden,
        fresh=fresh,
        task="generation",
        judge={"model": "judge-large", "rubric": RUBRIC, **endpoint},
        gate={"metric": "judge_score", "margin": 0.0, "bootstrap_samples": 500},
        **overrides,
    )
    raw["active"] = {"system": active_system, "few_shot": [], "model": "target-mini"}
    return raw


def judge_calls(fake: FakeOpenAI) -> list[Any]:
    return [
        call.body
        for call in fake.calls(CHAT_ROUTE)
        if call.body["messages"][0]["role"] == "system"
        and RUBRIC in call.body["messages"][0]["content"]
    ]


def test_a_generation_revision_that_adds_the_instruction_passes_the_judge_gate(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    play_generation(
        fake_openai,
        proposal(GENERATION_SYSTEM + " Be warm."),
        proposal(GENERATION_SYSTEM + " " + GENERATION_RULE),
    )
    golden = [
        {**row, "reference": answer_signed(row["input"])} for row in questions("reset my PIN", 4)
    ]
    golden += [*questions("order a card", 4), {"input": f"{UNSCORABLE} from a customer"}]
    result = revise(
        tmp_path, fake_openai, make_generation_spec(tmp_path, fake_openai, golden=golden)
    )

    assert result["passed"] is True
    assert result["task"] == "generation"
    assert result["best"] == 2
    assert result["candidate"]["system"] == GENERATION_SYSTEM + " " + GENERATION_RULE
    gate = result["gate"]
    assert (gate["metric"], gate["n"]) == ("judge_score", 13)
    assert gate["ci"][0] > 0
    # The unscorable answer counts as 0 for every prompt, and is reported.
    active, (warm, signed) = result["active"], result["candidates"]
    assert active["scores"]["judge_score"] == pytest.approx(12 * 0.1 / 13)
    assert warm["scores"]["judge_score"] == pytest.approx(12 * 0.1 / 13)
    assert signed["scores"]["judge_score"] == pytest.approx(12 / 13)
    assert gate["difference"] == pytest.approx(12 * 0.9 / 13)
    for entry in (active, warm, signed):
        assert entry["unscored"] == 1
        assert "example 9: no usable score" in entry["unscored_errors"][0]
    # The judge saw the rubric, each answer, and the golden set's reference where it had one.
    judged = judge_calls(fake_openai)
    assert len(judged) == 3 * (12 + 3)  # three prompts; the unscorable answer asked 3 times
    first = judged[0]["messages"][1]["content"]
    assert "How do I reset my PIN, case 0?" in first
    assert "REFERENCE ANSWER" in first
    assert "REFERENCE ANSWER" not in judged[5]["messages"][1]["content"]
    assert judged[0]["model"] == "judge-large"
    answers = [
        call.body for call in fake_openai.calls(CHAT_ROUTE) if call.body["model"] == "target-mini"
    ]
    assert len(answers) == 3 * 13
    assert {body["max_tokens"] for body in answers} == {300}
    assert {body["temperature"] for body in answers} == {0}
    # The proposer was shown the rubric and the failing answers, no label needed.
    meta = fake_openai.calls(CHAT_ROUTE)[0].body["messages"][0]["content"]
    assert RUBRIC in meta
    assert GENERATION_SYSTEM in meta
    assert "How do I close my account, case 100?" in meta
    assert "why it failed: low judge score" in meta
    tokens = result["tokens"]
    assert tokens["judge"] > 0
    assert tokens["used"] == tokens["proposer"] + tokens["target"] + tokens["judge"]


def test_a_generation_revision_that_scores_worse_is_rejected(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    play_generation(fake_openai, proposal(GENERATION_SYSTEM))  # drops the sign-off
    raw = make_generation_spec(
        tmp_path, fake_openai, active_system=GENERATION_SYSTEM + " " + GENERATION_RULE
    )
    result = revise(tmp_path, fake_openai, raw)

    assert result["passed"] is False
    assert result["gate"]["difference"] == pytest.approx(-0.9)
    assert result["active"]["scores"]["judge_score"] == pytest.approx(1.0)
    assert result["candidates"][0]["scores"]["judge_score"] == pytest.approx(0.1)
    assert "short of the margin" in " ".join(result["gate"]["reasons"])


def test_the_token_cap_stops_a_generation_revision_at_the_judge(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    play_generation(fake_openai, proposal(GENERATION_SYSTEM + " " + GENERATION_RULE))
    # 2400 tokens allow the proposal's request (about 2000 estimated: the meta-prompt and a
    # 1500-token cap) and run out while the active version's answers are judged: with short answers
    # the judge's requests (rubric, answer, a 200-token cap) are the costly ones.
    raw = make_generation_spec(
        tmp_path, fake_openai, candidates=1, answer_max_tokens=20, max_tokens=2400
    )
    with pytest.raises(JobError, match="token cap reached") as stopped:
        revise(tmp_path, fake_openai, raw)

    message = str(stopped.value)
    found = re.search(
        r"(\d+) of max_tokens 2400 spent.*next judge request needs about (\d+)", message
    )
    assert found is not None, message
    spent, needed = int(found.group(1)), int(found.group(2))
    assert spent <= 2400 < spent + needed
    assert "Raise max_tokens" in message
    judged = len(judge_calls(fake_openai))
    assert 0 < judged < 2 * 12, (message, judged)  # stopped part-way through the judging


def test_failing_inputs_do_not_score_a_generation_revision(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    play_generation(fake_openai, proposal(GENERATION_SYSTEM + " " + GENERATION_RULE))
    golden = questions("reset my PIN", 4)
    fresh = questions("raise my limit", 3)
    failing = [
        {"input": "  how do i RESET my pin, case 1? ", "output": "Do it online."},
        {"input": "How do I raise my limit, case 2?", "output": "No.", "why": "negative feedback"},
        {"input": "How do I close my account, case 9?", "output": "Call us."},
    ]
    raw = make_generation_spec(
        tmp_path, fake_openai, failing=failing, golden=golden, fresh=fresh, candidates=1
    )
    result = revise(tmp_path, fake_openai, raw)

    assert result["dropped_overlaps"] == {"golden": 1, "fresh": 1}
    assert result["evaluated_on"] == {"golden": 3, "fresh": 2}
    asked = last_user_texts(fake_openai)[1:]
    judged = [body["messages"][1]["content"] for body in judge_calls(fake_openai)]
    assert len(judged) == 2 * 5
    for dropped in ("How do I reset my PIN, case 1?", "How do I raise my limit, case 2?"):
        assert not any(dropped in text for text in asked)
    assert "How do I reset my PIN, case 0?" in asked


def test_generation_needs_a_judge_with_a_rubric_and_its_metric(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    raw = make_generation_spec(tmp_path, fake_openai)
    with pytest.raises(SpecError, match="task 'generation' needs 'judge'") as refused:
        parsed(tmp_path, {**raw, "judge": None})
    assert "rubric" in str(refused.value)
    with pytest.raises(SpecError, match=r"judge\.rubric must say what a good answer is"):
        parsed(tmp_path, {**raw, "judge": {**raw["judge"], "rubric": "  "}})
    with pytest.raises(SpecError, match=r"judge\.model must name a chat model"):
        parsed(tmp_path, {**raw, "judge": {**raw["judge"], "model": ""}})
    with pytest.raises(SpecError, match=r"gate\.metric must be judge_score for task generation"):
        parsed(tmp_path, {**raw, "gate": {"metric": "accuracy"}})
    with pytest.raises(SpecError, match=r"judge\.api_key must not be in the spec"):
        parsed(tmp_path, {**raw, "judge": {**raw["judge"], "api_key": "sk-in-the-file"}})
    with pytest.raises(SpecError, match="'task' must be 'classification' or 'generation'"):
        parsed(tmp_path, {**raw, "task": "ranking"})
    spec = parsed(tmp_path, {key: value for key, value in raw.items() if key != "gate"})
    assert (spec.metric, spec.answer_max_tokens) == ("judge_score", 300)


def test_a_judge_that_refuses_the_key_stops_the_job_and_says_which_key(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    play_generation(fake_openai, proposal(GENERATION_SYSTEM + " " + GENERATION_RULE))
    raw = make_generation_spec(tmp_path, fake_openai, candidates=1)
    raw["judge"] = {**raw["judge"], "api_key_env": "DRIFTD_TEST_JUDGE_KEY"}
    spec = parsed(tmp_path, raw)
    environ = {KEY_ENV: fake_openai.api_key, "DRIFTD_TEST_JUDGE_KEY": "sk-wrong-judge-key"}
    with pytest.raises(JobError, match="key from DRIFTD_TEST_JUDGE_KEY") as refused:
        run(spec, lambda _: None, environ=environ)
    assert "HTTP 401" in str(refused.value)
    assert "sk-wrong-judge-key" not in str(refused.value)
    with pytest.raises(JobError, match="set the environment variable DRIFTD_TEST_JUDGE_KEY"):
        run(spec, lambda _: None, environ={KEY_ENV: fake_openai.api_key})


def test_a_generation_golden_set_gives_its_reference_answers_from_the_column_named(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    play_generation(fake_openai, proposal(GENERATION_SYSTEM + " " + GENERATION_RULE))
    golden = [
        {"question": row["input"], "answer": answer_signed(row["input"])}
        for row in questions("reset my PIN", 3)
    ] + [{"question": row["input"], "answer": None} for row in questions("order a card", 2)]
    pq.write_table(pa.Table.from_pylist(golden), tmp_path / "golden.parquet")
    raw = make_generation_spec(
        tmp_path,
        fake_openai,
        fresh=[],
        candidates=1,
        golden_set="golden.parquet",
        golden_input_field="question",
        golden_label_field="answer",
    )
    result = revise(tmp_path, fake_openai, raw)

    assert result["evaluated_on"] == {"golden": 5, "fresh": 0}
    assert result["passed"] is True
    judged = [body["messages"][1]["content"] for body in judge_calls(fake_openai)]
    assert "How do I reset my PIN, case 0?" in judged[0]
    assert "REFERENCE ANSWER" in judged[0]
    assert "REFERENCE ANSWER" not in judged[4]  # a row without an answer has none to show
