"""The daemon's own sections: ``server``, ``storage``, ``ingest``, ``proxy``, ``logging`` and
``metrics``."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field

from daemon.config.sections import Section
from daemon.config.types import (
    Duration,
)


class Server(Section):
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8477, ge=1, le=65535, description="Port the HTTP API listens on.")
    metrics_auth: bool = Field(
        False, description="Whether `/metrics` needs an admin token, like the admin routes."
    )
    shutdown_grace: Duration = Field(
        timedelta(seconds=3),
        description="On SIGTERM, how long requests in flight may take to finish.",
    )


class Proxy(Section):
    """The proxy's limits on what callers send, and the connection pool it forwards through,
    shared by every deployment's upstream."""

    max_connections: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Connections open to upstreams at once; calls beyond wait.",
    )
    keepalive: Duration = Field(
        timedelta(seconds=4),
        description="How long an idle upstream connection is kept for the next call. Keep it "
        "below the upstream's own keep-alive timeout (uvicorn's is 5 s), or a call may meet a "
        "connection the upstream is closing.",
    )
    recorder_capacity: int = Field(
        10_000,
        ge=1,
        description="Finished calls that may wait to be recorded; beyond, samples are dropped "
        "(counted), never the calls.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Size of one proxied request body; more → 413, nothing forwarded.",
    )
    max_depth: int = Field(
        64,
        ge=4,
        le=512,
        description="Nesting of arrays and objects in a proxied JSON body; deeper → 400, "
        "nothing forwarded.",
    )


class Ingest(Section):
    """Limits of the ingest API and of the write queue behind it."""

    max_batch: int = Field(
        1000, ge=1, le=100_000, description="Samples in one request; more → 413."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Size of one request body; more → 413."
    )
    queue_batches: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Batches waiting for the writer; when full the API answers 429 with "
        "`Retry-After`.",
    )
    commit_rows: int = Field(
        5000, ge=1, description="Most samples grouped into one commit (group commit)."
    )
    workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Processes that validate, redact and describe batches; 0 does it in the "
        "server process; unset means one per core it may run on, at most four.",
    )


class Storage(Section):
    url: str = Field(
        "sqlite:///driftd.db",
        description=(
            "SQLAlchemy URL of the store: `sqlite:///driftd.db` (relative to the working "
            "directory) or `postgresql://user@host/db`. `DRIFTD_STORAGE_URL` overrides it; put "
            "a password only there, never in the file."
        ),
    )
    busy_timeout: Duration = Field(
        timedelta(seconds=5), description="How long SQLite waits on a locked database."
    )
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full",
        description="SQLite `synchronous`: `full` makes every acknowledged batch survive a "
        "power loss; `normal` only a crash of driftd, for more throughput.",
    )
    retention: Duration = Field(
        timedelta(days=30), description="Samples older than this are deleted on a schedule."
    )
    snapshots: Path = Field(
        Path("driftd-snapshots"),
        description="Folder of the Evidently snapshot saved with each check (relative to the "
        "working directory).",
    )
    evidently_workspace: Path | None = Field(
        None,
        description="Also add each check's Evidently snapshot to this local Evidently workspace "
        "(one project per deployment), so that `evidently ui --workspace PATH` shows the "
        "history; unset means no export.",
    )


class LogFormat(StrEnum):
    auto = "auto"
    text = "text"
    json = "json"


class Logging(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )
    format: LogFormat = Field(
        LogFormat.auto,
        description="`text` for people, `json` (one object per line) for collectors; "
        "`auto` picks text on a terminal and JSON otherwise.",
    )


class Metrics(Section):
    """What ``/metrics`` exports, and how often it reads the store for it."""

    max_signals_per_deployment: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Per-signal series kept per deployment (drifted signals first); "
        "`driftd_signals_monitored` still counts them all, so a cap that bites is visible.",
    )
    store_cache: Duration = Field(
        timedelta(seconds=10),
        description="How long the store-derived metrics of one scrape are reused: several "
        "Prometheus servers scraping every few seconds cost one set of queries per interval.",
    )
