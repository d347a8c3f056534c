"""``driftd checks|jobs|versions|events`` on a SQLite store named by a config file."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from daemon.cli.admin import register
from daemon.cli.common import EXIT_FAILURE, EXIT_USAGE
from daemon.domain import JobState
from daemon.store import NewCheck, Store, upgrade
from daemon.store import jobs as job_store
from daemon.store.versions import add_version
from tests.helpers.checks import new_check
from tests.helpers.configs import minimal_config

NOW = datetime.now(UTC).replace(microsecond=0)


def config_on(db: Path) -> str:
    """The configuration file's text: the support bot, on the SQLite store ``db``."""
    return minimal_config(name="support-bot", storage=f'url: "sqlite:///{db.as_posix()}"')


class Driftd:
    """The admin commands on a fresh ``driftd`` app, run with ``-c`` pointing at the config."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.app = typer.Typer(name="driftd", add_completion=False)
        register(self.app)
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        # Wide enough that rich never wraps a cell; no DRIFTD_STORAGE_URL from outside.
        env = {"COLUMNS": "250", "DRIFTD_STORAGE_URL": None, "DRIFTD_CONFIG": None}
        return self.runner.invoke(self.app, [*args, "-c", str(self.config)], env=env)

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store with the config's deployment registered, and the config file."""
    db = tmp_path / "driftd.db"
    (tmp_path / "driftd.yaml").write_text(config_on(db))
    with Store.open(f"sqlite:///{db}") as store:
        upgrade(store.engine)
        store.ensure_deployment("support-bot", "prompted", "generation")
        store.ensure_deployment("intents", "finetuned", "classification")
        yield store


@pytest.fixture
def driftd(store: Store, tmp_path: Path) -> Driftd:
    return Driftd(tmp_path / "driftd.yaml")


def a_check(hours_ago: float, status: str, drifted: bool = False) -> NewCheck:
    """A check of 500 rows of 1234, ``hours_ago``, of two signals: ``errors`` (an output
    signal) drifted if ``drifted``, ``descriptors`` (a data signal) calm."""
    errors = {"errors": 0.81 if drifted else 0.013}
    return new_check(
        status,
        at=NOW - timedelta(hours=hours_ago),
        drifted=errors if drifted else None,
        calm={"descriptors": 0.013, **({} if drifted else errors)},
        current_total=1234,
    )


def lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def test_checks_table_filters_and_json(driftd: Driftd, store: Store) -> None:
    old = store.record_check("support-bot", a_check(5, "ok"))
    drift = store.record_check("support-bot", a_check(1, "drift", drifted=True))
    other = store.record_check("intents", a_check(0.5, "ok"))

    table = driftd("checks")

    assert table.exit_code == 0, table.output
    [row] = lines_with(table.stdout, " drift ")
    assert str(drift) in row
    assert "errors" in row
    assert "500 of 1234" in row
    assert (NOW - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S") in row
    assert [r["id"] for r in driftd.json("checks")] == [other, drift, old]
    assert [r["id"] for r in driftd.json("checks", "support-bot")] == [drift, old]
    assert [r["id"] for r in driftd.json("checks", "--status", "ok")] == [other, old]
    assert [r["id"] for r in driftd.json("checks", "--since", "2h")] == [other, drift]
    assert [r["id"] for r in driftd.json("checks", "list", "--limit", "1")] == [other]
    assert driftd.json("checks", "support-bot", "--status", "drift")[0]["drifted"] == ["errors"]


def test_one_check_shows_its_signals(driftd: Driftd, store: Store) -> None:
    check_id = store.record_check("support-bot", a_check(1, "drift", drifted=True))

    shown = driftd("checks", "show", str(check_id))

    assert shown.exit_code == 0, shown.output
    assert f"check {check_id} of support-bot: drift" in shown.stdout
    [errors] = lines_with(shown.stdout, "errors")
    assert "output" in errors
    assert "0.81" in errors
    assert "drift" in errors
    [descriptors] = lines_with(shown.stdout, "descriptors")
    assert "0.013" in descriptors
    record = driftd.json("checks", "show", str(check_id))
    assert [s["name"] for s in record["signals"]["signals"]] == ["descriptors", "errors"]
    missing = driftd("checks", "show", "999")
    assert missing.exit_code == EXIT_FAILURE
    assert "driftd checks show: no check 999 in the store" in missing.stderr


def test_jobs_are_listed_approved_cancelled_and_retried(driftd: Driftd, store: Store) -> None:
    waiting = job_store.create_job(
        store, "support-bot", "prompt_revision", "drift", {}, state=JobState.awaiting_approval
    )
    queued = job_store.create_job(store, "intents", "evaluate", "schedule", {})

    table = driftd("jobs")

    assert table.exit_code == 0, table.output
    [row] = lines_with(table.stdout, "prompt_revision")
    assert "awaiting_approval" in row
    assert "support-bot" in row
    assert "0 of 3" in row
    assert [j["id"] for j in driftd.json("jobs")] == [queued, waiting]
    assert [j["id"] for j in driftd.json("jobs", "--state", "awaiting_approval")] == [waiting]
    assert [j["id"] for j in driftd.json("jobs", "-d", "intents")] == [queued]

    approved = driftd("jobs", "approve", str(waiting))
    assert approved.exit_code == 0, approved.output
    assert approved.stdout.strip() == (
        f"job {waiting} (prompt_revision) of support-bot: awaiting_approval → queued"
    )
    again = driftd("jobs", "approve", str(waiting))
    assert again.exit_code == EXIT_FAILURE
    assert f"job {waiting} (prompt_revision) is queued, so it cannot be approved" in again.stderr
    assert driftd.json("jobs", "cancel", str(queued))["state"] == "cancelled"
    retried = driftd("jobs", "retry", str(queued))
    assert "cancelled → queued" in retried.stdout
    missing = driftd("jobs", "cancel", "999")
    assert missing.exit_code == EXIT_FAILURE
    assert "no job 999" in missing.stderr
    approval = driftd.json("events", "--kind", "job.queued")
    assert any(str(e["evidence"].get("approved_by")).startswith("cli") for e in approval)


def test_versions_are_promoted_and_rolled_back(driftd: Driftd, store: Store) -> None:
    for name in ("v1", "v2"):
        add_version(
            store,
            "support-bot",
            kind="prompt",
            name=name,
            artifact=f"prompts/{name}.txt",
            parent="v1" if name == "v2" else None,
            eval_scores={"judge": 0.8},
        )

    first = driftd("versions", "promote", "support-bot", "v1")
    second = driftd("versions", "promote", "support-bot", "v2")

    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("support-bot: version v1 is active (was none); audit event")
    assert second.stdout.startswith("support-bot: version v2 is active (was v1)")
    table = driftd("versions", "support-bot")
    assert table.exit_code == 0, table.output
    [v2] = lines_with(table.stdout, "prompts/v2.txt")
    assert "active" in v2
    assert " v1 " in v2  # the parent, by name
    assert '{"judge": 0.8}' in v2
    assert "retired" in lines_with(table.stdout, "prompts/v1.txt")[0]

    rolled = driftd("versions", "rollback", "support-bot")

    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout.startswith("support-bot: rolled back from version v2 to v1;")
    after = driftd("versions", "support-bot")
    assert "rolled back to v1" in lines_with(after.stdout, "prompts/v2.txt")[0]
    listed = driftd.json("versions", "support-bot")
    assert [(v["name"], v["state"]) for v in listed] == [("v2", "retired"), ("v1", "active")]
    change = driftd.json("versions", "promote", "support-bot", "v2")
    assert (change["active"]["name"], change["previous"]["name"]) == ("v2", "v1")
    trail = driftd.json("events", "--kind", "version.")
    assert [e["kind"] for e in trail] == [
        "version.promoted",
        "version.rolled_back",
        "version.promoted",
        "version.promoted",
    ]
    assert str(trail[0]["evidence"]["actor"]).startswith("cli")


def test_refused_version_changes_exit_1_saying_why(driftd: Driftd, store: Store) -> None:
    add_version(store, "support-bot", kind="prompt", name="bad", artifact="b", state="rejected")

    cases = {
        ("versions", "promote", "support-bot", "v9"): "has no version 'v9'; its latest",
        ("versions", "promote", "support-bot", "bad"): "rejected by its gate",
        ("versions", "rollback", "support-bot"): "has no active version",
        ("versions", "nowhere"): "unknown deployment 'nowhere'",
    }
    for args, message in cases.items():
        result = driftd(*args)
        assert result.exit_code == EXIT_FAILURE, args
        assert message in result.stderr
        assert result.stderr.startswith(f"driftd {args[0]}")
    forced = driftd("versions", "promote", "support-bot", "bad", "--force")
    assert forced.exit_code == 0, forced.output


def test_promote_and_rollback_run_the_configured_hooks(store: Store, tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name in ("v1", "v2"):
        (models / name).mkdir(parents=True)
        add_version(store, "support-bot", kind="prompt", name=name, artifact=name)
    flag = tmp_path / "reload-ok"
    # The reload succeeds once the flag file exists, and fails saying why before.
    reload = (
        "import os, sys; ok = os.path.exists(sys.argv[1]); "
        "ok or sys.stderr.write('reload refused: no flag\\n'); sys.exit(0 if ok else 5)"
    )
    hooks = json.dumps(
        {"models_dir": "models", "command": [sys.executable, "-c", reload, str(flag)]}
    )
    config = tmp_path / "hooked.yaml"
    config.write_text(config_on(tmp_path / "driftd.db") + f"    retune: {{hooks: {hooks}}}\n")
    driftd = Driftd(config)

    failed = driftd("versions", "promote", "support-bot", "v1")

    assert failed.exit_code == EXIT_FAILURE
    assert failed.stdout.startswith("support-bot: version v1 is active (was none)")
    assert f"  hook models_dir: ok: {models / 'current'} -> v1" in failed.stdout
    assert "  hook command: FAILED: " in failed.stdout
    assert "exited with 5: reload refused: no flag" in failed.stdout
    assert "the change was made (audit event" in failed.stderr
    assert "but hook command failed" in failed.stderr
    assert os.readlink(models / "current") == "v1"
    assert driftd.json("versions", "support-bot")[1]["state"] == "active"

    flag.touch()
    promoted = driftd.json("versions", "promote", "support-bot", "v2")
    rolled = driftd("versions", "rollback", "support-bot")

    assert [(h["hook"], h["ok"]) for h in promoted["hooks"]] == [
        ("models_dir", True),
        ("command", True),
    ]
    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout.startswith("support-bot: rolled back from version v2 to v1;")
    assert os.readlink(models / "current") == "v1"
    trail = driftd.json("events", "--kind", "hook.")
    assert [(e["kind"], e["evidence"]["hook"]) for e in trail] == [
        ("hook.ok", "command"),
        ("hook.ok", "models_dir"),
        ("hook.ok", "command"),
        ("hook.ok", "models_dir"),
        ("hook.failed", "command"),
        ("hook.ok", "models_dir"),
    ]


def test_events_table_filters_and_json(driftd: Driftd, store: Store) -> None:
    store.add_event(None, "daemon.started", "driftd started", {}, ts=NOW - timedelta(hours=6))
    decision = store.add_event(
        "support-bot",
        "policy.decision",
        "hold: [cooldown] 2h left",
        {},
        ts=NOW - timedelta(hours=3),
    )
    failed = store.add_event(
        "intents", "job.failed", "job 3 failed", {}, ts=NOW - timedelta(hours=1)
    )

    table = driftd("events")

    assert table.exit_code == 0, table.output
    assert "(daemon)" in lines_with(table.stdout, "daemon.started")[0]
    assert "hold: [cooldown] 2h left" in table.stdout  # brackets are text, not markup
    assert [e["id"] for e in driftd.json("events", "--kind", "job.")] == [failed]
    assert [e["id"] for e in driftd.json("events", "-d", "support-bot")] == [decision]
    assert [e["id"] for e in driftd.json("events", "--since", "4h")] == [failed, decision]
    until = (NOW - timedelta(hours=2)).isoformat()
    assert [e["id"] for e in driftd.json("events", "--since", "4h", "--until", until)] == [decision]
    assert len(driftd.json("events", "--limit", "1")) == 1
    assert driftd("events", "--kind", "nothing.").stdout.strip() == "no events match"


def test_bad_times_are_usage_errors(driftd: Driftd) -> None:
    for args, message in {
        ("events", "--since", "yesterday"): "--since: expected a duration ago like '2h'",
        ("checks", "--since", "2026-11-01T12:00:00"): "has no timezone",
        ("events", "--since", "1h", "--until", "2h"): "--until 2h is not after --since 1h",
    }.items():
        result = driftd(*args)
        assert result.exit_code == EXIT_USAGE, args
        assert message in result.stderr


def test_a_store_that_is_not_migrated_says_what_to_run(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    (tmp_path / "driftd.yaml").write_text(config_on(db))

    result = Driftd(tmp_path / "driftd.yaml")("jobs")

    assert result.exit_code == EXIT_FAILURE
    assert "is not at schema" in result.stderr
    assert "run `driftd db upgrade -c" in result.stderr


def test_help_names_the_subcommands(driftd: Driftd) -> None:
    result = driftd.runner.invoke(driftd.app, ["jobs", "--help"], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    for command in ("list", "approve", "cancel", "retry"):
        assert command in result.stdout
