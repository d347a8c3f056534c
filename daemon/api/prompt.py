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

from collections.abc import Collection

from fastapi import APIRouter, Request, Response

from daemon.api.cached import Authorize, etag_answer, ingest_router, read_active
from daemon.prompts import PromptCache, prompt_record


def prompt_router(
    cache: PromptCache, authorize: Authorize, *, deployments: Collection[str]
) -> APIRouter:
    """The prompt route for the configured ``deployments`` (names), reading through ``cache``
    and guarded by ``authorize`` with the ingest scope."""
    known = frozenset(deployments)
    router = ingest_router(authorize)
    max_age = int(cache.ttl_s)

    @router.get(
        "/deployments/{name}/prompt",
        summary="The active prompt: system message, few-shot examples, model; ETag, 304.",
        responses={304: {"description": "The prompt is the one the If-None-Match ETag names."}},
    )
    async def prompt(name: str, request: Request) -> Response:
        active = await read_active(
            cache,
            name,
            known,
            missing=f"deployment {name!r} serves no prompt version: it is finetuned, or a "
            "prompted deployment whose configured prompt driftd has not registered yet (it "
            "does so at start-up)",
        )
        return etag_answer(request, active, max_age, lambda: prompt_record(name, active))

    return router
