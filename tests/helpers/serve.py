"""``driftd serve`` (or any server) as a child process of a test: started on a free port with
its output in a log file, ready once it answers 200 on a health route, stopped with SIGTERM.

``with running(start_driftd(config, cwd)) as server:`` is the usual form: it waits for
``/readyz`` and, on exit, stops the daemon and asserts that it exited 0 (unless the test killed it
on purpose). ``Server`` is the process itself, for tests that start several, kill one, or read
its log; it runs other servers too (llm-katan, Alertmanager).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.helpers.cli import DRIFTD, environ_without
from tests.helpers.wait import wait_for

T = TypeVar("T")

START_TIMEOUT = 120.0
_TAIL_CHARS = 3000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class Server:
    """A server started as ``args`` in ``cwd``, listening on ``port``, writing its output (stdout
    and stderr) to ``log``. In a session of its own with ``new_session`` (its children then
    share its process group, which a forced stop kills)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        port: int,
        log: Path,
        host: str = "127.0.0.1",
        new_session: bool = False,
    ) -> None:
        self.args = list(args)
        self.port = port
        self.url = f"http://{host}:{port}"
        self.log = log
        self.killed = False
        self._new_session = new_session
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                self.args,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """All it has written so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def records(self) -> list[Any]:
        """Its log records so far: JSON lines, as driftd logs when stderr is no terminal (a
        line still being written is left out)."""
        lines = self.output().splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.endswith("\n")]

    def wait_until(
        self, predicate: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.2
    ) -> T:
        """``wait_for(predicate, timeout, what)`` while it runs: it fails at once if the server
        exits first; failing, it kills the server and says the tail of its log."""

        def running_and() -> T | None:
            value = predicate()
            if not value and self.process.poll() is not None:
                raise AssertionError(f"{' '.join(self.args)} exited {self.process.returncode}")
            return value

        try:
            return wait_for(running_and, timeout, what, interval=interval)
        except AssertionError as error:
            if self.process.poll() is None:
                self.kill()
            raise AssertionError(f"{error}; its log:\n{self.output()[-_TAIL_CHARS:]}") from None

    def wait_logged(self, message: str, timeout: float = 30.0) -> list[Any]:
        """Its log records up to the first whose message is ``message``."""

        def upto() -> list[Any] | None:
            records = self.records()
            for index, record in enumerate(records):
                if record["message"] == message:
                    return records[: index + 1]
            return None

        return self.wait_until(upto, timeout, f"a {message!r} log line", interval=0.1)

    def answers(self, path: str, timeout: float = 2.0) -> httpx.Response | None:
        """Its answer to ``GET path``; None while it does not answer."""
        try:
            return httpx.get(f"{self.url}{path}", timeout=timeout)
        except httpx.HTTPError:
            return None

    def health(self) -> dict[str, Any] | None:
        """What ``GET /healthz`` says; None while it does not answer."""
        answer = self.answers("/healthz")
        return None if answer is None else dict(answer.json())

    def leads(self) -> bool:
        health = self.health()
        return bool(health and health["leader"])

    def wait_ready(self, timeout: float = START_TIMEOUT, path: str = "/readyz") -> None:
        """Wait until ``GET path`` answers 2xx (``wait_until``)."""

        def ready() -> bool:
            answer = self.answers(path)
            return answer is not None and answer.is_success

        self.wait_until(ready, timeout, f"{self.url}{path} to answer")

    def wait_leading(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``GET /healthz`` says it leads (``wait_until``)."""
        self.wait_until(self.leads, timeout, f"{self.url} to lead")

    def stop(self, timeout: float = 30.0, *, signal_children: bool = False) -> int:
        """SIGTERM it (with ``signal_children`` its children instead, as when it is ``make``
        running the daemon) and wait up to ``timeout`` seconds; then kill it. Its exit code."""
        if self.process.poll() is None:
            pids = [self.pid]
            if signal_children:
                children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
                pids = [int(pid) for pid in children.read_text().split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._sigkill()
        return self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL it (its whole group when it has a session of its own) and reap it: the test
        means it, so ``serve`` asks nothing of its exit code."""
        self.killed = True
        self._sigkill()

    def _sigkill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._new_session:
                os.killpg(self.pid, signal.SIGKILL)
            else:
                self.process.kill()
        self.process.wait(timeout=10)


def start_driftd(
    config: Path | None,
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    host: str | None = None,
    without: Sequence[str] = ("DRIFTD_",),
    log: Path | None = None,
) -> Server:
    """``driftd serve [-c CONFIG] [--host HOST] --port PORT`` in ``cwd``, with this process's
    environment less the variables named with ``without``, plus ``env``; not waited for. Its
    log is ``cwd/driftd-PORT.log`` unless ``log`` is given."""
    port = port or free_port()
    args = [str(DRIFTD), "serve"]
    if config is not None:
        args += ["-c", str(config)]
    if host is not None:
        args += ["--host", host]
    args += ["--port", str(port)]
    return Server(
        args,
        cwd=cwd,
        env={**environ_without(without), **(env or {})},
        port=port,
        log=log or cwd / f"driftd-{port}.log",
        host=host or "127.0.0.1",
    )


def start_katan(folder: Path, api_key: str, *flags: str, name: str = "katan") -> Server:
    """llm-katan, an OpenAI-compatible server, with its echo backend (model ``katan-echo``) on
    127.0.0.1 and a free port, accepting only ``api_key``, with more ``flags`` (``--name
    gpt-4o-mini``, ``--error-rate 1.0``, …); its stats in ``folder/NAME-stats.json`` and its log
    in ``folder/NAME.log``; not waited for (it is ready once ``/health`` answers)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "llm_katan.cli",
        "--model",
        "katan-echo",
        "--backend",
        "echo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--validate-keys",
        "--api-keys",
        f"openai={api_key}",
        "--stats-file",
        str(folder / f"{name}-stats.json"),
        "--log-level",
        "warning",
        *flags,
    ]
    return Server(args, cwd=folder, env=os.environ, port=port, log=folder / f"{name}.log")


@contextlib.contextmanager
def running(
    server: Server,
    *,
    timeout: float = START_TIMEOUT,
    path: str = "/readyz",
    stop_within: float = 60.0,
    signal_children: bool = False,
    exit_code: int | None = 0,
) -> Iterator[Server]:
    """``server`` once ready (``wait_ready``); on exit stopped (``stop``), after which it must
    have exited ``exit_code`` (None: anything), unless the test killed it."""
    try:
        server.wait_ready(timeout, path)
        yield server
    finally:
        code = server.stop(stop_within, signal_children=signal_children)
    if exit_code is not None and not server.killed:
        command = " ".join(server.args)
        assert code == exit_code, f"{command} exited {code}:\n{server.output()[-_TAIL_CHARS:]}"
