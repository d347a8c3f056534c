"""``driftd demo`` as a newcomer runs it: the installed command, in a subprocess, to the end.

The small demo trains its first model, serves Banking77 traffic that shifts toward unseen
intents through a real ``driftd serve``, and must report the drift, a re-tuning job that
succeeded, a promotion, better accuracy after than before, checks ok after the promotion, and an
Evidently report; when it exits, nothing it started may still run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from tests.helpers.cli import DRIFTD, environ_without, run_driftd

DEMO_TIMEOUT_S = 480


def _environ() -> dict[str, str]:
    # The demo must not depend on the caller's DRIFTD_* settings, and must not need the network.
    return {**environ_without(), "HF_HUB_OFFLINE": "1"}


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
    done = run_driftd(
        "demo", "--small", "--dir", str(folder), env=_environ(), timeout=DEMO_TIMEOUT_S
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
    # After the promotion the checks judge the new version against its own baseline: the
    # deployment recovered, so they say ok.
    assert re.search(r"after promotion\s+check \d+ ok: ", out), out
    assert f"driftd checks -c {folder / 'driftd.yaml'}" in out

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["drift"]["drifted"]
    assert summary["job"]["state"] == "succeeded"
    assert summary["gate"]["passed"] is True
    assert summary["accuracy"]["after"] > summary["accuracy"]["before"]
    settled = summary["after_promotion"]
    assert (settled["status"], settled["drifted"]) == ("ok", []), settled
    assert settled["check_id"] > summary["decision"]["check_id"]
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

    # Where to look next: each command works as printed, from where the demo ran.
    where = out.split("Where to look next")[1].splitlines()[1:]
    printed = {line.split()[0]: line.split(None, 1)[1] for line in where if line.strip()}
    commands = [printed[label] for label in ("checks", "jobs", "versions", "events")]
    for command in commands:
        ran = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=120, env=_environ()
        )
        assert ran.returncode == 0, f"{command}\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    done = run_driftd("demo", "--small", "--dir", str(tmp_path), env=_environ(), timeout=60)
    assert done.returncode == 1
    assert "was not made by driftd demo" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_the_next_commands_name_this_driftd_so_that_they_run_as_printed(tmp_path: Path) -> None:
    from daemon.demo.summary import driftd_command, next_commands

    # Not on the PATH: the script beside this interpreter, relative to where the demo ran.
    here = DRIFTD.parent.parent.parent
    assert driftd_command(here, "") == (str(DRIFTD.relative_to(here)), "")
    assert driftd_command(tmp_path, "") == (str(DRIFTD), "")  # not below: the full path
    # On the PATH (its virtualenv active): the bare name.
    assert driftd_command(tmp_path, str(DRIFTD.parent)) == ("driftd", "")
    (label, arguments), *_ = next_commands(Path("my demo") / "driftd.yaml")
    assert (label, arguments) == ("checks", "checks -c 'my demo/driftd.yaml'")
    ran = run_driftd(*shlex.split(arguments)[:1], "--help", env=_environ(), timeout=60)
    assert ran.returncode == 0, ran.stderr
