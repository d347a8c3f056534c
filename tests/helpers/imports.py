"""What importing a part of driftd costs: the libraries a fresh interpreter has loaded after it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(code: str, libraries: Iterable[str]) -> list[str]:
    """Which of ``libraries`` (top-level module names) a fresh interpreter, started in the
    repository's root, has imported once it has run ``code``: sorted."""
    probe = (
        f"{code}\nimport sys\nprint(sorted(m for m in {tuple(libraries)!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return loaded
