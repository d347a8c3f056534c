"""The daemon as ``driftd serve`` builds it, started in this process, for the API's security
tests and its fuzzing: its application behind a ``TestClient``, its tokens, its store, and the
upstreams its proxy forwards to.

Two upstreams stand behind the proxy: the shared fake OpenAI server (``tests/fake_openai.py``,
which accepts only its own key, so a call that reaches it proves driftd sent the configured
one), and ``RecordingUpstream`` here, which answers every call and keeps the headers it
received, so a test can show what driftd forwards and what it never does.

The ingest API's tests (``test_ingest*.py``) build the app alone instead, on a real store and
the real writer thread: ``Api`` and its ``api`` fixture, at the end of this module.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from sqlalchemy import select

from daemon.api import Tokens, create_app
from daemon.auth import Scope
from daemon.config import Config, parse_config
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.prepare import PreparerPool
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics
from daemon.serve import Daemon
from daemon.store import Store
from daemon.store.models import Deployment as DeploymentRow
from daemon.store.models import Sample
from tests.helpers.http import serving
from tests.helpers.wait import wait_for

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

UPSTREAM_REQUEST_ID = "upstream-req-same"
"""What the recording upstream answers as ``x-request-id``: the same for every call."""


@dataclass(frozen=True)
class Secrets:
    """driftd's tokens (one per scope) and the upstream keys of a test, as callers send them."""

    ingest: str = "ingest-token-5d1c"
    proxy: str = "proxy-token-8e2a"
    admin: str = "admin-token-3f9b"
    upstream_key: str = "sk-recorded-upstream-7c44"
    """The key driftd holds for the recording upstream (``upstream.auth: key``)."""
    callers_key: str = "sk-the-callers-own-0b61"
    """A caller's own upstream key, as it sends it to a ``passthrough`` deployment."""

    def tokens(self) -> Tokens:
        return Tokens(
            ingest=(self.ingest.encode(),),
            admin=(self.admin.encode(),),
            proxy=(self.proxy.encode(),),
        )

    def driftd_tokens(self) -> tuple[str, ...]:
        return (self.ingest, self.proxy, self.admin)


SECRETS = Secrets()


def guard(tokens: Tokens) -> Callable[[Request, Scope], None]:
    """An ``authorize`` for a router tested on its own, with the contract of ``create_app``'s:
    401 and ``WWW-Authenticate: Bearer`` unless the request's bearer token is one of ``tokens``
    for the scope (or an admin token)."""

    def authorize(request: Request, scope: Scope) -> None:
        if not tokens.allows(request.headers.get("authorization"), scope):
            raise HTTPException(
                401,
                f"a valid bearer token is needed ({scope.value} or admin)",
                {"WWW-Authenticate": "Bearer"},
            )

    return authorize


@pytest.fixture
def driftd_secrets() -> Secrets:
    """The tokens and keys every daemon of these tests is started with."""
    return SECRETS


