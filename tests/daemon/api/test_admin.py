"""The admin API over a real store (SQLite and PostgreSQL): auth, filters, errors, steering."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from daemon.api.admin import admin_router
from daemon.auth import Tokens
from daemon.config.models import Hooks
from daemon.domain import JobState
from daemon.store import Store
from daemon.store import jobs as job_store
from daemon.store.engine import unreachable
from daemon.store.versions import add_version, list_versions
from tests.daemon.api.conftest import guard
from tests.helpers.checks import new_check

ADMIN = {"Authorization": "Bearer admin-1"}
INGEST = {"Authorization": "Bearer ingest-1"}
NOW = datetime.now(UTC).replace(microsecond=0)


def guarded_app(
    store: Store,
    hooks: Mapping[str, Hooks] | None = None,
    run_check: Callable[[str], datetime] | None = None,
) -> FastAPI:
    """The admin router behind the same guard contract as ``create_app``'s ``authorize``."""
    authorize = guard(Tokens(ingest=(b"ingest-1",), admin=(b"admin-1",)))
    app = FastAPI()
    app.include_router(admin_router(store, authorize, hooks=hooks or {}, run_check=run_check))
    return app


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    for name, kind, task in (
        ("support-bot", "prompted", "generation"),
        ("intents", "finetuned", "classification"),
    ):
        store.ensure_deployment(name, kind, task)
    with TestClient(guarded_app(store)) as client:
        client.headers.update(ADMIN)
        yield client


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()]


def test_every_admin_route_needs_an_admin_token(client: TestClient, store: Store) -> None:
    add_version(store, "support-bot", kind="prompt", name="v1", artifact="p1")
    routes = [
        ("get", "/v1/checks"),
        ("get", "/v1/checks/1"),
        ("get", "/v1/jobs"),
        ("post", "/v1/jobs/1/approve"),
        ("post", "/v1/jobs/1/cancel"),
        ("post", "/v1/jobs/1/retry"),
        ("get", "/v1/deployments/support-bot/versions"),
        ("post", "/v1/deployments/support-bot/versions/v1/promote"),
        ("post", "/v1/deployments/support-bot/rollback"),
        ("get", "/v1/events"),
    ]
    for headers in ({"Authorization": ""}, INGEST, {"Authorization": "Bearer admin-2"}):
        for method, path in routes:
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "admin" in response.json()["detail"]
    assert [v.state for v in list_versions(store, "support-bot")] == ["candidate"]


def test_checks_are_listed_newest_first_with_filters(client: TestClient, store: Store) -> None:
    old = store.record_check("support-bot", new_check("ok", at=NOW - timedelta(hours=5)))
    drift = store.record_check(
        "support-bot", new_check("drift", at=NOW - timedelta(hours=1), drifted={"embedding": 0.6})
    )
    other = store.record_check("intents", new_check("ok", at=NOW - timedelta(minutes=10)))

    everything = client.get("/v1/checks")
    assert ids(everything) == [other, drift, old]
    listed = everything.json()[1]
    assert listed["deployment"] == "support-bot"
    assert listed["status"] == "drift"
    assert listed["drifted"] == ["embedding"]
    assert "signals" not in listed
    assert datetime.fromisoformat(listed["started_at"]) == NOW - timedelta(hours=1)
    assert ids(client.get("/v1/checks", params={"deployment": "support-bot"})) == [drift, old]
    assert ids(client.get("/v1/checks", params={"status": "ok"})) == [other, old]
    assert ids(client.get("/v1/checks", params={"since": "2h"})) == [other, drift]
    since = (NOW - timedelta(hours=3)).isoformat()
    assert ids(client.get("/v1/checks", params={"since": since})) == [other, drift]
    assert ids(client.get("/v1/checks", params={"limit": 1})) == [other]


