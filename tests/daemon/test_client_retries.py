"""The embedded client against the server's answers: what it retries (429, 5xx, timeouts, a
server that is down), how it splits a batch too large (413), and what it gives up on and warns
about once (422, 401, 404)."""

from __future__ import annotations

import logging

import pytest

from tests.daemon.conftest import (
    DEPLOYMENT,
    TOKEN,
    Answer,
    Connect,
    Ingest,
    log_many,
    refused_url,
    stats,
)


def test_429_is_retried_after_the_delay_retry_after_names(ingest: Ingest, connect: Connect) -> None:
    ingest.answer_next(1, Answer(429, {"detail": "slow down"}, {"Retry-After": "1"}))
    client = connect()
    log_many(client, 2)
    assert client.flush(timeout=5)

    with ingest.lock:
        first, second = ingest.received
    assert 0.95 <= second.at - first.at < 1.5
    assert client.stats == stats(sent=2, retries=1)


def test_5xx_is_retried_with_growing_backoff_until_it_succeeds(
    ingest: Ingest, connect: Connect
) -> None:
    ingest.answer_next(3, Answer(503, {"detail": "store unavailable"}))
    client = connect(backoff_base=0.05, backoff_max=1.0)
    log_many(client, 2)
    assert client.flush(timeout=5)

    assert ingest.sizes() == [2, 2, 2, 2]
    with ingest.lock:
        gaps = [b.at - a.at for a, b in zip(ingest.received, ingest.received[1:], strict=False)]
    # With jitter each wait is between half and all of 0.05, 0.1, 0.2 seconds.
    for gap, ceiling in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert ceiling / 2 <= gap < ceiling + 0.5
    assert [s["request_id"] for s in ingest.delivered()] == ["r0", "r1"]
    assert client.stats == stats(sent=2, retries=3)


def test_a_server_slower_than_the_timeout_is_retried(ingest: Ingest, connect: Connect) -> None:
    ingest.answer_next(1, Answer(200, {}, sleep=2))
    client = connect(timeout=0.2)
    log_many(client, 2)
    assert client.flush(timeout=5)

    assert ingest.sizes() == [2, 2]
    assert client.stats == stats(sent=2, retries=1)


def test_413_splits_the_batch_in_halves(ingest: Ingest, connect: Connect) -> None:
    ingest.answer_next(1, Answer(413, {"detail": "request body too large"}))
    client = connect()
    log_many(client, 8)
    assert client.flush(timeout=5)

    assert ingest.sizes() == [8, 4, 4]
    assert [s["request_id"] for s in ingest.delivered()] == [f"r{i}" for i in range(8)]
    assert client.stats == stats(sent=8)


def test_a_single_sample_too_large_is_rejected_and_the_rest_sent(
    ingest: Ingest, connect: Connect
) -> None:
    ingest.answer_next(2, Answer(413, {"detail": "request body too large"}))
    client = connect()
    log_many(client, 2)
    assert client.flush(timeout=5)

    assert ingest.sizes() == [2, 1, 1]
    assert [s["request_id"] for s in ingest.delivered()] == ["r1"]
    assert client.stats == stats(sent=1, rejected=1)


def test_422_is_not_retried_and_logs_the_detail_in_one_warning(
    ingest: Ingest, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="driftd.client")
    detail = [{"loc": ["body", "samples", 0, "input"], "msg": "x" * 2000}]
    ingest.answer_next(1, Answer(422, {"detail": detail}))
    client = connect()
    log_many(client, 3)
    assert client.flush(timeout=5)

    assert ingest.sizes() == [3]
    assert client.stats == stats(rejected=3)
    (warning,) = caplog.records
    assert "HTTP 422" in warning.getMessage()
    assert '"loc": ["body", "samples", 0, "input"]' in warning.getMessage()
    assert len(warning.getMessage()) < 1000


@pytest.mark.parametrize(
    ("token", "deployment", "status"),
    [("wrong-token", DEPLOYMENT, 401), (TOKEN, "no-such-bot", 404)],
)
def test_401_and_404_are_not_retried_and_warned_about_once(
    token: str,
    deployment: str,
    status: int,
    ingest: Ingest,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="driftd.client")
    client = connect(token=token, deployment=deployment)
    for batch in range(3):
        log_many(client, 2, prefix=f"b{batch}-")
        assert client.flush(timeout=5)

    with ingest.lock:
        assert [r.status for r in ingest.received] == [status] * 3
    assert client.stats == stats(rejected=6)
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"HTTP {status}" in warning.getMessage()
    assert all(token not in r.getMessage() for r in caplog.records)


def test_a_server_that_is_down_is_retried_then_counted_failed(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="driftd.client")
    client = connect(url=refused_url(), max_attempts=3)
    log_many(client, 4)
    client.feedback("r0", thumb="up")
    assert client.flush(timeout=5)

    assert client.stats == stats(failed=5, retries=4)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "gave up on 4 samples for support-bot after 3 attempts: ConnectError" in messages[0]
    assert "gave up on 1 feedback" in messages[1]
