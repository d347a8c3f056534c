"""The prompt route: apps that call their model themselves read the active prompt here.

``GET /v1/deployments/{name}/prompt`` answers the active prompt version as JSON (version,
system, few_shot, model) with a strong ``ETag`` and ``Cache-Control: max-age`` equal to the
prompt cache's time to live, so an app may poll it cheaply: a request carrying the ETag it has
in ``If-None-Match`` gets ``304 Not Modified`` with no body until a promotion or rollback
changes the prompt. An ingest token is enough (apps hold those), an admin one does too.

404 when the deployment is not configured or serves no prompt version (a finetuned one, or a
prompted one whose prompt the daemon has not registered yet); 503 when the store cannot be
read and no cached prompt is at hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from daemon.auth import Scope
from daemon.errors import DriftdError, StoreError
from daemon.prompts import PromptCache, prompt_record

Authorize = Callable[[Request, Scope], None]
"""The application's guard: returns when the request carries a token granting the scope."""


def prompt_router(
    cache: PromptCache, authorize: Authorize, *, deployments: Collection[str]
) -> APIRouter:
    """The prompt route for the configured ``deployments`` (names), reading through ``cache``
    and guarded by ``authorize`` with the ingest scope."""
    known = frozenset(deployments)

    async def require_ingest(request: Request) -> None:
        authorize(request, Scope.ingest)

    router = APIRouter(prefix="/v1", tags=["prompts"], dependencies=[Depends(require_ingest)])
    max_age = max(0, int(cache.ttl_s))

    @router.get(
        "/deployments/{name}/prompt",
        summary="The active prompt: system message, few-shot examples, model; ETag, 304.",
        responses={304: {"description": "The prompt is the one the If-None-Match ETag names."}},
    )
    async def prompt(name: str, request: Request) -> Response:
        if name not in known:
            raise HTTPException(404, f"unknown deployment {name!r}; configured: {sorted(known)}")
        try:
            active = await asyncio.to_thread(cache.get, name)
        except StoreError as exc:
            raise HTTPException(503, f"{exc}; retry later") from None
        except DriftdError as exc:
            # A malformed artifact: the message names the version and what to do.
            raise HTTPException(500, str(exc)) from None
        if active is None:
            raise HTTPException(
                404,
                f"deployment {name!r} serves no prompt version: it is finetuned, or a prompted "
                "deployment whose configured prompt driftd has not registered yet (it does so "
                "at start-up)",
            )
        headers = {"ETag": active.etag, "Cache-Control": f"max-age={max_age}"}
        if etag_matches(request.headers.get("if-none-match"), active.etag):
            return Response(status_code=304, headers=headers)
        return JSONResponse(prompt_record(name, active), headers=headers)

    return router


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks for this
    header), or is ``*``."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)