def test_one_check_comes_with_its_signals(client: TestClient, store: Store) -> None:
    check = new_check("drift", at=NOW, drifted={"descriptors": 0.6}, calm={"embedding": 0.01})
    check_id = store.record_check("support-bot", check)

    response = client.get(f"/v1/checks/{check_id}")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == check_id
    assert body["deployment"] == "support-bot"
    assert body["drifted"] == ["descriptors"]
    assert [s["name"] for s in body["signals"]["signals"]] == ["descriptors", "embedding"]
    assert body["signals"]["signals"][0]["score"] == 0.6
    missing = client.get("/v1/checks/999")
    assert missing.status_code == 404
    assert "no check 999" in missing.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params", "field", "says"),
    [
        ("/v1/checks", {"status": "drifting"}, "status", "'ok', 'drift'"),
        ("/v1/checks", {"since": "yesterday"}, "since", "a duration ago like '2h'"),
        ("/v1/checks", {"since": "2026-11-01T12:00:00"}, "since", "has no timezone"),
        ("/v1/checks", {"limit": 0}, "limit", "greater than or equal to 1"),
        ("/v1/checks", {"limit": 5000}, "limit", "less than or equal to 1000"),
        ("/v1/jobs", {"state": "done"}, "state", "'queued'"),
        ("/v1/events", {"until": "soon"}, "until", "ISO 8601"),
        ("/v1/events", {"since": "1h", "until": "2h"}, "until", "must be after since"),
        ("/v1/checks/abc", {}, "check_id", "valid integer"),
        # Moments that overflow a datetime once the duration or the offset is taken off.
        ("/v1/events", {"since": "99999999h"}, "since", "is out of range"),
        ("/v1/events", {"since": "99999999999999999w"}, "since", "is out of range"),
        ("/v1/checks", {"since": "0001-01-01T00:00:00+01:00"}, "since", "is out of range"),
        ("/v1/events", {"until": "9999-12-31T23:59:59-01:00"}, "until", "is out of range"),
        # Ids beyond what the id columns hold, or below the first one.
        ("/v1/checks/9223372036854775808", {}, "check_id", "less than or equal to 2147483647"),
        ("/v1/checks/2147483648", {}, "check_id", "less than or equal to 2147483647"),
        ("/v1/checks/0", {}, "check_id", "greater than or equal to 1"),
        ("/v1/checks/-1", {}, "check_id", "greater than or equal to 1"),
        # PostgreSQL cannot compare text holding NUL: refused before the query.
        ("/v1/checks", {"deployment": "support\x00bot"}, "deployment", "NUL character"),
        ("/v1/events", {"kind": "job.\x00"}, "kind", "NUL character"),
        ("/v1/deployments/support%00bot/versions", {}, "name", "NUL character"),
    ],
)
def test_a_bad_filter_is_a_422_naming_the_parameter(
    client: TestClient, path: str, params: dict[str, Any], field: str, says: str
) -> None:
    response = client.get(path, params=params)

    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"][-1] == field
    assert says in problem["msg"]


@pytest.mark.parametrize("action", ["approve", "cancel", "retry"])
@pytest.mark.parametrize(
    ("job_id", "says"),
    [
        (2**63, "less than or equal to 2147483647"),
        (2**31, "less than or equal to 2147483647"),
        (0, "greater than or equal to 1"),
        (-5, "greater than or equal to 1"),
    ],
)
def test_a_job_id_out_of_range_is_a_422(
    client: TestClient, action: str, job_id: int, says: str
) -> None:
    response = client.post(f"/v1/jobs/{job_id}/{action}")

    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["path", "job_id"]
    assert says in problem["msg"]


def test_the_edges_of_the_ranges_are_answered(client: TestClient, store: Store) -> None:
    """The largest id and the extreme moments reach the store and find nothing."""
    biggest = 2**31 - 1
    assert client.get(f"/v1/checks/{biggest}").status_code == 404
    assert client.post(f"/v1/jobs/{biggest}/approve").status_code == 404
    assert client.get("/v1/checks", params={"since": "0001-01-01T00:00:00Z"}).json() == []
    every_time = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999999Z"}
    store.add_event("intents", "job.queued", "queued", {}, ts=NOW)
    assert len(ids(client.get("/v1/events", params=every_time))) == 1


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("post", "/v1/deployments/support%00bot/versions/v1/promote", "name"),
        ("post", "/v1/deployments/support-bot/versions/v%001/promote", "version"),
        ("post", "/v1/deployments/support%00bot/rollback", "name"),
    ],
)
def test_a_nul_in_a_path_is_a_422(client: TestClient, method: str, path: str, field: str) -> None:
    response = client.request(method, path)

    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["path", field]
    assert "NUL character" in problem["msg"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/checks?deployment=nowhere"),
        ("get", "/v1/jobs?deployment=nowhere"),
        ("get", "/v1/events?deployment=nowhere"),
        ("get", "/v1/deployments/nowhere/versions"),
        ("post", "/v1/deployments/nowhere/versions/v1/promote"),
        ("post", "/v1/deployments/nowhere/rollback"),
    ],
)
def test_an_unknown_deployment_is_a_404(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)

    assert response.status_code == 404
    assert "unknown deployment 'nowhere'" in response.json()["detail"]


