"""The demo's live view on the terminals people have: 80x24 shows the compact view, whole."""

from __future__ import annotations

import io

from rich.console import Console

from daemon.demo.jobs import JobProgress
from daemon.demo.view import FULL_HEIGHT, DemoState, JobView, render


def late_in_the_demo() -> DemoState:
    """The state near the end of a run: every panel full, every text as long as it gets."""
    state = DemoState(size="full", workdir="driftd-demo", url="http://127.0.0.1:8477")
    for key, step in state.steps.items():
        step.status = "done"
        step.detail = f"{key}: a detail long enough to need cutting at eighty columns, surely"
    state.steps["report"].status = "running"
    state.phase = "shifted: 40% of the questions are intents the model never learnt"
    state.sent, state.labels_sent, state.unseen_share = 12_345, 6_789, 0.4
    state.hits.extend([True, False, True] * 20)
    state.checks = [
        {
            "id": 20 - i,
            "status": "drift" if i % 2 else "ok",
            "finished_at": "2026-12-07T10:11:12+00:00",
            "current_rows": 1200,
            "reference_rows": 2511,
            "drifted": ["embedding", "confidence", "performance", "output_descriptors"],
        }
        for i in range(6)
    ]
    state.measured = (14, 0.93, 0.58)
    state.decision = "retrain: 2 consecutive drifted checks on quality and output signals " * 2
    state.job = JobView(
        title="re-tuning job #3",
        progress=JobProgress(step=40, total=120, line="epoch 2/3 loss 0.4123 " * 5),
    )
    state.gate = {
        "passed": True,
        "active": {"metrics": {"accuracy": 0.61}},
        "candidate": {"metrics": {"accuracy": 0.88}},
        "ci": [0.21, 0.33],
        "n": 400,
    }
    state.before_after = (0.58, 0.87, 200)
    for n in range(7):
        state.notes.append(f"0:{n:02d}  note {n}: " + "something happened, and it says so " * 3)
    return state


def shown(state: DemoState, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(render(state, console.size.height))
    return console.export_text().splitlines()


def test_an_80_by_24_terminal_shows_the_compact_view_whole() -> None:
    lines = shown(late_in_the_demo(), 80, 24)
    assert len(lines) <= 24, "\n".join(lines)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    # What the full view says is there: steps, traffic, checks, policy, job, gate, the newest note.
    for expected in (
        "driftd demo (full)",
        "re-tuning job",
        "app accuracy",
        "drift",
        "policy: retrain",
        "gate passed: 0.61 → 0.88",
        "accuracy 0.58 before → 0.87 after",
        "note 6:",
    ):
        assert expected in text, f"{expected!r} not in\n{text}"


def test_a_tall_terminal_shows_the_full_view_within_its_size() -> None:
    lines = shown(late_in_the_demo(), 100, FULL_HEIGHT)
    assert len(lines) <= FULL_HEIGHT
    assert max(len(line) for line in lines) <= 100
    text = "\n".join(lines)
    assert "gate, promotion, recovery" in text  # the panels' titles: the full view
    assert "note 6:" in text


def test_the_start_of_the_demo_fits_too() -> None:
    lines = shown(DemoState(size="small", workdir="driftd-demo"), 80, 24)
    assert len(lines) <= 24
    assert max(len(line) for line in lines) <= 80
    assert "no check yet" in "\n".join(lines)
