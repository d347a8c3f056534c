"""Running a job (``python -m retrain <kind>``) by hand, as driftd's job runner does, and
following its progress.

A job is ``python -m retrain <kind> --spec job.json`` writing ``result.json`` into the spec's
``output_dir`` (see ``retrain/__main__.py``). Its progress lines go to stdout; the train job
writes one per logged step (``train: step 12/60, epoch 0.60: loss …``), which ``JobProgress``
turns into a fraction for a progress bar, whether the lines come from a pipe or from the log
file the daemon's runner keeps.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import DemoError

OUTPUT_DIR = "out"
RESULT_FILE = "result.json"
LOG_FILE = "job.log"
_STEP = re.compile(r"\bstep (\d+)/(\d+)")
_TAIL_CHARS = 3000


@dataclass(slots=True)
class JobProgress:
    """What a job's lines say so far: the training step out of how many, and the last line."""

    step: int = 0
    total: int | None = None
    line: str = ""
    lines: int = 0

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.lines += 1
        self.line = line
        found = _STEP.search(line)
        if found:
            self.step, self.total = int(found.group(1)), int(found.group(2))

    def read(self, log: Path, offset: int) -> int:
        """Feed the complete lines of ``log`` from byte ``offset``; returns the new offset."""
        try:
            with log.open("rb") as source:
                source.seek(offset)
                chunk = source.read()
        except OSError:
            return offset
        complete = chunk.rfind(b"\n") + 1
        for line in chunk[:complete].decode("utf-8", "replace").splitlines():
            self.feed(line)
        return offset + complete


def run_job(
    kind: str,
    spec: Mapping[str, Any],
    folder: Path,
    *,
    timeout: float = 600.0,
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run job ``kind`` with ``spec`` in ``folder`` and return its result.

    The spec is written to ``folder/job.json`` with ``output_dir`` set to ``folder/out``; the
    job's output is kept in ``folder/job.log`` and each line is passed to ``on_line``. The job
    runs in a session of its own, so Ctrl-C reaches this process only, and its whole process
    group is killed if it outlives ``timeout`` seconds or this call ends early. ``DemoError``
    with the log's tail if it fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "job.json"
    output = folder / OUTPUT_DIR
    spec_path.write_text(json.dumps({**spec, "output_dir": str(output)}, indent=2) + "\n")
    log_path = folder / LOG_FILE
    process = subprocess.Popen(
        [sys.executable, "-m", "retrain", kind, "--spec", str(spec_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=folder,
        env=dict(os.environ if env is None else env),
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process, lines), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        with log_path.open("w", encoding="utf-8") as log:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoError(
                        f"the {kind} job did not finish within {timeout:.0f} s and was stopped; "
                        f"its log: {log_path}\n{log_tail(log_path)}"
                    )
                try:
                    line = lines.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                if line is None:
                    break
                log.write(line)
                log.flush()
                if on_line is not None:
                    on_line(line)
        try:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"the {kind} job closed its output but did not exit within {timeout:.0f} s; "
                f"its log: {log_path}"
            ) from None
    finally:
        stop_group(process)
    result_path = output / RESULT_FILE
    if code != 0 or not result_path.is_file():
        raise DemoError(
            f"the {kind} job failed (exit code {code}); its log: {log_path}\n{log_tail(log_path)}"
        )
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result


def stop_group(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End ``process`` and its children if it still runs: it leads a session of its own, so
    its process group is exactly what it started. SIGTERM, then SIGKILL after ``grace``."""
    if process.poll() is not None:
        return
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _pump(process: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for raw in process.stdout:
        lines.put(raw.decode("utf-8", "replace"))
    lines.put(None)


def log_tail(path: Path) -> str:
    """The end of the log at ``path``, for an error message; empty if it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-_TAIL_CHARS:]
