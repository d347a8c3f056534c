"""The OpenAI-compatible proxy when something fails, against llm-katan (failure injection) and
upstreams that misbehave: upstream errors and timeouts passed through and recorded, an
unreachable upstream, a missing key, a saturated writer, a dropped kept-alive connection.

The test bench (llm-katan, the proxy in front of a real store) is in ``conftest.py``.
"""

from __future__ import annotations

import json
import re
import socketserver
import time
from typing import Any, ClassVar

import httpx
import pytest

from daemon.errors import QueueFull
from daemon.ingest.writer import Writer
from daemon.metrics import status_class
from daemon.store import Store
from daemon.store.repository import SampleRows
from tests.daemon.conftest import CALLER, KEY, KEY_ENV, UPSTREAM_KEY, Katan, ProxyFactory, chat
from tests.helpers.http import serving
from tests.helpers.serve import free_port
from tests.helpers.wait import wait_for


class SaturatedWriter(Writer):
    """A writer whose queue is always full: what a proxy sees when the store falls behind."""

    def submit(self, rows: SampleRows) -> Any:
        raise QueueFull("the write queue is full (64 batches waiting)")


@pytest.mark.parametrize(
    ("katan", "status", "message"),
    [
        ("failing", 500, "internal server error"),
        ("rate_limited", 429, "rate limit exceeded"),
        ("timing_out", 504, "upstream request timeout"),
    ],
)
def test_upstream_errors_pass_through_unchanged_and_are_recorded_with_their_error(
    katans: dict[str, Katan], proxy: ProxyFactory, katan: str, status: int, message: str
) -> None:
    upstream = katans[katan]
    served = proxy({"bot": (upstream.url, 5)})
    body = chat("What is the exchange rate?")
    served.post("bot", body)  # the first call may pass: the "after 1 request" failures
    proxied = served.post("bot", body, CALLER | {"X-Request-Id": f"req-{katan}"})
    direct = httpx.post(
        f"{upstream.url}/chat/completions", json=body, headers=UPSTREAM_KEY, timeout=30
    )

    assert proxied.status_code == direct.status_code == status
    assert proxied.content == direct.content
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    sample = served.sample("bot", f"req-{katan}")
    assert sample.error == f"the upstream answered HTTP {status}: {message}"
    assert sample.output is None
    assert sample.meta is not None
    assert sample.meta["status"] == status
    assert (
        served.counted("driftd_proxy_requests_total", deployment="bot", status=status_class(status))
        >= 1
    )


