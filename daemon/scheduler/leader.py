"""Who runs scheduled work: the replica holding the leader lease, and only while it holds it.

Every replica runs a ``Leadership`` thread that tries to take the lease and, once it has it,
renews it every third of its TTL. Gaining the lease calls ``on_gain(epoch)``; failing to renew
it (another replica took it, or the store is unreachable until the local deadline passes) calls
``on_loss()`` at once, so a deposed leader stops scheduling before another can start.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from daemon.store import DatabaseFailure, Store
from daemon.store.lease import Lease, acquire, release

log = logging.getLogger("driftd.leader")

LEASE_NAME = "scheduler"


def new_owner() -> str:
    """An owner id unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Leadership:
    """Takes and keeps the leader lease in a background thread."""

    def __init__(
        self,
        store: Store,
        owner: str,
        ttl: float,
        *,
        on_gain: Callable[[int], None],
        on_loss: Callable[[], None],
        name: str = LEASE_NAME,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive seconds, got {ttl}")
        self.store = store
        self.owner = owner
        self.ttl = ttl
        self.name = name
        self._on_gain = on_gain
        self._on_loss = on_loss
        self._lease: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lease(self) -> Lease | None:
        """The lease while it is valid by the local clock; None otherwise."""
        lease = self._lease
        return lease if lease is not None and lease.is_valid() else None

    def is_leader(self) -> bool:
        return self.lease is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="driftd-leader", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._renew()
            lease = self._lease
            # A follower asks often, so that it takes over within the TTL of the last renewal.
            pause = self.ttl / 3 if lease is not None else self.ttl / 10
            if lease is not None:
                # Wake before the local deadline too, to step down in time if renewals fail.
                pause = min(pause, max(0.05, lease.valid_until_monotonic - time.monotonic()))
            self._stop.wait(pause)

    def _renew(self) -> None:
        held = self._lease
        try:
            lease = acquire(self.store, self.name, self.owner, self.ttl)
        except DatabaseFailure as error:
            log.warning("could not renew the leader lease", extra={"error": str(error)})
            lease = held if held is not None and held.is_valid() else None
        if lease is not None and (held is None or not held.is_valid()):
            self._lease = lease
            log.info("leader", extra={"owner": self.owner, "epoch": lease.epoch})
            self._on_gain(lease.epoch)
        elif lease is None and held is not None:
            self._lease = None
            log.warning("lost the leader lease", extra={"owner": self.owner})
            self._on_loss()
        else:
            self._lease = lease

    def stop(self, *, release_lease: bool = True) -> None:
        """Stop renewing; with ``release_lease`` hand the lease back so that another replica
        takes over at once instead of after the TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        was_leader = self._lease is not None
        self._lease = None
        if was_leader:
            self._on_loss()
        if release_lease:
            try:
                release(self.store, self.name, self.owner)
            except DatabaseFailure as error:
                log.warning("could not release the leader lease", extra={"error": str(error)})
