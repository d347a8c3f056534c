"""Where job processes run: the ``Executor`` interface, and ``LocalExecutor`` for this machine.

An executor starts ``python -m retrain <kind> --spec <job.json>`` somewhere and hands back a
*handle*, a string the store keeps, from which any executor of the same sort can find the job
again later, in another daemon process: that is what lets a new daemon adopt the jobs of one
that crashed. The interface speaks only of job ids, kinds, paths and handles, so a Kubernetes
executor (a Job per run, its name as the handle) can implement it as well as local processes.

The job contract the executors rely on: a job writes its exit code to a file named ``exit``
beside its spec as the last thing it does (``retrain.__main__`` does), so an exit status can be
read even by a daemon that is not the job's parent and cannot ``wait`` for it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, Self

EXIT_FILE = "exit"
"""The file, beside the spec, that a job writes its exit code to."""

LOG_HEADER = "--- driftd:"
"""How the line starts that ``LocalExecutor`` writes to a job's log before each attempt."""

log = logging.getLogger("driftd.jobs")

# A SIGKILLed process ends as soon as the kernel gets to it; longer means something is wrong.
_KILL_WAIT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Running:
    """The job's process is still running."""


@dataclass(frozen=True, slots=True)
class Exited:
    """The job's process ended with ``code``; a negative code is the signal that killed it."""

    code: int


@dataclass(frozen=True, slots=True)
class Gone:
    """The job's process is not running and left no exit status: it died, or was never started.

    ``reason`` says what was looked for, for the job's error message.
    """

    reason: str


Status = Running | Exited | Gone


class Executor(Protocol):
    """Starts job processes, and finds, watches and stops them again by their handles."""

    def start(
        self, job_id: int, kind: str, spec_path: Path, log_path: Path, env: Mapping[str, str]
    ) -> str:
        """Start ``python -m retrain <kind> --spec <spec_path>`` with ``env`` added to its
        environment, its output going to ``log_path``; returns the handle to store.
        ``OSError`` or ``KubernetesError`` when the process cannot be started: the runner
        retries or fails the attempt."""
        ...

    def poll(self, handle: str) -> Status:
        """Where the job behind ``handle`` stands; works for jobs another daemon started."""
        ...

    def cancel(self, handle: str) -> None:
        """Stop the job behind ``handle``; returns once it has ended. Stopping a job that
        already ended does nothing."""
        ...

    def adopt(self, handle: str) -> bool:
        """Whether the job behind ``handle``, which another daemon started, is still running
        and this executor can watch and cancel it from now on."""
        ...


@dataclass(frozen=True, slots=True)
class LocalHandle:
    """A local job's handle: ``pid:<pid>:<spec path>``. The spec path tells the job apart from
    an unrelated process that was given the same pid after the job's ended."""

    pid: int
    spec_path: Path

    @classmethod
    def parse(cls, handle: str) -> Self:
        prefix, _, rest = handle.partition(":")
        pid, _, spec = rest.partition(":")
        if prefix != "pid" or not pid.isdigit() or not spec:
            raise ValueError(f"not a local job handle (pid:<pid>:<spec path>): {handle!r}")
        return cls(int(pid), Path(spec))

    def __str__(self) -> str:
        return f"pid:{self.pid}:{self.spec_path}"


class LocalExecutor:
    """Runs each job as a subprocess of this machine, in a session of its own.

    The own session means a job is not killed with the daemon (a crash, a restart, Ctrl-C in a
    terminal sends SIGINT to the whole foreground group): the next daemon adopts it instead of
    wasting an hour of fine-tuning. It also makes the job's process group, children included,
    one unit to signal on cancel.

    A job this executor started is watched through its ``Popen``; any other (after a restart)
    through ``/proc/<pid>/cmdline``, which must still name the spec, and the ``exit`` file.
    So a daemon can adopt only the jobs started on its own machine, as after a restart by
    systemd; replicas on several machines dispatch jobs to Kubernetes instead.
    """

    def __init__(self, *, python: str = sys.executable, grace: float = 10.0) -> None:
        """``python`` runs the jobs (this interpreter by default, so they see the same
        packages); a cancelled job gets ``grace`` seconds between SIGTERM and SIGKILL."""
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace}")
        self.python = python
        self.grace = grace
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, job_id: int, kind: str, spec_path: Path, log_path: Path, env: Mapping[str, str]
    ) -> str:
        spec_path = spec_path.resolve()
        exit_path(spec_path).unlink(missing_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "retrain", kind, "--spec", str(spec_path)]
        with log_path.open("ab") as log_file:
            # Several attempts of a job may share a log (a retried job starts over at attempt
            # 1); a header keeps them apart.
            started = datetime.now(UTC).isoformat(timespec="seconds")
            log_file.write(
                f"{LOG_HEADER} job {job_id}: {' '.join(command)} at {started}\n".encode()
            )
            log_file.flush()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=spec_path.parent,
                env={**os.environ, **env},
                start_new_session=True,
            )
        handle = str(LocalHandle(process.pid, spec_path))
        self._children[handle] = process
        return handle

    def poll(self, handle: str) -> Status:
        local = LocalHandle.parse(handle)
        child = self._children.get(handle)
        if child is not None:
            code = child.poll()
            return Running() if code is None else Exited(code)
        if _runs(local):
            return Running()
        code = _read_exit(local.spec_path)
        if code is not None:
            return Exited(code)
        return Gone(
            f"process {local.pid} is not running and left no exit code in "
            f"{exit_path(local.spec_path)}"
        )

    def cancel(self, handle: str) -> None:
        local = LocalHandle.parse(handle)
        if not isinstance(self.poll(handle), Running):
            return
        # The job leads its own process group (start_new_session), so its pid is the group id.
        if not _signal_group(local.pid, signal.SIGTERM):
            return
        if self._ended_within(handle, self.grace):
            return
        _signal_group(local.pid, signal.SIGKILL)
        if not self._ended_within(handle, _KILL_WAIT_SECONDS):
            # Stuck in the kernel (a hung mount, say); the runner ends the job all the same.
            log.warning(
                "job process group %d survived SIGKILL for %.0f s", local.pid, _KILL_WAIT_SECONDS
            )

    def adopt(self, handle: str) -> bool:
        return isinstance(self.poll(handle), Running)

    def _ended_within(self, handle: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while isinstance(self.poll(handle), Running):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def exit_path(spec_path: Path) -> Path:
    """Where a job started with ``spec_path`` writes its exit code."""
    return spec_path.with_name(EXIT_FILE)


def _runs(local: LocalHandle) -> bool:
    """Whether the job's process still runs, judged without being its parent."""
    proc = Path("/proc")
    if not proc.is_dir():
        # No procfs (macOS): the pid alone has to do, at the risk of a reused one.
        try:
            os.kill(local.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        cmdline = (proc / str(local.pid) / "cmdline").read_bytes()
    except OSError:
        return False
    # A zombie (ended, not yet reaped) has an empty command line, and so counts as ended.
    return str(local.spec_path).encode() in cmdline.split(b"\0")


def _read_exit(spec_path: Path) -> int | None:
    try:
        return int(exit_path(spec_path).read_text().strip())
    except (OSError, ValueError):
        return None


def _signal_group(pgid: int, signum: signal.Signals) -> bool:
    """Send ``signum`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True
