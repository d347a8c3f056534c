"""The demo's last words: the summary a user reads (and the README quotes), then where to look
next: the live metrics, the operator's commands on the demo's configuration, the dashboards.

The summary is plain lines, one per step of the loop, printed the same in a terminal and in a
log, so that a test or a reader can find each step's outcome at the start of its line.
"""

from __future__ import annotations

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
            f"{gate['champion']:.2f} → {gate['challenger']:.2f} on {gate['questions']} golden "
            f"questions (gain 95% CI {low:+.2f}..{high:+.2f})",
        ),
        ("promoted", f"{promotion['to']} (was {promotion['from']}); models/current points at it"),
        (
            "accuracy",
            f"{accuracy['before']:.2f} before → {accuracy['after']:.2f} after, on "
            f"{accuracy['questions']} held-out questions of the shifted traffic",
        ),
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
    where = [
        (
            "metrics",
            f"{summary['url']}/metrics"
            + ("" if options.keep else "  (live while the daemon runs: add --keep)"),
        ),
        ("checks", f"driftd checks -c {config}"),
        ("jobs", f"driftd jobs -c {config}"),
        ("versions", f"driftd versions {workdir.DEPLOYMENT} -c {config}"),
        ("events", f"driftd events -c {config}"),
        (
            "dashboards",
            f"{dashboards if dashboards.is_dir() else 'dashboards/'} "
            "(Grafana dashboards, Prometheus alert rules)",
        ),
        ("daemon log", str(options.workdir / workdir.DAEMON_LOG)),
    ]
    console.print("[bold]Where to look next[/bold]")
    for label, text in where:
        console.print(f"  {label:<15} {text}", markup=False, highlight=False, soft_wrap=True)


def seconds_since(start: datetime, iso: object) -> float | None:
    """Seconds from ``start`` to the moment ``iso`` (the API's ISO 8601 time), if it is one."""
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round((moment - start).total_seconds(), 1)
