"""``driftd serve`` as the demo's child process: started in a session of its own, stopped with
everything it started.

The daemon leads its own process group, so Ctrl-C in the terminal reaches the demo only, which
then stops the daemon in order: running jobs cancelled through the admin API (the daemon's
runner signals each job's own process group), SIGTERM to the daemon (it finishes requests and
releases its lease), SIGKILL to whatever is left in its group. Jobs run in sessions of their own
(``daemon.jobs.executor.LocalExecutor``) so that a restarted daemon can adopt them; the demo
leaves none behind, so ``sweep_jobs`` stops any the daemon did not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from daemon.demo.jobs import log_tail
from daemon.errors import DemoError

DEFAULT_PORT = 8477


class DaemonProcess:
    """One ``driftd serve -c CONFIG --port PORT`` run from ``workdir``, logging to ``log``."""

    def __init__(
        self, config: Path, port: int, workdir: Path, log: Path, env: Mapping[str, str]
    ) -> None:
        self.config = config
        self.port = port
        self.workdir = workdir
        self.log = log
        self.env = dict(env)
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 120.0) -> None:
        """Start the daemon and wait until ``/readyz`` says its store is ready."""
        command = [sys.executable, "-m", "daemon", "serve", "-c", str(self.config)]
        command += ["--port", str(self.port)]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise DemoError(
                    f"driftd serve exited at start-up (exit code {self._process.poll()}); "
                    f"its log: {self.log}\n{self.tail()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise DemoError(
            f"driftd serve was not ready at {self.url} within {timeout:.0f} s; "
            f"its log: {self.log}\n{self.tail()}"
        )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the daemon and wait up to ``grace`` s; then SIGKILL what is left of its group.

        Safe to call twice, and when the daemon never started.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Workers the daemon started (check pool, ingest preparers) share its group.
        _end_group(process.pid)

    def tail(self) -> str:
        return log_tail(self.log)


def sweep_jobs(store_url: str, grace: float = 5.0) -> list[int]:
    """Stop the process group of every job the store still counts as running; their ids.

    For after the daemon stopped: it leaves running jobs to be adopted by its next start, and
    the demo has no next start.
    """
    from daemon.domain import JobState
    from daemon.jobs.executor import LocalExecutor, Running
    from daemon.store import Store
    from daemon.store import jobs as job_store

    executor = LocalExecutor(grace=grace)
    stopped = []
    with Store.open(store_url) as store:
        for _, job in job_store.list_jobs(store, state=JobState.running):
            if not job.handle or not job.handle.startswith("pid:"):
                continue
            with contextlib.suppress(ValueError, OSError):
                if isinstance(executor.poll(job.handle), Running):
                    executor.cancel(job.handle)
                    stopped.append(job.id)
    return stopped


def pick_port(wanted: int | None) -> int:
    """``wanted``, or when it is None: driftd's usual port if it is free, else any free one."""
    if wanted is not None:
        if not _free(wanted):
            raise DemoError(
                f"port {wanted} on 127.0.0.1 is in use; pass another --port, or none to let "
                "the demo pick a free one"
            )
        return wanted
    if _free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _free(port: int) -> bool:
    with socket.socket() as probe:
        # As uvicorn binds: a port whose last connections linger in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _end_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, the processes left in group ``pgid``; returns once it is empty
    or after ``grace`` s of each."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
