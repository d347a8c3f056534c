"""The proxy's routes: documented in the API's OpenAPI spec, served by the ``Forwarder``.

The FastAPI routes are what the spec (and so the suite's auth matrix and fuzzing) shows; a call
that reaches them is handed to the forwarder as it came. ``ProxyRouter.fast_path`` puts the same
forwarder in front of the whole application, so that a proxied call is answered before FastAPI's
middleware and routing see it — the path ``driftd serve`` runs; anything else goes on to the
application unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Path
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.auth import Tokens
from daemon.config.models import Deployment
from daemon.config.models import Proxy as ProxyLimits
from daemon.proxy.call import CHAT, EMBEDDINGS
from daemon.proxy.forward import Forwarder
from daemon.proxy.prompt import ModelFor, PromptFor
from daemon.proxy.recorder import ProxyRecorder
from daemon.proxy.upstream import UpstreamClient

PREFIX = "/proxy/"
_ENDPOINTS = {f"/v1/{CHAT}": CHAT, f"/v1/{EMBEDDINGS}": EMBEDDINGS}


class ProxyRouter(APIRouter):
    """The proxy's documented routes, and the ``forwarder`` that serves them."""

    forwarder: Forwarder

    def fast_path(self, app: ASGIApp) -> ASGIApp:
        """``app`` with the proxied calls taken off before it: the ASGI application to serve."""
        if not self.forwarder.by_name:
            return app  # no deployment has an upstream: no proxy routes at all
        return _FastPath(app, self.forwarder)


class _FastPath:
    """Serves ``POST /proxy/{deployment}/v1/chat/completions`` and ``…/embeddings`` with the
    forwarder, as the documented routes would; passes everything else (another method, a
    trailing slash, a mounted root path) on to ``app``."""

    def __init__(self, app: ASGIApp, forwarder: Forwarder) -> None:
        self.app = app
        self.forwarder = forwarder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path: str = scope["path"]
            if path.startswith(PREFIX):
                cut = path.find("/", len(PREFIX))
                endpoint = _ENDPOINTS.get(path[cut:]) if cut > len(PREFIX) else None
                if endpoint is not None:
                    deployment = path[len(PREFIX) : cut]
                    await self.forwarder(scope, receive, send, deployment, endpoint)
                    return
        await self.app(scope, receive, send)


class _Forwarded(Response):
    """What a documented route answers: the forwarder, run with the route's own ASGI call."""

    def __init__(self, forwarder: Forwarder, deployment: str, endpoint: str) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.deployment = deployment
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forwarder(scope, receive, send, self.deployment, self.endpoint)


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
) -> ProxyRouter:
    """The proxy's routes for the ``deployments`` that have an upstream (``Deployment.proxied``),
    served by a ``Forwarder`` over the same arguments (see there)."""
    forwarder = Forwarder(
        deployments,
        recorder,
        client=client,
        environ=environ,
        prompt_for=prompt_for,
        tokens=tokens,
        limits=limits or ProxyLimits(),
        model_for=model_for,
    )
    router = ProxyRouter(prefix="/proxy/{deployment}/v1", tags=["proxy"])
    router.forwarder = forwarder
    by_name = forwarder.by_name
    if not by_name:
        return router  # no deployment has an upstream: no proxy routes at all

    responses: dict[int | str, dict[str, Any]] = {
        code: {"description": what, "model": OpenAIErrorBody}
        for code, what in _ERROR_RESPONSES.items()
    }
    # Documented, not enforced: an unknown name gets the proxy's own 401 or 404.
    name = Path(description="A proxied deployment.", json_schema_extra={"enum": sorted(by_name)})

    @router.post(
        f"/{CHAT}",
        summary="Chat completions, forwarded to the upstream and sampled.",
        responses=responses,
        openapi_extra=_OPENAPI_BODY,
    )
    async def chat_completions(deployment: str = name) -> Response:
        return _Forwarded(forwarder, deployment, CHAT)

    @router.post(
        f"/{EMBEDDINGS}",
        summary="Embeddings, forwarded to the upstream and sampled.",
        responses=responses,
        openapi_extra=_OPENAPI_BODY,
    )
    async def embeddings(deployment: str = name) -> Response:
        return _Forwarded(forwarder, deployment, EMBEDDINGS)

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
