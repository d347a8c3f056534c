"""The OpenAI-compatible proxy's test bench (``test_proxy*.py``): llm-katan upstreams started
once per module, and the proxy in uvicorn in a thread in front of a real store (SQLite and
PostgreSQL) and the real writer thread."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from daemon.auth import Tokens
from daemon.config import parse_config
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics
from daemon.proxy import (
    ActivePrompt,
    ProxyRecorder,
    UpstreamClient,
    proxy_router,
)
from daemon.store import Sample, Store
from tests.helpers.http import serving_app
from tests.helpers.serve import start_katan
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
