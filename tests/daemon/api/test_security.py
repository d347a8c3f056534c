"""Who may call what, derived from the daemon's own OpenAPI document, and what the proxy lets
through to an upstream (and what it never does).

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
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from tests.daemon.api.conftest import (
        Driftd,
        Launch,
        RecordingUpstream,
        Secrets,
        SecurityLaunch,
        Seen,
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

PLAUSIBLE_BODIES: dict[str, Any] = {
    "/samples": {"samples": [{"request_id": "matrix-1", "input": "Where is my card?"}]},
    "/feedback": {"feedback": [{"request_id": "matrix-1", "thumb": "up"}]},
    "/chat/completions": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Where is my card?"}],
    },
    "/embeddings": {"model": "text-embedding-3-small", "input": "Where is my card?"},
}
REFUSED = (401, 403)
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def driftd_header(token: str) -> dict[str, str]:
    return {"X-Driftd-Token": token}


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


# -- the proxy ---------------------------------------------------------------------------------


def proxy_deployments(upstream: RecordingUpstream) -> str:
    """One prompted deployment per ``upstream.auth`` mode, each in front of ``upstream``; a
    keyed one whose key is not in the environment; a fine-tuned one the proxy does not serve."""
    lines = [
        "  - {name: intents-clf, kind: finetuned, task: classification, labels: [card, pin],",
        "     model: {provider: transformers, name: ./models/intents}}",
    ]
    for name, auth in (
        ("keyed-bot", "api_key_env: DRIFTD_RECORDED_KEY"),
        ("keyless-bot", "api_key_env: DRIFTD_MISSING_KEY"),
        ("byok-bot", "auth: passthrough"),
        ("open-bot", "auth: passthrough_anonymous"),
    ):
        lines += [
            f"  - name: {name}",
            "    kind: prompted",
            "    task: generation",
            "    prompt: {model: gpt-4o-mini, system: You help bank customers.}",
            f"    upstream: {{base_url: '{upstream.base_url}', {auth}, max_retries: 0}}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def proxied(
    launch: Launch, recording_upstream: RecordingUpstream, driftd_secrets: Secrets
) -> Driftd:
    """A daemon of ``proxy_deployments``, with the keyed deployment's key in its environment."""
    return launch(
        proxy_deployments(recording_upstream),
        environ={"DRIFTD_RECORDED_KEY": driftd_secrets.upstream_key},
        upstream=recording_upstream,
    )


