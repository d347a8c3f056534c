"""The proxy's routes: forward a call to the deployment's upstream and pass its answer back."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime

import aiohttp
import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from multidict import CIMultiDictProxy

from daemon.config.models import Deployment
from daemon.proxy.call import (
    CHAT,
    EMBEDDINGS,
    Call,
    EventReader,
    clip,
    new_id,
    read_answer,
    text_or_none,
    where,
)
from daemon.proxy.prompt import PromptFor
from daemon.proxy.recorder import ProxyRecorder
from daemon.proxy.stats import ProxyStats
from daemon.proxy.upstream import UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger("driftd.proxy")

OPENAI_BASE_URL = "https://api.openai.com/v1"
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


def proxy_router(
    deployments: Sequence[Deployment],
    recorder: ProxyRecorder,
    *,
    client: UpstreamClient,
    environ: Mapping[str, str],
    prompt_for: PromptFor,
) -> APIRouter:
    """The proxy's routes; finished calls go to ``recorder`` (started, over a started writer).

    ``client`` is shared by every call (its owner closes it); ``environ`` holds the upstream
    keys, named by each deployment's ``upstream.api_key_env``.
    """
    by_name = {d.name: d for d in deployments}
    stats = recorder.stats
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
        call, content = _start(deployment, endpoint, raw, request, prompt_for)
        upstream = config.upstream
        url = f"{(upstream.base_url or OPENAI_BASE_URL).rstrip('/')}/{endpoint}"
        if request.url.query:
            url = f"{url}?{request.url.query}"
        headers = _upstream_headers(request, environ.get(upstream.api_key_env), call.stream)
        seconds = upstream.timeout.total_seconds()
        try:
            answer = await client.post(
                url, content, headers, timeout=seconds, retries=upstream.max_retries
            )
        except UpstreamTimeout:
            message = (
                f"the upstream of deployment {deployment!r} did not answer within {seconds:g} s "
                "(upstream.timeout); retry, or raise the timeout in driftd.yaml"
            )
            stats.upstream_error(deployment, "timeout")
            return _failed(call, 504, message, "upstream_timeout", recorder, stats)
        except UpstreamError as exc:
            place = upstream.base_url or OPENAI_BASE_URL
            message = (
                f"the upstream of deployment {deployment!r} at {place}"
                f" cannot be reached ({type(exc).__name__}: {exc}); check upstream.base_url"
            )
            stats.upstream_error(deployment, "connect")
            return _failed(call, 502, message, "upstream_unreachable", recorder, stats)
        call.status = answer.status
        if answer.status >= 400:
            stats.upstream_error(deployment, "http_5xx" if answer.status >= 500 else "http_4xx")
        call.request_id = call.request_id or answer.headers.get("x-request-id") or new_id()
        passed = _passed_back(answer.headers)
        passed[REQUEST_ID_HEADER] = call.request_id
        streaming = call.stream and answer.status < 400 and _is_event_stream(answer.headers)
        if not streaming:
            try:
                body = await answer.read()
            except (UpstreamError, *UpstreamTimeout) as exc:
                answer.close()
                stats.upstream_error(deployment, _failure(exc))
                message = f"the upstream of deployment {deployment!r} broke off its answer: {exc}"
                return _failed(call, 502, message, "upstream_unreachable", recorder, stats)
            call.finish()
            read_answer(call, body)
            stats.served(deployment, call.status, call.latency_ms / 1000.0)
            recorder.record(call)
            return Response(body, status_code=answer.status, headers=passed)
        return StreamingResponse(
            _relay(answer, call, recorder, stats), status_code=answer.status, headers=passed
        )

    @router.post(f"/{CHAT}", summary="Chat completions, forwarded to the upstream and sampled.")
    async def chat_completions(deployment: str, request: Request) -> Response:
        return await forward(deployment, CHAT, request)

    @router.post(f"/{EMBEDDINGS}", summary="Embeddings, forwarded to the upstream and sampled.")
    async def embeddings(deployment: str, request: Request) -> Response:
        return await forward(deployment, EMBEDDINGS, request)

    return router


def _start(
    deployment: str, endpoint: str, raw: bytes, request: Request, prompt_for: PromptFor
) -> tuple[Call, bytes]:
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
    call = Call(
        deployment=deployment,
        endpoint=endpoint,
        ts=datetime.now(UTC),
        started=time.monotonic(),
        body=body,
        prompt_version=None if prompt is None else prompt.version,
        stream=body is not None and body.get("stream") is True,
        request_id=request.headers.get("x-request-id"),
        model=prompt.model if prompt is not None else text_or_none((body or {}).get("model")),
    )
    return call, content


async def _relay(
    answer: aiohttp.ClientResponse, call: Call, recorder: ProxyRecorder, stats: ProxyStats
) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes, each chunk passed on as it arrives; the deltas are collected on
    the side, and the sample recorded once the last chunk is out (or the stream broke off)."""
    events = EventReader(call)
    complete = False
    try:
        async for chunk in answer.content.iter_any():
            events.feed(chunk)
            yield chunk
        complete = True
    except (UpstreamError, *UpstreamTimeout) as exc:
        call.error = clip(f"the upstream's stream broke off: {type(exc).__name__}: {exc}")
        stats.upstream_error(call.deployment, _failure(exc))
        log.warning("an upstream stream broke off", extra=where(call))
    except BaseException:
        call.error = "the client went away before the stream ended"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            # A stream read to its end gives its connection back to the pool; one cut short
            # cannot be reused (the rest of it would be read as the next answer).
            if complete:
                answer.release()
            else:
                answer.close()
        call.finish()
        call.output = "".join(call.pieces)
        stats.served(call.deployment, call.status, call.latency_ms / 1000.0)
        recorder.record(call)


def _failure(exc: BaseException) -> str:
    """The ``driftd_proxy_upstream_errors_total`` reason of an upstream that broke off."""
    return "timeout" if isinstance(exc, UpstreamTimeout) else "connect"


def _failed(
    call: Call, status: int, message: str, kind: str, recorder: ProxyRecorder, stats: ProxyStats
) -> Response:
    """The answer when there is no upstream answer to pass on, recorded like any other call."""
    call.finish()
    call.status = status
    call.error = message
    call.request_id = call.request_id or new_id()
    stats.served(call.deployment, status, call.latency_ms / 1000.0)
    response = _openai_error(status, message, kind, None)
    response.headers[REQUEST_ID_HEADER] = call.request_id
    recorder.record(call)
    return response


def _upstream_headers(request: Request, key: str | None, stream: bool) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k in _FORWARDED_REQUEST}
    if key:
        headers["authorization"] = f"Bearer {key}"
    elif "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    # A stream is relayed byte for byte, so it must arrive as the client will read it.
    headers["accept-encoding"] = "identity" if stream else "gzip, deflate"
    return headers


def _passed_back(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    passed: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _PASSED_BACK or lower.startswith(_PASSED_BACK_PREFIXES):
            passed[lower] = value
    return passed


def _is_event_stream(headers: CIMultiDictProxy[str]) -> bool:
    return headers.get("content-type", "").startswith("text/event-stream")


def _openai_error(status: int, message: str, kind: str, code: str | None) -> JSONResponse:
    """An error in the shape OpenAI's SDKs read, so the app's client reports it as usual."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
    )
