"""A check's signals as a terminal table that reads at 80 columns, with why a signal did not run.

``driftd check`` and ``driftd checks show`` print the same table. Names such as
``output_descriptors`` and ``evidently:drifted_columns_share`` have no spaces, so a narrow terminal
would cut them to ``evidently:drifted_co…``; here they wrap after ``:``, ``+`` or ``_`` instead,
and read whole across two lines. The reasons a signal was skipped, was short of data, failed or
was estimated are sentences: they are listed under the table, where they wrap at spaces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

COLUMNS = ("signal", "group", "method", "score", "threshold", "status")

# Where a name may be wrapped: after ":" or "+" (between the parts of a method), or failing that
# after "_" (inside a word), or at a space.
_PARTS = re.compile(r"[^:+\s]*(?:[:+]|\s+|$)")
_WORDS = re.compile(r"[^_\s]*(?:_|\s+|$)")


class Name:
    """Text without spaces, wrapped only after ``:`` or ``+``, or after ``_`` when a part is
    still wider than the column (folded only when even a word is)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = _widest(self.text, "words")
        return Measurement(widest, len(self.text)).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text("\n".join(self.lines(options.max_width)), overflow="fold")

    def lines(self, width: int) -> list[str]:
        """The text cut into lines of at most ``width`` characters where it may be."""
        pieces: list[str] = []
        for part in _pieces(self.text, _PARTS):
            pieces += _pieces(part, _WORDS) if len(part.rstrip()) > width else [part]
        lines = [""]
        for piece in pieces:
            if lines[-1] and len(lines[-1] + piece.rstrip()) > width:
                lines.append("")
            lines[-1] += piece
        return [line.rstrip() for line in lines]


def _pieces(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [piece for piece in pattern.findall(text) if piece]


def number(value: object) -> str:
    """A score or threshold as shown: four significant digits, or nothing."""
    return f"{value:.4g}" if isinstance(value, int | float) else ""


class CheckTable:
    """The table of a check's signals (``SignalResult.to_dict()`` each), and the reasons under
    it, laid out for the width it is printed at."""

    def __init__(self, title: str, signals: Sequence[Mapping[str, Any]]) -> None:
        self.title = title
        self.signals = signals

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = [
            [
                str(signal.get("name", "")),
                str(signal.get("group", "")),
                str(signal.get("method") or ""),
                number(signal.get("score")),
                number(signal.get("threshold")),
                str(signal.get("status", "")),
            ]
            for signal in self.signals
        ]
        # Rules under the header only, no frame, two spaces between columns: at 80 columns
        # every character goes to the names.
        table = Table(
            title=self.title,
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            padding=(0, 1, 0, 0),
        )
        budget = options.max_width - _GAP * (len(COLUMNS) - 1)
        for index, width in enumerate(widths(rows, budget)):
            numeric = COLUMNS[index] in ("score", "threshold")
            table.add_column(COLUMNS[index], justify="right" if numeric else "left", width=width)
        for row in rows:
            # Plain Text, never markup: stored names and messages may hold [brackets].
            table.add_row(
                *(Name(cell) if i in _WRAPPED else Text(cell) for i, cell in enumerate(row))
            )
        yield table
        for names, reason in reasons(self.signals):
            yield Text(f"{names}: {reason}")


_GAP = 2  # the characters between two columns: one of padding, one of (blank) rule
_WRAPPED = (0, 2, 5)  # signal, method, status: names that wrap as ``Name`` does
# When the names do not fit whole, the order in which columns give way, and how far: a method
# wraps between its parts, then a status inside its word, then a signal, then a method too.
_NARROWING = ((2, "parts"), (5, "words"), (0, "words"), (2, "words"))


def widths(rows: Sequence[Sequence[str]], budget: int) -> list[int]:
    """Each column's width: its widest cell, or, when ``budget`` characters cannot hold them all,
    narrowed as ``_NARROWING`` says, no more than needed."""
    columns = list(zip(COLUMNS, *rows, strict=True))
    sized = [max(len(cell) for cell in column) for column in columns]
    for index, level in _NARROWING:
        excess = sum(sized) - budget
        if excess <= 0:
            break
        floor = max(_widest(cell, level) for cell in columns[index])
        sized[index] = max(floor, sized[index] - excess)
    return sized


def _widest(text: str, level: str) -> int:
    parts = _pieces(text, _PARTS)
    pieces = parts if level == "parts" else [w for part in parts for w in _pieces(part, _WORDS)]
    return max((len(piece.rstrip()) for piece in pieces), default=0)


def render(title: str, signals: Sequence[Mapping[str, Any]]) -> CheckTable:
    """What ``driftd check`` prints for a check's ``signals``."""
    return CheckTable(title, signals)


def reasons(signals: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(signals, reason)`` for each signal that says why it was skipped, short of data,
    failed or estimated; signals with the same reason share one line."""
    by_reason: dict[str, list[str]] = {}
    for signal in signals:
        details = signal.get("details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        error = signal.get("error")
        status = str(signal.get("status", ""))
        if error:
            text = f"{status} — {error}"
        elif reason:
            text = f"{status} — {reason}"
        else:
            continue
        by_reason.setdefault(text, []).append(str(signal.get("name", "")))
    if (
        len(by_reason) == 1
        and len(signals) > 1
        and len(next(iter(by_reason.values()))) == len(signals)
    ):
        return [("every signal", next(iter(by_reason)))]
    return [(", ".join(names), text) for text, names in by_reason.items()]
