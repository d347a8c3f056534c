"""The OpenAI-compatible proxy against llm-katan (echo backend, failure injection) over HTTP.

llm-katan runs as subprocesses on 127.0.0.1 (one per failure setting, started together once per
module, ended by pid); the proxy runs in uvicorn in a thread, in front of a real store (SQLite and
PostgreSQL) and the real writer thread.

llm-katan's echo makes every answer differ per call in three places: the completion id (a
millisecond clock), ``created`` (seconds) and the ``time=`` it echoes in the text. A direct answer
and a proxied one are compared byte for byte with only those masked; in a stream the echoed time
is split over several deltas, so there the digits inside ``content`` deltas are masked instead.
"""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
from websockets.sync.client import connect

from daemon.proxy import (
    REQUEST_ID_HEADER,
    ActivePrompt,
)
from daemon.store import Store
from tests.daemon.conftest import CALLER, KEY, PROXY_TOKEN, UPSTREAM_KEY, Katan, ProxyFactory, chat
from tests.helpers.http import serving


def masked(body: bytes) -> bytes:
    """A body with llm-katan's per-call values masked: completion id, created, echoed time."""
    body = re.sub(rb"chatcmpl-\d+", b"chatcmpl-ID", body)
    body = re.sub(rb'"created": ?\d+', b'"created":0', body)
    return re.sub(rb"time=[0-9T:Z-]+", b"time=T", body)


def masked_stream(body: bytes) -> bytes:
    """``masked`` for SSE, where the echoed time is split over several ``content`` deltas."""

    def digits_out(match: re.Match[bytes]) -> bytes:
        return b'"content": "' + re.sub(rb"\d", b"0", match.group(1)) + b'"'

    return re.sub(rb'"content": "((?:[^"\\]|\\.)*)"', digits_out, masked(body))


def deltas(body: bytes) -> str:
    """The text a stream carried: its content deltas, concatenated."""
    text = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:])["choices"]:
                text.append(choice["delta"].get("content", ""))
    return "".join(text)