@dataclass(frozen=True)
class Seen:
    """One request the recording upstream received: path, headers (lower-case names), body."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingUpstream:
    """An OpenAI-compatible upstream that answers every chat completion and embedding with 200
    and the same ``x-request-id`` (``request_id``), and keeps what it received."""

    base_url: str = ""
    request_id: str = UPSTREAM_REQUEST_ID
    _seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def keep(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def answer(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            asked = json.loads(body)
        except ValueError:
            asked = None
        model = asked.get("model") if isinstance(asked, dict) else None
        model = model if isinstance(model, str) else "recorded-model"
        if path.endswith("/chat/completions"):
            return 200, {
                "id": "chatcmpl-recorded",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Recorded."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        if path.endswith("/embeddings"):
            return 200, {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
                "model": model,
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        error = {"message": f"no route {path}", "type": "invalid_request_error"}
        return 404, {"error": {**error, "param": None, "code": None}}


@contextmanager
def serve_recording_upstream() -> Iterator[RecordingUpstream]:
    """A running ``RecordingUpstream`` on 127.0.0.1 and a free port, stopped on exit."""
    upstream = RecordingUpstream()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            upstream.keep(Seen(self.path, headers, body))
            status, answer = upstream.answer(self.path, body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Request-Id", upstream.request_id)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler, "recording-upstream") as server:
        upstream.base_url = f"http://127.0.0.1:{server.server_port}/v1"
        yield upstream


@pytest.fixture
def recording_upstream() -> Iterator[RecordingUpstream]:
    with serve_recording_upstream() as upstream:
        yield upstream


@dataclass
class Driftd:
    """A started daemon: its served app behind ``client`` (no token sent by default), its
    config and store, the secrets its callers hold, and its upstreams."""

    daemon: Daemon
    app: FastAPI
    client: TestClient
    config: Config
    secrets: Secrets
    upstream: RecordingUpstream | None = None
    fake: FakeOpenAI | None = None

    @property
    def store(self) -> Store:
        return self.daemon.store

    def samples(self, deployment: str) -> dict[str, dict[str, Any] | None]:
        """The stored samples of ``deployment``: request_id → metadata."""
        with self.store.session(readonly=True) as session:
            rows = session.execute(
                select(Sample.request_id, Sample.meta)
                .join(DeploymentRow, DeploymentRow.id == Sample.deployment_id)
                .where(DeploymentRow.name == deployment)
            )
            return {row.request_id: row.meta for row in rows}

    def wait_for_samples(
        self, deployment: str, count: int, timeout: float = 10.0
    ) -> dict[str, dict[str, Any] | None]:
        """The samples of ``deployment`` once there are ``count`` (the proxy records a call
        after answering it, through the recorder and the writer)."""

        def stored() -> list[dict[str, dict[str, Any] | None]]:
            samples = self.samples(deployment)
            return [samples] if len(samples) >= count else []

        (samples,) = wait_for(stored, timeout, f"{count} samples of {deployment!r} to be stored")
        return samples


Launch = Callable[..., Driftd]
"""``launch(deployments, environ=..., server=..., upstream=..., fake=...)``: see ``launch``."""


@pytest.fixture
def launch(db_url: str, tmp_path: Path) -> Iterator[Launch]:
    """Starts a daemon on ``db_url`` with the given deployments (a YAML list, indented as under
    ``deployments:``), as ``driftd serve`` does, without binding a port; stopped at the end.

    ``environ`` is the daemon's environment (the upstream keys), ``server`` its server section;
    ``upstream`` and ``fake`` are only handed on to the test in the ``Driftd``."""

    def start(
        deployments: str,
        *,
        environ: Mapping[str, str] | None = None,
        server: str = "{}",
        upstream: RecordingUpstream | None = None,
        fake: FakeOpenAI | None = None,
    ) -> Driftd:
        config = parse_config(
            f"storage: {{url: '{db_url}'}}\n"
            f"server: {server}\n"
            f"scheduling: {{jobs_dir: '{tmp_path / 'jobs'}'}}\n"
            "ingest: {workers: 0}\n"
            f"deployments:\n{deployments}",
            environ={},
        )
        daemon = Daemon(config, SECRETS.tokens(), environ=dict(environ or {}))
        daemon.start()
        started.append(daemon)
        app = daemon.app
        assert app is not None
        # One client, entered once, for the daemon's life: the proxy's connection pool belongs
        # to the event loop it was opened in, and a client outside a `with` opens one per call.
        client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
        return Driftd(daemon, app, client, config, SECRETS, upstream, fake)

    started: list[Daemon] = []
    try:
        with ExitStack() as stack:
            yield start
    finally:
        for daemon in reversed(started):
            daemon.stop()


def security_deployments(fake: FakeOpenAI, upstream: RecordingUpstream) -> str:
    """A fine-tuned transformers classifier (no upstream, so not proxied), a prompted generation
    deployment in front of the fake OpenAI server (``upstream.auth: key``), and one whose
    callers send their own upstream key (``passthrough``) to the recording upstream."""
    return (
        "  - {name: intents, kind: finetuned, task: classification, labels: [card, pin],\n"
        "     model: {provider: transformers, name: ./models/intents}}\n"
        "  - {name: support-bot, kind: prompted, task: generation,\n"
        "     prompt: {model: gpt-4o-mini, system: You help bank customers.},\n"
        f"     upstream: {{base_url: '{fake.base_url}', api_key_env: DRIFTD_SUPPORT_KEY,\n"
        "                max_retries: 0, timeout: 10s}}\n"
        "  - {name: byok, kind: prompted, task: generation,\n"
        "     prompt: {model: gpt-4o-mini, system: You help bank customers.},\n"
        f"     upstream: {{base_url: '{upstream.base_url}', auth: passthrough,\n"
        "                max_retries: 0, timeout: 10s}}\n"
    )


SecurityLaunch = Callable[..., Driftd]
"""``launch_security(server="{metrics_auth: true}")``: a daemon of ``security_deployments``."""


@pytest.fixture
def launch_security(
    launch: Launch, fake_openai: FakeOpenAI, recording_upstream: RecordingUpstream
) -> SecurityLaunch:
    """Starts a daemon of ``security_deployments``; ``server`` is its server section."""

    def start(server: str = "{}") -> Driftd:
        return launch(
            security_deployments(fake_openai, recording_upstream),
            environ={"DRIFTD_SUPPORT_KEY": fake_openai.api_key},
            server=server,
            upstream=recording_upstream,
            fake=fake_openai,
        )

    return start


@pytest.fixture
def driftd(launch_security: SecurityLaunch) -> Driftd:
    """The daemon the security matrix and the fuzzer run against (``security_deployments``)."""
    return launch_security()


# -- how callers present themselves and what they send (test_security*.py) --------------------

PLAUSIBLE_BODIES: dict[str, Any] = {
    "/samples": {"samples": [{"request_id": "matrix-1", "input": "Where is my card?"}]},
    "/feedback": {"feedback": [{"request_id": "matrix-1", "thumb": "up"}]},
    "/chat/completions": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Where is my card?"}],
    },
    "/embeddings": {"model": "text-embedding-3-small", "input": "Where is my card?"},
}
REFUSED = (401, 403)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def driftd_header(token: str) -> dict[str, str]:
    return {"X-Driftd-Token": token}


# -- the ingest API on its own (test_ingest*.py) -------------------------------------------------

CONFIG = """\
ingest: {max_batch: 100, max_body_bytes: 65536}
deployments:
  - name: intents
    kind: finetuned
    task: classification
    model: {name: ./model}
    labels: [card_arrival, lost_card, exchange_rate]
  - name: bot
    kind: prompted
    task: generation
    prompt: {model: gpt-4o-mini, system: You help bank customers.}
    sampling: {rate: 0.5}
    descriptors:
      patterns: [{name: order_ref, pattern: 'ORD-\\d+'}]
