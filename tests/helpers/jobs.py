"""A job as the daemon starts it: ``python -m retrain KIND --spec job.json`` in a child process,
its spec a JSON file in its folder."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

RETRAIN = (sys.executable, "-m", "retrain")
"""The job's command, with this interpreter."""


def write_spec(directory: Path, **spec: Any) -> Path:
    """``spec`` as ``directory/job.json``, the file a job is started with: its path."""
    path = directory / "job.json"
    path.write_text(json.dumps(spec))
    return path


def run_retrain(
    *args: str, timeout: float = 180, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m retrain ARGS`` to its end, its output captured as text; ``env`` (this
    process's environment by default) is all it gets."""
    return subprocess.run(
        [*RETRAIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )


def start_retrain(
    *args: str, env: Mapping[str, str] | None = None, stderr: int | IO[str] = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``python -m retrain ARGS`` started, its stdout a text pipe, its stderr ``stderr``; ``env``
    as for ``run_retrain``. Whoever starts it ends it."""
    return subprocess.Popen(
        [*RETRAIN, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=dict(env) if env is not None else None,
    )
