"""The version route: apps that call their model themselves read which version to serve here.

``GET /v1/deployments/{name}/version`` answers the active version of a configured deployment as
JSON: its name (what a sample's ``model_version`` or ``prompt_version`` should say), its kind,
its artifact, the model id to call (a fine-tuned model served upstream by id, or a prompt's base
model) and, for a prompt version, where to read the prompt. Like the prompt route it carries a
strong ``ETag`` and ``Cache-Control: max-age`` equal to the cache's time to live, answers ``304
Not Modified`` to an ``If-None-Match`` naming the current ETag, and needs an ingest token (an
admin one does too). After a promotion or rollback made by this process the very next request
sees it; one made elsewhere (another replica, the CLI) within the time to live.

404 when the deployment is not configured or has no version registered yet (a fine-tuned
deployment serves its configured model until a first version is promoted); 503 when the store
cannot be read and no cached version is at hand.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fastapi import APIRouter, Request, Response

from daemon.api.cached import Authorize, etag_answer, ingest_router, read_active
from daemon.domain import VersionKind
from daemon.prompts import PromptSpec
from daemon.serving import ActiveVersion, VersionCache, upstream_model

PROMPT_PATH = "/v1/deployments/{name}/prompt"


def version_router(
    cache: VersionCache,
    authorize: Authorize,
    *,
    deployments: Collection[str],
    by_model_id: Collection[str] = (),
) -> APIRouter:
    """The version route for the configured ``deployments`` (names), reading through ``cache``
    and guarded by ``authorize`` with the ingest scope; ``by_model_id`` names those whose model
    versions are model ids their upstream serves (``daemon.serving.serves_by_model_id``)."""
    known = frozenset(deployments)
    served_by_id = frozenset(by_model_id)
    router = ingest_router(authorize)
    max_age = int(cache.ttl_s)

    @router.get(
        "/deployments/{name}/version",
        summary="The active version: its name, kind, artifact and the model to call; ETag, 304.",
        responses={304: {"description": "The version is the one the If-None-Match ETag names."}},
    )
    async def version(name: str, request: Request) -> Response:
        active = await read_active(
            cache,
            name,
            known,
            missing=f"deployment {name!r} has no version registered yet: it serves the model "
            "or prompt of its configuration until a first version is promoted",
        )
        return etag_answer(
            request,
            active,
            max_age,
            lambda: version_record(name, active, by_model_id=name in served_by_id),
        )

    return router


def version_record(name: str, active: ActiveVersion, *, by_model_id: bool) -> dict[str, Any]:
    """The JSON form the version route serves."""
    record: dict[str, Any] = {
        "deployment": name,
        "version": active.version,
        "kind": active.kind,
        "artifact": active.artifact,
        "model": upstream_model(active) if by_model_id else None,
        "prompt": None,
    }
    if active.kind == VersionKind.prompt:
        spec = PromptSpec.from_artifact(active.artifact, where=f"version {active.version!r}")
        record |= {"artifact": None, "model": spec.model, "prompt": PROMPT_PATH.format(name=name)}
    return record
