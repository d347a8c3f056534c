"""The version route over a real store (SQLite and PostgreSQL): what each kind of deployment
serves, with its ETag, 304 for an app that has it already, auth, 404s, and 503 while the store
cannot be read. The OpenAI fine-tune through the proxy is in ``tests/daemon/test_serving.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from daemon.api.version import version_router
from daemon.auth import Tokens
from daemon.config.models import Deployment
from daemon.errors import StoreError
from daemon.prompts import ensure_initial
from daemon.serving import ActiveVersion, VersionCache, read_active_version
from daemon.store import Store
from daemon.store.versions import add_version, promote
from tests.daemon.api.conftest import guard

INGEST = {"Authorization": "Bearer ingest-1"}
ADMIN = {"Authorization": "Bearer admin-1"}
TUNED = "ft:gpt-4o-mini-2024-07-18:acme:intents:abc123"


def client_of(cache: VersionCache) -> TestClient:
    authorize = guard(Tokens(ingest=(b"ingest-1",), admin=(b"admin-1",)))
    app = FastAPI()
    app.include_router(
        version_router(
            cache,
            authorize,
            deployments=("intents", "local", "support-bot", "new-bot"),
            by_model_id=("intents", "new-bot"),
        )
    )
    return TestClient(app)


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    store.ensure_deployment("intents", "finetuned", "classification")
    store.ensure_deployment("local", "finetuned", "classification")
    store.ensure_deployment("support-bot", "prompted", "generation")
    store.ensure_deployment("new-bot", "finetuned", "generation")
    add_version(store, "intents", kind="model", name="intents-1", artifact=TUNED)
    promote(store, "intents", "intents-1", actor="test")
    add_version(store, "local", kind="model", name="v3", artifact="/srv/models/v3")
    promote(store, "local", "v3", actor="test")
    prompted = Deployment.model_validate(
        {
            "name": "support-bot",
            "kind": "prompted",
            "task": "generation",
            "prompt": {"model": "gpt-4o-mini", "system": "You help bank customers."},
        }
    )
    ensure_initial(store, prompted)
    with client_of(VersionCache(store, ttl_s=0)) as client:
        yield client


def test_each_kind_of_version_says_what_to_call(client: TestClient) -> None:
    tuned = client.get("/v1/deployments/intents/version", headers=INGEST)
    assert tuned.status_code == 200, tuned.text
    assert tuned.json() == {
        "deployment": "intents",
        "version": "intents-1",
        "kind": "model",
        "artifact": TUNED,
        "model": TUNED,
        "prompt": None,
    }
    assert tuned.headers["cache-control"] == "max-age=0"

    local = client.get("/v1/deployments/local/version", headers=ADMIN).json()
    assert (local["version"], local["artifact"], local["model"]) == ("v3", "/srv/models/v3", None)

    prompted = client.get("/v1/deployments/support-bot/version", headers=INGEST).json()
    assert prompted == {
        "deployment": "support-bot",
        "version": "prompt-1",
        "kind": "prompt",
        "artifact": None,
        "model": "gpt-4o-mini",
        "prompt": "/v1/deployments/support-bot/prompt",
    }


def test_an_app_with_the_current_version_gets_304(client: TestClient) -> None:
    etag = client.get("/v1/deployments/intents/version", headers=INGEST).headers["etag"]
    assert etag.startswith('"')

    for if_none_match in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        response = client.get(
            "/v1/deployments/intents/version", headers={**INGEST, "If-None-Match": if_none_match}
        )
        assert response.status_code == 304, if_none_match
        assert response.content == b""
        assert response.headers["etag"] == etag


def test_the_version_needs_a_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = client.get("/v1/deployments/intents/version", headers=headers)
        assert response.status_code == 401
        assert "etag" not in response.headers


def test_unknown_deployments_and_ones_without_a_version_are_404(client: TestClient) -> None:
    unknown = client.get("/v1/deployments/nobody/version", headers=INGEST)
    assert unknown.status_code == 404
    assert "unknown deployment 'nobody'" in unknown.json()["detail"]

    fresh = client.get("/v1/deployments/new-bot/version", headers=INGEST)
    assert fresh.status_code == 404
    assert "deployment 'new-bot' has no version registered yet" in fresh.json()["detail"]


def test_an_unreadable_store_is_503_unless_a_version_is_cached(store: Store) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    add_version(store, "intents", kind="model", name="intents-1", artifact=TUNED)
    promote(store, "intents", "intents-1", actor="test")
    down = False

    def flaky(store: Store, name: str) -> ActiveVersion | None:
        if down:
            raise StoreError("cannot reach the store: connection refused")
        return read_active_version(store, name)

    with client_of(VersionCache(store, ttl_s=0, read=flaky)) as client:
        down = True
        response = client.get("/v1/deployments/intents/version", headers=INGEST)
        assert response.status_code == 503
        assert (
            response.json()["detail"] == "cannot reach the store: connection refused; retry later"
        )

        down = False
        assert client.get("/v1/deployments/intents/version", headers=INGEST).status_code == 200
        down = True  # known now: served on while the store is down
        cached = client.get("/v1/deployments/intents/version", headers=INGEST)
        assert cached.status_code == 200
        assert cached.json()["model"] == TUNED
