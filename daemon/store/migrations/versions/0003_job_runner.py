"""Jobs carry what the job runner needs: a retry backoff, a cancel request, the executor's handle,
the daemon that runs them and a time limit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        # A server default so that jobs stored by an older driftd get a value too.
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("handle", sa.Text(), nullable=True))
        batch.add_column(sa.Column("owner", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("timeout_s", sa.Double(), nullable=True))


def downgrade() -> None:
    # recreate="never": SQLite drops the columns in place (3.35+), so the table keeps the
    # CHECK constraint on its state that a copy-and-move would not carry over.
    with op.batch_alter_table("jobs", recreate="never") as batch:
        batch.drop_column("timeout_s")
        batch.drop_column("owner")
        batch.drop_column("handle")
        batch.drop_column("cancel_requested")
        batch.drop_column("not_before")