def test_a_completion_is_passed_through_as_a_direct_call_gets_it_and_recorded(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    katan = katans["plain"]
    served = proxy({"bot": (katan.url, 5)})
    body = chat("Where is my new card?")
    direct = httpx.post(
        f"{katan.url}/chat/completions", json=body, headers=UPSTREAM_KEY, timeout=30
    )
    proxied = served.post("bot", body, CALLER | {"X-Request-Id": "req-plain-1"})

    assert proxied.status_code == direct.status_code == 200
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    assert masked(proxied.content) == masked(direct.content)
    assert proxied.headers[REQUEST_ID_HEADER] == "req-plain-1"
    answer = proxied.json()

    sample = served.sample("bot", "req-plain-1")
    assert sample.output == answer["choices"][0]["message"]["content"]
    assert sample.input == "Where is my new card?"
    assert sample.input_messages == [{"role": "user", "content": "Where is my new card?"}]
    assert sample.tokens_in == answer["usage"]["prompt_tokens"]
    assert sample.tokens_out == answer["usage"]["completion_tokens"]
    assert sample.latency_ms is not None
    assert sample.latency_ms > 0
    assert sample.error is None
    assert sample.prompt_version is None
    assert sample.meta is not None
    assert sample.meta["status"] == 200
    assert sample.meta["stream"] is False
    assert sample.meta["source"] == "proxy"


def test_a_stream_is_relayed_as_a_direct_call_gets_it_and_recorded_when_it_ends(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    katan = katans["plain"]
    served = proxy({"bot": (katan.url, 5)})
    body = chat("Can I freeze my card?", stream=True)
    with httpx.stream(
        "POST", f"{katan.url}/chat/completions", json=body, headers=UPSTREAM_KEY, timeout=30
    ) as direct:
        direct_bytes = b"".join(direct.iter_raw())
    with httpx.stream(
        "POST",
        f"{served.url}/proxy/bot/v1/chat/completions",
        json=body,
        headers=CALLER | {"X-Request-Id": "req-stream-1"},
        timeout=30,
    ) as proxied:
        proxied_bytes = b"".join(proxied.iter_raw())
        assert proxied.status_code == 200
        assert proxied.headers["content-type"] == direct.headers["content-type"]

    assert proxied_bytes.endswith(b"data: [DONE]\n\n")
    assert masked_stream(proxied_bytes) == masked_stream(direct_bytes)
    text = deltas(proxied_bytes)
    assert re.sub(r"time=\S+", "", text) == re.sub(r"time=\S+", "", deltas(direct_bytes))

    sample = served.sample("bot", "req-stream-1")
    assert sample.output == text
    assert "User: Can I freeze my card?" in text
    usage = json.loads(proxied_bytes.split(b"data: ")[-2])["usage"]
    assert (sample.tokens_in, sample.tokens_out) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert sample.meta is not None
    assert sample.meta["stream"] is True
    assert 0 < sample.meta["ttft_ms"] <= (sample.latency_ms or 0)


def test_a_stream_reaches_the_client_chunk_by_chunk_not_at_its_end(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    # 60 ms between the upstream's chunks, ~28 chunks: buffering would hold back the first
    # bytes for the whole ~1.7 s.
    served = proxy({"bot": (katans["slow_tokens"].url, 5)})
    arrivals = []
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{served.url}/proxy/bot/v1/chat/completions",
        json=chat("hello", stream=True),
        headers=CALLER,
        timeout=30,
    ) as response:
        for chunk in response.iter_raw():
            if chunk:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) > 10
    assert arrivals[-1] - arrivals[0] > 1.0
    assert arrivals[0] < arrivals[-1] / 2


def test_the_active_prompt_is_injected_and_its_version_recorded(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    katan = katans["plain"]
    prompt = ActivePrompt(
        version="prompt-v7",
        model="katan-active-model",
        system="You answer in one sentence.",
        examples=(("Hi", "Hello, how can I help?"),),
    )
    served = proxy(
        {"bot": (katan.url, 5)}, prompt_for=lambda name: prompt if name == "bot" else None
    )
    asked = [
        {"role": "system", "content": "The app's own system message."},
        {"role": "user", "content": "How do I top up?"},
    ]
    # llm-katan's dashboard feed shows each request as it arrived upstream.
    with connect(f"ws://127.0.0.1:{katan.port}/ws/events", open_timeout=5) as feed:
        time.sleep(0.1)  # the server registers the listener after the handshake
        response = served.post(
            "bot",
            {"model": "bank-bot", "messages": asked},
            CALLER | {"X-Request-Id": "req-prompted"},
        )
        event = json.loads(feed.recv(timeout=5))

    assert event["request_body"]["model"] == "katan-active-model"
    assert event["request_body"]["messages"] == [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "How do I top up?"},
    ]
    assert event["request_headers"]["authorization"] == f"Bearer {KEY}"
    answer = response.json()
    assert answer["model"] == "katan-active-model"
    echoed = answer["choices"][0]["message"]["content"]
    assert "messages=4" in echoed
    assert echoed.endswith("User: How do I top up?")

    sample = served.sample("bot", "req-prompted")
    assert sample.prompt_version == "prompt-v7"
    assert sample.input_messages == asked
    assert sample.meta is not None
    assert sample.meta["model"] == "katan-active-model"


def test_embeddings_are_forwarded_with_their_headers_and_recorded(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    # llm-katan serves no embeddings: first its 404 passes through, then a scripted upstream
    # (a local HTTP server) shows what is forwarded and recorded.
    missing = proxy({"bot": (katans["plain"].url, 5)})
    response = httpx.post(
        f"{missing.url}/proxy/bot/v1/embeddings",
        json={"model": "e", "input": "x"},
        headers=CALLER,
    )
    assert response.status_code == 404
    assert response.content == b'{"detail":"Not Found"}'

    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Upstream(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            seen.append(
                (
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
            )
            payload = json.dumps(answer).encode()
            self.send_response(200)
            for name, value in (
                ("Content-Type", "application/json"),
                ("X-Request-Id", "upstream-req-9"),
                ("X-RateLimit-Remaining-Requests", "99"),
                ("OpenAI-Processing-Ms", "12"),
                ("Set-Cookie", "tracking=1"),
                ("Content-Length", str(len(payload))),
            ):
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Upstream, "upstream") as server:
        scripted = proxy({"embedder": (f"http://127.0.0.1:{server.server_port}/v1", 5)})
        body = {"model": "text-embedding-3-small", "input": ["first text", "second text"]}
        response = httpx.post(
            f"{scripted.url}/proxy/embedder/v1/embeddings", json=body, headers=CALLER
        )

    assert response.status_code == 200
    assert response.json() == answer
    assert response.headers["x-ratelimit-remaining-requests"] == "99"
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["x-request-id"] == "upstream-req-9"
    assert "set-cookie" not in response.headers
    path, headers, content = seen[0]
    assert path == "/v1/embeddings"
    assert headers["authorization"] == f"Bearer {KEY}"
    assert PROXY_TOKEN not in json.dumps(headers)
    assert json.loads(content) == body

    # driftd names the sample itself; the upstream's id is kept beside it.
    assert response.headers[REQUEST_ID_HEADER].startswith("driftd-")
    sample = scripted.sample("embedder", response.headers[REQUEST_ID_HEADER])
    assert sample.input == "first text\nsecond text"
    assert sample.output is None
    assert sample.tokens_in == 4
    assert sample.meta is not None
    assert sample.meta["endpoint"] == "embeddings"
    assert sample.meta["upstream_request_id"] == "upstream-req-9"


def test_an_unknown_deployment_is_refused_in_openais_error_shape(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    served = proxy({"bot": (katans["plain"].url, 5)})
    response = served.post("nobody", chat("hi"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "deployment_not_found"
    assert error["message"].startswith("unknown deployment 'nobody'; proxied: ['bot']")


def test_the_documented_routes_answer_as_the_fast_path_does(
    katans: dict[str, Katan], proxy: ProxyFactory
) -> None:
    """``driftd serve`` answers proxied calls ahead of FastAPI; the routes in the OpenAPI spec
    (which the security matrix and the fuzzer call) hand them to the same forwarder."""
    katan = katans["plain"]
    fast, routed = (proxy({"bot": (katan.url, 5)}, routed=r) for r in (False, True))
    answers: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
    for name, served in (("fast", fast), ("routed", routed)):
        got = answers.setdefault(name, [])
        for body, headers in (
            (chat("Where is my card?"), CALLER | {"X-Request-Id": f"req-{name}"}),
            (chat("hi"), {}),  # no token
            (chat("hi"), {"Authorization": "Bearer wrong"}),
        ):
            response = served.post("bot", body, headers)
            kept = {
                k: v
                for k, v in response.headers.items()
                if k not in ("date", "x-driftd-request-id")
            }
            got.append((response.status_code, kept, masked(response.content)))
        for path, content in (("bot/v1/chat/completions", b"[1]"), ("nobody/v1/embeddings", b"{}")):
            response = httpx.post(f"{served.url}/proxy/{path}", content=content, headers=CALLER)
            got.append((response.status_code, dict(response.headers), response.content))
            got[-1][1].pop("date")
        with httpx.stream(
            "POST",
            f"{served.url}/proxy/bot/v1/chat/completions",
            json=chat("Can I freeze my card?", stream=True),
            headers=CALLER,
            timeout=30,
        ) as stream:
            streamed = masked_stream(b"".join(stream.iter_raw()))
            kept = {k: v for k, v in stream.headers.items() if k not in ("date", REQUEST_ID_HEADER)}
            got.append((stream.status_code, kept, streamed))

    assert [a[0] for a in answers["fast"]] == [200, 401, 401, 400, 404, 200]
    assert answers["fast"] == answers["routed"]
    outputs = [
        s.sample("bot", f"req-{n}").output or "" for n, s in (("fast", fast), ("routed", routed))
    ]
    assert len({re.sub(r"time=\S+", "", o) for o in outputs}) == 1


def test_active_prompt_replaces_system_and_developer_messages_only() -> None:
    prompt = ActivePrompt(version="v1", model="m", system="S")
    body = {
        "model": "alias",
        "temperature": 0,
        "messages": [
            {"role": "developer", "content": "D"},
            {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"},
        ],
    }
    assert prompt.apply(body) == {
        "model": "m",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"},
        ],
    }
    assert body["model"] == "alias"


def test_a_promoted_prompt_version_is_served_on_the_next_request(
    katans: dict[str, Katan], proxy: ProxyFactory, store: Store
) -> None:
    from daemon.config.models import Hooks
    from daemon.prompts import Example, PromptSpec, add_prompt_version
    from daemon.retune.promotion import promote
    from daemon.serve import proxy_prompt_for

    served = proxy({"bot": (katans["plain"].url, 5)}, prompt_for=proxy_prompt_for(store))
    first = add_prompt_version(store, "bot", PromptSpec("Be brief.", (), "katan-1"))
    promote(store, Hooks(), "bot", first.name, actor="test")
    revised = PromptSpec("Be brief. Name the intent.", (Example("Hi", "greeting"),), "katan-2")
    second = add_prompt_version(store, "bot", revised, parent=first.name)
    asked = {"model": "bank-bot", "messages": [{"role": "user", "content": "Lost my card"}]}
    before = served.post("bot", asked, CALLER | {"X-Request-Id": "before"}).json()
    promote(store, Hooks(), "bot", second.name, actor="test")  # a passed revision
    after = served.post("bot", asked, CALLER | {"X-Request-Id": "after"}).json()
    assert (before["model"], after["model"]) == ("katan-1", "katan-2")
    assert "messages=2" in before["choices"][0]["message"]["content"]
    assert "messages=4" in after["choices"][0]["message"]["content"]  # system + shot + user
    versions = {served.sample("bot", rid).prompt_version for rid in ("before", "after")}
    assert versions == {first.name, second.name}
