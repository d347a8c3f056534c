"""The OpenAI-compatible proxy: apps point their OpenAI SDK's base URL at driftd.

``POST /proxy/{deployment}/v1/chat/completions`` (plain and ``stream: true``) and
``POST /proxy/{deployment}/v1/embeddings`` are forwarded to the deployment's upstream, and what
comes back is passed through as it came: status, body (error bodies too) and the headers a client
acts on. Streams are relayed chunk by chunk as they arrive, never buffered.

Monitoring never costs the user anything: the sample of a call is built after its response is
complete and handed to the ingest pipeline and the writer without waiting for storage. When the
writer's queue is full the sample is dropped and counted (the one place in driftd that may drop a
sample, see DESIGN.md); nothing the recording does can fail or slow the request.

For a prompted deployment, ``prompt_for`` names the active prompt version, which the proxy injects
(system message, few-shot turns, model), so a promoted prompt goes live without touching the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from daemon.config.models import Deployment
from daemon.domain import Task
from daemon.errors import StoreError
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import MAX_TEXT, Message, SampleIn
from daemon.ingest.writer import QueueFull, Writer
from daemon.store import InsertResult
from daemon.store.repository import RowEncoder

log = logging.getLogger("driftd.proxy")

OPENAI_BASE_URL = "https://api.openai.com/v1"
CHAT = "chat/completions"
EMBEDDINGS = "embeddings"
REQUEST_ID_HEADER = "x-driftd-request-id"

# What a client sends that the upstream needs; everything else (cookies, the proxy's own
# hop-by-hop headers) stays here. Authorization is decided separately.
_FORWARDED_REQUEST = frozenset(
    {
        "content-type",
        "accept",
        "user-agent",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "x-request-id",
        "idempotency-key",
    }
)
# What the upstream answers that a client acts on: the body's type, rate limits, retry advice,
# the ids support asks for. Length and transfer encoding are the proxy's own business.
_PASSED_BACK = frozenset({"content-type", "cache-control", "x-request-id", "retry-after"})
_PASSED_BACK_PREFIXES = ("openai-", "x-ratelimit-", "retry-after-")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_SYSTEM_ROLES = frozenset({"system", "developer"})
_MAX_MESSAGES = 1000
_ERROR_TEXT = 2000


@dataclass(frozen=True, slots=True)
class ActivePrompt:
    """The prompt version a prompted deployment serves: what the proxy injects into each call."""

    version: str
    model: str
    system: str
    examples: tuple[tuple[str, str], ...] = ()  # (user input, assistant answer), in order

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with this prompt: the caller's system (or developer) messages replaced by
        ours, the few-shot turns before the conversation, and the model alias mapped to ours."""
        messages = body.get("messages")
        conversation = [
            m
            for m in (messages if isinstance(messages, list) else [])
            if not (isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES)
        ]
        shots: list[dict[str, Any]] = []
        for question, answer in self.examples:
            shots.append({"role": "user", "content": question})
            shots.append({"role": "assistant", "content": answer})
        injected = [{"role": "system", "content": self.system}, *shots, *conversation]
        return {**body, "model": self.model, "messages": injected}


PromptFor = Callable[[str], ActivePrompt | None]
"""The active prompt of a deployment, or None to forward its calls unchanged."""


