"""The FastAPI application: health, readiness, sample and feedback ingest.

Request bodies are read and validated by hand (not by FastAPI's body parameters) so that the
limits are enforced before a large body is read, malformed JSON gets a 400 that says so, and an
invalid batch gets one 422 listing every bad item by index and field.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from daemon import __version__
from daemon.api.admin import RunCheck, admin_router
from daemon.api.prompt import prompt_router
from daemon.api.spec import body_schema, document
from daemon.api.version import version_router
from daemon.auth import Scope, Tokens, bearer
from daemon.config.models import Hooks, Ingest
from daemon.errors import DriftdError, QueueFull, StoreError
from daemon.ingest.pipeline import DeploymentPipeline, sampled_in
from daemon.ingest.prepare import PreparerPool, count_items, invalid
from daemon.ingest.schema import (
    FEEDBACK_BATCH,
    BodyError,
    FeedbackBatch,
    SampleBatch,
    parse_body,
    problems_of,
)
from daemon.ingest.writer import Writer
from daemon.metrics import DriftdMetrics, ReplicaMetrics
from daemon.prompts import prompt_cache
from daemon.request_body import read_capped
from daemon.serving import version_cache
from daemon.store import Store, head_revision, is_current

log = logging.getLogger("driftd.api")

RETRY_AFTER_SECONDS = 1


class _Refused(Exception):
    """A request answered with an error status; carries the response."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None):
        self.response = JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(
    *,
    store: Store,
    writer: Writer,
    preparer: PreparerPool,
    pipelines: Mapping[str, DeploymentPipeline],
    tokens: Tokens,
    limits: Ingest,
    stats: ReplicaMetrics,
    leader: Callable[[], bool] = lambda: False,
    hooks: Mapping[str, Hooks] | None = None,
    metrics: DriftdMetrics | None = None,
    metrics_auth: bool = False,
    run_check: RunCheck | None = None,
    by_model_id: Collection[str] = (),
) -> FastAPI:
    """The API over a started store, writer and preparer; ``pipelines`` by deployment name.

    ``stats`` counts what ingest did (the replica's metrics, exported at ``/metrics``).
    ``hooks`` are the promotion hooks by deployment name (``retune.hooks`` of each); a
    deployment without an entry runs none when promoted or rolled back through the API.
    ``metrics`` are served at ``/metrics``, open like ``/healthz`` unless ``metrics_auth``
    (``server.metrics_auth``) asks for an admin token. ``run_check`` answers
    ``POST /v1/deployments/{name}/checks`` (the scheduler's ``run_now``; without it, 404).
    ``by_model_id`` names the deployments whose model versions are model ids their upstream
    serves (OpenAI fine-tunes): ``/version`` tells apps that id as the model to call.
    """
    app = FastAPI(
        title="driftd",
        version=__version__,
        description="Ingest of production samples and feedback for drift monitoring.",
    )

    @app.exception_handler(_Refused)
    async def refused(_request: Request, exc: _Refused) -> JSONResponse:
        return exc.response

    def authorize(request: Request, scope: Scope) -> None:
        presented = bearer(request.headers.get("authorization"))
        if tokens.grants(presented, scope):
            return
        if tokens.owns(presented):
            raise _Refused(
                403, f"this token does not grant {scope.value}; use a {scope.value} or admin token"
            )
        raise _Refused(
            401,
            f"a valid bearer token is needed ({scope.value} or admin)",
            {"WWW-Authenticate": "Bearer"},
        )

    def pipeline_of(name: str) -> DeploymentPipeline:
        pipeline = pipelines.get(name)
        if pipeline is None:
            raise _Refused(404, f"unknown deployment {name!r}; configured: {sorted(pipelines)}")
        return pipeline

    async def read_body(request: Request, deployment: str) -> bytes:
        body = await read_capped(request, limits.max_body_bytes)
        if body is None:
            stats.reject(deployment, "too_large")
            raise _Refused(413, f"the body exceeds {limits.max_body_bytes} bytes")
        return body

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, Any]:
        # Whether this replica leads: cheap (no store access), and what an operator asks first.
        return {"status": "ok", "leader": leader()}

    if metrics is not None:
        exported = metrics

        @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text format).")
        async def prometheus_metrics(request: Request) -> Response:
            if metrics_auth:
                authorize(request, Scope.admin)
            # The leader's metrics read the store: off the event loop.
            body = await asyncio.to_thread(exported.exposition)
            return Response(body, media_type=exported.CONTENT_TYPE)

    @app.get("/readyz", tags=["health"], summary="Readiness: store reachable and migrated.")
    async def readyz() -> JSONResponse:
        try:
            await asyncio.to_thread(store.ping)
            current = await asyncio.to_thread(is_current, store.engine)
        except StoreError as exc:
            return JSONResponse({"status": "not_ready", "reason": str(exc)}, status_code=503)
        if not current:
            reason = f"the store's schema is not at {head_revision()}; run driftd db upgrade"
            return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", "schema": head_revision()})

    @app.post(
        "/v1/deployments/{name}/samples",
        tags=["ingest"],
        summary="Store a batch of samples; 200 only once it is committed.",
        openapi_extra=body_schema(SampleBatch),
    )
    async def ingest_samples(name: str, request: Request) -> dict[str, int]:
        authorize(request, Scope.ingest)
        pipeline_of(name)
        body = await read_body(request, name)
        outcome = await preparer.samples(name, body, datetime.now(UTC))
        if outcome.status != 200:
            stats.reject(name, outcome.reason or "invalid")
            raise _Refused(outcome.status, outcome.detail)
        assert outcome.rows is not None
        stats.add_redacted(name, outcome.redacted)
        try:
            done = writer.submit(outcome.rows)
        except QueueFull as exc:
            stats.reject(name, "queue_full")
            raise _Refused(
                429,
                f"{exc}; retry after {RETRY_AFTER_SECONDS} s",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        try:
            result = await asyncio.wrap_future(done)
        except DriftdError as exc:
            raise _Refused(503, f"{exc}; nothing from this batch was stored, retry it") from None
        stats.ingested(name, "received", outcome.received)
        stats.ingested(name, "new", len(result.new))
        stats.ingested(name, "duplicate", len(result.duplicate))
        stats.ingested(name, "sampled_out", outcome.sampled_out)
        return {
            "received": outcome.received,
            "new": len(result.new),
            "duplicate": len(result.duplicate),
            "sampled_out": outcome.sampled_out,
        }

    @app.post(
        "/v1/deployments/{name}/feedback",
        tags=["ingest"],
        summary="Join late labels, user feedback and judge scores to stored samples.",
        openapi_extra=body_schema(FeedbackBatch),
    )
    async def ingest_feedback(name: str, request: Request) -> dict[str, Any]:
        authorize(request, Scope.ingest)
        pipeline = pipeline_of(name)
        body = await read_body(request, name)
        try:
            batch = parse_body(body, FEEDBACK_BATCH)
        except BodyError as exc:
            stats.reject(name, "malformed")
            raise _Refused(400, str(exc)) from None
        except ValidationError as exc:
            problems = problems_of(exc, "feedback")
            outcome = invalid(problems, count_items(body, "feedback"), "feedback")
            stats.reject(name, "invalid")
            raise _Refused(outcome.status, outcome.detail) from None
        if len(batch.feedback) > limits.max_batch:
            stats.reject(name, "too_large")
            raise _Refused(413, f"{len(batch.feedback)} items; at most {limits.max_batch}")
        problems = pipeline.check_feedback(batch.feedback)
        if problems:
            outcome = invalid(problems, len(batch.feedback), "feedback")
            stats.reject(name, "invalid")
            raise _Refused(outcome.status, outcome.detail)
        now = datetime.now(UTC)
        redacted: Counter[str] = Counter()
        updates = [pipeline.feedback(item, now, redacted) for item in batch.feedback]
        stats.add_redacted(name, redacted)
        try:
            found = set(await asyncio.to_thread(store.apply_feedback, name, updates))
        except StoreError as exc:
            raise _Refused(503, f"{exc}; retry the feedback") from None
        missing = [u.request_id for u in updates if u.request_id not in found]
        sampled_out = [rid for rid in missing if not sampled_in(name, rid, pipeline.rate)]
        unknown = [rid for rid in missing if sampled_in(name, rid, pipeline.rate)]
        return {
            "received": len(updates),
            "updated": len(found),
            "unknown": unknown,
            "sampled_out": sampled_out,
        }

    @app.get("/v1/deployments", tags=["admin"], summary="The deployments driftd watches.")
    async def deployments(request: Request) -> list[dict[str, Any]]:
        authorize(request, Scope.admin)
        return [
            {"name": p.name, "task": p.task.value, "sampling_rate": p.rate}
            for p in pipelines.values()
        ]

    app.include_router(
        prompt_router(prompt_cache(store), authorize, deployments=list(pipelines.keys()))
    )
    app.include_router(
        version_router(
            version_cache(store),
            authorize,
            deployments=list(pipelines.keys()),
            by_model_id=by_model_id,
        )
    )
    app.include_router(admin_router(store, authorize, hooks=hooks or {}, run_check=run_check))
    document(app, deployments=list(pipelines), metrics_auth=metrics_auth)
    return app
