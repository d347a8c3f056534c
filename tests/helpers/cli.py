"""The installed ``driftd`` command, run as a user runs it, in an environment of the test's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

DRIFTD = Path(sys.executable).parent / "driftd"
"""The virtualenv's ``driftd`` script, beside this interpreter."""


def environ_without(prefixes: Sequence[str] = ("DRIFTD_",)) -> dict[str, str]:
    """This process's environment without the variables named with ``prefixes``: a child sees
    only the driftd settings its test gives it, never the developer's own."""
    return {
        name: value for name, value in os.environ.items() if not name.startswith(tuple(prefixes))
    }


def run_driftd(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``driftd ARGS`` in ``cwd`` (this process's by default), its output captured as text;
    ``env`` (this process's environment less ``DRIFTD_*`` by default) is all it gets."""
    return subprocess.run(
        [str(DRIFTD), *args],
        cwd=cwd,
        env=dict(env) if env is not None else environ_without(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