class ProxyStats:
    """Counters of what the proxy did, per deployment, for the metrics endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (deployment, status)
        self.dropped: Counter[tuple[str, str]] = Counter()  # (deployment, reason)
        self.recorded: Counter[str] = Counter()  # samples the writer committed
        self.sampled_out: Counter[str] = Counter()
        self.redacted: Counter[tuple[str, str]] = Counter()  # (deployment, kind)
        self.duration_seconds: dict[str, float] = {}  # total, for a rate of mean latency

    def served(self, deployment: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[deployment, status] += 1
            total = self.duration_seconds.get(deployment, 0.0)
            self.duration_seconds[deployment] = total + seconds

    def drop(self, deployment: str, reason: str) -> None:
        with self._lock:
            self.dropped[deployment, reason] += 1

    def stored(self, deployment: str, n: int) -> None:
        with self._lock:
            self.recorded[deployment] += n

    def prepared(self, deployment: str, sampled_out: int, redacted: Counter[str]) -> None:
        with self._lock:
            self.sampled_out[deployment] += sampled_out
            for kind, n in redacted.items():
                self.redacted[deployment, kind] += n


def upstream_client(
    *,
    max_connections: int = 100,
    max_keepalive_connections: int = 20,
    keepalive_expiry: float = 30.0,
) -> httpx.AsyncClient:
    """The one client every proxied call shares, so connections to an upstream are pooled.

    Timeouts are set per call from each deployment's ``upstream.timeout``. ``trust_env`` is off:
    like the rest of driftd, the client reads nothing from the environment on its own.
    """
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
        ),
        timeout=httpx.Timeout(60.0),
        follow_redirects=False,
        trust_env=False,
    )


@dataclass(slots=True)
class _Call:
    """One proxied call, filled in as it goes; becomes the sample once it is complete."""

    deployment: str
    endpoint: str
    ts: datetime
    started: float
    body: dict[str, Any] | None
    prompt_version: str | None
    stream: bool
    request_id: str | None
    status: int = 0
    output: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    model: str | None = None
    pieces: list[str] = field(default_factory=list)

    def finish(self) -> None:
        self.latency_ms = (time.monotonic() - self.started) * 1000.0

    def read_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.tokens_in = prompt if isinstance(prompt, int) else self.tokens_in
            self.tokens_out = completion if isinstance(completion, int) else self.tokens_out


class _Recorder:
    """Turns finished calls into samples and hands them to the writer, never waiting for it."""

    def __init__(self, deployments: Sequence[Deployment], writer: Writer, stats: ProxyStats):
        self.pipelines = {d.name: DeploymentPipeline(d) for d in deployments}
        self.writer = writer
        self.stats = stats
        store = writer.store
        self.encoder = RowEncoder(store.engine.dialect.name)
        ids = store.deployment_ids()
        missing = sorted(set(self.pipelines) - set(ids))
        if missing:
            raise StoreError(
                f"deployments {missing} are configured but not registered in the store; "
                "start the proxy after the daemon has registered them"
            )
        self.ids = {name: ids[name] for name in self.pipelines}

    def record(self, call: _Call) -> None:
        """Never raises: whatever goes wrong costs the sample (counted), not the request."""
        try:
            self._record(call)
        except QueueFull:
            self.stats.drop(call.deployment, "queue_full")
        except Exception:
            log.exception("a proxied call could not be recorded", extra=_where(call))
            self.stats.drop(call.deployment, "error")

    def _record(self, call: _Call) -> None:
        pipeline = self.pipelines[call.deployment]
        try:
            sample = _sample_of(call, pipeline)
        except (ValidationError, ValueError) as exc:
            log.warning("a proxied call makes no valid sample: %s", exc, extra=_where(call))
            self.stats.drop(call.deployment, "invalid")
            return
        if sample is None:
            self.stats.drop(call.deployment, "unreadable")
            return
        problems = pipeline.check([sample])
        if problems:
            log.warning("a proxied call makes no valid sample: %s", problems[0].message)
            self.stats.drop(call.deployment, "invalid")
            return
        now = datetime.now(UTC)
        prepared = pipeline.prepare([sample], now)
        self.stats.prepared(call.deployment, len(prepared.sampled_out), prepared.redacted)
        if not prepared.samples:
            return
        rows = self.encoder.encode(call.deployment, self.ids[call.deployment], prepared.samples)
        done = self.writer.submit(rows)
        done.add_done_callback(lambda future: self._stored(call.deployment, future))

    def _stored(self, deployment: str, done: Future[InsertResult]) -> None:
        error = done.exception()
        if error is not None:
            self.stats.drop(deployment, "store_error")
        else:
            self.stats.stored(deployment, len(done.result().new))


def proxy_router(
    deployments: Sequence[Deployment],
    writer: Writer,
    stats: ProxyStats,
    *,
    client: httpx.AsyncClient,
    environ: Mapping[str, str],
    prompt_for: PromptFor,
) -> APIRouter:
    """The proxy's routes over a started writer (whose store has the deployments registered).

    ``client`` is shared by every call (see ``upstream_client``; its owner closes it);
    ``environ`` holds the upstream keys, named by each deployment's ``upstream.api_key_env``.
    """
    by_name = {d.name: d for d in deployments}
    recorder = _Recorder(deployments, writer, stats)
    router = APIRouter(prefix="/proxy/{deployment}/v1", tags=["proxy"])

    async def forward(deployment: str, endpoint: str, request: Request) -> Response:
        config = by_name.get(deployment)
        if config is None:
            return _openai_error(
                404,
                f"unknown deployment {deployment!r}; configured: {sorted(by_name)}",
                "invalid_request_error",
                "deployment_not_found",
            )
        raw = await request.body()
        call, content = _start(deployment, endpoint, raw, config, request, prompt_for)
        upstream = config.upstream
        url = f"{(upstream.base_url or OPENAI_BASE_URL).rstrip('/')}/{endpoint}"
        if request.url.query:
            url = f"{url}?{request.url.query}"
        outgoing = client.build_request(
            "POST",
            url,
            content=content,
            headers=_upstream_headers(request, environ.get(upstream.api_key_env), call.stream),
            timeout=upstream.timeout.total_seconds(),
        )
        try:
            answer = await _send(client, outgoing, upstream.max_retries)
        except httpx.TimeoutException:
            seconds = upstream.timeout.total_seconds()
            message = (
                f"the upstream of deployment {deployment!r} did not answer within {seconds:g} s "
                "(upstream.timeout); retry, or raise the timeout in driftd.yaml"
            )
            return _failed(call, 504, message, "upstream_timeout", recorder, stats)
        except httpx.TransportError as exc:
            where = upstream.base_url or OPENAI_BASE_URL
            message = (
                f"the upstream of deployment {deployment!r} at {where}"
                f" cannot be reached ({type(exc).__name__}: {exc}); check upstream.base_url"
            )
            return _failed(call, 502, message, "upstream_unreachable", recorder, stats)
        call.status = answer.status_code
        call.request_id = call.request_id or answer.headers.get("x-request-id") or _new_id()
        headers = _passed_back(answer.headers)
        headers[REQUEST_ID_HEADER] = call.request_id
        streaming = call.stream and answer.is_success and _is_event_stream(answer.headers)
        if not streaming:
            try:
                body = await answer.aread()
            except httpx.HTTPError as exc:
                await answer.aclose()
                message = f"the upstream of deployment {deployment!r} broke off its answer: {exc}"
                return _failed(call, 502, message, "upstream_unreachable", recorder, stats)
            call.finish()
            _read_answer(call, body)
            stats.served(deployment, call.status, call.latency_ms / 1000.0)
            return Response(
                body,
                status_code=answer.status_code,
                headers=headers,
                background=BackgroundTask(recorder.record, call),
            )
        return StreamingResponse(
            _relay(answer, call, recorder, stats),
            status_code=answer.status_code,
            headers=headers,
        )

    @router.post(f"/{CHAT}", summary="Chat completions, forwarded to the upstream and sampled.")
    async def chat_completions(deployment: str, request: Request) -> Response:
        return await forward(deployment, CHAT, request)

    @router.post(f"/{EMBEDDINGS}", summary="Embeddings, forwarded to the upstream and sampled.")
    async def embeddings(deployment: str, request: Request) -> Response:
        return await forward(deployment, EMBEDDINGS, request)

    return router


def _start(
    deployment: str,
    endpoint: str,
    raw: bytes,
    config: Deployment,
    request: Request,
    prompt_for: PromptFor,
) -> tuple[_Call, bytes]:
    """The call's record, and the body to send: the caller's bytes as they are, unless a prompt
    is injected (then the re-encoded JSON)."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    body = parsed if isinstance(parsed, dict) else None
    prompt = prompt_for(deployment) if endpoint == CHAT and body is not None else None
    content = raw
    if prompt is not None and body is not None:
        content = json.dumps(prompt.apply(body)).encode()
    call = _Call(
        deployment=deployment,
        endpoint=endpoint,
        ts=datetime.now(UTC),
        started=time.monotonic(),
        body=body,
        prompt_version=None if prompt is None else prompt.version,
        stream=body is not None and body.get("stream") is True,
        request_id=request.headers.get("x-request-id"),
        model=prompt.model if prompt is not None else _text_or_none((body or {}).get("model")),
    )
    return call, content


