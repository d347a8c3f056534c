"""The table ``driftd check`` and ``driftd checks show`` print: whole names at 80 columns, and
why each signal that did not run did not."""

from __future__ import annotations

import io
import re

from rich.console import Console

from daemon.cli.check_table import Name, render
from monitors.result import SignalResult
from monitors.signal import failed, not_run, verdict


def signals() -> list[SignalResult]:
    """A classification check as it comes out: every kind of verdict, the longest names."""

    def judged(name: str, method: str, score: float, threshold: float) -> SignalResult:
        return verdict(
            name,
            method,
            score=score,
            threshold=threshold,
            drifted=score > threshold,
            reference_rows=400,
            current_rows=398,
            details={},
        )

    return [
        judged("descriptors", "evidently:drifted_columns_share", 0.1667, 0.5),
        judged("output_descriptors", "evidently:drifted_columns_share", 0.0, 0.5),
        judged("embedding", "driftd:embeddings:classifier_cv", 0.8328, 0.5674),
        judged("prediction", "evidently:jensenshannon", 0.5222, 0.1429),
        not_run(
            "confidence",
            "insufficient_data",
            "12 reference and 398 current rows have a 'confidence' value; at least 50 are "
            "needed on each side",
            method="evidently:wasserstein",
        ),
        failed("performance", ValueError("labels [a] are not predictions"), method="x:y"),
        not_run(
            "feedback",
            "skipped",
            "no reference sample has a 'feedback_score' value",
            method="evidently:z+rate_change",
        ),
    ]


def rendered(results: list[SignalResult], width: int, *, reasons: bool = True) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    rows = [s.to_dict() for s in results]
    if not reasons:
        rows = [{**row, "details": {}, "error": None} for row in rows]
    console.print(render("check 7 of intents: drift", rows))
    return console.export_text().splitlines()


def body(lines: list[str]) -> dict[str, list[str]]:
    """The lines of the signal, method and status columns of a table printed without reasons.
    Their cells have no spaces: each is what follows the header's start up to a space."""
    header = next(i for i, line in enumerate(lines) if line.startswith("signal"))
    assert set(lines[header + 1].strip()) == {"─"}
    cells: dict[str, list[str]] = {}
    for name in ("signal", "method", "status"):
        start = lines[header].index(name)
        cells[name] = [line[start:].split(" ", 1)[0] for line in lines[header + 2 :]]
    return cells


def test_at_80_columns_every_name_reads_whole_and_every_line_fits() -> None:
    results = signals()
    for reasons in (True, False):
        lines = rendered(results, 80, reasons=reasons)
        assert max(len(line) for line in lines) <= 80, "\n".join(lines)
        assert not any("…" in line for line in lines), "\n".join(lines)
    cells = body(rendered(results, 80, reasons=False))
    # Wrapped names lose no character: a column's lines joined are its names joined.
    assert "".join(cells["signal"]) == "".join(s.name for s in results)
    assert "".join(cells["method"]) == "".join(s.method for s in results)
    assert "".join(cells["status"]) == "".join(s.status for s in results)
    # ... and a method wraps between its parts, not inside a word.
    assert "drifted_columns_share" in cells["method"]
    assert "evidently:" in cells["method"]
    assert "driftd:embeddings:" in cells["method"]


def test_on_a_wide_terminal_each_signal_is_one_line() -> None:
    results = signals()
    cells = body(rendered(results, 140, reasons=False))
    assert cells["method"] == [s.method for s in results]
    assert cells["signal"] == [s.name for s in results]


def test_the_table_says_why_a_signal_was_skipped_short_of_data_or_failed() -> None:
    text = " ".join(" ".join(rendered(signals(), 80)).split())
    assert "feedback: skipped — no reference sample has a 'feedback_score' value" in text
    assert (
        "confidence: insufficient_data — 12 reference and 398 current rows have a 'confidence' "
        "value; at least 50 are needed on each side" in text
    )
    # Brackets in a stored message are text, not markup.
    assert "performance: failed — ValueError: labels [a] are not predictions" in text


def test_signals_short_of_data_for_one_reason_share_one_line() -> None:
    reason = "the reference window has 3 rows and the current one 0; at least 50 are needed"
    short = [not_run(name, "insufficient_data", reason) for name in ("descriptors", "embedding")]
    text = " ".join(" ".join(rendered(short, 80)).split())
    assert f"every signal: insufficient_data — {reason}" in text
    assert text.count(reason) == 1


def test_a_name_wraps_after_its_parts_then_inside_words() -> None:
    assert Name("evidently:drifted_columns_share").lines(21) == [
        "evidently:",
        "drifted_columns_share",
    ]
    assert Name("evidently:drifted_columns_share").lines(12) == [
        "evidently:",
        "drifted_",
        "columns_",
        "share",
    ]
    assert Name("insufficient_data").lines(40) == ["insufficient_data"]
    assert all(re.fullmatch(r"\S+", line) for line in Name("a:b+c_d").lines(2))
