"""The LLM judge against the fake OpenAI-compatible server, spoken to by the real openai client:
scores read from the judge's JSON (and from junk around it), bounded retries, failed requests,
a refused key, and the token budget that stops a run."""

from __future__ import annotations

from typing import Any

import pytest

from retrain.judge import (
    ClientSettings,
    JudgeSample,
    Stop,
    TokenBudget,
    judge,
    parse_answer,
)
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI

RUBRIC = "The answer is polite and tells the customer how to reset their card PIN."
MODEL = "judge-mini"


def settings(fake: FakeOpenAI, **extra: Any) -> ClientSettings:
    return ClientSettings(
        api_key=extra.pop("api_key", fake.api_key),
        base_url=fake.base_url,
        timeout_s=10,
        max_retries=0,
        **extra,
    )


def samples(count: int) -> list[JudgeSample]:
    return [
        JudgeSample(i, f"How do I reset my PIN? ({i})", f"Go to Settings > Card > PIN ({i}).")
        for i in range(1, count + 1)
    ]


def usage_of(call: Any, answer: str) -> int:
    """The tokens the fake reports for one completion (its characters / 4 rule)."""
    prompt = sum(len(m["content"]) for m in call.body["messages"]) // 4 + 1
    return prompt + len(answer) // 4 + 1


def test_each_sample_is_scored_from_the_judges_json(fake_openai: FakeOpenAI) -> None:
    answers = [
        '{"score": 0.9, "reason": "Polite and complete."}',
        'Here is my verdict:\n```json\n{"score": 0.25, "reason": "No steps given."}\n```',
    ]
    fake_openai.script_chat(*answers)

    result = judge(
        samples(2),
        rubric=RUBRIC,
        model=MODEL,
        client=settings(fake_openai),
        budget=TokenBudget(None),
    )

    assert result.stopped is None
    assert [(s.sample_id, s.score, s.reason) for s in result.scores] == [
        (1, 0.9, "Polite and complete."),
        (2, 0.25, "No steps given."),
    ]
    calls = fake_openai.calls(CHAT_ROUTE)
    assert [call.body["model"] for call in calls] == [MODEL, MODEL]
    system, user = calls[0].body["messages"]
    assert RUBRIC in system["content"]
    assert '"score"' in system["content"]
    assert "How do I reset my PIN? (1)" in user["content"]
    assert "Go to Settings > Card > PIN (1)." in user["content"]
    assert result.tokens == sum(usage_of(c, a) for c, a in zip(calls, answers, strict=True))


def test_junk_answers_are_retried_a_bounded_number_of_times(fake_openai: FakeOpenAI) -> None:
    fake_openai.script_chat(
        "It is a fine answer.",  # sample 1: prose, no JSON
        '{"score": 7, "reason": "out of ten"}',  # outside [0, 1]
        '{"score": 0.6, "reason": "ok"}',  # third attempt: usable
        "junk",  # sample 2: junk three times, then given up
        '{"verdict": "good"}',
        '{"score": "high"}',
        '{"score": 1, "reason": "perfect"}',  # sample 3 is unaffected
    )

    result = judge(
        samples(3),
        rubric=RUBRIC,
        model=MODEL,
        client=settings(fake_openai),
        budget=TokenBudget(None),
        max_attempts=3,
    )

    first, second, third = result.scores
    assert (first.score, first.attempts, first.error) == (0.6, 3, None)
    assert second.score is None
    assert second.attempts == 3
    assert second.error is not None
    assert "no usable score after 3 attempts" in second.error
    assert '{"score": "high"}' in second.error
    assert (third.score, third.attempts) == (1.0, 1)
    assert len(fake_openai.calls(CHAT_ROUTE)) == 7
    # Unusable answers still cost tokens, and are counted.
    assert second.tokens_in > 0
    assert second.tokens_out > 0


def test_a_failing_request_is_a_failed_attempt_of_its_sample(fake_openai: FakeOpenAI) -> None:
    fake_openai.script_error(CHAT_ROUTE, 500, "the judge is overloaded", type="server_error")
    fake_openai.script_chat('{"score": 0.8, "reason": "fine"}')

    recovered = judge(
        samples(1),
        rubric=RUBRIC,
        model=MODEL,
        client=settings(fake_openai),
        budget=TokenBudget(None),
    )

    assert [(s.score, s.attempts) for s in recovered.scores] == [(0.8, 2)]

    fake_openai.script_error(CHAT_ROUTE, 500, "the judge is down", times=2)
    fake_openai.script_chat('{"score": 0.4, "reason": "meh"}')
    failed = judge(
        samples(2),
        rubric=RUBRIC,
        model=MODEL,
        client=settings(fake_openai),
        budget=TokenBudget(None),
        max_attempts=2,
    )

    first, second = failed.scores
    assert first.score is None
    assert first.error is not None
    assert "HTTP 500" in first.error
    assert "the judge is down" in first.error
    assert (first.tokens_in, first.tokens_out) == (0, 0)
    assert (second.score, second.attempts) == (0.4, 1)
    assert failed.stopped is None


def test_a_refused_key_ends_the_run_at_once_without_showing_the_key(
    fake_openai: FakeOpenAI,
) -> None:
    wrong = "sk-wrong-7f3a9c2e1d"

    result = judge(
        samples(5),
        rubric=RUBRIC,
        model=MODEL,
        client=settings(fake_openai, api_key=wrong),
        budget=TokenBudget(None),
    )

    assert result.scores == []
    assert result.stopped is Stop.error
    assert result.detail is not None
    assert "HTTP 401" in result.detail
    assert "check the judge's API key" in result.detail
    assert wrong not in result.detail
    assert len(fake_openai.calls(CHAT_ROUTE)) == 1


def test_the_budget_stops_the_run_and_is_never_overrun(fake_openai: FakeOpenAI) -> None:
    fake_openai.script_chat(*['{"score": 0.5, "reason": "fine"}'] * 10)
    limit = 1000
    already = 100

    result = judge(
        samples(10),
        rubric=RUBRIC,
        model=MODEL,
        client=settings(fake_openai),
        budget=TokenBudget(limit, spent=already),
        max_tokens=50,
    )

    assert result.stopped is Stop.budget
    assert result.detail is not None
    assert "token budget reached" in result.detail
    assert 0 < len(result.scores) < 10
    assert all(s.score == 0.5 for s in result.scores)
    assert len(fake_openai.calls(CHAT_ROUTE)) == len(result.scores)
    assert already + result.tokens <= limit

    spent_out = judge(
        samples(3),
        rubric=RUBRIC,
        model=MODEL,
        client=settings(fake_openai),
        budget=TokenBudget(limit, spent=limit),
    )

    assert (spent_out.scores, spent_out.stopped) == ([], Stop.budget)
    assert len(fake_openai.calls(CHAT_ROUTE)) == len(result.scores)


@pytest.mark.parametrize(
    ("answer", "score", "reason"),
    [
        ('{"score": 0, "reason": "wrong"}', 0.0, "wrong"),
        ('{"reason": "right", "score": "0.75"}', 0.75, "right"),
        ('Verdict: {"score": 1.0} -- done', 1.0, ""),
    ],
)
def test_answers_are_read_leniently(answer: str, score: float, reason: str) -> None:
    assert parse_answer(answer) == (score, reason)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("", "no JSON object"),
        ('{"score": -0.1}', r"outside \[0, 1\]"),
        ('{"score": true}', "not a number"),
        ('{"score": null}', "not a number"),
    ],
)
def test_unusable_answers_say_what_is_wrong(answer: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_answer(answer)
