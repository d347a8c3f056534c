"""The initial schema: deployments, samples, references, checks, jobs, versions, events, leases
and run claims.

Revision ID: 0001
Revises:
Create Date: 2025-11-28

Written by hand and frozen: it spells out every type and constraint instead of importing
``daemon.store.models``, so later changes to the models cannot change what this revision did.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _big_id() -> sa.types.TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer(), nullable=False)


def _deployment_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["deployment_id"], ["deployments.id"], name=op.f(f"fk_{table}_deployment_id_deployments")
    )


def upgrade() -> None:
    op.create_table(
        "deployments",
        _id(),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.CheckConstraint("kind IN ('finetuned', 'prompted')", name=op.f("ck_deployments_kind")),
        sa.CheckConstraint(
            "task IN ('classification', 'generation')", name=op.f("ck_deployments_task")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("name", name=op.f("uq_deployments_name")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=False),
        sa.Column("renewed_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "samples",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=False),
        sa.Column("ts", _when(), nullable=False),
        sa.Column("draw", sa.Integer(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("input_messages", sa.JSON(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("prediction", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("label_ts", _when(), nullable=True),
        sa.Column("feedback_score", sa.Double(), nullable=True),
        sa.Column("feedback_kind", sa.String(length=64), nullable=True),
        sa.Column("judge_score", sa.Double(), nullable=True),
        sa.Column("descriptors", sa.JSON(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embedding_model", sa.String(length=255), nullable=True),
        sa.Column("model_version", sa.String(length=255), nullable=True),
        sa.Column("prompt_version", sa.String(length=255), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        _deployment_fk("samples"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
        sa.UniqueConstraint(
            "deployment_id", "request_id", name=op.f("uq_samples_deployment_id_request_id")
        ),
    )
    op.create_index(
        op.f("ix_samples_deployment_id_ts"), "samples", ["deployment_id", "ts"], unique=False
    )
    op.create_table(
        "checks",
        _id(),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("scheduled_for", _when(), nullable=True),
        sa.Column("started_at", _when(), nullable=False),
        sa.Column("finished_at", _when(), nullable=True),
        sa.Column("status", sa.String(length=64), nullable=False),
        sa.Column("window_start", _when(), nullable=False),
        sa.Column("window_end", _when(), nullable=False),
        sa.Column("reference_kind", sa.String(length=64), nullable=False),
        sa.Column("reference_start", _when(), nullable=True),
        sa.Column("reference_end", _when(), nullable=True),
        sa.Column("current_rows", sa.Integer(), nullable=False),
        sa.Column("reference_rows", sa.Integer(), nullable=False),
        sa.Column("current_total", sa.Integer(), nullable=False),
        sa.Column("reference_total", sa.Integer(), nullable=False),
        sa.Column("signals", sa.JSON(), nullable=False),
        sa.Column("snapshot_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('ok', 'drift', 'insufficient_data', 'failed')",
            name=op.f("ck_checks_status"),
        ),
        _deployment_fk("checks"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checks")),
    )
    op.create_index(
        op.f("ix_checks_deployment_id_started_at"),
        "checks",
        ["deployment_id", "started_at"],
        unique=False,
    )
    op.create_table(
        "jobs",
        _id(),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("started_at", _when(), nullable=True),
        sa.Column("finished_at", _when(), nullable=True),
        sa.Column("heartbeat_at", _when(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'awaiting_approval', 'running', 'succeeded', 'failed', "
            "'cancelled')",
            name=op.f("ck_jobs_state"),
        ),
        _deployment_fk("jobs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(
        op.f("ix_jobs_deployment_id_state"), "jobs", ["deployment_id", "state"], unique=False
    )
    op.create_table(
        "versions",
        _id(),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("artifact", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("eval_scores", sa.JSON(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("promoted_at", _when(), nullable=True),
        sa.CheckConstraint("kind IN ('model', 'prompt')", name=op.f("ck_versions_kind")),
        sa.CheckConstraint(
            "state IN ('candidate', 'active', 'retired', 'rejected')",
            name=op.f("ck_versions_state"),
        ),
        _deployment_fk("versions"),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["versions.id"], name=op.f("fk_versions_parent_id_versions")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_versions_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint("deployment_id", "name", name=op.f("uq_versions_deployment_id_name")),
    )
    op.create_table(
        "references",
        _id(),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("window_start", _when(), nullable=True),
        sa.Column("window_end", _when(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        _deployment_fk("references"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_references_version_id_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_references")),
    )
    op.create_table(
        "events",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.Column("ts", _when(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        _deployment_fk("events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(
        op.f("ix_events_deployment_id_ts"), "events", ["deployment_id", "ts"], unique=False
    )
    op.create_table(
        "run_claims",
        _id(),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("job_kind", sa.String(length=64), nullable=False),
        sa.Column("scheduled_for", _when(), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("claimed_at", _when(), nullable=False),
        _deployment_fk("run_claims"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_claims")),
        sa.UniqueConstraint(
            "deployment_id",
            "job_kind",
            "scheduled_for",
            name=op.f("uq_run_claims_deployment_id_job_kind_scheduled_for"),
        ),
    )


def downgrade() -> None:
    op.drop_table("run_claims")
    op.drop_index(op.f("ix_events_deployment_id_ts"), table_name="events")
    op.drop_table("events")
    op.drop_table("references")
    op.drop_table("versions")
    op.drop_index(op.f("ix_jobs_deployment_id_state"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_checks_deployment_id_started_at"), table_name="checks")
    op.drop_table("checks")
    op.drop_index(op.f("ix_samples_deployment_id_ts"), table_name="samples")
    op.drop_table("samples")
    op.drop_table("leases")
    op.drop_table("deployments")
