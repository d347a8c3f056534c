"""The client an app embeds, against a real HTTP server on 127.0.0.1 that answers as scripted."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest

from daemon.client import Client, ClientStats
from tests.helpers.http import serving
from tests.helpers.imports import loaded_after
from tests.helpers.serve import free_port
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "support-bot"
TOKEN = "s3cret-token"


@dataclass(frozen=True)
class Received:
    """One request as the server saw it, and the status it answered."""

    at: float
    path: str
    authorization: str | None
    body: Any
    status: int

    @property
    def route(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.body[self.route]
        return items


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    sleep: float = 0.0


class Ingest:
    """A stand-in for driftd's ingest API: checks the token and the deployment like driftd does,
    knows which request_ids it has, sample outs ids that start with ``out-``, and answers the next
    requests as scripted."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: deque[Answer] = deque()
        self.known: set[str] = set()
        self.lock = threading.Lock()
        self.release = threading.Event()  # cuts every scripted sleep short at teardown
        self.url = ""

    def answer_next(self, count: int, answer: Answer) -> None:
        with self.lock:
            self.script.extend([answer] * count)

    def delivered(self, route: str = "samples") -> list[dict[str, Any]]:
        """The items of every request to ``route`` that was answered 200."""
        with self.lock:
            requests = [r for r in self.received if r.route == route and r.status == 200]
        return [item for request in requests for item in request.items]

    def sizes(self, route: str = "samples") -> list[int]:
        """The number of items in each request to ``route``, in the order they came."""
        with self.lock:
            return [len(r.items) for r in self.received if r.route == route]

    def answer(self, path: str, authorization: str | None, body: Any) -> Answer:
        with self.lock:
            answer = (
                self.script.popleft() if self.script else self._ingest(path, authorization, body)
            )
            self.received.append(
                Received(time.monotonic(), path, authorization, body, answer.status)
            )
        return answer

    def _ingest(self, path: str, authorization: str | None, body: Any) -> Answer:
        if authorization != f"Bearer {TOKEN}":
            return Answer(401, {"detail": "invalid token"})
        _, _, _, deployment, route = path.split("/")
        if deployment != DEPLOYMENT:
            return Answer(404, {"detail": f"unknown deployment {deployment}"})
        ids = [item["request_id"] for item in body[route]]
        if route == "feedback":
            unknown = [i for i in ids if i not in self.known]
            return Answer(200, {"updated": len(ids) - len(unknown), "unknown": unknown})
        sampled_out = [i for i in ids if i.startswith("out-")]
        kept = [i for i in ids if not i.startswith("out-")]
        new = [i for i in kept if i not in self.known]
        self.known.update(kept)
        counts = {
            "new": len(new),
            "duplicate": len(kept) - len(new),
            "sampled_out": len(sampled_out),
        }
        return Answer(200, {"received": len(ids), **counts})


class _Handler(BaseHTTPRequestHandler):
    ingest: ClassVar[Ingest]
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's pool expects

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = self.ingest.answer(self.path, self.headers["Authorization"], body)
        if answer.sleep:
            self.ingest.release.wait(answer.sleep)
        content = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on what was received instead."""


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    class Handler(_Handler):
        ingest = Ingest()

    with serving(Handler, "ingest") as server:
        Handler.ingest.url = f"http://127.0.0.1:{server.server_port}"
        try:
            yield Handler.ingest
        finally:
            Handler.ingest.release.set()


Connect = Callable[..., Client]


@pytest.fixture
def connect(ingest: Ingest) -> Iterator[Connect]:
    """Makes clients of ``ingest`` with quick retries, and closes them after the test."""
    clients: list[Client] = []

    def connect(url: str | None = None, deployment: str = DEPLOYMENT, **options: Any) -> Client:
        options = {"token": TOKEN, "backoff_base": 0.02, "backoff_max": 0.1, **options}
        client = Client(url or ingest.url, deployment, **options)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close(timeout=1)


def refused_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def stats(**counts: int) -> ClientStats:
    zero = dict.fromkeys(ClientStats.__dataclass_fields__, 0)
    return ClientStats(**{**zero, **counts})


def log_many(client: Client, count: int, prefix: str = "r") -> None:
    for i in range(count):
        client.log(f"{prefix}{i}", "how do I reset my card?", "Go to Settings.")


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


# -- the server's answers ----------------------------------------------------------------------


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
