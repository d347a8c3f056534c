"""driftd's store: samples, checks, jobs, versions, audit events and the leader lease, kept in
SQLite (one process) or PostgreSQL (many replicas) through SQLAlchemy, migrated by Alembic.

Every query driftd makes is written in this package; the rest of the daemon calls its functions
and never imports SQLAlchemy (``tests/test_layout.py`` holds it to that). ``Store``
(``repository``) is the handle and its everyday operations; each other module is one idea:
``statements`` (the pieces queries share), ``rows`` (samples encoded and bulk-inserted),
``jobs``, ``versions``, ``lease``, ``queries`` (operators' lists and JSON records),
``activity`` (what the policy weighs), ``exports`` (samples for jobs), ``judgements`` (the LLM
judge's ledger), ``quality`` (live quality after a promotion), ``retention``,
``notifications`` (the notifier's pass over the audit log), ``outbox`` (deliveries) and
``readings`` (what the metrics export).
"""

from __future__ import annotations

from daemon.store.engine import (
    DatabaseFailure,
    make_engine,
    mask_url,
    normalize_url,
    write_engine,
)
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
    "DatabaseFailure",
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
