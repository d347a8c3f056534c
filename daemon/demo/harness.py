"""The daemon in the demo's hands: its process, its admin API, what the demo observes through
it, and the app that sends it traffic; letting time pass, waiting for what must happen, and
stopping it all whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from daemon.client import Client
from daemon.demo import workdir
from daemon.demo.observe import AdminAPI, Observer
from daemon.demo.process import DaemonProcess, sweep_jobs
from daemon.demo.traffic import App, NoteHandler
from daemon.demo.view import DemoState, Screen
from daemon.errors import DemoError

T = TypeVar("T")

POLL_EVERY = 1.0


class Harness:
    """The daemon the demo started and what it reads of it: ``start``, ``serving`` traffic,
    ``tick`` and ``wait_for``, ``flush``; ``keep`` and ``shutdown`` at the end."""

    def __init__(
        self,
        daemon: DaemonProcess,
        config_path: Path,
        storage_url: str,
        token: str,
        state: DemoState,
        screen: Screen,
    ) -> None:
        self.daemon = daemon
        self.config_path = config_path
        self.storage_url = storage_url
        self.token = token
        self.state = state
        self.screen = screen
        self._api: AdminAPI | None = None
        self._observer: Observer | None = None
        self._app: App | None = None
        self._next_poll = 0.0

    def start(self, timeout: float) -> None:
        """Start the daemon, within ``timeout`` seconds, and the demo's reads of it."""
        self.state.step("daemon", "running", "starting")
        self.screen.note(f"starting driftd serve on 127.0.0.1:{self.daemon.port}")
        self.daemon.start(timeout=timeout)
        self.state.url = self.daemon.url
        self._api = AdminAPI(self.daemon.url, self.token, workdir.DEPLOYMENT)
        self._observer = Observer(self._api, self.state, self.screen.note)
        self.state.step("daemon", "done", f"{self.daemon.url} (pid {self.daemon.pid})")
        self.screen.note(f"driftd is up: {self.daemon.url}/metrics is live")

    @contextlib.contextmanager
    def serving(self, label_delay: float) -> Iterator[App]:
        """The app, sending its traffic to the daemon through a ``Client`` until the block ends;
        the client's warnings become notes meanwhile."""
        deployment = workdir.DEPLOYMENT
        client = Client(self.daemon.url, deployment, self.token, batch_size=100, flush_interval=0.2)
        handler = NoteHandler(self.screen.note)
        client_log = logging.getLogger("driftd.client")
        client_log.addHandler(handler)
        client_log.propagate = False
        try:
            self._app = App(client, self.state, label_delay=label_delay)
            yield self._app
        finally:
            client.close()
            client_log.removeHandler(handler)
            client_log.propagate = True

    def tick(self, seconds: float) -> None:
        """Let ``seconds`` pass: send the labels that fall due, poll the daemon every second."""
        end = time.monotonic() + seconds
        while True:
            if self._app is not None:
                self._app.deliver()
            if time.monotonic() >= self._next_poll:
                self._poll()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def wait_for(
        self,
        what: str,
        condition: Callable[[], T | None],
        timeout: float,
        *,
        hint: Callable[[], str] | None = None,
    ) -> T:
        """Tick until ``condition`` returns something; ``DemoError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            found = condition()
            if found:
                return found
            if time.monotonic() >= deadline:
                extra = hint() if hint is not None else ""
                raise DemoError(
                    f"{what}: not within {timeout:.0f} s{extra}. The daemon's log: "
                    f"{self.daemon.log}; its checks and events: driftd checks -c "
                    f"{self.config_path}, driftd events -c {self.config_path}"
                )
            self.tick(0.5)

    def keep(self) -> None:
        """Leave the daemon running until Ctrl-C (or until it exits by itself)."""
        console = self.screen.console
        console.print(
            f"\ndriftd keeps running at {self.daemon.url} (pid {self.daemon.pid}); "
            "press Ctrl-C to stop it.",
            soft_wrap=True,
        )
        try:
            while self.daemon.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping driftd…")
            return
        console.print(f"driftd exited by itself; its log: {self.daemon.log}", soft_wrap=True)

    def shutdown(self) -> None:
        """Stop whatever the demo started: jobs, the daemon and its workers. Never raises;
        a second Ctrl-C does not interrupt it (it would leave the daemon running)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self._api is not None and self.daemon.alive():
                with contextlib.suppress(Exception):
                    for job in self._api.jobs():
                        if job.get("state") in ("queued", "running", "awaiting_approval"):
                            self._api.cancel_job(int(job["id"]))
            self.daemon.stop()
            with contextlib.suppress(Exception):
                sweep_jobs(self.storage_url)
            if self._api is not None:
                self._api.close()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _poll(self) -> None:
        self._next_poll = time.monotonic() + POLL_EVERY
        self._check_alive()
        self.observer.poll()

    def _check_alive(self) -> None:
        if not self.daemon.alive():
            raise DemoError(
                f"driftd serve exited unexpectedly; its log: {self.daemon.log}\n"
                f"{self.daemon.tail()}"
            )

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the app's samples and labels are sent, watching the daemon meanwhile."""
        client = self.app.client
        deadline = time.monotonic() + timeout
        while not client.flush(timeout=0.5):
            self._check_alive()
            if time.monotonic() >= deadline:
                raise DemoError(
                    f"the app could not send its samples to {self.daemon.url} within "
                    f"{timeout:.0f} s; the daemon's log: {self.daemon.log}"
                )
        stats = client.stats
        if stats.rejected or stats.failed:
            raise DemoError(
                f"driftd refused {stats.rejected} of the app's samples or labels, and "
                f"{stats.failed} could not be sent; the daemon's log: {self.daemon.log}"
            )

    @property
    def api(self) -> AdminAPI:
        if self._api is None:
            raise RuntimeError("the daemon is not started")
        return self._api

    @property
    def observer(self) -> Observer:
        if self._observer is None:
            raise RuntimeError("the daemon is not started")
        return self._observer

    @property
    def app(self) -> App:
        if self._app is None:
            raise RuntimeError("the app is not started")
        return self._app
