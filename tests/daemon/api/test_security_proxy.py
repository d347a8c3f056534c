"""What the proxy lets through to an upstream, and what it never does: driftd's tokens, a
caller's claim to a request id, a deployment's name to a caller without a token, a body over the
limit or not a JSON object. Who may call what at all is in ``test_security.py``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from tests.daemon.api.conftest import PLAUSIBLE_BODIES, REFUSED, bearer, driftd_header

if TYPE_CHECKING:
    from tests.daemon.api.conftest import (
        Driftd,
        Launch,
        RecordingUpstream,
        Secrets,
        Seen,
    )


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