"""
INGEST = {"Authorization": "Bearer ingest-1"}
ADMIN = {"Authorization": "Bearer admin-1"}
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Api:
    def __init__(
        self, store: Store, writer: Writer, stats: ReplicaMetrics, workers: int = 0
    ) -> None:
        config = parse_config(CONFIG, environ={})
        for deployment in config.deployments:
            store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
        self.store = store
        self.stats = stats
        self.pipelines = {d.name: DeploymentPipeline(d) for d in config.deployments}
        preparer = PreparerPool(
            workers,
            config.deployments,
            store.deployment_ids(),
            store.engine.dialect.name,
            config.ingest.max_batch,
        )
        self.preparer = preparer
        self.app = create_app(
            store=store,
            writer=writer,
            preparer=preparer,
            pipelines=self.pipelines,
            tokens=Tokens(ingest=(b"ingest-1", b"ingest-2"), admin=(b"admin-1",)),
            limits=config.ingest,
            stats=stats,
        )
        self.client = TestClient(self.app)

    def counted(self, name: str, **labels: str) -> float:
        """A counter of the replica's metrics, as ``/metrics`` exports it (0 if never counted)."""
        return self.stats.registry.get_sample_value(name, labels) or 0.0

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.client.post(path, json=body, headers=INGEST if headers is None else headers)

    def stored(self, deployment: str) -> dict[str, Sample]:
        window = self.store.read_window(
            deployment,
            T0 - timedelta(days=3650),
            T0 + timedelta(days=3650),
            max_rows=100_000,
            seed=0,
        )
        return {s.request_id: s for s in window.samples}


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    stats = ReplicaMetrics()
    writer = Writer(store, queue_batches=8, commit_rows=1000)
    writer.start()
    try:
        yield Api(store, writer, stats)
    finally:
        writer.stop()


def intent(request_id: str, **extra: Any) -> dict[str, Any]:
    sample = {
        "request_id": request_id,
        "ts": T0.isoformat(),
        "input": "Where is my new card?",
        "prediction": "card_arrival",
        "confidence": 0.9,
    }
    return sample | extra
