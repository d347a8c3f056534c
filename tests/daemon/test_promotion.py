"""Promotion hooks: the ``current`` link, a webhook received by a real local HTTP server, a real
command, and the audit events a promotion or rollback leaves on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.config.models import Hooks
from daemon.errors import StoreError
from daemon.retune.promotion import VersionInfo, promote, rollback, run_hooks
from daemon.store import Store
from daemon.store.versions import add_version, list_versions
from tests.fake_webhook import Receiver
from tests.helpers.serve import free_port

V1 = VersionInfo(name="v1", artifact="v1", kind="model")
V2 = VersionInfo(name="v2", artifact="v2", kind="model")
# Writes the DRIFTD_* variables it was given, as JSON, to the file named by its argument.
RECORD_ENV = (
    "import json, os, sys; "
    "json.dump({k: v for k, v in os.environ.items() if k.startswith('DRIFTD_')}, "
    "open(sys.argv[1], 'w'))"
)
FAIL = (
    "import sys; sys.stderr.write('reload refused: unit intents.service not found\\n'); sys.exit(3)"
)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A models folder holding two versions' artifacts, v1 and v2."""
    folder = tmp_path / "models"
    for name in ("v1", "v2"):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps({"version": name}))
    return folder


def hook(hooks: Hooks, old: VersionInfo | None = V1, new: VersionInfo = V2) -> Any:
    [outcome] = run_hooks(
        hooks, deployment="intents", action="promoted", old=old, new=new, retry_backoff=0.01
    )
    return outcome


def test_current_moves_to_the_new_artifact_without_ever_being_missing(models: Path) -> None:
    hooks = Hooks(models_dir=models)
    current = models / "current"
    assert hook(hooks, old=None, new=V1).ok
    assert os.readlink(current) == "v1"  # relative artifacts stay relative to models_dir
    misses: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                json.loads((current / "config.json").read_text())
            except OSError as error:
                misses.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(100):
            assert hook(hooks, old=V1, new=V2).ok
            assert hook(hooks, old=V2, new=V1).ok
    finally:
        stop.set()
        reader.join(timeout=10)

    assert misses == []
    outcome = hook(hooks, old=V1, new=V2)
    assert outcome.ok
    assert outcome.detail == f"{current} -> v2"
    assert json.loads((current / "config.json").read_text()) == {"version": "v2"}
    assert sorted(path.name for path in models.iterdir()) == ["current", "v1", "v2"]


def test_current_may_point_at_an_artifact_outside_models_dir(models: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "jobs" / "17" / "model"
    elsewhere.mkdir(parents=True)

    outcome = hook(Hooks(models_dir=models), new=VersionInfo("v3", str(elsewhere), "model"))

    assert outcome.ok
    assert (models / "current").resolve() == elsewhere.resolve()


def test_current_is_left_as_it_was_when_the_new_artifact_is_missing(models: Path) -> None:
    hooks = Hooks(models_dir=models)
    assert hook(hooks, old=None, new=V1).ok

    outcome = hook(hooks, new=VersionInfo("v9", "v9", "model"))

    assert not outcome.ok
    assert outcome.hook == "models_dir"
    assert "artifact 'v9' of version v9 does not exist" in outcome.detail
    assert os.readlink(models / "current") == "v1"


def test_a_real_folder_named_current_is_not_replaced(models: Path) -> None:
    (models / "current").mkdir()

    outcome = hook(Hooks(models_dir=models))

    assert not outcome.ok
    assert "is a real file or folder, not a symlink; move it away" in outcome.detail
    assert (models / "current").is_dir()
    assert not (models / "current").is_symlink()


def test_the_webhook_receives_the_change_as_json() -> None:
    with Receiver() as receiver:
        outcome = hook(Hooks(webhook=receiver.url))

    assert outcome.ok, outcome.detail
    assert outcome.hook == "webhook"
    [body] = receiver.bodies()
    assert body["deployment"] == "intents"
    assert body["action"] == "promoted"
    assert body["old"] == {"name": "v1", "artifact": "v1", "kind": "model"}
    assert body["new"] == {"name": "v2", "artifact": "v2", "kind": "model"}
    at = datetime.fromisoformat(body["at"])
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)
    # The query string may hold a token: it stays out of what is shown and audited.
    assert "s3cret" not in outcome.detail
    assert "answered 200 (attempt 1 of 3)" in outcome.detail