async def _send(client: httpx.AsyncClient, request: httpx.Request, retries: int) -> httpx.Response:
    """Send, retrying only failures to connect: the upstream never saw those requests, so a
    retry cannot run a completion twice. Every other failure is the caller's to retry."""
    for attempt in range(retries + 1):
        try:
            return await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if attempt == retries:
                raise
            await asyncio.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


async def _relay(
    answer: httpx.Response, call: _Call, recorder: _Recorder, stats: ProxyStats
) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes, each chunk passed on as it arrives; the deltas are collected on
    the side, and the sample recorded once the last chunk is out (or the stream broke off)."""
    events = _EventReader(call)
    try:
        async for chunk in answer.aiter_raw():
            events.feed(chunk)
            yield chunk
    except httpx.HTTPError as exc:
        call.error = _clip(f"the upstream's stream broke off: {type(exc).__name__}: {exc}")
        log.warning("an upstream stream broke off", extra=_where(call))
    except BaseException:
        call.error = "the client went away before the stream ended"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await answer.aclose()
        call.finish()
        call.output = "".join(call.pieces)
        stats.served(call.deployment, call.status, call.latency_ms / 1000.0)
        # On the next turn of the loop: the end of the stream goes out first.
        asyncio.get_running_loop().call_soon(recorder.record, call)


class _EventReader:
    """Reads chat-completion chunks out of an SSE byte stream, whatever its chunk boundaries."""

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        call = self.call
        if "error" in event:
            call.error = _clip(f"the upstream's stream reported an error: {_message(event)}")
        call.read_usage(event.get("usage"))
        call.model = _text_or_none(event.get("model")) or call.model
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str) and content:
                    if call.ttft_ms is None:
                        call.ttft_ms = (time.monotonic() - call.started) * 1000.0
                    call.pieces.append(content)


def _read_answer(call: _Call, body: bytes) -> None:
    """What a complete (non-streamed) answer tells the sample: output and usage, or the error."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if call.status >= 400:
        detail = _message(answer) if answer is not None else body.decode("utf-8", "replace")
        call.error = _clip(f"the upstream answered HTTP {call.status}: {detail}")
        return
    if not isinstance(answer, dict):
        return
    call.read_usage(answer.get("usage"))
    call.model = _text_or_none(answer.get("model")) or call.model
    if call.endpoint == CHAT:
        for choice in answer.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                message = choice.get("message") or {}
                call.output = _content_text(message.get("content"))


