"""Forwarding one call: admit the caller, read the body, call the upstream, pass its answer back.

``Forwarder`` is a plain ASGI handler. The documented FastAPI routes (``routes``) hand their
calls to it, and so does the fast path in front of the application, which serves the same calls
without FastAPI's middleware, routing and dependency resolution: on the proxy's hot path those
cost as much as everything driftd itself does per call. Either way a call takes the same steps
here, in the same order, and gets the same answer.
"""

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
from multidict import CIMultiDictProxy
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from daemon.auth import TOKEN_HEADER, Tokens, bearer
from daemon.auth import Scope as TokenScope
from daemon.config.models import Deployment, UpstreamAuth
from daemon.config.models import Proxy as ProxyLimits
from daemon.metrics import PROXY_REFUSALS
from daemon.proxy.call import (
    CHAT,
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
# Statuses whose answer has no body, so no length either (as Starlette's Response decides).
_NO_BODY = frozenset({204, 304})


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


class _Request:
    """What the proxy reads of a request's ASGI scope, decoded once: the headers (the first of
    repeated ones, as Starlette's ``Headers.get`` answers), the headers forwarded upstream (the
    last of repeated ones) and the query string."""

    __slots__ = ("forwarded", "headers", "query")

    def __init__(self, scope: Scope) -> None:
        headers: dict[str, str] = {}
        forwarded: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name not in headers:
                headers[name] = value
            if name in _FORWARDED_REQUEST:
                forwarded[name] = value
        self.headers = headers
        self.forwarded = forwarded
        self.query: str = scope.get("query_string", b"").decode("latin-1")


class Forwarder:
    """Serves proxied calls as an ASGI handler: ``await forwarder(scope, receive, send,
    deployment, endpoint)`` for a POST to ``endpoint`` (``CHAT`` or ``EMBEDDINGS``) of
    ``deployment``, whatever name the caller used (an unknown one gets the proxy's 401 or 404).

    Finished calls go to ``recorder`` (started, over a started writer). ``client`` is shared by
    every call (its owner closes it); ``environ`` holds the upstream keys, named by each
    deployment's ``upstream.api_key_env``; ``tokens`` are driftd's own, which callers present
    (``upstream.auth``) and which never travel upstream; ``limits`` bound the request bodies.
    ``prompt_for`` and ``model_for`` name the active prompt or model a chat call is given (each
    None: the call goes as it came); both must answer at once, never fail.
    """

    def __init__(
        self,
        deployments: Sequence[Deployment],
        recorder: ProxyRecorder,
        *,
        client: UpstreamClient,
        environ: Mapping[str, str],
        prompt_for: PromptFor,
        tokens: Tokens,
        limits: ProxyLimits,
        model_for: ModelFor,
    ) -> None:
        self.by_name = {d.name: d for d in deployments if d.proxied}
        self.recorder = recorder
        self.stats = recorder.stats
        self.client = client
        self.environ = environ
        self.prompt_for = prompt_for
        self.model_for = model_for
        self.tokens = tokens
        self.limits = limits
        # Per deployment, the upstream's base URL without its trailing slash.
        self._bases = {
            name: (d.upstream.base_url or OPENAI_BASE_URL).rstrip("/")
            for name, d in self.by_name.items()
        }

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, deployment: str, endpoint: str
    ) -> None:
        config = self.by_name.get(deployment)
        request = _Request(scope)
        stats = self.stats
        try:
            caller = self._admit(config, deployment, request.headers)
            assert config is not None
            raw = await _read_body(receive, request.headers, self.limits.max_body_bytes)
            if raw is None:
                return  # the client went away before its body was in: nobody to answer
            body = _parse_body(raw, self.limits.max_depth)
        except _Refusal as refusal:
            if config is not None:  # an unknown name is no label: the series stay bounded
                stats.refuse(deployment, PROXY_REFUSALS[refusal.response.status_code])
            await refusal.response(scope, receive, send)
            return
        call, content = self._start(deployment, endpoint, raw, body, request, caller)
        upstream = config.upstream
        url = f"{self._bases[deployment]}/{endpoint}"
        if request.query:
            url = f"{url}?{request.query}"
        headers = _upstream_headers(request, caller.upstream_authorization, call.stream)
        seconds = upstream.timeout.total_seconds()
        try:
            answer = await self.client.post(
                url, content, headers, timeout=seconds, retries=upstream.max_retries
            )
        except UpstreamTimeout:
            message = (
                f"the upstream of deployment {deployment!r} did not answer within {seconds:g} s "
                "(upstream.timeout); retry, or raise the timeout in driftd.yaml"
            )
            stats.upstream_error(deployment, "timeout")
            await self._failed(call, 504, message, "upstream_timeout")(scope, receive, send)
            return
        except UpstreamError as exc:
            place = upstream.base_url or OPENAI_BASE_URL
            message = (
                f"the upstream of deployment {deployment!r} at {place}"
                f" cannot be reached ({type(exc).__name__}: {exc}); check upstream.base_url"
            )
            stats.upstream_error(deployment, "connect")
            await self._failed(call, 502, message, "upstream_unreachable")(scope, receive, send)
            return
        status = call.status = answer.status
        if status >= 400:
            stats.upstream_error(deployment, "http_5xx" if status >= 500 else "http_4xx")
        # The upstream's own id is kept beside the sample, never used as its key: an upstream
        # that repeats one would make driftd drop every later sample as a duplicate.
        call.upstream_request_id = text_or_none(answer.headers.get("x-request-id"))
        passed = _passed_back(answer.headers)
        passed[REQUEST_ID_HEADER] = call.request_id
        if call.stream and status < 400 and _is_event_stream(answer.headers):
            relay = _relay(answer, call, self.recorder)
            await StreamingResponse(relay, status_code=status, headers=passed)(scope, receive, send)
            return
        try:
            body_out = await answer.read()
        except (UpstreamError, *UpstreamTimeout) as exc:
            answer.close()
            stats.upstream_error(deployment, _failure(exc))
            message = f"the upstream of deployment {deployment!r} broke off its answer: {exc}"
            await self._failed(call, 502, message, "upstream_unreachable")(scope, receive, send)
            return
        call.finish()
        read_answer(call, body_out)
        stats.served(deployment, status, call.latency_ms / 1000.0)
        self.recorder.record(call)
        # Sent as Starlette's Response(body_out, status, passed) would send it, without
        # building one: the passed headers, then the length.
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in passed.items()]
        if status >= 200 and status not in _NO_BODY:
            raw_headers.append((b"content-length", str(len(body_out)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body_out})

    def _admit(
        self, config: Deployment | None, deployment: str, headers: Mapping[str, str]
    ) -> _Caller:
        """The caller, if the deployment's ``upstream.auth`` lets it call; else ``_Refusal``."""
        tokens = self.tokens
        token = headers.get(TOKEN_HEADER)
        authorization = headers.get("authorization")
        mode = UpstreamAuth.key if config is None else config.upstream.auth
        if mode is UpstreamAuth.key:
            presented = token if token is not None else bearer(authorization)
            if not tokens.grants(presented, TokenScope.proxy):
                raise _Refusal(_unauthorized(None if config is None else config.name, mode))
            assert config is not None or presented is not None
            if config is None:
                raise _Refusal(_unknown(deployment, self.by_name))
            key = self.environ.get(config.upstream.api_key_env)
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
        authenticated = tokens.grants(token, TokenScope.proxy)
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

    def _start(
        self,
        deployment: str,
        endpoint: str,
        raw: bytes,
        body: dict[str, Any],
        request: _Request,
        caller: _Caller,
    ) -> tuple[Call, bytes]:
        """The call's record, and the body to send: the caller's bytes as they are, unless a
        prompt is injected or the active model mapped in (then the re-encoded JSON)."""
        prompt = self.prompt_for(deployment) if endpoint == CHAT else None
        served = self.model_for(deployment) if endpoint == CHAT and prompt is None else None
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

    def _failed(self, call: Call, status: int, message: str, kind: str) -> Response:
        """The answer when there is no upstream answer to pass on, recorded like any other
        call."""
        call.finish()
        call.status = status
        call.error = message
        self.stats.served(call.deployment, status, call.latency_ms / 1000.0)
        response = _openai_error(status, message, kind, None)
        response.headers[REQUEST_ID_HEADER] = call.request_id
        self.recorder.record(call)
        return response


async def _read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes | None:
    """The request body, or None if the client went away first; ``_Refusal`` (413) as soon as
    it is known to exceed ``limit`` bytes (a declared length before anything is read)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refusal(_too_large(limit))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refusal(_too_large(limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


async def _relay(
    answer: aiohttp.ClientResponse, call: Call, recorder: ProxyRecorder
) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes, each chunk passed on as it arrives; the deltas are collected on
    the side, and the sample recorded once the last chunk is out (or the stream broke off)."""
    stats = recorder.stats
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


def _upstream_headers(request: _Request, authorization: str | None, stream: bool) -> dict[str, str]:
    headers = dict(request.forwarded)
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
