"""Run claims carry a heartbeat, an attempt, when their run finished and when the leader followed
up on it, so that every replica can run checks: a check whose replica died is re-run by another
(its claim's heartbeat went stale), and the leader takes the policy's decision after it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Claims stored before this revision were all run to their end by the leader of the day: they are
marked finished and followed up at the time they were claimed, so no replica re-runs them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

claims = sa.table(
    "run_claims",
    sa.column("claimed_at", sa.DateTime(timezone=True)),
    sa.column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
    sa.column("followed_up_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("run_claims") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("followed_up_at", sa.DateTime(timezone=True), nullable=True))
        # A server default so that claims stored by an older driftd get a value too.
        batch.add_column(
            sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("1"))
        )
        batch.create_index("ix_run_claims_job_kind_finished_at", ["job_kind", "finished_at"])
        batch.create_index("ix_run_claims_job_kind_followed_up_at", ["job_kind", "followed_up_at"])
    op.execute(
        claims.update().values(
            heartbeat_at=claims.c.claimed_at,
            finished_at=claims.c.claimed_at,
            followed_up_at=claims.c.claimed_at,
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("run_claims", recreate="never") as batch:
        batch.drop_index("ix_run_claims_job_kind_followed_up_at")
        batch.drop_index("ix_run_claims_job_kind_finished_at")
        batch.drop_column("attempt")
        batch.drop_column("followed_up_at")
        batch.drop_column("finished_at")
        batch.drop_column("heartbeat_at")
