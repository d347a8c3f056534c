"""What the demo shows while it runs: a live ``rich`` layout in a terminal, plain lines elsewhere.

``DemoState`` is everything on screen; the demo's main thread changes it and ``Screen`` draws
it four times a second (the drawing thread only reads it: lists are replaced, not changed in
place, and deques are copied before they are drawn). When the output is not a terminal (a CI
log, a pipe) there is nothing to redraw, so each note is printed as a line instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.live import Live
from rich.padding import Padding
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from daemon.demo.jobs import JobProgress

StepStatus = Literal["pending", "running", "done", "failed"]

STEPS = (
    ("daemon", "driftd serve"),
    ("model", "first model"),
    ("traffic", "traffic"),
    ("drift", "drift"),
    ("policy", "policy"),
    ("job", "re-tuning job"),
    ("gate", "gate"),
    ("promotion", "promotion"),
    ("recovery", "recovery"),
    ("report", "report"),
)
_ICONS = {
    "pending": ("·", "dim"),
    "running": ("▶", "yellow"),
    "done": ("✓", "green"),
    "failed": ("✗", "red"),
}
_VERDICT_STYLE = {"ok": "green", "drift": "bold red", "insufficient_data": "dim", "failed": "red"}
NONE = "-"
_PLAIN_PROGRESS_EVERY = 10.0  # seconds between a job's progress lines when not in a terminal


@dataclass(slots=True)
class Step:
    title: str
    status: StepStatus = "pending"
    detail: str = ""


@dataclass(slots=True)
class JobView:
    """A job on screen: the first model's training, or the daemon's re-tuning job."""

    title: str
    state: str = "running"
    progress: JobProgress = field(default_factory=JobProgress)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started


@dataclass(slots=True)
class DemoState:
    """Everything the screen shows."""

    size: str
    workdir: str
    url: str = ""
    started: float = field(default_factory=time.monotonic)
    steps: dict[str, Step] = field(
        default_factory=lambda: {key: Step(title) for key, title in STEPS}
    )
    phase: str = "not started"
    sent: int = 0
    labels_sent: int = 0
    unseen_share: float = 0.0
    hits: deque[bool] = field(default_factory=lambda: deque(maxlen=60))
    """Whether the app's answer was right, for its latest labelled samples."""
    checks: list[dict[str, Any]] = field(default_factory=list)
    """The latest checks, newest first, as the admin API lists them."""
    measured: tuple[int, float, float] | None = None
    """Accuracy driftd measured in a check: its id, the reference's, the current window's."""
    decision: str = ""
    job: JobView | None = None
    gate: dict[str, Any] | None = None
    before_after: tuple[float, float, int] | None = None
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=7))

    def step(self, key: str, status: StepStatus, detail: str | None = None) -> None:
        found = self.steps[key]
        found.status = status
        if detail is not None:
            found.detail = detail

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def gate_accuracy(gate: Mapping[str, Any], side: Literal["active", "candidate"]) -> float | None:
    """The accuracy the gate scored ``side`` at on the golden set, if its result holds one."""
    value = ((gate.get(side) or {}).get("metrics") or {}).get("accuracy")
    return float(value) if isinstance(value, int | float) else None