def test_a_failing_stream_request_passes_the_error_body_through(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    upstream = katans["failing"]
    served = proxy({"bot": (upstream.url, 5)})
    body = chat("hi", stream=True)
    proxied = served.post("bot", body, CALLER | {"X-Request-Id": "req-failing-stream"})
    direct = httpx.post(
        f"{upstream.url}/chat/completions", json=body, headers=UPSTREAM_KEY, timeout=30
    )
    assert proxied.status_code == direct.status_code == 500
    assert proxied.content == direct.content
    sample = served.sample("bot", "req-failing-stream")
    assert sample.error == "the upstream answered HTTP 500: internal server error"


def test_added_latency_is_passed_through_and_a_too_slow_upstream_answers_504(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    upstream = katans["latency"]  # answers after 1.5 s
    served = proxy({"patient": (upstream.url, 5), "hasty": (upstream.url, 1)})

    started = time.monotonic()
    slow = served.post("patient", chat("hi"), CALLER | {"X-Request-Id": "req-patient"})
    assert slow.status_code == 200
    assert time.monotonic() - started >= 1.5
    sample = served.sample("patient", "req-patient")
    assert sample.latency_ms is not None
    assert sample.latency_ms >= 1500

    started = time.monotonic()
    cut = served.post("hasty", chat("hi"), CALLER | {"X-Request-Id": "req-hasty"})
    assert time.monotonic() - started < 1.5
    assert cut.status_code == 504
    error = cut.json()["error"]
    assert error["type"] == "upstream_timeout"
    assert "did not answer within 1 s (upstream.timeout)" in error["message"]
    sample = served.sample("hasty", "req-hasty")
    assert sample.error == error["message"]
    assert sample.meta is not None
    assert sample.meta["status"] == 504


def test_an_unreachable_upstream_answers_502_and_is_recorded(proxy: ProxyFactory) -> None:
    served = proxy({"bot": (f"http://127.0.0.1:{free_port()}/v1", 5)})
    response = served.post("bot", chat("hi"), CALLER | {"X-Request-Id": "req-nobody"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_unreachable"
    assert "cannot be reached" in error["message"]
    assert "check upstream.base_url" in error["message"]
    # Stored as every sample is: redacted (the upstream's address is an IP).
    stored = served.sample("bot", "req-nobody").error
    assert stored == error["message"].replace("127.0.0.1", "<IP>")


def test_the_configured_key_is_sent_and_a_missing_one_forwards_nothing(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    katan = katans["plain"]
    keyed = proxy({"bot": (katan.url, 5)}, environ={KEY_ENV: KEY})
    assert keyed.post("bot", chat("hi")).status_code == 200
    # The upstream (validating keys) took driftd's configured key, not the caller's token.
    wrong = {"Authorization": "Bearer sk-the-callers-wrong-key"}
    refused = keyed.post("bot", chat("hi"), wrong)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert "DRIFTD_PROXY_TOKENS" in refused.json()["error"]["message"]
    assert keyed.counted("driftd_proxy_refused_total", deployment="bot", reason="unauthorized") == 1
    assert keyed.total("driftd_proxy_refused_total") == 1

    unkeyed = proxy({"open": (katan.url, 5)}, environ={})
    missing = unkeyed.post("open", chat("hi"))
    assert missing.status_code == 503
    error = missing.json()["error"]
    assert error["code"] == "upstream_key_missing"
    assert KEY_ENV in error["message"]
    # Answered by driftd, nothing went upstream.
    assert unkeyed.total("driftd_proxy_requests_total") == 0
    refused_open = {"deployment": "open", "reason": "no_upstream_key"}
    assert unkeyed.counted("driftd_proxy_refused_total", **refused_open) == 1
    assert unkeyed.total("driftd_proxy_refused_total") == 1


def test_a_saturated_writer_drops_the_sample_counts_it_and_the_request_succeeds(
    katans: dict[str, Katan], proxy: ProxyFactory, store: Store
) -> None:
    served = proxy({"bot": (katans["plain"].url, 5)}, writer=SaturatedWriter(store))
    plain = served.post("bot", chat("hi"))
    assert plain.status_code == 200
    assert "User: hi" in plain.json()["choices"][0]["message"]["content"]
    with httpx.stream(
        "POST",
        f"{served.url}/proxy/bot/v1/chat/completions",
        json=chat("hi", stream=True),
        headers=CALLER,
        timeout=30,
    ) as streamed:
        assert streamed.status_code == 200
        assert b"".join(streamed.iter_raw()).endswith(b"data: [DONE]\n\n")

    dropped = {"deployment": "bot", "reason": "queue_full"}
    wait_for(
        lambda: served.counted("driftd_samples_dropped_total", **dropped) >= 2,
        5,
        "both samples to be dropped",
        interval=0.02,
    )
    assert served.counted("driftd_samples_dropped_total", **dropped) == 2
    assert served.counted("driftd_samples_stored_total", deployment="bot", source="proxy") == 0


class _ClosesKeptAliveConnections(socketserver.BaseRequestHandler):
    """An upstream that answers the first request of each connection (keeping it open) and drops
    the connection, unanswered, when a second request comes on it: what an upstream whose
    keep-alive timeout fires just as a call reuses the idle connection does."""

    answered: ClassVar[list[int]] = []

    def handle(self) -> None:
        stream = self.request.makefile("rb")
        for turn in range(2):
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = stream.readline()
                if not line:
                    return
                head += line
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            stream.read(int(length.group(1)) if length else 0)
            if turn == 1:
                return  # closed without a word
            body = json.dumps(
                {
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                }
            ).encode()
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.answered.append(1)


def test_a_kept_alive_connection_the_upstream_drops_is_retried_on_a_new_one(
    proxy: ProxyFactory,
) -> None:
    _ClosesKeptAliveConnections.answered.clear()
    with serving(_ClosesKeptAliveConnections, "upstream") as server:
        served = proxy({"bot": (f"http://127.0.0.1:{server.server_port}/v1", 5)})
        answers = [served.post("bot", chat(f"call {n}")) for n in range(4)]
    # Every call after the first reuses a connection the upstream then drops: each is sent
    # again on a fresh one and answered, none reaches the app as a 502.
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert len(_ClosesKeptAliveConnections.answered) == 4
