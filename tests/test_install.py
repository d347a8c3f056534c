"""`make setup` installs the CPU build of torch, never the CUDA one.

The command is read from `make -n`, so these tests resolve exactly what the Makefile would
install, with pip's `--dry-run --report` (nothing is installed or downloaded beyond metadata).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Distributions that only a CUDA build of torch brings.
CUDA_ONLY = ("nvidia-", "cuda-", "triton")


def _torch_install_command() -> list[str]:
    """The Makefile's `pip install … torch` command, as `make -n` prints it, without its hint."""
    printed = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    commands = [
        shlex.split(line.split("||")[0])
        for line in printed.splitlines()
        if re.match(r"\S*/pip install .*torch", line)
    ]
    assert len(commands) == 1, f"expected one torch install in `make -n setup`:\n{printed}"
    return commands[0]


def _dry_run(
    command: list[str], report: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    at = command.index("install") + 1
    resolve = [*command[:at], "--dry-run", "--ignore-installed", "--report", str(report)]
    return subprocess.run(
        [*resolve, *command[at:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _resolved(report: Path) -> dict[str, dict[str, Any]]:
    items = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item for item in items}


def _public_index_only() -> dict[str, str]:
    """An environment in which pip reads no configuration: it sees only its default index."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then loads no configuration file at all
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_the_makefile_installs_torch_first_from_one_documented_variable() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0+cpu" in makefile
    assert "TORCH_INDEX_URL ?=\n" in makefile
    command = _torch_install_command()
    assert command[-1] == "torch==2.13.0+cpu"
    printed = subprocess.run(
        ["make", "-n", "-B", "setup", "TORCH_INDEX_URL=file:///torch-cpu-wheels"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--extra-index-url file:///torch-cpu-wheels 'torch==2.13.0+cpu'" in printed


def test_pip_as_configured_here_resolves_the_makefiles_torch_to_a_cpu_build(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    result = _dry_run(_torch_install_command(), report, dict(os.environ))
    if result.returncode != 0 and "No matching distribution" in result.stderr:
        pytest.fail(f"pip here cannot find the Makefile's torch:\n{result.stderr}")
    assert result.returncode == 0, result.stderr
    resolved = _resolved(report)
    torch = resolved["torch"]
    assert torch["metadata"]["version"].endswith("+cpu"), torch["metadata"]["version"]
    assert "cpu" in torch["download_info"]["url"].rsplit("/", 1)[-1].lower()
    cuda = sorted(name for name in resolved if name.startswith(CUDA_ONLY))
    assert cuda == [], f"a CPU torch brings no CUDA packages, got {cuda}"


def test_a_pip_that_sees_only_the_public_index_stops_instead_of_taking_cuda(
    tmp_path: Path,
) -> None:
    env = _public_index_only()
    command = _torch_install_command()
    reachable = subprocess.run(
        [command[0], "index", "versions", "torch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if reachable.returncode != 0:
        pytest.skip(f"pip cannot reach its default index here: {reachable.stderr.strip()[-300:]}")
    report = tmp_path / "report.json"
    result = _dry_run(command, report, env)
    assert result.returncode != 0, f"resolved {sorted(_resolved(report))} from the public index"
    assert "no matching distribution" in result.stderr.lower(), result.stderr
