from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from daemon.errors import StoreError
from daemon.store import (
    Base,
    Store,
    current_revision,
    head_revision,
    is_current,
    make_engine,
    upgrade,
)

TABLES = {
    "deployments",
    "samples",
    "references",
    "checks",
    "jobs",
    "versions",
    "events",
    "leases",
    "run_claims",
    "notifications",
    "notification_incidents",
    "notification_cursor",
}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def schema(engine: Engine) -> dict[str, Any]:
    """Everything the inspector reports about the tables, in a comparable form."""
    inspector = inspect(engine)
    described: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        described[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), i["unique"])
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                for f in inspector.get_foreign_keys(table)
            ),
        }
    return described


def test_upgrade_creates_every_table_and_sets_head(engine: Engine) -> None:
    assert current_revision(engine) is None

    result = upgrade(engine)

    assert result.before is None
    assert result.after == head_revision() == "0006"
    assert result.changed
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    assert current_revision(engine) == head_revision()


def test_second_upgrade_changes_nothing(engine: Engine) -> None:
    upgrade(engine)
    before = schema(engine)

    result = upgrade(engine)

    assert result.before == result.after == head_revision()
    assert not result.changed
    assert schema(engine) == before


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    upgrade(engine)

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)

    assert differences == []


def test_index_names_follow_the_naming_convention(engine: Engine) -> None:
    upgrade(engine)

    indexes = {i["name"] for i in inspect(engine).get_indexes("samples")}

    assert "ix_samples_deployment_id_ts" in indexes


def test_is_current_only_at_head(engine: Engine) -> None:
    assert not is_current(engine)

    upgrade(engine)

    assert is_current(engine)


def test_database_refuses_an_unknown_state(store: Store, deployment: str) -> None:
    with pytest.raises(IntegrityError), store.session() as session:
        session.execute(
            text(
                "INSERT INTO jobs (deployment_id, kind, trigger, state, attempt, max_attempts, "
                "created_at, spec) SELECT id, 'fine_tune', 'drift', 'exploded', 0, 1, "
                ":now, '{}' FROM deployments"
            ),
            {"now": "2025-01-01 00:00:00"},
        )


def test_store_migrated_by_a_newer_driftd_is_refused(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    assert not is_current(engine)
    with pytest.raises(StoreError, match=r"'9999'.*newer driftd"):
        upgrade(engine)


def test_a_store_of_an_older_driftd_is_upgraded_with_its_data(engine: Engine) -> None:
    from alembic import command

    from daemon.store.engine import write_engine
    from daemon.store.migrate import alembic_config

    with write_engine(engine).begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.execute(
            text(
                "INSERT INTO deployments (name, kind, task, created_at, updated_at) "
                "VALUES ('bot', 'prompted', 'generation', :now, :now)"
            ),
            {"now": "2026-01-01 00:00:00.000000"},
        )
        connection.execute(
            text(
                "INSERT INTO samples (deployment_id, request_id, ts, draw, input, created_at) "
                "VALUES (1, 'r1', :now, 5, 'hello', :now)"
            ),
            {"now": "2026-01-01 00:00:00.000000"},
        )

    result = upgrade(engine)

    assert (result.before, result.after, result.changed) == ("0001", head_revision(), True)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT request_id, input, feedback_comment FROM samples")
        ).one()
    assert tuple(row) == ("r1", "hello", None)


def test_jobs_and_decisions_of_0_1_take_the_words_of_0_2(engine: Engine) -> None:
    from alembic import command

    from daemon.store.engine import write_engine
    from daemon.store.migrate import alembic_config

    now = {"now": "2026-01-01 00:00:00.000000"}
    decision = {
        "action": "retrain",
        "intended": "retrain",
        "job_kind": "retrain",
        "would_be": {"action": "revise_prompt", "job_kind": "revise_prompt"},
    }
    with write_engine(engine).begin() as connection:
        command.upgrade(alembic_config(connection), "0004")
        connection.execute(
            text(
                "INSERT INTO deployments (name, kind, task, created_at, updated_at) "
                "VALUES ('bot', 'finetuned', 'classification', :now, :now)"
            ),
            now,
        )
        for kind in ("retrain", "revise_prompt", "evaluate"):
            connection.execute(
                text(
                    "INSERT INTO jobs (deployment_id, kind, trigger, state, attempt, "
                    "max_attempts, created_at, spec) VALUES (1, :kind, 'drift', 'queued', 0, 1, "
                    ":now, '{}')"
                ),
                {"kind": kind, **now},
            )
        connection.execute(
            text(
                "INSERT INTO notification_incidents (deployment_id, incident, opened_event_id, "
                "opened_at) VALUES (1, 'job_failed:retrain', 2, :now)"
            ),
            now,
        )
        failed = {"kind": "revise_prompt", "job_id": 2}
        for kind, evidence in (
            ("policy.decision", decision),
            ("job.failed", failed),
            ("check.completed", decision),
        ):
            connection.execute(
                text(
                    "INSERT INTO events (deployment_id, ts, kind, message, evidence) "
                    "VALUES (1, :now, :kind, 'm', :evidence)"
                ),
                {"kind": kind, "evidence": json.dumps(evidence), **now},
            )

    upgrade(engine)

    with engine.connect() as connection:
        kinds = connection.execute(text("SELECT kind FROM jobs ORDER BY id")).scalars().all()
        stored = connection.execute(text("SELECT evidence FROM events ORDER BY id")).scalars()
        renamed, job_failed, untouched = (
            e if isinstance(e, dict) else json.loads(e) for e in stored
        )
        incident = connection.execute(text("SELECT incident FROM notification_incidents")).one()
    assert kinds == ["finetune", "prompt_revision", "evaluate"]
    assert job_failed == {"kind": "prompt_revision", "job_id": 2}
    assert incident == ("job_failed:finetune",)
    assert renamed == {
        "action": "retune",
        "intended": "retune",
        "job_kind": "finetune",
        "would_be": {"action": "retune", "job_kind": "prompt_revision"},
    }
    assert untouched == decision  # only policy decisions and job events carry these words
