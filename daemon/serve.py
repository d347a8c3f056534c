"""The daemon's lifecycle: start (store, migrations, deployments), run until told to stop, stop.

The API, the scheduler and the job runner attach to this lifecycle as they are built; each gets
started in ``start`` and stopped, in reverse order, in ``stop``.
"""

from __future__ import annotations

import logging
import threading

from daemon.config import Config
from daemon.store import Store, mask_url, upgrade

log = logging.getLogger("driftd.serve")


class Daemon:
    """One driftd process. ``start`` → ``wait`` → ``stop``; ``request_stop`` is signal-safe."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = threading.Event()
        self._store: Store | None = None
        self._stop_reason = "requested"

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the daemon is not started")
        return self._store

    def start(self) -> None:
        storage = self.config.storage
        store = Store.open(
            storage.url,
            busy_timeout=storage.busy_timeout.total_seconds(),
            synchronous=storage.sqlite_synchronous,
        )
        try:
            migrated = upgrade(store.engine)
            for deployment in self.config.deployments:
                store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
        except BaseException:
            store.close()
            raise
        self._store = store
        log.info(
            "store ready",
            extra={
                "store": mask_url(storage.url),
                "schema": migrated.after,
                "migrated": migrated.changed,
            },
        )
        for deployment in self.config.deployments:
            log.info(
                "watching deployment",
                extra={
                    "deployment": deployment.name,
                    "kind": deployment.kind.value,
                    "task": deployment.task.value,
                },
            )
        server = self.config.server
        log.info(
            "driftd ready",
            extra={
                "deployments": len(self.config.deployments),
                "host": server.host,
                "port": server.port,
            },
        )

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the daemon to stop; safe to call from a signal handler or another thread."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def wait(self) -> None:
        """Block until ``request_stop`` is called."""
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not self._stop.wait(timeout=0.5):
            pass

    def stop(self) -> None:
        log.info("driftd stopping", extra={"reason": self._stop_reason})
        if self._store is not None:
            self._store.close()
            self._store = None
        log.info("driftd stopped")
