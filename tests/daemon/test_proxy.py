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

import contextlib
import json
import re
import socketserver
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from websockets.sync.client import connect

from daemon.auth import Tokens
from daemon.config import parse_config
from daemon.errors import QueueFull
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics, status_class
from daemon.proxy import (
    REQUEST_ID_HEADER,
    ActivePrompt,
    ProxyRecorder,
    UpstreamClient,
    proxy_router,
)
from daemon.store import Sample, Store
from daemon.store.repository import SampleRows
from tests.helpers.http import serving, serving_app
from tests.helpers.serve import free_port, start_katan
from tests.helpers.wait import wait_for

KEY = "sk-katan-right"
KEY_ENV = "DRIFTD_UPSTREAM_KEY"
PROXY_TOKEN = "proxy-token-1"
TOKENS = Tokens(ingest=(b"ingest-token-1",), proxy=(PROXY_TOKEN.encode(),), admin=(b"admin-1",))
CALLER = {"Authorization": f"Bearer {PROXY_TOKEN}"}
UPSTREAM_KEY = {"Authorization": f"Bearer {KEY}"}  # what a direct call to the upstream sends
START_TIMEOUT = 60.0

# Each llm-katan started for this module, by the name tests use, with its failure setting.
KATANS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "slow_tokens": ("--itl-ms", "60"),
    "failing": ("--error-rate", "1.0"),
    "rate_limited": ("--rate-limit-after", "1"),
    "timing_out": ("--timeout-after", "1"),
    "latency": ("--latency-ms", "1500"),
}


@dataclass(frozen=True)
class Katan:
    url: str  # the OpenAI base URL, ending in /v1
    port: int


@pytest.fixture(scope="module")
def katans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Katan]]:
    """Every llm-katan of ``KATANS``, started at once (each takes seconds to boot)."""
    folder = tmp_path_factory.mktemp("katan")
    with contextlib.ExitStack() as stack:
        started = {}
        for name, flags in KATANS.items():
            started[name] = server = start_katan(folder, KEY, *flags, name=name)
            stack.callback(server.stop, 10)
        for server in started.values():
            server.wait_ready(START_TIMEOUT, path="/health")
        yield {name: Katan(f"{k.url}/v1", k.port) for name, k in started.items()}


class SaturatedWriter(Writer):
    """A writer whose queue is always full: what a proxy sees when the store falls behind."""

    def submit(self, rows: SampleRows) -> Any:
        raise QueueFull("the write queue is full (64 batches waiting)")


@dataclass
class Proxy:
    url: str
    stats: ReplicaMetrics
    store: Store

    def counted(self, name: str, **labels: str) -> float:
        """A counter of the replica's metrics, as ``/metrics`` exports it (0 if never counted)."""
        return self.stats.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str) -> float:
        """A counter's total over every label set."""
        return sum(
            sample.value
            for family in self.stats.registry.collect()
            for sample in family.samples
            if sample.name == name
        )

    def post(
        self, deployment: str, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        return httpx.post(
            f"{self.url}/proxy/{deployment}/v1/chat/completions",
            json=body,
            headers=dict(CALLER if headers is None else headers),
            timeout=30,
        )

    def sample(self, deployment: str, request_id: str, timeout: float = 10.0) -> Sample:
        """The stored sample of a request, waiting for the writer to commit it."""

        def stored() -> Sample | None:
            now = datetime.now(UTC)
            window = self.store.read_window(
                deployment, now - timedelta(days=1), now + timedelta(days=1), max_rows=1000, seed=0
            )
            return next((s for s in window.samples if s.request_id == request_id), None)

        return wait_for(stored, timeout, f"sample {request_id!r} of {deployment!r} to be stored")


ProxyFactory = Callable[..., Proxy]


def _config(upstreams: Mapping[str, tuple[str, float]]) -> str:
    """One prompted generation deployment per (name: (upstream base URL, timeout seconds))."""
    lines = ["deployments:"]
    for name, (base_url, timeout) in upstreams.items():
        lines += [
            f"  - name: {name}",
            "    kind: prompted",
            "    task: generation",
            "    prompt: {model: gpt-4o-mini, system: You help bank customers.}",
            f"    upstream: {{base_url: '{base_url}', api_key_env: {KEY_ENV}, "
            f"timeout: {timeout:g}s, max_retries: 1}}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def proxy(store: Store) -> Iterator[ProxyFactory]:
    """Starts the proxy in front of ``store``; several per test if asked, all stopped at the end."""
    with contextlib.ExitStack() as stack:

        def start(
            upstreams: Mapping[str, tuple[str, float]],
            *,
            environ: Mapping[str, str] | None = None,
            prompt_for: Callable[[str], ActivePrompt | None] = lambda name: None,
            writer: Writer | None = None,
        ) -> Proxy:
            config = parse_config(_config(upstreams), environ={})
            for deployment in config.deployments:
                store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
            writer = writer or Writer(store, queue_batches=8)
            writer.start()
            stack.callback(writer.stop)
            stats = ReplicaMetrics()
            recorder = ProxyRecorder(config.deployments, writer, stats)
            recorder.start()
            stack.callback(recorder.stop)
            shared = UpstreamClient(max_connections=10)

            @contextlib.asynccontextmanager
            async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
                yield
                await shared.aclose()

            app = FastAPI(lifespan=lifespan)
            app.include_router(
                proxy_router(
                    config.deployments,
                    recorder,
                    client=shared,
                    environ={KEY_ENV: KEY} if environ is None else environ,
                    prompt_for=prompt_for,
                    tokens=TOKENS,
                )
            )
            return Proxy(stack.enter_context(serving_app(app, "proxy")), stats, store)

        yield start


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "bank-bot", "messages": [{"role": "user", "content": text}], **extra}


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
    from daemon.serve import _proxy_prompt

    served = proxy(
        {"bot": (katans["plain"].url, 5)}, prompt_for=lambda name: _proxy_prompt(store, name)
    )
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
