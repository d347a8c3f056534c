"""driftd's store: samples, checks, jobs, versions, audit events and the leader lease, kept in
SQLite (one process) or PostgreSQL (many replicas) through SQLAlchemy, migrated by Alembic."""

from __future__ import annotations

from daemon.store.engine import make_engine, mask_url, normalize_url, write_engine
from daemon.store.lease import (
    Lease,
    LeaseState,
    acquire,
    current,
    epoch_is_current,
    release,
)
from daemon.store.migrate import (
    UpgradeResult,
    current_revision,
    head_revision,
    is_current,
    upgrade,
)
from daemon.store.models import (
    Base,
    Check,
    Deployment,
    Event,
    Job,
    Reference,
    RunClaim,
    Sample,
    Version,
)
from daemon.store.repository import (
    InsertResult,
    NewCheck,
    NewSample,
    Store,
    Window,
)
from daemon.store.types import UTCDateTime

__all__ = [
    "Base",
    "Check",
    "Deployment",
    "Event",
    "InsertResult",
    "Job",
    "Lease",
    "LeaseState",
    "NewCheck",
    "NewSample",
    "Reference",
    "RunClaim",
    "Sample",
    "Store",
    "UTCDateTime",
    "UpgradeResult",
    "Version",
    "Window",
    "acquire",
    "current",
    "current_revision",
    "epoch_is_current",
    "head_revision",
    "is_current",
    "make_engine",
    "mask_url",
    "normalize_url",
    "release",
    "upgrade",
    "write_engine",
]