def test_a_5xx_answer_is_retried_and_a_4xx_answer_is_not() -> None:
    with Receiver() as flaky:
        flaky.answer_next(500)
        retried = hook(Hooks(webhook=flaky.url))
    with Receiver() as refusing:
        refusing.answer_next(400)
        refused = hook(Hooks(webhook=refusing.url))
    with Receiver() as down:
        down.answer_next(503, 502, 500)
        exhausted = hook(Hooks(webhook=down.url))

    assert retried.ok
    assert "answered 200 (attempt 2 of 3)" in retried.detail
    assert len(flaky.bodies()) == 2
    assert flaky.bodies()[0] == flaky.bodies()[1]
    assert not refused.ok
    assert len(refusing.bodies()) == 1
    assert "answered 400 (attempt 1 of 3): answered 400" in refused.detail
    assert not exhausted.ok
    assert len(down.bodies()) == 3
    assert "answered 500 (attempt 3 of 3)" in exhausted.detail


def test_an_unreachable_webhook_fails_after_its_retries() -> None:
    port = free_port()
    # Nothing listens on the port any more: every attempt is refused.

    outcome = hook(Hooks(webhook=f"http://127.0.0.1:{port}/hook", timeout=timedelta(seconds=2)))

    assert not outcome.ok
    assert f"http://127.0.0.1:{port}/hook unreachable (attempt 3 of 3): ConnectError" in (
        outcome.detail
    )


def test_the_command_receives_the_versions_in_its_environment(tmp_path: Path) -> None:
    seen = tmp_path / "env.json"

    [outcome] = run_hooks(
        Hooks(command=(sys.executable, "-c", RECORD_ENV, str(seen))),
        deployment="intents",
        action="rolled_back",
        old=V2,
        new=V1,
        environ={"PATH": os.environ.get("PATH", ""), "DRIFTD_STORAGE_URL": "sqlite:///x.db"},
    )

    assert outcome.ok, outcome.detail
    assert json.loads(seen.read_text()) == {
        "DRIFTD_DEPLOYMENT": "intents",
        "DRIFTD_ACTION": "rolled_back",
        "DRIFTD_OLD_VERSION": "v2",
        "DRIFTD_OLD_ARTIFACT": "v2",
        "DRIFTD_NEW_VERSION": "v1",
        "DRIFTD_NEW_ARTIFACT": "v1",
        "DRIFTD_STORAGE_URL": "sqlite:///x.db",  # the environment it inherits
    }


def test_a_failing_command_is_reported_with_its_stderr() -> None:
    failed = hook(Hooks(command=(sys.executable, "-c", FAIL)))
    slow = hook(
        Hooks(
            command=(sys.executable, "-c", "import time; time.sleep(30)"),
            timeout=timedelta(seconds=0.5),
        )
    )
    missing = hook(Hooks(command=("/nonexistent/driftd-reload",)))

    assert not failed.ok
    assert "exited with 3: reload refused: unit intents.service not found" in failed.detail
    assert not slow.ok
    assert "did not finish within 0.5 s and was killed" in slow.detail
    assert not missing.ok
    assert "cannot run `/nonexistent/driftd-reload`" in missing.detail


def test_every_hook_runs_even_when_one_fails(models: Path) -> None:
    with Receiver() as receiver:
        outcomes = run_hooks(
            Hooks(
                models_dir=models,
                command=(sys.executable, "-c", FAIL),
                webhook=receiver.url,
            ),
            deployment="intents",
            action="promoted",
            old=None,
            new=V1,
        )

    assert [(o.hook, o.ok) for o in outcomes] == [
        ("models_dir", True),
        ("command", False),
        ("webhook", True),
    ]
    assert receiver.bodies()[0]["old"] is None


