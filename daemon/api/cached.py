"""What the prompt and version routes share: an ingest-token router, the read of a deployment's
active value through its ``daemon.serving`` cache, and the ETag answer an app may poll cheaply
(``304 Not Modified`` while the value is the one its ``If-None-Match`` names)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from daemon.auth import Scope
from daemon.errors import DriftdError, StoreError
from daemon.serving import ActiveCache

Authorize = Callable[[Request, Scope], None]
"""The application's guard: returns when the request carries a token granting the scope."""


class Tagged(Protocol):
    @property
    def etag(self) -> str: ...


T = TypeVar("T", bound=Tagged)


def ingest_router(authorize: Authorize) -> APIRouter:
    """A router under ``/v1`` whose every route needs the ingest scope (an admin token too)."""

    async def require_ingest(request: Request) -> None:
        authorize(request, Scope.ingest)

    return APIRouter(prefix="/v1", tags=["prompts"], dependencies=[Depends(require_ingest)])


async def read_active(
    cache: ActiveCache[T], name: str, known: Collection[str], *, missing: str
) -> T:
    """The active value of deployment ``name``: 404 when it is not configured or has none
    (``missing`` says why), 503 when the store cannot be read and nothing is cached, 500 for a
    malformed artifact (its message names the version and what to do)."""
    if name not in known:
        raise HTTPException(404, f"unknown deployment {name!r}; configured: {sorted(known)}")
    try:
        active = await asyncio.to_thread(cache.get, name)
    except StoreError as exc:
        raise HTTPException(503, f"{exc}; retry later") from None
    except DriftdError as exc:
        raise HTTPException(500, str(exc)) from None
    if active is None:
        raise HTTPException(404, missing)
    return active


def etag_answer(
    request: Request, active: Tagged, max_age: int, record: Callable[[], Mapping[str, Any]]
) -> Response:
    """``record()`` as JSON with the value's strong ETag and ``max-age``, or 304 with no body
    when ``If-None-Match`` names that ETag."""
    headers = {"ETag": active.etag, "Cache-Control": f"max-age={max(0, max_age)}"}
    if etag_matches(request.headers.get("if-none-match"), active.etag):
        return Response(status_code=304, headers=headers)
    try:
        body = record()
    except DriftdError as exc:
        # A malformed artifact: the message names the version and what to do.
        raise HTTPException(500, str(exc)) from None
    return JSONResponse(body, headers=headers)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks for this
    header), or is ``*``."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)
