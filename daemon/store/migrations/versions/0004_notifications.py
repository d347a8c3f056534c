"""The notifier's state: the outbox of messages per channel, the open incidents, and how far the
audit log has been read; and an index of events by kind for the metrics.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

The cursor starts at the newest event already stored: upgrading a store with a history must not
send a message for every drift and failure it ever recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _big_id() -> sa.types.TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.Column("incident", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("delivery", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", _when(), nullable=False),
        sa.Column("sent_at", _when(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.CheckConstraint(
            "state IN ('firing', 'resolved', 'info')", name=op.f("ck_notifications_state")
        ),
        sa.CheckConstraint(
            "delivery IN ('pending', 'sent', 'failed')", name=op.f("ck_notifications_delivery")
        ),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_notifications_deployment_id_deployments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("channel", "event_id", name=op.f("uq_notifications_channel_event_id")),
    )
    op.create_index(
        op.f("ix_notifications_delivery_next_try_at"),
        "notifications",
        ["delivery", "next_try_at"],
        unique=False,
    )
    op.create_table(
        "notification_incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("incident", sa.String(length=255), nullable=False),
        sa.Column("opened_event_id", sa.BigInteger(), nullable=False),
        sa.Column("opened_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_notification_incidents_deployment_id_deployments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_incidents")),
        sa.UniqueConstraint(
            "deployment_id",
            "incident",
            name=op.f("uq_notification_incidents_deployment_id_incident"),
        ),
    )
    cursor = op.create_table(
        "notification_cursor",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_notification_cursor")),
    )
    # The leader's metrics count promotions, rollbacks and policy decisions by kind.
    op.create_index(op.f("ix_events_kind_deployment_id"), "events", ["kind", "deployment_id"])
    events = sa.table("events", sa.column("id", sa.BigInteger()))
    op.execute(
        sa.insert(cursor).from_select(
            ["name", "last_event_id"],
            sa.select(sa.literal("events"), sa.func.coalesce(sa.func.max(events.c.id), 0)),
        )
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_events_kind_deployment_id"), table_name="events")
    op.drop_table("notification_cursor")
    op.drop_table("notification_incidents")
    op.drop_index(op.f("ix_notifications_delivery_next_try_at"), table_name="notifications")
    op.drop_table("notifications")
