"""Who may call what, derived from the daemon's own OpenAPI document. What the proxy lets through
to an upstream (and what it never does) is in ``test_security_proxy.py``.

The auth matrix reads ``/openapi.json`` of the application ``driftd serve`` builds and calls
every operation in it: one on the explicit public list must declare no security and answer
without a token; every other must declare ``security`` and ``x-driftd-scope`` and refuse a
caller with no token, a wrong token, or a token of a scope that does not grant it, while the
granting tokens get through. A route added later without a guard is in the document, so it fails
the matrix (``test_a_route_added_without_a_guard_fails_the_matrix`` shows it once).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fastapi.testclient import TestClient

from tests.daemon.api.conftest import PLAUSIBLE_BODIES, REFUSED, bearer, driftd_header

if TYPE_CHECKING:
    from tests.daemon.api.conftest import (
        Driftd,
        SecurityLaunch,
    )

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics"})
"""The operations anyone may call: probes and the scraper hold no token."""
UNDOCUMENTED_PUBLIC = ("/openapi.json", "/docs")
"""Public too, and not operations of the document itself."""

SCOPES = ("ingest", "proxy", "admin")
GRANTING = {"ingest": ("ingest", "admin"), "proxy": ("proxy", "admin"), "admin": ("admin",)}
"""The tokens that grant each scope; every other token is refused (401 or 403)."""

KNOWN: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("POST", "/v1/deployments/{name}/samples"): "ingest",
    ("POST", "/v1/deployments/{name}/feedback"): "ingest",
    ("GET", "/v1/deployments/{name}/prompt"): "ingest",
    ("GET", "/v1/deployments/{name}/version"): "ingest",
    ("GET", "/v1/deployments"): "admin",
    ("GET", "/v1/checks"): "admin",
    ("GET", "/v1/checks/{check_id}"): "admin",
    ("GET", "/v1/jobs"): "admin",
    ("POST", "/v1/jobs/{job_id}/approve"): "admin",
    ("POST", "/v1/jobs/{job_id}/cancel"): "admin",
    ("POST", "/v1/jobs/{job_id}/retry"): "admin",
    ("GET", "/v1/deployments/{name}/versions"): "admin",
    ("POST", "/v1/deployments/{name}/versions/{version}/promote"): "admin",
    ("POST", "/v1/deployments/{name}/rollback"): "admin",
    ("GET", "/v1/events"): "admin",
    ("POST", "/proxy/{deployment}/v1/chat/completions"): "proxy",
    ("POST", "/proxy/{deployment}/v1/embeddings"): "proxy",
}
"""The operations the API has today, with the scope each needs (None: public). The document
must hold at least these, so an empty or truncated document cannot pass the matrix."""
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
PRESENTATIONS = (bearer, driftd_header)
"""The two places a driftd token can be presented (securitySchemes bearerToken, driftdToken)."""


def operations(spec: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation) of every operation in the document."""
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def urls(path: str, operation: Mapping[str, Any]) -> list[str]:
    """The path filled in every way its path parameters' enums allow (``1`` for an integer,
    ``matrix`` for another string)."""
    choices: dict[str, list[str]] = {}
    for parameter in operation.get("parameters", ()):
        if parameter.get("in") != "path":
            continue
        schema = parameter.get("schema", {})
        if schema.get("enum"):
            choices[parameter["name"]] = [str(value) for value in schema["enum"]]
        elif schema.get("type") == "integer":
            choices[parameter["name"]] = ["1"]
        else:
            choices[parameter["name"]] = ["matrix"]
    filled = []
    for values in itertools.product(*choices.values()):
        url = path
        for name, value in zip(choices, values, strict=True):
            url = url.replace(f"{{{name}}}", value)
        filled.append(url)
    return filled


def plausible_body(path: str, operation: Mapping[str, Any]) -> Any:
    if "requestBody" not in operation:
        return None
    for tail, body in PLAUSIBLE_BODIES.items():
        if path.endswith(tail):
            return body
    return {}