class Answer(Protocol):
    """What the test client answers (an httpx response, of whichever httpx it runs on)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self) -> Any: ...


CHAT = PLAUSIBLE_BODIES["/chat/completions"]
EMBEDDING = PLAUSIBLE_BODIES["/embeddings"]
REQUEST_ID_HEADER = "x-driftd-request-id"


def chat(driftd: Driftd, deployment: str, headers: Mapping[str, str], body: Any = CHAT) -> Answer:
    return driftd.client.post(
        f"/proxy/{deployment}/v1/chat/completions", json=body, headers=dict(headers)
    )


def openai_error(response: Answer, *statuses: int, what: str = "") -> dict[str, Any]:
    """The error of a refused call, asserting its status and OpenAI's error shape."""
    assert response.status_code in statuses, (what, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def received(driftd: Driftd) -> list[Seen]:
    assert driftd.upstream is not None
    return driftd.upstream.received()


def assert_no_driftd_token_went_upstream(driftd: Driftd) -> None:
    for seen in received(driftd):
        for token in driftd.secrets.driftd_tokens():
            for name, value in seen.headers.items():
                assert token not in value, f"the {name} header took a driftd token upstream"
            assert token.encode() not in seen.body


def test_a_keyed_deployment_refuses_callers_without_a_proxy_token_forwarding_and_storing_nothing(
    proxied: Driftd,
) -> None:
    secrets = proxied.secrets
    refused: dict[str, tuple[dict[str, str], tuple[int, ...]]] = {
        "no token": ({}, (401,)),
        "a wrong bearer token": (bearer("wrong"), (401,)),
        "a wrong X-Driftd-Token": (driftd_header("wrong"), (401,)),
        "the caller's own upstream key": (bearer(secrets.callers_key), (401,)),
        "an ingest token": (bearer(secrets.ingest), REFUSED),
        "an ingest X-Driftd-Token": (driftd_header(secrets.ingest), REFUSED),
    }
    for i, (what, (headers, statuses)) in enumerate(refused.items()):
        asked = {**headers, "X-Request-Id": f"refused-{i}"}
        for endpoint, body in (("chat/completions", CHAT), ("embeddings", EMBEDDING)):
            response = proxied.client.post(
                f"/proxy/keyed-bot/v1/{endpoint}", json=body, headers=asked
            )
            openai_error(response, *statuses, what=f"{what} on {endpoint}")
    assert received(proxied) == []

    # The recorder and the writer keep the order of calls: once a later call's sample is
    # stored, any sample of the refused ones would have been stored before it.
    later = chat(proxied, "keyed-bot", {**bearer(secrets.proxy), "X-Request-Id": "later"})
    assert later.status_code == 200, later.text
    assert list(proxied.wait_for_samples("keyed-bot", 1)) == ["later"]
    assert len(received(proxied)) == 1


def test_a_proxy_token_is_swapped_for_the_configured_key_and_never_goes_upstream(
    proxied: Driftd,
) -> None:
    secrets = proxied.secrets
    callers = [
        bearer(secrets.proxy),
        driftd_header(secrets.proxy),
        bearer(secrets.admin),
        {**bearer(secrets.callers_key), **driftd_header(secrets.proxy)},
    ]
    for headers in callers:
        response = chat(proxied, "keyed-bot", headers)
        assert response.status_code == 200, (headers, response.text)
    embedded = proxied.client.post(
        "/proxy/keyed-bot/v1/embeddings", json=EMBEDDING, headers=bearer(secrets.proxy)
    )
    assert embedded.status_code == 200, embedded.text

    seen = received(proxied)
    assert len(seen) == len(callers) + 1
    assert {s.headers.get("authorization") for s in seen} == {f"Bearer {secrets.upstream_key}"}
    assert all("x-driftd-token" not in s.headers for s in seen)
    assert_no_driftd_token_went_upstream(proxied)


def test_a_keyed_deployment_whose_key_is_not_set_answers_503_and_forwards_nothing(
    proxied: Driftd,
) -> None:
    error = openai_error(chat(proxied, "keyless-bot", bearer(proxied.secrets.proxy)), 503)
    assert "DRIFTD_MISSING_KEY" in error["message"]
    openai_error(chat(proxied, "keyless-bot", {}), 401)
    assert received(proxied) == []


def test_passthrough_forwards_the_callers_key_and_still_needs_a_driftd_token(
    proxied: Driftd,
) -> None:
    secrets = proxied.secrets
    own_key = bearer(secrets.callers_key)
    response = chat(proxied, "byok-bot", {**own_key, **driftd_header(secrets.proxy)})
    assert response.status_code == 200, response.text
    [seen] = received(proxied)
    assert seen.headers["authorization"] == f"Bearer {secrets.callers_key}"

    refused = {
        "no driftd token": own_key,
        "a wrong X-Driftd-Token": {**own_key, **driftd_header("wrong")},
        "an ingest X-Driftd-Token": {**own_key, **driftd_header(secrets.ingest)},
        "a proxy token as the API key": {
            **bearer(secrets.proxy),
            **driftd_header(secrets.proxy),
        },
        "a proxy token as the API key, alone": bearer(secrets.proxy),
        "an admin token as the API key, alone": bearer(secrets.admin),
        "nothing": {},
    }
    for what, headers in refused.items():
        error = openai_error(chat(proxied, "byok-bot", headers), 401, what=what)
        assert error["code"] == "invalid_api_key", what
    assert len(received(proxied)) == 1, "a refused call was forwarded"
    assert_no_driftd_token_went_upstream(proxied)


def test_an_anonymous_caller_cannot_claim_a_request_id_ahead_of_the_app(proxied: Driftd) -> None:
    secrets = proxied.secrets
    own_key = bearer(secrets.callers_key)
    response = chat(proxied, "open-bot", {**own_key, "X-Request-Id": "app-req-7"})
    assert response.status_code == 200, response.text
    [seen] = received(proxied)
    assert seen.headers["authorization"] == f"Bearer {secrets.callers_key}"
    stored = proxied.wait_for_samples("open-bot", 1)
    assert "app-req-7" not in stored
    assert list(stored) == [response.headers[REQUEST_ID_HEADER]]

    # The app's own sample of that id, ingested afterwards, is new, not a duplicate.
    sample = {"request_id": "app-req-7", "input": "Where is my card?", "output": "Recorded."}
    ingested = proxied.client.post(
        "/v1/deployments/open-bot/samples",
        json={"samples": [sample]},
        headers=bearer(secrets.ingest),
    )
    assert ingested.json() == {"received": 1, "new": 1, "duplicate": 0, "sampled_out": 0}

    # A caller that presents a driftd token must present a valid one, anonymous mode or not.
    openai_error(chat(proxied, "open-bot", {**own_key, **driftd_header("wrong")}), 401)
    assert len(received(proxied)) == 1


def test_an_authenticated_callers_request_id_names_its_sample(proxied: Driftd) -> None:
    secrets = proxied.secrets
    own_key = bearer(secrets.callers_key)
    callers = {
        "keyed-bot": bearer(secrets.proxy),
        "byok-bot": {**own_key, **driftd_header(secrets.proxy)},
        "open-bot": {**own_key, **driftd_header(secrets.proxy)},
    }
    for deployment, headers in callers.items():
        request_id = f"app-{deployment}-1"
        response = chat(proxied, deployment, {**headers, "X-Request-Id": request_id})
        assert response.status_code == 200, response.text
        assert response.headers[REQUEST_ID_HEADER] == request_id
        assert list(proxied.wait_for_samples(deployment, 1)) == [request_id]

    again = {"request_id": "app-keyed-bot-1", "input": "Where is my card?"}
    ingested = proxied.client.post(
        "/v1/deployments/keyed-bot/samples",
        json={"samples": [again]},
        headers=bearer(secrets.ingest),
    )
    assert ingested.json() == {"received": 1, "new": 0, "duplicate": 1, "sampled_out": 0}


def test_an_upstream_that_repeats_its_request_id_loses_no_samples(proxied: Driftd) -> None:
    assert proxied.upstream is not None
    repeated = proxied.upstream.request_id
    calls = 6
    ours = set()
    for _ in range(calls):
        response = chat(proxied, "keyed-bot", bearer(proxied.secrets.proxy))
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == repeated
        ours.add(response.headers[REQUEST_ID_HEADER])

    stored = proxied.wait_for_samples("keyed-bot", calls)
    assert set(stored) == ours
    assert len(ours) == calls
    assert [meta and meta.get("upstream_request_id") for meta in stored.values()] == [
        repeated
    ] * calls


def test_the_proxy_names_no_deployment_to_a_caller_without_a_token(proxied: Driftd) -> None:
    names = [d.name for d in proxied.config.deployments]
    for deployment in ("nobody", "intents-clf"):
        for headers in ({}, bearer(proxied.secrets.callers_key), bearer("wrong")):
            response = chat(proxied, deployment, headers)
            openai_error(response, 401)
            others = [name for name in names if name != deployment and name in response.text]
            assert others == [], response.text
        known = openai_error(chat(proxied, deployment, bearer(proxied.secrets.proxy)), 404)
        assert known["code"] == "deployment_not_found"
    assert received(proxied) == []


def test_a_body_over_the_limit_is_refused_413_before_anything_is_forwarded(
    proxied: Driftd,
) -> None:
    headers = {**bearer(proxied.secrets.proxy), "Content-Type": "application/json"}
    chunk = b"a" * (1024 * 1024)
    whole = b'{"model": "m", "input": "' + chunk * 50 + b'"}'
    url = "/proxy/keyed-bot/v1/embeddings"
    error = openai_error(proxied.client.post(url, content=whole, headers=headers), 413)
    assert error["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is met while reading
        yield b'{"model": "m", "input": "'
        for _ in range(50):
            yield chunk
        yield b'"}'

    openai_error(proxied.client.post(url, content=chunked(), headers=headers), 413)
    assert received(proxied) == []


NOT_JSON_OBJECTS = {
    "100k brackets": b"[" * 100_000,
    "100k brackets, closed": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "100k objects": b'{"a": ' * 100_000,
    "not JSON": b"not json",
    "not UTF-8": b"\xff\xfe{}",
    "empty": b"",
    "an array": b"[]",
    "a string": b'"a string"',
}


def test_a_body_that_is_not_a_json_object_or_nests_too_deep_is_400_not_500(
    proxied: Driftd,
) -> None:
    callers = {  # a keyed deployment's caller, and an anonymous one with its own key
        "keyed-bot": bearer(proxied.secrets.proxy),
        "open-bot": bearer(proxied.secrets.callers_key),
    }
    for what, body in NOT_JSON_OBJECTS.items():
        for deployment, caller in callers.items():
            response = proxied.client.post(
                f"/proxy/{deployment}/v1/chat/completions",
                content=body,
                headers={**caller, "Content-Type": "application/json"},
            )
            error = openai_error(response, 400, what=f"{what} to {deployment}")
            assert error["code"] == "invalid_body", what
    assert received(proxied) == []
