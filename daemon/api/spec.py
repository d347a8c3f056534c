"""The OpenAPI document as the API really behaves: who may call what, and every answer's body.

FastAPI derives the operations, parameters and success bodies from the routes; what it cannot
see is added here, once, over every route the application has when the spec is first asked for
(the proxy's too, which are included after ``create_app``):

- the security schemes, and on each protected operation ``security`` and ``x-driftd-scope``
  (``ingest``, ``proxy`` or ``admin``), taken from the operation's tag: a route is protected by
  the guard of its tag, and a test derives the whole auth matrix from this document, so a route
  that is tagged but not guarded, or guarded but public here, fails it;
- the error answers each operation gives (400, 401, 403, 404, 409, 413, 422, 429, 503) with the
  bodies they really have;
- the configured deployments as the ``enum`` of a ``name`` path parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from daemon.auth import TOKEN_HEADER, Scope
from daemon.ingest.schema import FeedbackBatch, Problem, SampleBatch

BEARER = "bearerToken"
HEADER = "driftdToken"

PUBLIC_TAG = "health"
"""Tag of the routes anyone may call (``/healthz``, ``/readyz``, and ``/metrics`` unless
``server.metrics_auth``): a liveness probe or a scraper holds no token."""

SCOPE_OF_TAG = {
    "ingest": Scope.ingest,
    "prompts": Scope.ingest,
    "admin": Scope.admin,
    "proxy": Scope.proxy,
}
"""The guard each tag's routes run; a route with another tag is documented as admin-only, so
the auth-matrix test fails on it until it is guarded and given its tag here."""

_REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    """What driftd's own API answers when it refuses a request: what was wrong and what to do."""

    detail: str


class BatchProblems(BaseModel):
    message: str
    problems: list[Problem]


class InvalidBatch(BaseModel):
    """A batch refused because items are invalid: every problem by item index and field."""

    detail: BatchProblems


_ERRORS: dict[int, str] = {
    400: "The body is not UTF-8 JSON.",
    401: "No token, or not one of driftd's.",
    403: "A driftd token whose scope does not grant this operation.",
    404: "No such deployment, check, job or version.",
    409: "Not possible in the state things are in.",
    413: "The body or the batch exceeds the configured limit.",
    422: "Invalid parameters or items; every problem is named.",
    429: "The write queue is full; retry after Retry-After seconds.",
    503: "The store cannot be reached, or an ingest worker died; nothing was stored, retry.",
}


def document(app: FastAPI, *, deployments: Collection[str], metrics_auth: bool = False) -> None:
    """Make ``app.openapi()`` return the completed document (built once, then cached)."""
    default: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default()
            _complete(spec, sorted(deployments), metrics_auth)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def body_schema(model: type[SampleBatch] | type[FeedbackBatch]) -> dict[str, Any]:
    """Document a hand-read body (its model is added to the components by ``document``)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
            },
        }
    }


def _complete(spec: dict[str, Any], deployments: list[str], metrics_auth: bool) -> None:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (SampleBatch, FeedbackBatch, ErrorDetail, InvalidBatch):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "A driftd token: DRIFTD_INGEST_TOKENS, DRIFTD_PROXY_TOKENS or "
            "DRIFTD_ADMIN_TOKENS, by the operation's x-driftd-scope (an admin token grants all).",
        },
        HEADER: {
            "type": "apiKey",
            "in": "header",
            "name": TOKEN_HEADER,
            "description": "A driftd proxy (or admin) token, for a proxy caller whose "
            "Authorization header carries its own upstream key (upstream.auth: passthrough).",
        },
    }
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            _complete_operation(path, method, operation, deployments, metrics_auth)


def _complete_operation(
    path: str,
    method: str,
    operation: dict[str, Any],
    deployments: list[str],
    metrics_auth: bool,
) -> None:
    tags = operation.get("tags") or []
    tag = tags[0] if tags else None
    public = tag == PUBLIC_TAG and not (path == "/metrics" and metrics_auth)
    responses = operation.setdefault("responses", {})
    if path == "/metrics":
        responses["200"] = {
            "description": "The metrics in Prometheus' text format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    for parameter in operation.get("parameters", ()):
        if parameter.get("in") == "path" and parameter.get("name") == "name" and deployments:
            parameter["schema"] = {**parameter.get("schema", {}), "enum": deployments}
    if public:
        return
    scope = Scope.admin if path == "/metrics" else SCOPE_OF_TAG.get(tag or "", Scope.admin)
    operation["x-driftd-scope"] = scope.value
    if scope is Scope.proxy:
        # The proxy answers in OpenAI's error shape (its routes declare their own responses).
        operation["security"] = [{BEARER: []}, {HEADER: []}]
        return
    operation["security"] = [{BEARER: []}]
    codes = [401, 403]
    if scope is Scope.ingest and method == "post":
        codes += [400, 404, 413, 422, 429, 503]
    elif scope is Scope.ingest:
        codes += [404, 503]
    elif path != "/metrics":
        codes += [404, 409]
    for code in codes:
        model = "InvalidBatch" if code == 422 else "ErrorDetail"
        # An ingest batch's 422 lists problems by item; FastAPI's own (for parameters, on the
        # other routes) is its HTTPValidationError, which it documents itself.
        responses[str(code)] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
        }