def auth_matrix(
    client: TestClient,
    tokens: Mapping[str, str],
    *,
    public: frozenset[str] = PUBLIC,
    known: Mapping[tuple[str, str], str | None] = KNOWN,
) -> list[str]:
    """Every way the application's document or behaviour departs from the auth matrix, as
    ``"METHOD url: what"``; empty when every operation is guarded as it must be.

    ``tokens`` are a valid token per scope (``ingest``, ``proxy``, ``admin``). An operation's
    scope is its ``x-driftd-scope``, or the one ``known`` names when it declares none.
    """
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    spec = response.json()
    problems = _scheme_problems(spec)
    found = {(method, path): operation for method, path, operation in operations(spec)}
    for method, path in sorted(set(known) - set(found)):
        problems.append(f"{method} {path}: missing from the document")
    for (method, path), operation in sorted(found.items()):
        label = f"{method} {path}"
        body = plausible_body(path, operation)
        if path in public:
            if operation.get("security"):
                problems.append(f"{label}: public, but declares security {operation['security']}")
            for url in urls(path, operation):
                status = _call(client, method, url, {}, body)
                if status in REFUSED:
                    problems.append(f"{method} {url}: public, but answered {status} to no token")
            continue
        scope = _declared_scope(label, operation, known.get((method, path)), problems)
        for url in urls(path, operation):
            problems += _guarded(client, method, url, body, scope, tokens)
    return problems


def _scheme_problems(spec: Mapping[str, Any]) -> list[str]:
    schemes = spec.get("components", {}).get("securitySchemes", {})
    problems = []
    bearer_scheme = schemes.get("bearerToken", {})
    if (bearer_scheme.get("type"), str(bearer_scheme.get("scheme", "")).lower()) != (
        "http",
        "bearer",
    ):
        problems.append(f"securitySchemes.bearerToken is not an http bearer: {bearer_scheme}")
    header = schemes.get("driftdToken", {})
    where = (header.get("type"), header.get("in"), str(header.get("name", "")).lower())
    if where != ("apiKey", "header", "x-driftd-token"):
        problems.append(f"securitySchemes.driftdToken is not the X-Driftd-Token header: {header}")
    return problems


def _declared_scope(
    label: str, operation: Mapping[str, Any], expected: str | None, problems: list[str]
) -> str | None:
    """The operation's scope as documented (checked against ``expected`` when it is known)."""
    security = operation.get("security")
    if not security:
        problems.append(f"{label}: not public, but declares no security")
    else:
        names = {name for requirement in security for name in requirement}
        unknown = names - {"bearerToken", "driftdToken"}
        if unknown:
            problems.append(f"{label}: security names undefined schemes {sorted(unknown)}")
    responses = operation.get("responses", {})
    if "401" not in responses:
        problems.append(f"{label}: declares no 401 response")
    declared = operation.get("x-driftd-scope")
    if declared not in SCOPES:
        problems.append(f"{label}: x-driftd-scope is {declared!r}, not one of {SCOPES}")
        return expected
    if expected is not None and declared != expected:
        problems.append(
            f"{label}: x-driftd-scope is {declared!r}; this operation needs {expected!r}"
        )
    return str(declared)


def _guarded(
    client: TestClient,
    method: str,
    url: str,
    body: Any,
    scope: str | None,
    tokens: Mapping[str, str],
) -> list[str]:
    problems = []
    anonymous: list[tuple[str, dict[str, str]]] = [
        ("no token", {}),
        ("Authorization: Bearer wrong", bearer("wrong")),
        ("a wrong X-Driftd-Token", driftd_header("wrong")),
    ]
    for what, headers in anonymous:
        status = _call(client, method, url, headers, body)
        if status != 401:
            problems.append(f"{method} {url}: answered {status} to {what}, not 401")
    if scope is None:
        return problems
    for holder in SCOPES:
        token = tokens[holder]
        statuses = [_call(client, method, url, present(token), body) for present in PRESENTATIONS]
        if holder not in GRANTING[scope]:
            for present, status in zip(PRESENTATIONS, statuses, strict=True):
                if status not in REFUSED:
                    problems.append(
                        f"{method} {url}: answered {status} to the {holder} token "
                        f"({present.__name__}), which does not grant {scope}"
                    )
        elif all(status in REFUSED for status in statuses):
            problems.append(
                f"{method} {url}: refused the {holder} token ({statuses}), which grants {scope}"
            )
    return problems


