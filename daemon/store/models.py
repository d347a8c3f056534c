"""The store's tables, as typed SQLAlchemy ORM classes.

The schema is created and changed only by the Alembic migrations in ``daemon/store/migrations``;
a test checks that the migrated database and these classes agree, column for column.

Enumerations are plain strings guarded by CHECK constraints: portable between SQLite and
PostgreSQL (no native ENUM types to migrate) while the database still refuses a misspelt state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import false

from daemon.domain import CheckStatus, JobState, Kind, Task, VersionKind, VersionState
from daemon.store.types import UTCDateTime, json_type

# Deterministic constraint and index names, so migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAME = 255
KIND = 64


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, as every timestamp column expects."""
    return datetime.now(UTC)


def one_of(column: str, values: type[StrEnum]) -> CheckConstraint:
    """A CHECK constraint limiting ``column`` to the members of ``values``, named after it."""
    allowed = ", ".join(f"'{member.value}'" for member in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Deployment(Base):
    """A monitored LLM deployment; rows are registered from the configuration at start-up."""

    __tablename__ = "deployments"
    __table_args__ = (
        one_of("kind", Kind),
        one_of("task", Task),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME), unique=True)
    kind: Mapped[str] = mapped_column(String(KIND))
    task: Mapped[str] = mapped_column(String(KIND))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Sample(Base):
    """One production request and what is known about it: output, label, feedback, descriptors."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("deployment_id", "request_id"),
        Index(None, "deployment_id", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    request_id: Mapped[str] = mapped_column(String(NAME))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    # A hash of the request id in [0, 2**31): ordering by it draws a reproducible uniform sample.
    draw: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text)
    input_messages: Mapped[list[dict[str, Any]] | None] = mapped_column(json_type())
    output: Mapped[str | None] = mapped_column(Text)
    prediction: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Double)
    probabilities: Mapped[dict[str, float] | None] = mapped_column(json_type())
    label: Mapped[str | None] = mapped_column(Text)
    label_ts: Mapped[datetime | None] = mapped_column(UTCDateTime())
    feedback_score: Mapped[float | None] = mapped_column(Double)
    feedback_kind: Mapped[str | None] = mapped_column(String(KIND))
    feedback_comment: Mapped[str | None] = mapped_column(Text)
    judge_score: Mapped[float | None] = mapped_column(Double)
    descriptors: Mapped[dict[str, Any] | None] = mapped_column(json_type())
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedding_model: Mapped[str | None] = mapped_column(String(NAME))
    model_version: Mapped[str | None] = mapped_column(String(NAME))
    prompt_version: Mapped[str | None] = mapped_column(String(NAME))
    latency_ms: Mapped[float | None] = mapped_column(Double)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column(json_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Reference(Base):
    """The data a check compares against: a past window, a file, or a version's evaluation set."""

    __tablename__ = "references"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    kind: Mapped[str] = mapped_column(String(KIND))
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    path: Mapped[str | None] = mapped_column(Text)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    rows: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Check(Base):
    """One drift check: which windows were compared, how much data, and each signal's result."""

    __tablename__ = "checks"
    __table_args__ = (
        one_of("status", CheckStatus),
        Index(None, "deployment_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(KIND))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    reference_kind: Mapped[str] = mapped_column(String(KIND))
    reference_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reference_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # *_rows: rows the check used (capped draw); *_total: rows the window held.
    current_rows: Mapped[int] = mapped_column(Integer)
    reference_rows: Mapped[int] = mapped_column(Integer)
    current_total: Mapped[int] = mapped_column(Integer)
    reference_total: Mapped[int] = mapped_column(Integer)
    signals: Mapped[dict[str, Any]] = mapped_column(json_type())
    snapshot_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    """A re-tune, prompt revision or evaluation, from queueing to its result."""

    __tablename__ = "jobs"
    __table_args__ = (
        one_of("state", JobState),
        Index(None, "deployment_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    kind: Mapped[str] = mapped_column(String(KIND))
    trigger: Mapped[str] = mapped_column(String(KIND))
    state: Mapped[str] = mapped_column(String(KIND), default=JobState.queued.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    spec: Mapped[dict[str, Any]] = mapped_column(json_type())
    result: Mapped[dict[str, Any] | None] = mapped_column(json_type())
    log_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[float | None] = mapped_column(Double)
    # The job runner's bookkeeping (``daemon.jobs.runner``): a retried job waits until
    # ``not_before``; a cancel of a running job is a request its runner carries out; ``handle``
    # is what the executor needs to find the process again (``pid:…``, a Kubernetes Job name)
    # and ``owner`` the daemon that watches it, so another one can adopt it when that one dies.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    handle: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(NAME))
    timeout_s: Mapped[float | None] = mapped_column(Double)


class Version(Base):
    """A model or prompt version of a deployment, and where it stands in the promotion cycle."""

    __tablename__ = "versions"
    __table_args__ = (
        one_of("kind", VersionKind),
        one_of("state", VersionState),
        UniqueConstraint("deployment_id", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    kind: Mapped[str] = mapped_column(String(KIND))
    name: Mapped[str] = mapped_column(String(NAME))
    artifact: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    state: Mapped[str] = mapped_column(String(KIND), default=VersionState.candidate.value)
    eval_scores: Mapped[dict[str, Any] | None] = mapped_column(json_type())
    meta: Mapped[dict[str, Any] | None] = mapped_column(json_type())
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Event(Base):
    """An audit entry: something changed, why, and the evidence (check id, signals, scores)."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "deployment_id", "ts"), Index(None, "kind", "deployment_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"))
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(KIND))
    message: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(json_type())


class LeaseRow(Base):
    """The stored state of a lease; daemon code works with ``daemon.store.lease`` instead.

    Times are seconds since the Unix epoch read from the database clock, so that replicas with
    skewed clocks still agree on when a lease expires.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    owner: Mapped[str] = mapped_column(String(NAME))
    epoch: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[float] = mapped_column(Double)
    renewed_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)


class RunClaim(Base):
    """Proof that one replica took one scheduled run; the unique key makes each tick run once."""

    __tablename__ = "run_claims"
    __table_args__ = (
        UniqueConstraint("deployment_id", "job_kind", "scheduled_for"),
        Index(None, "job_kind", "finished_at"),
        Index(None, "job_kind", "followed_up_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    job_kind: Mapped[str] = mapped_column(String(KIND))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime())
    owner: Mapped[str] = mapped_column(String(NAME))
    epoch: Mapped[int] = mapped_column(BigInteger)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # While the run is under way its replica renews this (``scheduling.job_heartbeat``); an
    # unfinished check whose heartbeat is older than ``scheduling.job_stale_after`` lost its
    # replica, and another one re-runs it as the next ``attempt``.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the leader took the policy's decision after this check (``daemon.scheduler.follow``).
    followed_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class NotificationState(StrEnum):
    """What a notification says about its incident: it started, it ended, or just news."""

    firing = "firing"
    resolved = "resolved"
    info = "info"


class Delivery(StrEnum):
    """Where a notification's delivery stands."""

    pending = "pending"
    sent = "sent"
    failed = "failed"


class Notification(Base):
    """The outbox: one message for one channel, written with the audit event's processing and
    delivered later by the sender (``daemon.notify``); the unique key makes a message once."""

    __tablename__ = "notifications"
    __table_args__ = (
        one_of("state", NotificationState),
        one_of("delivery", Delivery),
        UniqueConstraint("channel", "event_id"),
        Index(None, "delivery", "next_try_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(KIND))
    event_id: Mapped[int] = mapped_column(BigInteger)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"))
    incident: Mapped[str | None] = mapped_column(String(NAME))
    state: Mapped[str] = mapped_column(String(KIND))
    payload: Mapped[Any] = mapped_column(json_type())
    delivery: Mapped[str] = mapped_column(String(KIND), default=Delivery.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationIncident(Base):
    """An incident that is open (drift, a failed job kind): a row exists from the firing
    message until the resolving one, so repeats in between send nothing."""

    __tablename__ = "notification_incidents"
    __table_args__ = (UniqueConstraint("deployment_id", "incident"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    incident: Mapped[str] = mapped_column(String(NAME))
    opened_event_id: Mapped[int] = mapped_column(BigInteger)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NotificationCursor(Base):
    """How far the notifier has read the audit log: the last event id it processed."""

    __tablename__ = "notification_cursor"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger)
