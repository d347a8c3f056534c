"""The prompt route over a real store (SQLite and PostgreSQL): the active prompt with its ETag,
304 for an app that has it already, a new ETag after a promotion, auth and 404s."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from daemon.api.prompt import prompt_router
from daemon.auth import Tokens
from daemon.config.models import Deployment
from daemon.prompts import Example, PromptCache, PromptSpec, add_prompt_version, ensure_initial
from daemon.store import Store
from daemon.store.versions import promote
from tests.daemon.api.conftest import guard

ADMIN = {"Authorization": "Bearer admin-1"}
INGEST = {"Authorization": "Bearer ingest-1"}
URL = "/v1/deployments/support-bot/prompt"


def guarded_app(cache: PromptCache) -> FastAPI:
    """The prompt router behind the same guard contract as ``create_app``'s ``authorize``."""
    authorize = guard(Tokens(ingest=(b"ingest-1",), admin=(b"admin-1",)))
    app = FastAPI()
    app.include_router(
        prompt_router(cache, authorize, deployments=("support-bot", "intents", "new-bot"))
    )
    return app


@pytest.fixture
def cache(store: Store) -> PromptCache:
    store.ensure_deployment("support-bot", "prompted", "generation")
    store.ensure_deployment("intents", "finetuned", "classification")
    store.ensure_deployment("new-bot", "prompted", "generation")
    config = Deployment.model_validate(
        {
            "name": "support-bot",
            "kind": "prompted",
            "task": "generation",
            "prompt": {
                "model": "gpt-4o-mini",
                "system": "You are a helpful bank support agent.",
                "examples": [{"input": "I lost my card", "output": "I have frozen it."}],
            },
        }
    )
    ensure_initial(store, config)
    # No time to live: each request reads the store, so a promotion shows at once.
    return PromptCache(store, ttl_s=0)


@pytest.fixture
def client(cache: PromptCache) -> Iterator[TestClient]:
    with TestClient(guarded_app(cache)) as client:
        yield client


def test_the_active_prompt_is_served_with_its_etag(client: TestClient) -> None:
    response = client.get(URL, headers=INGEST)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "deployment": "support-bot",
        "version": "prompt-1",
        "system": "You are a helpful bank support agent.",
        "few_shot": [{"input": "I lost my card", "output": "I have frozen it."}],
        "model": "gpt-4o-mini",
    }
    etag = response.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert response.headers["cache-control"] == "max-age=0"
    assert client.get(URL, headers=ADMIN).headers["etag"] == etag


def test_an_app_with_the_current_prompt_gets_304(client: TestClient) -> None:
    etag = client.get(URL, headers=INGEST).headers["etag"]

    for if_none_match in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        response = client.get(URL, headers={**INGEST, "If-None-Match": if_none_match})
        assert response.status_code == 304, if_none_match
        assert response.content == b""
        assert response.headers["etag"] == etag

    other = client.get(URL, headers={**INGEST, "If-None-Match": '"stale"'})
    assert other.status_code == 200
    assert other.json()["version"] == "prompt-1"


def test_a_promotion_changes_the_etag_and_the_prompt(client: TestClient, store: Store) -> None:
    old = client.get(URL, headers=INGEST).headers["etag"]
    revised = PromptSpec(
        "You are concise.", (Example("Where is my card?", "On its way."),), "gpt-4o-mini"
    )
    add_prompt_version(store, "support-bot", revised, parent="prompt-1")
    promote(store, "support-bot", "prompt-2", actor="test")

    response = client.get(URL, headers={**INGEST, "If-None-Match": old})

    assert response.status_code == 200
    assert response.headers["etag"] != old
    assert response.json()["version"] == "prompt-2"
    assert response.json()["system"] == "You are concise."


def test_the_prompt_needs_a_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic ingest-1"}):
        response = client.get(URL, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "etag" not in response.headers


def test_deployments_without_a_prompt_are_404(client: TestClient) -> None:
    unknown = client.get("/v1/deployments/nobody/prompt", headers=INGEST)
    assert unknown.status_code == 404
    assert "unknown deployment 'nobody'" in unknown.json()["detail"]

    for name in ("intents", "new-bot"):
        response = client.get(f"/v1/deployments/{name}/prompt", headers=INGEST)
        assert response.status_code == 404
        assert f"deployment {name!r} serves no prompt version" in response.json()["detail"]


def test_apps_may_cache_the_prompt_as_long_as_the_daemon_does(
    cache: PromptCache, store: Store
) -> None:
    with TestClient(guarded_app(PromptCache(store))) as client:
        response = client.get(URL, headers=INGEST)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "max-age=5"
