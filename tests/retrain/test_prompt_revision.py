"""The prompt revision job against the fake OpenAI-compatible server, spoken to by the real
openai client: the fake plays a target model that labels stolen-card messages right only when
its system prompt tells it how, and a proposer whose candidate prompts the test scripts. For
``task: generation`` it also plays the LLM judge, told apart by the rubric in its system prompt,
which scores an answer high only when it ends with the sign-off the rubric asks for."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

import retrain.__main__ as job_main
from retrain.contract import PromptRevisionSpec
from retrain.errors import JobError, SpecError
from retrain.prompt_revision import parse_proposal, run
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI

RULE = "A stolen card is always card_lost."
ACTIVE_SYSTEM = "Label the customer's message: card_lost, refund or balance. Answer the label."
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
    active_system: str = ACTIVE_SYSTEM,
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
        "active": {"system": active_system, "few_shot": FEW_SHOT, "model": "target-mini"},
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


def parsed(tmp_path: Path, raw: dict[str, Any]) -> PromptRevisionSpec:
    return PromptRevisionSpec.parse(raw, tmp_path)


def revise(tmp_path: Path, fake: FakeOpenAI, raw: dict[str, Any]) -> dict[str, Any]:
    """The job's result as ``result.json`` holds it."""
    result = run(parsed(tmp_path, raw), lambda _: None, environ={KEY_ENV: fake.api_key})
    found: dict[str, Any] = json.loads(result.model_dump_json())
    return found


def last_user_texts(fake: FakeOpenAI) -> list[str]:
    return [
        [m for m in call.body["messages"] if m["role"] == "user"][-1]["content"]
        for call in fake.calls(CHAT_ROUTE)
    ]


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


# task: generation, scored by the judge.

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
