"""The proxy's routes: forward a call to the deployment's upstream and pass its answer back."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from multidict import CIMultiDictProxy
from pydantic import BaseModel

from daemon.auth import TOKEN_HEADER, Scope, Tokens, bearer
from daemon.config.models import Deployment, UpstreamAuth
from daemon.config.models import Proxy as ProxyLimits
from daemon.metrics import PROXY_REFUSALS, ReplicaMetrics
from daemon.proxy.call import (
    CHAT,
    EMBEDDINGS,
    Call,
    EventReader,
    clip,
    new_id,
    read_answer,
    text_or_none,
    valid_request_id,
    where,
)
from daemon.proxy.prompt import ModelFor, PromptFor
from daemon.proxy.recorder import ProxyRecorder
from daemon.proxy.upstream import UpstreamClient, UpstreamError, UpstreamTimeout
from daemon.request_body import read_capped

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


@dataclass(frozen=True, slots=True)
class _Caller:
    """Who is calling, once the proxy let the call through: whether it proved itself with a
    driftd token (only then may it choose the sample's request id), and the ``Authorization``
    header to send upstream."""

    authenticated: bool
    upstream_authorization: str | None


class _Refusal(Exception):
    """A call the proxy answers itself, before anything is forwarded or recorded."""

    def __init__(self, response: Response) -> None:
        self.response = response


def proxy_router(
    deployments: Sequence[Deployment],
    recorder: ProxyRecorder,
    *,
    client: UpstreamClient,
    environ: Mapping[str, str],
    prompt_for: PromptFor,
    tokens: Tokens,
    limits: ProxyLimits | None = None,
    model_for: ModelFor = lambda name: None,
) -> APIRouter:
    """The proxy's routes for the ``deployments`` that have an upstream (``Deployment.proxied``);
    finished calls go to ``recorder`` (started, over a started writer).

    ``client`` is shared by every call (its owner closes it); ``environ`` holds the upstream
    keys, named by each deployment's ``upstream.api_key_env``; ``tokens`` are driftd's own,
    which callers present (``upstream.auth``) and which never travel upstream; ``limits`` bound
    the request bodies. ``prompt_for`` and ``model_for`` name the active prompt or model a chat
    call is given (each None: the call goes as it came); both must answer at once, never fail.
    """
    limits = limits or ProxyLimits()
    by_name = {d.name: d for d in deployments if d.proxied}
    stats = recorder.stats
    router = APIRouter(prefix="/proxy/{deployment}/v1", tags=["proxy"])

    def admit(config: Deployment | None, request: Request) -> _Caller:
        """The caller, if the deployment's ``upstream.auth`` lets it call; else ``_Refusal``."""
        headers = request.headers
        token = headers.get(TOKEN_HEADER)
        authorization = headers.get("authorization")
        mode = UpstreamAuth.key if config is None else config.upstream.auth
        if mode is UpstreamAuth.key:
            presented = token if token is not None else bearer(authorization)
            if not tokens.grants(presented, Scope.proxy):
                raise _Refusal(_unauthorized(None if config is None else config.name, mode))
            assert config is not None or presented is not None
            if config is None:
                raise _Refusal(_unknown(request.path_params.get("deployment", ""), by_name))
            key = environ.get(config.upstream.api_key_env)
            if not key:
                raise _Refusal(
                    _openai_error(
                        503,
                        f"deployment {config.name!r} has no upstream key: the environment "
                        f"variable {config.upstream.api_key_env} (upstream.api_key_env) is not "
                        "set in driftd's environment; set it and restart driftd",
                        "server_error",
                        "upstream_key_missing",
                    )
                )
            return _Caller(True, f"Bearer {key}")
        assert config is not None
        authenticated = tokens.grants(token, Scope.proxy)
        if not authenticated and (token is not None or mode is UpstreamAuth.passthrough):
            raise _Refusal(_unauthorized(config.name, mode))
        if tokens.owns(bearer(authorization)):
            raise _Refusal(
                _openai_error(
                    401,
                    f"deployment {config.name!r} forwards the caller's own upstream key "
                    "(upstream.auth: passthrough), and the Authorization header carries a "
                    f"driftd token, which never leaves driftd: send your upstream key as the "
                    f"API key and the driftd token in the {TOKEN_HEADER} header",
                    "invalid_request_error",
                    "invalid_api_key",
                )
            )
        return _Caller(authenticated, authorization)

    async def forward(deployment: str, endpoint: str, request: Request) -> Response:
        config = by_name.get(deployment)
        try:
            caller = admit(config, request)
            assert config is not None
            raw = await _read_body(request, limits.max_body_bytes)
            body = _parse_body(raw, limits.max_depth)
        except _Refusal as refusal:
            if config is not None:  # an unknown name is no label: the series stay bounded
                stats.refuse(deployment, PROXY_REFUSALS[refusal.response.status_code])
            return refusal.response
        call, content = _start(
            deployment, endpoint, raw, body, request, caller, prompt_for, model_for
        )
        upstream = config.upstream
        url = f"{(upstream.base_url or OPENAI_BASE_URL).rstrip('/')}/{endpoint}"
        if request.url.query:
            url = f"{url}?{request.url.query}"
        headers = _upstream_headers(request, caller.upstream_authorization, call.stream)
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
        # The upstream's own id is kept beside the sample, never used as its key: an upstream
        # that repeats one would make driftd drop every later sample as a duplicate.
        call.upstream_request_id = text_or_none(answer.headers.get("x-request-id"))
        passed = _passed_back(answer.headers)
        passed[REQUEST_ID_HEADER] = call.request_id
        streaming = call.stream and answer.status < 400 and _is_event_stream(answer.headers)
        if not streaming:
            try:
                body_out = await answer.read()
            except (UpstreamError, *UpstreamTimeout) as exc:
                answer.close()
                stats.upstream_error(deployment, _failure(exc))
                message = f"the upstream of deployment {deployment!r} broke off its answer: {exc}"
                return _failed(call, 502, message, "upstream_unreachable", recorder, stats)
            call.finish()
            read_answer(call, body_out)
            stats.served(deployment, call.status, call.latency_ms / 1000.0)
            recorder.record(call)
            return Response(body_out, status_code=answer.status, headers=passed)
        return StreamingResponse(
            _relay(answer, call, recorder, stats), status_code=answer.status, headers=passed
        )

    responses: dict[int | str, dict[str, Any]] = {
        code: {"description": what, "model": OpenAIErrorBody}
        for code, what in _ERROR_RESPONSES.items()
    }

    if not by_name:
        return router  # no deployment has an upstream: no proxy routes at all
    # Documented, not enforced: an unknown name gets the proxy's own 401 or 404.
    name = Path(description="A proxied deployment.", json_schema_extra={"enum": sorted(by_name)})

    @router.post(
        f"/{CHAT}",
        summary="Chat completions, forwarded to the upstream and sampled.",
        responses=responses,
        openapi_extra=_OPENAPI_BODY,
    )
    async def chat_completions(request: Request, deployment: str = name) -> Response:
        return await forward(deployment, CHAT, request)

    @router.post(
        f"/{EMBEDDINGS}",
        summary="Embeddings, forwarded to the upstream and sampled.",
        responses=responses,
        openapi_extra=_OPENAPI_BODY,
    )
    async def embeddings(request: Request, deployment: str = name) -> Response:
        return await forward(deployment, EMBEDDINGS, request)

    return router


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """An error in the shape OpenAI's SDKs read (the upstream's own errors pass through as
    they came, usually in this shape too)."""

    error: OpenAIError


_ERROR_RESPONSES = {
    400: "The body is not a JSON object, or nests deeper than proxy.max_depth.",
    401: "No driftd token, or a wrong one (or the upstream's own 401, passed through).",
    404: "No proxied deployment of that name (or the upstream's own 404).",
    413: "The body exceeds proxy.max_body_bytes.",
    429: "The upstream's rate limit, passed through with its headers.",
    502: "The upstream cannot be reached.",
    503: "The deployment's upstream key is not set in driftd's environment.",
    504: "The upstream did not answer within upstream.timeout.",
}

_OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "The OpenAI API's request body, forwarded as it is (with the "
                    "active prompt injected for a prompted deployment).",
                }
            }
        },
    }
}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body; ``_Refusal`` (413) as soon as it is known to exceed ``limit`` bytes."""
    body = await read_capped(request, limit)
    if body is None:
        raise _Refusal(_too_large(limit))
    return body


def _parse_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object; ``_Refusal`` (400) for anything else, or one nested deeper
    than ``max_depth``, so that nothing malformed spends an upstream call."""
    try:
        parsed = json.loads(raw)
    except RecursionError:  # deeper than the interpreter's limit, far beyond max_depth
        raise _Refusal(_too_deep(max_depth)) from None
    except ValueError as exc:
        raise _Refusal(_bad_request(f"the body is not valid JSON: {exc}")) from None
    if not isinstance(parsed, dict):
        raise _Refusal(_bad_request("the body must be a JSON object"))
    # Each level opens a bracket, so a body with few brackets cannot be deep: only one with
    # many (a long conversation, say) is measured.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(parsed, max_depth):
        raise _Refusal(_too_deep(max_depth))
    return parsed


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether parsed JSON nests arrays and objects more than ``max_depth`` levels deep.

    Level by level, visiting containers only: on a hundred-message conversation this took
    about a quarter of the time of a walk that keeps each node's depth (16 µs against 68 here).
    """
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        deeper = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        level = deeper
    return False


def _too_deep(max_depth: int) -> JSONResponse:
    return _bad_request(f"the body nests deeper than {max_depth} levels (proxy.max_depth)")


def _unauthorized(deployment: str | None, mode: UpstreamAuth) -> JSONResponse:
    if mode is UpstreamAuth.key:
        how = "as the API key (Authorization: Bearer <token>)"
    else:
        how = f"in the {TOKEN_HEADER} header (your own upstream key stays the API key)"
    response = _openai_error(
        401,
        f"a driftd proxy token (DRIFTD_PROXY_TOKENS, or an admin token) is needed {how}",
        "invalid_request_error",
        "invalid_api_key",
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _unknown(deployment: str, by_name: Mapping[str, Deployment]) -> JSONResponse:
    # Only a caller with a token gets here, so naming the deployments tells no stranger.
    return _openai_error(
        404,
        f"unknown deployment {deployment!r}; proxied: {sorted(by_name)} (the proxy serves "
        "prompted deployments, OpenAI fine-tuned ones and those with an upstream section)",
        "invalid_request_error",
        "deployment_not_found",
    )


def _too_large(limit: int) -> JSONResponse:
    return _openai_error(
        413,
        f"the body exceeds {limit} bytes (proxy.max_body_bytes)",
        "invalid_request_error",
        "request_too_large",
    )


def _bad_request(message: str) -> JSONResponse:
    return _openai_error(400, message, "invalid_request_error", "invalid_body")


def _start(
    deployment: str,
    endpoint: str,
    raw: bytes,
    body: dict[str, Any],
    request: Request,
    caller: _Caller,
    prompt_for: PromptFor,
    model_for: ModelFor,
) -> tuple[Call, bytes]:
    """The call's record, and the body to send: the caller's bytes as they are, unless a prompt
    is injected or the active model mapped in (then the re-encoded JSON)."""
    prompt = prompt_for(deployment) if endpoint == CHAT else None
    served = model_for(deployment) if endpoint == CHAT and prompt is None else None
    content = raw
    if prompt is not None:
        content = json.dumps(prompt.apply(body)).encode()
    elif served is not None:
        content = json.dumps(served.apply(body)).encode()
    # Only a caller that proved itself may name the sample: an anonymous one could otherwise
    # claim an id ahead of the app, whose real sample would then be dropped as a duplicate.
    asked = request.headers.get("x-request-id") if caller.authenticated else None
    given = prompt or served
    call = Call(
        deployment=deployment,
        endpoint=endpoint,
        ts=datetime.now(UTC),
        started=time.monotonic(),
        body=body,
        prompt_version=None if prompt is None else prompt.version,
        stream=body.get("stream") is True,
        request_id=asked if asked is not None and valid_request_id(asked) else new_id(),
        model=given.model if given is not None else text_or_none(body.get("model")),
        model_version=None if served is None else served.version,
    )
    return call, content


async def _relay(
    answer: aiohttp.ClientResponse, call: Call, recorder: ProxyRecorder, stats: ReplicaMetrics
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
    call: Call, status: int, message: str, kind: str, recorder: ProxyRecorder, stats: ReplicaMetrics
) -> Response:
    """The answer when there is no upstream answer to pass on, recorded like any other call."""
    call.finish()
    call.status = status
    call.error = message
    stats.served(call.deployment, status, call.latency_ms / 1000.0)
    response = _openai_error(status, message, kind, None)
    response.headers[REQUEST_ID_HEADER] = call.request_id
    recorder.record(call)
    return response


def _upstream_headers(request: Request, authorization: str | None, stream: bool) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k in _FORWARDED_REQUEST}
    if authorization:
        headers["authorization"] = authorization
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