def test_an_openai_model_id_gets_no_link_and_the_other_hooks_still_run(
    models: Path, tmp_path: Path
) -> None:
    tuned = VersionInfo(
        name="v3", artifact="ft:gpt-4o-mini-2024-07-18:acme:intents:abc123", kind="model"
    )
    assert hook(Hooks(models_dir=models), old=None, new=V1).ok
    record = tmp_path / "env.json"
    with Receiver() as receiver:
        outcomes = run_hooks(
            Hooks(
                models_dir=models,
                command=(sys.executable, "-c", RECORD_ENV, str(record)),
                webhook=receiver.url,
            ),
            deployment="intents",
            action="promoted",
            old=V1,
            new=tuned,
        )

    assert [(o.hook, o.ok) for o in outcomes] == [
        ("models_dir", True),
        ("command", True),
        ("webhook", True),
    ]
    assert outcomes[0].detail.startswith(
        "skipped: version v3 is the OpenAI model 'ft:gpt-4o-mini-2024-07-18:acme:intents:abc123', "
        "not a folder"
    )
    assert os.readlink(models / "current") == "v1"  # left as it was, not dangling
    assert not any(p.name.endswith(".partial") for p in models.iterdir())
    assert json.loads(record.read_text())["DRIFTD_NEW_ARTIFACT"] == tuned.artifact
    assert receiver.bodies()[0]["new"]["artifact"] == tuned.artifact


@pytest.fixture
def intents(store: Store, models: Path) -> Store:
    """``store`` with deployment intents and its versions v1 and v2 (artifacts in ``models``)."""
    store.ensure_deployment("intents", "finetuned", "classification")
    for name in ("v1", "v2"):
        add_version(store, "intents", kind="model", name=name, artifact=str(models / name))
    return store


def hook_events(store: Store) -> list[tuple[str, dict[str, Any]]]:
    events = [e for e in store.recent_events("intents") if e.kind.startswith("hook.")]
    return [(e.kind, e.evidence) for e in reversed(events)]


def test_promotion_and_rollback_run_the_hooks_and_audit_each(
    intents: Store, models: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "env.json"
    hooks = Hooks(models_dir=models, command=(sys.executable, "-c", RECORD_ENV, str(seen)))

    first = promote(intents, hooks, "intents", "v1", actor="test")
    second = promote(intents, hooks, "intents", "v2", actor="test")

    assert [o.ok for o in first.hooks + second.hooks] == [True, True, True, True]
    assert (models / "current").resolve() == (models / "v2").resolve()
    assert json.loads(seen.read_text())["DRIFTD_OLD_VERSION"] == "v1"

    back = rollback(intents, hooks, "intents", actor="test")

    assert back.change.active.name == "v1"
    assert (models / "current").resolve() == (models / "v1").resolve()
    assert json.loads(seen.read_text())["DRIFTD_ACTION"] == "rolled_back"
    events = hook_events(intents)
    assert [kind for kind, _ in events] == ["hook.ok"] * 6
    evidence = events[-1][1]
    assert evidence["hook"] == "command"
    assert evidence["action"] == "rolled_back"
    assert evidence["old"]["name"] == "v2"
    assert evidence["new"] == {"name": "v1", "artifact": str(models / "v1"), "kind": "model"}
    assert evidence["change_event_id"] == back.change.event_id


def test_a_failed_hook_leaves_the_promotion_in_place_and_says_so(intents: Store) -> None:
    hooks = Hooks(command=(sys.executable, "-c", FAIL))

    done = promote(intents, hooks, "intents", "v2", actor="test")

    assert [o.hook for o in done.failed] == ["command"]
    states = {v.name: v.state for v in list_versions(intents, "intents")}
    assert states == {"v1": "candidate", "v2": "active"}
    [(kind, evidence)] = hook_events(intents)
    assert kind == "hook.failed"
    assert evidence["ok"] is False
    assert "reload refused" in evidence["detail"]
    [event] = [e for e in intents.recent_events("intents") if e.kind == "hook.failed"]
    assert event.message.startswith("intents: command hook after the promotion of version v2:")


def test_a_refused_promotion_runs_no_hook(intents: Store, tmp_path: Path) -> None:
    seen = tmp_path / "env.json"
    hooks = Hooks(command=(sys.executable, "-c", RECORD_ENV, str(seen)))

    with pytest.raises(StoreError, match="has no version 'v9'"):
        promote(intents, hooks, "intents", "v9", actor="test")

    assert not seen.exists()
    assert hook_events(intents) == []


def test_no_hooks_configured_means_no_hook_events(intents: Store) -> None:
    done = promote(intents, Hooks(), "intents", "v1", actor="test")

    assert done.hooks == ()
    assert hook_events(intents) == []