class Screen:
    """Shows a ``DemoState``: live in a terminal, as printed notes otherwise."""

    def __init__(self, state: DemoState, console: Console) -> None:
        self.state = state
        self.console = console
        self.live = console.is_terminal and not console.is_dumb_terminal
        self._live: Live | None = None
        self._last_progress = 0.0

    def __enter__(self) -> Self:
        if self.live:
            self._live = Live(
                console=self.console,
                get_renderable=lambda: render(self.state, self.console.size.height),
                refresh_per_second=4,
                screen=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def note(self, text: str) -> None:
        """Something happened: the notes panel in a terminal, a printed line otherwise."""
        stamp = _clock(self.state.elapsed)
        self.state.notes.append(f"{stamp}  {text}")
        if not self.live:
            self.console.print(f"[{stamp}] {text}", markup=False, highlight=False, soft_wrap=True)

    def job_line(self, job: JobView) -> None:
        """A job reported progress: redrawn in a terminal, a line every few seconds otherwise."""
        if self.live or time.monotonic() - self._last_progress < _PLAIN_PROGRESS_EVERY:
            return
        self._last_progress = time.monotonic()
        progress = job.progress
        where = f"step {progress.step}/{progress.total}" if progress.total else "starting"
        self.note(f"{job.title}: {where}, {job.elapsed:.0f} s")


FULL_HEIGHT = 37
"""Lines the full view needs (its fixed panels and four lines of notes); below, the compact."""


def render(state: DemoState, height: int = FULL_HEIGHT) -> RenderableType:
    """The whole screen, for a terminal of ``height`` lines: the full view of panels when it
    fits, else the same state in a compact view that fits 80x24."""
    if height < FULL_HEIGHT:
        return _compact(state)
    layout = Layout()
    layout.split_column(
        Layout(_header(state), name="header", size=3),
        Layout(name="top", size=12),
        Layout(_checks(state), name="checks", size=9),
        Layout(name="bottom", size=9),
        Layout(_notes(state), name="notes", minimum_size=4),
    )
    layout["top"].split_row(Layout(_steps(state)), Layout(_traffic(state)))
    layout["bottom"].split_row(Layout(_job(state)), Layout(_gate(state)))
    return layout


def _compact(state: DemoState) -> Layout:
    """Without frames, one line per fact: 1 line of header, 10 of steps beside the traffic, the
    job and the gate, a rule, 5 of checks and the policy, then the latest notes in what is left."""
    header = Text.assemble(
        ("driftd demo", "bold"),
        f" ({state.size})  ",
        (state.url or "starting…", "cyan"),
        "  ",
        (_clock(state.elapsed), "bold"),
        ("  Ctrl-C stops it", "dim"),
        no_wrap=True,
        overflow="ellipsis",
    )
    checks = Table(box=None, padding=(0, 1), expand=True, show_edge=False, pad_edge=False)
    for column in ("check", "verdict", "cur / ref", "drifted signals"):
        checks.add_column(
            column,
            no_wrap=True,
            overflow="ellipsis",
            ratio=1 if column.startswith("drifted") else None,
        )
    for record in list(state.checks)[:3]:
        status = str(record.get("status"))
        checks.add_row(
            str(record.get("id")),
            Text(status, _VERDICT_STYLE.get(status, "")),
            f"{record.get('current_rows')} / {record.get('reference_rows')}",
            ", ".join(record.get("drifted") or []) or NONE,
        )
    layout = Layout()
    layout.split_column(
        Layout(header, size=1),
        Layout(name="top", size=10),
        Layout(Rule("checks, newest first", style="dim"), size=1),
        Layout(
            Group(
                checks if state.checks else Text("no check yet", "dim"),
                _line("policy: " + (state.decision or NONE), "dim"),
            ),
            size=5,
        ),
        Layout(Rule("what happened", style="dim"), size=1),
        Layout(_Tail(list(state.notes))),
    )
    layout["top"].split_row(
        Layout(_compact_steps(state)), Layout(Padding(_compact_facts(state), (0, 0, 0, 1)))
    )
    return layout


def _compact_steps(state: DemoState) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(width=1)
    table.add_column(no_wrap=True)
    table.add_column(overflow="ellipsis", no_wrap=True, ratio=1)
    for step in list(state.steps.values()):
        icon, style = _ICONS[step.status]
        table.add_row(Text(icon, style), Text(step.title, style), Text(step.detail, "dim"))
    return table


def _compact_facts(state: DemoState) -> Group:
    hits = list(state.hits)
    lines: list[RenderableType] = [
        _line(f"phase: {state.phase}", "bold"),
        _line(f"sent {state.sent} samples, {state.labels_sent} labels"),
        _line(f"unseen intents: {state.unseen_share:.0%} of the traffic"),
        _line(f"app accuracy {sum(hits) / len(hits):.2f} (last {len(hits)})" if hits else ""),
    ]
    if state.measured is not None:
        check_id, reference, current = state.measured
        lines.append(_line(f"driftd: accuracy {reference:.2f} → {current:.2f} (check {check_id})"))
    job = state.job
    if job is not None:
        progress = job.progress
        where = f"step {progress.step}/{progress.total}" if progress.total else "preparing"
        bar = ProgressBar(
            total=float(progress.total or 1),
            completed=float(progress.step),
            pulse=not progress.total,
            width=12,
        )
        row = Table.grid(padding=(0, 1))
        row.add_column(width=12)
        row.add_column(no_wrap=True, overflow="ellipsis")
        row.add_row(bar, f"job {where if job.state == 'running' else job.state}")
        lines.append(row)
    gate = state.gate
    if gate is not None:
        active = gate_accuracy(gate, "active")
        candidate = gate_accuracy(gate, "candidate")
        verdict = "passed" if gate.get("passed") else "rejected"
        lines.append(_line(f"gate {verdict}: {_score(active)} → {_score(candidate)}"))
    if state.before_after is not None:
        before, after, _ = state.before_after
        lines.append(_line(f"accuracy {before:.2f} before → {after:.2f} after", "green"))
    return Group(*lines[:10])


def _line(text: str, style: str = "") -> Text:
    return Text(text, style, no_wrap=True, overflow="ellipsis")


class _Tail:
    """The last lines of ``lines`` that fit the height it is given, each cut to the width."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height if options.height is not None else len(self.lines)
        for line in self.lines[-height:] if height > 0 else []:
            yield _line(line)


def _header(state: DemoState) -> Panel:
    title = Text.assemble(
        ("driftd demo", "bold"),
        f" ({state.size})  ",
        (state.url or "starting…", "cyan"),
        f"  {state.workdir}  ",
        (_clock(state.elapsed), "bold"),
    )
    return Panel(title, subtitle="Ctrl-C stops the demo and its daemon")


def _steps(state: DemoState) -> Panel:
    # The details take what is left of the width, cut short if need be; never the icons.
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(width=1)
    table.add_column(no_wrap=True, min_width=max(len(title) for _, title in STEPS))
    table.add_column(overflow="ellipsis", no_wrap=True, ratio=1)
    for step in list(state.steps.values()):
        icon, style = _ICONS[step.status]
        table.add_row(Text(icon, style), Text(step.title, style), Text(step.detail, "dim"))
    return Panel(table, title="the loop")


def _traffic(state: DemoState) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    hits = list(state.hits)
    table.add_row("phase", Text(state.phase, "bold"))
    table.add_row("samples sent", str(state.sent))
    table.add_row("labels sent (late)", str(state.labels_sent))
    table.add_row("unseen intents", f"{state.unseen_share:.0%} of the traffic now")
    table.add_row(
        "app accuracy",
        f"{sum(hits) / len(hits):.2f} on the last {len(hits)} labelled" if hits else NONE,
    )
    if state.measured is not None:
        check_id, reference, current = state.measured
        table.add_row(
            "driftd measured",  # the hour before against the current hour
            f"accuracy {reference:.2f} → {current:.2f} in check {check_id}",
        )
    table.add_row("metrics", f"{state.url}/metrics" if state.url else NONE)
    return Panel(table, title="traffic through the ingest API")


def _checks(state: DemoState) -> Panel:
    table = Table(expand=True, box=None, padding=(0, 1))
    for column in ("check", "finished", "verdict", "rows (cur / ref)", "drifted signals"):
        table.add_column(column, no_wrap=column != "drifted signals")
    for record in list(state.checks)[:6]:
        status = str(record.get("status"))
        finished = str(record.get("finished_at") or "")[11:19]
        rows = f"{record.get('current_rows')} / {record.get('reference_rows')}"
        drifted = ", ".join(record.get("drifted") or []) or NONE
        table.add_row(
            str(record.get("id")),
            finished,
            Text(status, _VERDICT_STYLE.get(status, "")),
            rows,
            drifted,
        )
    body: RenderableType = table
    if not state.checks:
        body = Text("no check yet: the daemon checks every 5 s", "dim")
    return Panel(
        Group(body, Text("policy: " + (state.decision or NONE), "dim", overflow="ellipsis")),
        title="checks (newest first) and the policy's latest decision",
    )


def _job(state: DemoState) -> Panel:
    job = state.job
    if job is None:
        return Panel(Text("no job yet", "dim"), title="job")
    progress = job.progress
    total = progress.total
    bar = ProgressBar(
        total=float(total or 1), completed=float(progress.step), pulse=not total, width=36
    )
    where = f"step {progress.step}/{total}" if total else "preparing"
    if job.state != "running":
        where = job.state
    row = Table.grid(padding=(0, 2))
    row.add_row(bar, Text(where))
    return Panel(
        Group(
            Text.assemble((job.title, "bold"), f"  {job.state}  {job.elapsed:.0f} s"),
            row,
            Text(progress.line, "dim", overflow="ellipsis", no_wrap=True),
        ),
        title="job",
    )


def _gate(state: DemoState) -> Panel:
    lines: list[RenderableType] = []
    gate = state.gate
    if gate is not None:
        active = gate_accuracy(gate, "active")
        candidate = gate_accuracy(gate, "candidate")
        low, high = (gate.get("ci") or [float("nan"), float("nan")])[:2]
        verdict = ("passed", "green") if gate.get("passed") else ("rejected", "red")
        lines.append(
            Text.assemble(
                "gate: ",
                verdict,
                f"  accuracy {_score(active)} → {_score(candidate)} on {gate.get('n')} "
                f"golden questions (95% CI of the gain {low:+.2f}..{high:+.2f})",
            )
        )
    promotion = state.steps["promotion"]
    if promotion.detail:
        lines.append(Text(f"promotion: {promotion.detail}"))
    if state.before_after is not None:
        before, after, n = state.before_after
        lines.append(
            Text.assemble(
                "held-out shifted traffic: accuracy ",
                (f"{before:.2f}", "red"),
                " before → ",
                (f"{after:.2f}", "bold green"),
                f" after ({n} questions)",
            )
        )
    if not lines:
        lines.append(Text("waiting for a candidate", "dim"))
    return Panel(Group(*lines), title="gate, promotion, recovery")


def _notes(state: DemoState) -> Panel:
    # The newest notes are the ones to keep when the panel is shorter than the notes.
    return Panel(_Tail(list(state.notes)), title="what happened")


def _score(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else NONE


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes:d}:{rest:02d}"