def test_a_store_that_cannot_answer_is_a_503_not_a_404(store: Store) -> None:
    """Only a row that is not there is a 404; a store that cannot answer (here the scheduler's
    store, unreachable when a check is asked for) is a 503 with the store's own message."""
    store.ensure_deployment("support-bot", "prompted", "generation")

    def unreachable_store(name: str) -> datetime:
        raise unreachable(store.engine, OSError("connection refused"))

    app = guarded_app(store, {"support-bot": Hooks()}, run_check=unreachable_store)
    with TestClient(app, headers=ADMIN) as client:
        response = client.post("/v1/deployments/support-bot/checks")
        missing = client.get("/v1/checks/999")

    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "cannot connect to the store" in detail
    assert "connection refused" in detail
    assert missing.status_code == 404


def test_jobs_are_listed_and_steered(client: TestClient, store: Store) -> None:
    waiting = job_store.create_job(
        store, "support-bot", "prompt_revision", "drift", {}, state=JobState.awaiting_approval
    )
    queued = job_store.create_job(store, "intents", "evaluate", "schedule", {"golden": "g.jsonl"})

    assert ids(client.get("/v1/jobs")) == [queued, waiting]
    assert ids(client.get("/v1/jobs", params={"state": "awaiting_approval"})) == [waiting]
    assert ids(client.get("/v1/jobs", params={"deployment": "intents"})) == [queued]
    listed = client.get("/v1/jobs").json()[0]
    assert (listed["deployment"], listed["kind"], listed["trigger"]) == (
        "intents",
        "evaluate",
        "schedule",
    )
    assert listed["spec"] == {"golden": "g.jsonl"}

    approved = client.post(f"/v1/jobs/{waiting}/approve")
    assert approved.status_code == 200
    assert approved.json()["state"] == "queued"
    again = client.post(f"/v1/jobs/{waiting}/approve")
    assert again.status_code == 409
    assert "is queued, so it cannot be approved" in again.json()["detail"]

    cancelled = client.post(f"/v1/jobs/{queued}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    assert client.post(f"/v1/jobs/{queued}/cancel").status_code == 409
    retried = client.post(f"/v1/jobs/{queued}/retry")
    assert retried.status_code == 200
    assert retried.json()["state"] == "queued"
    refused = client.post(f"/v1/jobs/{queued}/retry")
    assert refused.status_code == 409
    assert "only a job that is failed or cancelled can" in refused.json()["detail"]

    for action in ("approve", "cancel", "retry"):
        missing = client.post(f"/v1/jobs/999/{action}")
        assert missing.status_code == 404
        assert "no job 999" in missing.json()["detail"]
    approval = client.get("/v1/events", params={"kind": "job.queued"}).json()
    assert any(e["evidence"].get("approved_by") == "api:testclient" for e in approval)


def test_promote_and_roll_back_over_http(client: TestClient, store: Store) -> None:
    for name in ("v1", "v2"):
        add_version(store, "support-bot", kind="prompt", name=name, artifact=f"{name}.txt")

    first = client.post("/v1/deployments/support-bot/versions/v1/promote")
    second = client.post("/v1/deployments/support-bot/versions/v2/promote")

    assert first.status_code == 200, first.text
    assert first.json()["previous"] is None
    body = second.json()
    assert (body["active"]["name"], body["active"]["state"]) == ("v2", "active")
    assert (body["previous"]["name"], body["previous"]["state"]) == ("v1", "retired")
    listed = client.get("/v1/deployments/support-bot/versions").json()
    assert [(v["name"], v["state"]) for v in listed] == [("v2", "active"), ("v1", "retired")]
    assert listed[0]["promoted_at"] is not None

    rolled = client.post("/v1/deployments/support-bot/rollback")

    assert rolled.status_code == 200
    assert rolled.json()["active"]["name"] == "v1"
    assert rolled.json()["previous"]["meta"]["rolled_back"] is True
    trail = client.get("/v1/events", params={"kind": "version."}).json()
    assert [e["kind"] for e in trail] == [
        "version.rolled_back",
        "version.promoted",
        "version.promoted",
    ]
    assert trail[0]["id"] == rolled.json()["event_id"]
    assert trail[0]["evidence"]["actor"] == "api:testclient"
    assert (trail[0]["evidence"]["old"]["name"], trail[0]["evidence"]["new"]["name"]) == (
        "v2",
        "v1",
    )


def test_refused_version_changes(client: TestClient, store: Store) -> None:
    add_version(store, "support-bot", kind="prompt", name="v1", artifact="v1.txt")
    add_version(store, "support-bot", kind="prompt", name="bad", artifact="b", state="rejected")
    base = "/v1/deployments/support-bot"

    nothing = client.post(f"{base}/rollback")
    assert nothing.status_code == 409
    assert "has no active version" in nothing.json()["detail"]
    assert client.post(f"{base}/versions/v1/promote").status_code == 200
    active = client.post(f"{base}/versions/v1/promote")
    assert active.status_code == 409
    assert "already active" in active.json()["detail"]
    unknown = client.post(f"{base}/versions/v9/promote")
    assert unknown.status_code == 404
    assert "has no version 'v9'" in unknown.json()["detail"]
    rejected = client.post(f"{base}/versions/bad/promote")
    assert rejected.status_code == 409
    assert "rejected by its gate" in rejected.json()["detail"]
    assert client.get(f"{base}/versions").json()[0]["state"] == "rejected"

    forced = client.post(f"{base}/versions/bad/promote", params={"force": "true"})

    assert forced.status_code == 200
    assert forced.json()["active"]["name"] == "bad"


def test_promote_and_roll_back_run_the_deployments_hooks(store: Store, tmp_path: Path) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    store.ensure_deployment("support-bot", "prompted", "generation")
    models = tmp_path / "models"
    for name in ("v1", "v2"):
        (models / name).mkdir(parents=True)
        add_version(store, "intents", kind="model", name=name, artifact=str(models / name))
    add_version(store, "support-bot", kind="prompt", name="p1", artifact="p1.txt")
    failing = "import sys; sys.stderr.write('reload refused\\n'); sys.exit(4)"
    hooks = {"intents": Hooks(models_dir=models, command=(sys.executable, "-c", failing))}
    with TestClient(guarded_app(store, hooks)) as client:
        client.headers.update(ADMIN)

        first = client.post("/v1/deployments/intents/versions/v1/promote")
        second = client.post("/v1/deployments/intents/versions/v2/promote")
        assert os.readlink(models / "current") == str(models / "v2")
        rolled = client.post("/v1/deployments/intents/rollback")
        # A deployment without hooks in the configuration runs none.
        other = client.post("/v1/deployments/support-bot/versions/p1/promote")
        trail = client.get("/v1/events", params={"kind": "hook.", "deployment": "intents"})

    # The command fails every time, yet every change is made: hooks follow the commit.
    for response in (first, second, rolled):
        assert response.status_code == 200, response.text
        assert [(h["hook"], h["ok"]) for h in response.json()["hooks"]] == [
            ("models_dir", True),
            ("command", False),
        ]
    assert "exited with 4: reload refused" in rolled.json()["hooks"][1]["detail"]
    assert rolled.json()["active"]["name"] == "v1"
    assert os.readlink(models / "current") == str(models / "v1")
    assert other.status_code == 200
    assert other.json()["hooks"] == []
    events = trail.json()
    assert [e["kind"] for e in events] == ["hook.failed", "hook.ok"] * 3
    assert events[0]["evidence"]["change_event_id"] == rolled.json()["event_id"]
    assert events[0]["evidence"]["action"] == "rolled_back"
    assert events[0]["message"].startswith("intents: command hook after the rollback to version v1")


def test_events_are_filtered_by_deployment_kind_and_time(client: TestClient, store: Store) -> None:
    def event(deployment: str | None, kind: str, hours_ago: float) -> int:
        return store.add_event(
            deployment, kind, f"{kind} happened", {"n": 1}, ts=NOW - timedelta(hours=hours_ago)
        )

    started = event(None, "daemon.started", 6)
    decision = event("support-bot", "policy.decision", 4)
    queued = event("support-bot", "job.queued", 3)
    failed = event("intents", "job.failed", 1)
    rolled = event("intents", "version.rolled_back", 0.5)

    assert ids(client.get("/v1/events")) == [rolled, failed, queued, decision, started]
    assert client.get("/v1/events").json()[-1]["deployment"] is None
    assert ids(client.get("/v1/events", params={"kind": "job."})) == [failed, queued]
    assert ids(client.get("/v1/events", params={"kind": "policy"})) == [decision]
    assert ids(client.get("/v1/events", params={"kind": "version.rolled_"})) == [rolled]
    assert ids(client.get("/v1/events", params={"kind": "JOB."})) == []
    assert ids(client.get("/v1/events", params={"deployment": "intents"})) == [rolled, failed]
    window = {"since": "5h", "until": (NOW - timedelta(hours=2)).isoformat()}
    assert ids(client.get("/v1/events", params=window)) == [queued, decision]
    assert ids(client.get("/v1/events", params={"limit": 2})) == [rolled, failed]
    assert client.get("/v1/events").json()[0]["message"] == "version.rolled_back happened"
