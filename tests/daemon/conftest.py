"""Two test benches of tests/daemon.

The OpenAI-compatible proxy's (``test_proxy*.py``): llm-katan upstreams started once per module,
and the proxy in uvicorn in a thread in front of a real store (SQLite and PostgreSQL) and the
real writer thread.

The embedded client's (``test_client*.py``): a real HTTP server on 127.0.0.1 that answers the
client's batches as scripted (``Ingest``), and the clients of it (``connect``).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI

from daemon.auth import Tokens
from daemon.client import Client, ClientStats
from daemon.config import parse_config
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics
from daemon.proxy import (
    ActivePrompt,
    ModelFor,
    ProxyRecorder,
    UpstreamClient,
    proxy_router,
)
from daemon.store import Sample, Store
from tests.conftest import _fresh_postgres_database
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

# Each llm-katan started for a module that asks for them, by the name tests use, with its failure
# setting.
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
            model_for: ModelFor = lambda name: None,
            writer: Writer | None = None,
            yaml: str | None = None,
            routed: bool = False,
        ) -> Proxy:
            """``upstreams`` make prompted deployments; ``yaml``, when given, is the whole
            configuration instead (``upstreams`` then ignored). Calls take the fast path ahead
            of FastAPI, as under ``driftd serve``; ``routed``: FastAPI's documented routes."""
            config = parse_config(yaml or _config(upstreams), environ={})
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
            router = proxy_router(
                config.deployments,
                recorder,
                client=shared,
                environ={KEY_ENV: KEY} if environ is None else environ,
                prompt_for=prompt_for,
                model_for=model_for,
                tokens=TOKENS,
            )
            app.include_router(router)
            served = app if routed else router.fast_path(app)
            return Proxy(stack.enter_context(serving_app(served, "proxy")), stats, store)

        yield start


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "bank-bot", "messages": [{"role": "user", "content": text}], **extra}


# -- the embedded client's bench (test_client*.py) ----------------------------------------------

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


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An empty SQLite and an empty PostgreSQL database, by name: for a scenario that waits on
    the clock, run on both stores side by side."""
    with contextlib.contextmanager(_fresh_postgres_database)() as postgres:
        yield {"sqlite": f"sqlite:///{tmp_path / 'driftd.db'}", "postgresql": postgres}
