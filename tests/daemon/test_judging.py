"""judge_recent on SQLite and PostgreSQL against the fake OpenAI server: which samples are
judged, the scores stored on them, the run's audit event, and the daily token cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.judging import EVENT_KIND, JudgeSettings, judge_recent, spent_today
from daemon.store import NewSample, Sample, Store
from daemon.store.queries import list_events
from retrain.judge import ClientSettings
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
GOOD = '{"score": 0.9, "reason": "helpful"}'


def settings(fake: FakeOpenAI, **extra: Any) -> JudgeSettings:
    return JudgeSettings(
        rubric="The answer is correct and polite.",
        model="judge-mini",
        client=ClientSettings(api_key=fake.api_key, base_url=fake.base_url, max_retries=0),
        **extra,
    )


def sample(request_id: str, minutes_ago: float, **values: Any) -> NewSample:
    values.setdefault("output", f"answer {request_id}")
    return NewSample(
        request_id, NOW - timedelta(minutes=minutes_ago), input=f"question {request_id}", **values
    )


def scores(store: Store, deployment: str) -> dict[str, float | None]:
    with store.session(readonly=True) as session:
        return {s.request_id: s.judge_score for s in session.query(Sample)}


def test_recent_unjudged_outputs_are_scored_and_the_run_recorded(
    store: Store, deployment: str, fake_openai: FakeOpenAI
) -> None:
    store.insert_samples(
        deployment,
        [
            sample("new-1", 5),
            sample("new-2", 10),
            sample("new-3", 15),
            sample("no-output", 6, output=None),
            sample("empty", 7, output=""),
            sample("failed-call", 8, error="upstream 500"),
            sample("judged", 9, judge_score=0.1),
            sample("too-old", 60 * 25),
            sample("future", -5),
        ],
    )
    fake_openai.script_chat(GOOD, "not json", '{"score": 0.3, "reason": "curt"}', "junk", "junk")

    report = judge_recent(
        store,
        deployment,
        settings(
            fake_openai,
            sample_size=10,
            max_attempts=2,
            price_per_million_input_tokens=0.15,
            price_per_million_output_tokens=0.6,
        ),
        NOW,
    )

    assert (report.picked, report.scored, report.failed) == (3, 2, 1)
    assert scores(store, deployment) == {
        "new-1": 0.9,
        "new-2": 0.3,
        "new-3": None,
        "no-output": None,
        "empty": None,
        "failed-call": None,
        "judged": 0.1,
        "too-old": None,
        "future": None,
    }
    judged_inputs = [call.body["messages"][1]["content"] for call in fake_openai.calls(CHAT_ROUTE)]
    assert sum("question new-1" in text for text in judged_inputs) == 1
    assert sum("question new-3" in text for text in judged_inputs) == 2  # two attempts
    [(_, event)] = list_events(store, deployment=deployment, kind=EVENT_KIND)
    assert event.id == report.event_id
    assert event.evidence["picked"] == 3
    assert event.evidence["scored"] == 2
    assert event.evidence["failed"] == 1
    assert event.evidence["mean_score"] == (0.9 + 0.3) / 2
    assert event.evidence["tokens"] == report.tokens > 0
    assert event.evidence["tokens_in"] + event.evidence["tokens_out"] == report.tokens
    expected_cost = (event.evidence["tokens_in"] * 0.15 + event.evidence["tokens_out"] * 0.6) / 1e6
    assert event.evidence["cost_usd"] == report.cost_usd == expected_cost
    assert "judge judge-mini scored 2 of 3 samples (1 failed" in event.message
    assert "no usable score after 2 attempts" in event.evidence["errors"][0]["error"]

    # The failed sample is not sent again the same day; nothing else is left to judge.
    again = judge_recent(store, deployment, settings(fake_openai), NOW + timedelta(minutes=5))
    assert (again.picked, again.event_id) == (0, None)
    assert len(fake_openai.calls(CHAT_ROUTE)) == 5


def test_the_daily_cap_is_read_from_the_last_24_hours_of_runs(
    store: Store, deployment: str, fake_openai: FakeOpenAI
) -> None:
    store.insert_samples(deployment, [sample(f"s{i}", i) for i in range(1, 31)])
    fake_openai.script_chat(*[GOOD] * 30)
    cap = 1500
    judge_settings = settings(
        fake_openai, sample_size=30, max_tokens_per_day=cap, lookback=timedelta(days=2)
    )

    first = judge_recent(store, deployment, judge_settings, NOW)

    assert first.stopped == "budget"
    assert 0 < first.scored < 30
    assert first.tokens <= cap
    assert spent_today(store, deployment, NOW)[0] == first.tokens
    [(_, event)] = list_events(store, deployment=deployment, kind=EVENT_KIND)
    assert event.evidence["stopped"] == "budget"
    assert "token budget reached" in event.message

    # Later the same day: what is left of the cap may not fit one more request.
    later = judge_recent(store, deployment, judge_settings, NOW + timedelta(hours=1))
    assert first.tokens + later.tokens <= cap
    assert later.stopped == "budget"
    calls = len(fake_openai.calls(CHAT_ROUTE))
    assert calls == first.scored + later.scored

    # A day on, the first run's tokens no longer count, and judging resumes.
    next_day = judge_recent(store, deployment, judge_settings, NOW + timedelta(hours=24, minutes=1))
    assert next_day.scored > 0
    assert next_day.spent_today == later.tokens + next_day.tokens <= cap
    judged = [v for v in scores(store, deployment).values() if v is not None]
    assert len(judged) == first.scored + later.scored + next_day.scored
