"""The client an app embeds, against a real HTTP server on 127.0.0.1 that answers as scripted."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from daemon.client import Client
from tests.daemon.conftest import (
    DEPLOYMENT,
    TOKEN,
    Connect,
    Ingest,
    log_many,
    refused_url,
    stats,
)
from tests.helpers.imports import loaded_after
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


# -- batching and what is sent -----------------------------------------------------------------


def test_1200_logs_go_out_as_3_batches_and_every_sample_arrives_once_with_its_fields(
    ingest: Ingest, connect: Connect
) -> None:
    client = connect()
    before = datetime.now(UTC)
    for i in range(1200):
        client.log(
            f"r{i}",
            [{"role": "user", "content": f"question {i}"}],
            f"answer {i}",
            prediction="card_reset",
            confidence=0.75,
            probabilities={"card_reset": 0.75, "other": 0.25},
            latency_ms=12.5,
            tokens_in=7,
            tokens_out=3,
            model_version="m1",
            prompt_version="p2",
            metadata={"region": "eu", "beta": True, "shard": 3},
        )
    after = datetime.now(UTC)
    assert client.flush(timeout=5)

    assert ingest.sizes() == [500, 500, 200]
    samples = ingest.delivered()
    assert [s["request_id"] for s in samples] == [f"r{i}" for i in range(1200)]
    assert samples[42] == {
        "request_id": "r42",
        "ts": samples[42]["ts"],
        "input": [{"role": "user", "content": "question 42"}],
        "output": "answer 42",
        "prediction": "card_reset",
        "confidence": 0.75,
        "probabilities": {"card_reset": 0.75, "other": 0.25},
        "latency_ms": 12.5,
        "tokens_in": 7,
        "tokens_out": 3,
        "model_version": "m1",
        "prompt_version": "p2",
        "metadata": {"region": "eu", "beta": True, "shard": 3},
    }
    for sample in samples:
        ts = datetime.fromisoformat(sample["ts"])
        assert ts.tzinfo is not None
        assert before <= ts <= after
    with ingest.lock:
        assert {r.authorization for r in ingest.received} == {f"Bearer {TOKEN}"}


def test_fields_left_as_none_are_left_out_and_an_explicit_ts_is_kept(
    ingest: Ingest, connect: Connect
) -> None:
    client = connect()
    ts = datetime(2026, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    client.log("r1", "hello", ts=ts)
    assert client.flush(timeout=5)

    assert ingest.delivered() == [
        {"request_id": "r1", "ts": "2026-05-01T12:30:00+02:00", "input": "hello"}
    ]


def test_what_waits_flush_interval_is_sent_without_a_flush(
    ingest: Ingest, connect: Connect
) -> None:
    client = connect(flush_interval=0.1)
    client.log("r1", "hello")
    wait_for(ingest.delivered, 2, "the flush interval's delivery", interval=0.01)

    assert [s["request_id"] for s in ingest.delivered()] == ["r1"]


def test_flush_returns_true_and_stats_count_new_duplicate_and_sampled_out(
    ingest: Ingest, connect: Connect
) -> None:
    client = connect()
    log_many(client, 3)
    client.log("out-1", "hello")
    assert client.flush(timeout=5)
    client.log("r0", "sent again")
    assert client.flush(timeout=5)

    assert client.stats == stats(sent=5, duplicate=1, sampled_out=1)


def test_flush_with_nothing_queued_returns_true_at_once(connect: Connect) -> None:
    client = connect(url=refused_url())
    started = time.monotonic()
    assert client.flush(timeout=5)
    assert time.monotonic() - started < 0.1


def test_feedback_goes_to_the_feedback_route_after_its_samples(
    ingest: Ingest, connect: Connect
) -> None:
    client = connect()
    client.log("r1", "hello", "hi")
    client.feedback("r1", label="greeting", thumb="up", judge_score=0.5, comment="ok")
    client.feedback("never-logged", score=0.2)
    assert client.flush(timeout=5)

    with ingest.lock:
        assert [r.route for r in ingest.received] == ["samples", "feedback"]
        assert ingest.received[1].path == f"/v1/deployments/{DEPLOYMENT}/feedback"
    assert ingest.delivered("feedback") == [
        {
            "request_id": "r1",
            "label": "greeting",
            "thumb": "up",
            "judge_score": 0.5,
            "comment": "ok",
        },
        {"request_id": "never-logged", "score": 0.2},
    ]
    assert client.stats == stats(sent=3)


# -- the app's side ----------------------------------------------------------------------------


def test_a_full_queue_drops_new_samples_and_log_stays_fast(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="driftd.client")
    # The server is down and the first retry is far off: nothing leaves the queue.
    client = connect(url=refused_url(), batch_size=5, max_queue=10, backoff_base=60, backoff_max=60)
    count = 20_000
    started = time.perf_counter()
    log_many(client, count)
    elapsed = time.perf_counter() - started

    assert elapsed / count < 0.001
    held = client.stats
    assert held.queued <= 15  # 10 queued, and up to one batch of 5 being retried
    assert held == stats(queued=held.queued, dropped=count - held.queued)
    assert [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()] == [
        "dropped a sample for support-bot: the queue is full (10 items) "
        "(0 more dropped since the last warning)"
    ]

    started = time.monotonic()
    client.close(timeout=0.2)
    assert time.monotonic() - started < 1
    assert client.stats == stats(failed=held.queued, dropped=count - held.queued)


NONSENSE: list[dict[str, Any]] = [
    {"request_id": None, "input": "hi"},
    {"request_id": 42, "input": "hi"},
    {"request_id": "", "input": "hi"},
    {"request_id": "x" * 256, "input": "hi"},
    {"request_id": "r", "input": None},
    {"request_id": "r", "input": object()},
    {"request_id": "r", "input": b"bytes"},
    {"request_id": "r", "input": [{"role": "user"}]},
    {"request_id": "r", "input": [{"role": "user", "content": 3}]},
    {"request_id": "r", "input": [{"role": "user", "content": "hi", "name": "ann"}]},
    {"request_id": "r", "input": [{"role": "robot", "content": "hi"}]},
    {"request_id": "r", "input": []},
    {"request_id": "r", "input": "x" * 200_001},
    {"request_id": "r", "input": "hi", "prediction": "x" * 256},
    {"request_id": "r", "input": "hi", "output": 3.5},
    {"request_id": "r", "input": "hi", "confidence": 1.5},
    {"request_id": "r", "input": "hi", "confidence": float("nan")},
    {"request_id": "r", "input": "hi", "confidence": "high"},
    {"request_id": "r", "input": "hi", "probabilities": {"a": "b"}},
    {"request_id": "r", "input": "hi", "probabilities": [0.5]},
    {"request_id": "r", "input": "hi", "latency_ms": -1},
    {"request_id": "r", "input": "hi", "tokens_in": 2.5},
    {"request_id": "r", "input": "hi", "tokens_out": True},
    {"request_id": "r", "input": "hi", "prediction": 3},
    {"request_id": "r", "input": "hi", "metadata": {"nested": {"a": 1}}},
    {"request_id": "r", "input": "hi", "metadata": {f"k{i}": i for i in range(17)}},
    {"request_id": "r", "input": "hi", "metadata": {1: "a"}},
    {"request_id": "r", "input": "hi", "metadata": {"inf": float("inf")}},
    {"request_id": "r", "input": "hi", "metadata": {"k" * 65: 1}},
    {"request_id": "r", "input": "hi", "metadata": {"long": "x" * 257}},
    {"request_id": "r", "input": "hi", "ts": "yesterday"},
    {"request_id": "r", "input": "hi", "ts": 0},
    # What the server refuses since it hardened its inputs: ids outside the safe alphabet,
    # NUL characters, counts beyond their column, times outside the accepted range.
    {"request_id": "ann@example.com", "input": "hi"},
    {"request_id": "r", "input": "hi", "model_version": "v 1"},
    {"request_id": "r", "input": "nul \x00 inside"},
    {"request_id": "r", "input": "hi", "tokens_in": 2**70},
    {"request_id": "r", "input": "hi", "metadata": {"e-mail of ann@example.com": 1}},
    {"request_id": "r", "input": "hi", "metadata": {"big": 2**70}},
    {"request_id": "r", "input": "hi", "ts": datetime(1900, 1, 1, tzinfo=UTC)},
]
NONSENSE_FEEDBACK: list[dict[str, Any]] = [
    {"request_id": None, "thumb": "up"},
    {"request_id": "r"},
    {"request_id": "r", "thumb": "sideways"},
    {"request_id": "r", "score": 7},
    {"request_id": "r", "judge_score": "good"},
    {"request_id": "r", "label": ["a"]},
    {"request_id": "r", "label": "a", "comment": 1},
    {"request_id": "r", "comment": "a comment alone records nothing"},
    {"request_id": "r", "thumb": "up", "score": 1.0},
    {"request_id": "r", "label": "a", "comment": "x" * 2001},
]


def test_log_and_feedback_never_raise_and_drop_what_driftd_would_refuse(
    ingest: Ingest, connect: Connect
) -> None:
    client = connect()
    client.log("good-1", "hi")
    for arguments in NONSENSE:
        client.log(**arguments)  # an exception here fails the test
    for arguments in NONSENSE_FEEDBACK:
        client.feedback(**arguments)
    client.log("good-2", "hi")
    assert client.flush(timeout=5)

    # One bad sample would have the server refuse its whole batch: the good ones still arrive.
    assert [s["request_id"] for s in ingest.delivered()] == ["good-1", "good-2"]
    assert ingest.delivered("feedback") == []
    assert client.stats == stats(sent=2, dropped=len(NONSENSE) + len(NONSENSE_FEEDBACK))


def test_a_lone_surrogate_is_replaced_instead_of_costing_the_batch(
    ingest: Ingest, connect: Connect
) -> None:
    client = connect()
    client.log("r1", "broken \ud800 text")
    client.log("r2", "fine")
    assert client.flush(timeout=5)

    assert [s["input"] for s in ingest.delivered()] == ["broken ? text", "fine"]


def test_a_naive_ts_is_taken_as_local_time(ingest: Ingest, connect: Connect) -> None:
    client = connect()
    naive = datetime(2026, 5, 1, 12, 30)
    client.log("r1", "hi", ts=naive)
    assert client.flush(timeout=5)

    (sample,) = ingest.delivered()
    assert datetime.fromisoformat(sample["ts"]) == naive.astimezone()


def test_close_is_idempotent_ends_the_thread_and_later_logs_are_dropped(
    ingest: Ingest, connect: Connect
) -> None:
    before = set(threading.enumerate())
    client = connect()
    (worker,) = set(threading.enumerate()) - before
    assert worker.daemon
    log_many(client, 3)

    client.close()
    client.close()
    assert not worker.is_alive()
    assert [s["request_id"] for s in ingest.delivered()] == ["r0", "r1", "r2"]
    client.log("late", "hi")
    assert client.flush(timeout=1)
    assert client.stats == stats(sent=3, dropped=1)


def test_the_context_manager_sends_everything_on_exit(ingest: Ingest) -> None:
    with Client(ingest.url, DEPLOYMENT, TOKEN) as client:
        log_many(client, 3)
    assert len(ingest.delivered()) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"base_url": "localhost:8080"}, "base_url must be an http:// or https:// URL"),
        ({"deployment": ""}, "deployment must be a non-empty name"),
        ({"token": "two words"}, "token must be non-empty, printable and without spaces"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"flush_interval": 0}, "flush_interval must be a positive number of seconds, got 0"),
    ],
)
def test_a_misconfigured_client_is_refused_at_construction(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Client(**{"base_url": "http://127.0.0.1:1", "deployment": DEPLOYMENT, **arguments})


# -- the app's process -------------------------------------------------------------------------


def run_app(code: str, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def test_samples_logged_just_before_a_normal_exit_are_sent(ingest: Ingest) -> None:
    code = (
        "import sys\n"
        "from daemon.client import Client\n"
        "client = Client(sys.argv[1], sys.argv[2], sys.argv[3], flush_interval=60)\n"
        "for i in range(3):\n"
        "    client.log(f'r{i}', 'hi')\n"
    )
    run_app(code, ingest.url, DEPLOYMENT, TOKEN)

    assert [s["request_id"] for s in ingest.delivered()] == ["r0", "r1", "r2"]


def test_a_server_that_is_down_delays_exit_by_at_most_exit_timeout() -> None:
    code = (
        "import sys\n"
        "from daemon.client import Client\n"
        "client = Client(sys.argv[1], 'support-bot', exit_timeout=0.5, backoff_base=10)\n"
        "client.log('r1', 'hi')\n"
    )
    started = time.monotonic()
    run_app(code, refused_url(), timeout=10)
    assert time.monotonic() - started < 3


def test_importing_the_client_loads_no_server_library() -> None:
    heavy = ("fastapi", "sqlalchemy", "pydantic", "torch", "uvicorn", "starlette")
    assert loaded_after("import daemon.client", heavy) == []