def _call(client: TestClient, method: str, url: str, headers: Mapping[str, str], body: Any) -> int:
    if body is None:
        return client.request(method, url, headers=dict(headers)).status_code
    return client.request(method, url, headers=dict(headers), json=body).status_code


def scope_tokens(driftd: Driftd) -> dict[str, str]:
    secrets = driftd.secrets
    return {"ingest": secrets.ingest, "proxy": secrets.proxy, "admin": secrets.admin}


# -- the matrix --------------------------------------------------------------------------------


def test_every_operation_in_the_document_is_public_or_guarded_by_its_scope(
    driftd: Driftd,
) -> None:
    problems = auth_matrix(driftd.client, scope_tokens(driftd))
    assert problems == [], "\n".join(problems)
    for path in UNDOCUMENTED_PUBLIC:
        assert driftd.client.get(path).status_code == 200, path


def test_the_document_lists_the_operations_with_their_deployments(driftd: Driftd) -> None:
    spec = driftd.client.get("/openapi.json").json()
    found = {(method, path): op for method, path, op in operations(spec)}
    assert set(KNOWN) <= set(found)
    configured = sorted(d.name for d in driftd.config.deployments)
    proxied = sorted(d.name for d in driftd.config.deployments if d.proxied)
    assert proxied == ["byok", "support-bot"]
    for (method, path), operation in found.items():
        for parameter in operation.get("parameters", ()):
            if parameter["in"] != "path" or parameter["name"] not in ("name", "deployment"):
                continue
            wanted = proxied if path.startswith("/proxy/") else configured
            enum = parameter.get("schema", {}).get("enum")
            assert sorted(enum or []) == wanted, f"{method} {path} {parameter['name']}: {enum}"


def test_a_route_added_without_a_guard_fails_the_matrix(driftd: Driftd) -> None:
    app = driftd.app

    def leak() -> dict[str, str]:
        return {"secret": "anyone can read this"}

    app.get("/v1/leak")(leak)  # untagged
    app.get("/v1/peek", tags=["health"])(leak)  # tagged as a probe, but not on the public list
    app.openapi_schema = None  # the document is built once and cached; derive it again

    problems = auth_matrix(driftd.client, scope_tokens(driftd))

    assert "GET /v1/leak: answered 200 to no token, not 401" in problems
    assert "GET /v1/leak: answered 200 to Authorization: Bearer wrong, not 401" in problems
    assert "GET /v1/peek: not public, but declares no security" in problems
    assert "GET /v1/peek: answered 200 to no token, not 401" in problems


def test_the_matrix_reports_a_token_that_grants_beyond_its_scope_and_one_refused(
    driftd: Driftd,
) -> None:
    tokens = scope_tokens(driftd)
    swapped = {**tokens, "ingest": tokens["admin"], "admin": "not-a-token"}

    problems = auth_matrix(driftd.client, swapped)

    events = "GET /v1/events"
    assert f"{events}: answered 200 to the ingest token (bearer), which does not grant admin" in (
        problems
    )
    assert f"{events}: refused the admin token ([401, 401]), which grants admin" in problems


def test_metrics_behind_admin_tokens_are_guarded_and_documented_so(
    launch_security: SecurityLaunch,
) -> None:
    driftd = launch_security(server="{metrics_auth: true}")
    spec = driftd.client.get("/openapi.json").json()
    metrics = spec["paths"]["/metrics"]["get"]
    assert metrics.get("security"), metrics
    assert metrics.get("x-driftd-scope") == "admin"

    problems = auth_matrix(
        driftd.client,
        scope_tokens(driftd),
        public=PUBLIC - {"/metrics"},
        known={**KNOWN, ("GET", "/metrics"): "admin"},
    )
    assert [p for p in problems if "/metrics" in p] == []
    assert driftd.client.get("/metrics").status_code == 401
    assert driftd.client.get("/metrics", headers=bearer(driftd.secrets.admin)).status_code == 200
