"""``driftd demo`` as a newcomer runs it: the installed command, in a subprocess, to the end.

The small demo trains its first model, serves Banking77 traffic that shifts toward unseen
intents through a real ``driftd serve``, and must report the drift, a re-tuning job that
succeeded, a promotion, better accuracy after than before, and an Evidently report; when it
exits, nothing it started may still run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

DRIFTD = Path(sys.executable).parent / "driftd"
DEMO_TIMEOUT_S = 480


def _environ() -> dict[str, str]:
    # The demo must not depend on the caller's DRIFTD_* settings, and must not need the network.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    return {**environ, "HF_HUB_OFFLINE": "1"}


def _processes_of(folder: Path, group: int) -> list[str]:
    """Command lines of the processes that name ``folder`` or belong to process group ``group``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            # Field 5 of stat is the process group; the command name before it may hold spaces.
            pgrp = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
        if str(folder) in cmdline or pgrp == group:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_the_small_demo_runs_the_whole_loop_and_leaves_nothing_running(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    done = subprocess.run(
        [str(DRIFTD), "demo", "--small", "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env=_environ(),
        check=False,
    )
    log = folder / "daemon.log"
    daemon_log = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-3000:]}\n{daemon_log}"

    out = done.stdout
    assert re.search(r"drift detected\s+check \d+", out), out
    assert re.search(r"re-tuning job\s+#\d+ succeeded", out), out
    assert re.search(r"promoted\s+banking77-intents-\S+ \(was v1\)", out), out
    accuracy = re.search(r"accuracy\s+(\d\.\d\d) before → (\d\.\d\d) after", out)
    assert accuracy is not None, out
    assert float(accuracy.group(2)) > float(accuracy.group(1)), accuracy.group(0)
    assert f"driftd checks -c {folder / 'driftd.yaml'}" in out

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["drift"]["drifted"]
    assert summary["job"]["state"] == "succeeded"
    assert summary["gate"]["passed"] is True
    assert summary["accuracy"]["after"] > summary["accuracy"]["before"]
    promoted = summary["promotion"]["to"]
    assert promoted != "v1"
    # The promotion hook pointed the app's link at the new version's model.
    current = (folder / "models" / "current").resolve()
    assert (current / "driftd-version.json").is_file()
    assert folder.resolve() / "jobs" in current.parents

    report = Path(summary["report"]["path"])
    assert report.is_file()
    assert "evidently" in report.read_text(errors="replace").lower()

    assert _processes_of(folder, summary["daemon_pid"]) == []


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    done = subprocess.run(
        [str(DRIFTD), "demo", "--small", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_environ(),
        check=False,
    )
    assert done.returncode == 1
    assert "was not made by driftd demo" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
