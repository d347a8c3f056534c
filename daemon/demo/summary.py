"""The demo's last words: the summary a user reads (and the README quotes), then where to look
next: the live metrics, the operator's commands on the demo's configuration, the dashboards.

The summary is plain lines, one per step of the loop, printed the same in a terminal and in a
log, so that a test or a reader can find each step's outcome at the start of its line.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from daemon.demo import workdir

if TYPE_CHECKING:
    from daemon.demo.run import DemoOptions


def print_summary(console: Console, summary: Mapping[str, Any], options: DemoOptions) -> None:
    """The lines a user reads at the end (and the README quotes), then where to look next."""
    drift, gate, job = summary["drift"], summary["gate"], summary["job"]
    decision, report = summary["decision"], summary["report"]
    accuracy, promotion = summary["accuracy"], summary["promotion"]
    minutes, seconds = divmod(int(summary["duration_s"]), 60)
    config = options.workdir / workdir.CONFIG
    low, high = gate["ci"]
    lines = [
        (
            "drift detected",
            f"check {drift['check_id']}, {drift['seconds_after_shift'] or 0:.0f} s "
            f"after the shift began: {', '.join(drift['drifted'])}",
        ),
        ("policy", f"{decision['message']} (check {decision['check_id']})"),
        (
            "re-tuning job",
            f"#{job['id']} {job['state']} in {job['duration_s']:.0f} s (data set, fine-tune, gate)",
        ),
        (
            "gate",
            f"{'passed' if gate['passed'] else 'rejected'}: accuracy "
            f"{gate['active']:.2f} → {gate['candidate']:.2f} on {gate['questions']} golden "
            f"questions (gain 95% CI {low:+.2f}..{high:+.2f})",
        ),
        ("promoted", f"{promotion['to']} (was {promotion['from']}); models/current points at it"),
        (
            "accuracy",
            f"{accuracy['before']:.2f} before → {accuracy['after']:.2f} after, on "
            f"{accuracy['questions']} held-out questions of the shifted traffic",
        ),
        ("after promotion", _settled(summary["after_promotion"])),
        ("report", f"{options.workdir / workdir.REPORT} (Evidently, check {report['check_id']})"),
    ]
    console.print(
        f"\n[bold]driftd demo ({summary['size']}): the whole loop in {minutes}:{seconds:02d}"
        f"[/bold] (first model {summary['first_model']})",
        soft_wrap=True,
    )
    for label, text in lines:
        console.print(f"  {label:<15} {text}", markup=False, highlight=False, soft_wrap=True)
    dashboards = Path(__file__).resolve().parents[2] / "dashboards"
    driftd, activate = driftd_command(Path.cwd(), os.environ.get("PATH", ""))
    where = [
        (
            "metrics",
            f"{summary['url']}/metrics"
            + ("" if options.keep else "  (live while the daemon runs: add --keep)"),
        ),
        *((label, f"{driftd} {arguments}") for label, arguments in next_commands(config)),
        (
            "dashboards",
            f"{dashboards if dashboards.is_dir() else 'dashboards/'} "
            "(Grafana dashboards, Prometheus alert rules)",
        ),
        ("daemon log", str(options.workdir / workdir.DAEMON_LOG)),
    ]
    console.print("[bold]Where to look next[/bold]" + (f" ({activate})" if activate else ""))
    for label, text in where:
        console.print(f"  {label:<15} {text}", markup=False, highlight=False, soft_wrap=True)


def next_commands(config: Path) -> list[tuple[str, str]]:
    """The operator's commands on the demo's configuration, without the program's name."""
    quoted = shlex.quote(str(config))
    return [
        ("checks", f"checks -c {quoted}"),
        ("jobs", f"jobs -c {quoted}"),
        ("versions", f"versions {workdir.DEPLOYMENT} -c {quoted}"),
        ("events", f"events -c {quoted}"),
    ]


def driftd_command(cwd: Path, path: str) -> tuple[str, str]:
    """How to run this driftd from ``cwd``, as a shell word, and what to do first if anything.

    ``driftd`` when the shell's ``path`` finds this very script (its virtualenv is active);
    else the script beside the running interpreter, relative to ``cwd`` unless that climbs out
    of it. Without such a script (driftd run another way), ``driftd`` and the advice to activate
    the virtualenv it was installed in.
    """
    script = Path(sys.executable).parent / "driftd"
    if not script.is_file():
        return "driftd", "activate the virtualenv driftd is installed in first"
    found = shutil.which("driftd", path=path)
    if found is not None and Path(found).resolve() == script.resolve():
        return "driftd", ""
    relative = os.path.relpath(script, cwd)
    shown = relative if not relative.startswith("..") else str(script)
    return shlex.quote(shown if os.sep in shown else f".{os.sep}{shown}"), ""


def _settled(settled: Mapping[str, Any]) -> str:
    """The check of the new version's traffic against its baseline, in one line."""
    said = (
        f"check {settled['check_id']} {settled['status']}: {settled['current_rows']} samples "
        f"against the new version's first {settled['baseline_rows']} (its baseline)"
    )
    if settled["drifted"]:
        said += f"; drifted: {', '.join(settled['drifted'])}"
    if settled["accuracy"] is not None:
        reference, current = settled["accuracy"]
        said += f"; accuracy {reference:.2f} → {current:.2f}"
    return said


def seconds_since(start: datetime, iso: object) -> float | None:
    """Seconds from ``start`` to the moment ``iso`` (the API's ISO 8601 time), if it is one."""
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round((moment - start).total_seconds(), 1)