def _failed(
    call: _Call, status: int, message: str, kind: str, recorder: _Recorder, stats: ProxyStats
) -> Response:
    """The answer when there is no upstream answer to pass on, recorded like any other call."""
    call.finish()
    call.status = status
    call.error = message
    call.request_id = call.request_id or _new_id()
    stats.served(call.deployment, status, call.latency_ms / 1000.0)
    response = _openai_error(status, message, kind, None)
    response.headers[REQUEST_ID_HEADER] = call.request_id
    response.background = BackgroundTask(recorder.record, call)
    return response


def _sample_of(call: _Call, pipeline: DeploymentPipeline) -> SampleIn | None:
    """The sample of a finished call; None when the request was no JSON object at all.

    The input is what the caller sent, before a prompt was injected: drift is about what users
    ask, and the injected prompt is known by its version."""
    body = call.body
    if body is None:
        return None
    text_input: str | list[Message]
    if call.endpoint == CHAT:
        messages = [
            Message(role=m["role"], content=_clip(_content_text(m.get("content")) or "", MAX_TEXT))
            for m in body.get("messages") or ()
            if isinstance(m, dict) and m.get("role") in _ROLES
        ][-_MAX_MESSAGES:]
        text_input = messages or ""
    else:
        text_input = _clip(_embedding_input(body.get("input")), MAX_TEXT)
    output = None if call.output is None else _clip(call.output, MAX_TEXT)
    prediction = None
    if pipeline.task is Task.classification and output is not None:
        prediction = output.strip() if output.strip() in pipeline.labels else None
    metadata: dict[str, str | int | float | bool] = {
        "source": "proxy",
        "endpoint": call.endpoint,
        "status": call.status,
        "stream": call.stream,
    }
    if call.model is not None:
        metadata["model"] = call.model[:256]
    if call.ttft_ms is not None:
        metadata["ttft_ms"] = round(call.ttft_ms, 3)
    return SampleIn(
        request_id=(call.request_id or _new_id())[:255],
        ts=call.ts,
        input=text_input,
        output=output,
        prediction=prediction,
        latency_ms=round(call.latency_ms, 3),
        tokens_in=call.tokens_in,
        tokens_out=call.tokens_out,
        prompt_version=call.prompt_version,
        error=call.error,
        metadata=metadata,
    )


def _upstream_headers(request: Request, key: str | None, stream: bool) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k in _FORWARDED_REQUEST}
    if key:
        headers["authorization"] = f"Bearer {key}"
    elif "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    # A stream is relayed byte for byte, so it must arrive as the client will read it.
    headers["accept-encoding"] = "identity" if stream else "gzip, deflate"
    return headers


def _passed_back(headers: httpx.Headers) -> dict[str, str]:
    return {
        name: value
        for name, value in headers.items()
        if name in _PASSED_BACK or name.startswith(_PASSED_BACK_PREFIXES)
    }


def _is_event_stream(headers: httpx.Headers) -> bool:
    return str(headers.get("content-type", "")).startswith("text/event-stream")


def _openai_error(status: int, message: str, kind: str, code: str | None) -> JSONResponse:
    """An error in the shape OpenAI's SDKs read, so the app's client reports it as usual."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
    )


def _message(answer: Any) -> str:
    """The human part of an error body: OpenAI's ``error.message``, else the JSON itself."""
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return json.dumps(answer)


def _content_text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return None


def _embedding_input(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise ValueError("embedding input given as tokens, not text; it is not sampled")


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _clip(text: str, limit: int = _ERROR_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _new_id() -> str:
    return f"driftd-{uuid.uuid4().hex}"


def _where(call: _Call) -> dict[str, Any]:
    return {"deployment": call.deployment, "endpoint": call.endpoint, "request_id": call.request_id}
