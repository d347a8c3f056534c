"""Building one signal's result: a verdict, or the reason it could not be computed.

Every signal function returns ``Outcome``\\s: its ``SignalResult`` and the Evidently snapshot of
the report it ran (``None`` when it ran none), which the check merges into its own snapshot.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import pandas as pd

from monitors.result import SignalResult
from monitors.spec import RESULT_GROUPS

Outcome: TypeAlias = tuple[SignalResult, Any]


def verdict(
    name: str,
    method: str,
    *,
    score: float,
    threshold: float,
    drifted: bool,
    reference_rows: int,
    current_rows: int,
    details: dict[str, Any],
) -> SignalResult:
    return SignalResult(
        name=name,
        group=RESULT_GROUPS[name],
        method=method,
        score=score,
        threshold=threshold,
        drifted=drifted,
        status="drift" if drifted else "ok",
        reference_rows=reference_rows,
        current_rows=current_rows,
        details=details,
    )


def not_run(
    name: str,
    status: Literal["skipped", "insufficient_data"],
    reason: str,
    *,
    method: str = "",
    reference_rows: int = 0,
    current_rows: int = 0,
    details: dict[str, Any] | None = None,
) -> SignalResult:
    """A signal that could not be computed; ``reason`` says why, for the operator."""
    return SignalResult(
        name=name,
        group=RESULT_GROUPS[name],
        method=method,
        score=None,
        threshold=None,
        drifted=False,
        status=status,
        reference_rows=reference_rows,
        current_rows=current_rows,
        details={"reason": reason, **(details or {})},
    )


def failed(name: str, error: BaseException, *, method: str = "") -> SignalResult:
    return SignalResult(
        name=name,
        group=RESULT_GROUPS[name],
        method=method,
        score=None,
        threshold=None,
        drifted=False,
        status="failed",
        reference_rows=0,
        current_rows=0,
        error=f"{type(error).__name__}: {error}",
    )


def values(frame: pd.DataFrame, column: str) -> pd.Series:
    """The non-missing values of ``column`` (empty if the frame has no such column)."""
    if column not in frame.columns:
        return pd.Series([], dtype=object, name=column)
    return frame[column].dropna()


def unavailable(
    name: str,
    column: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    min_rows: int,
    *,
    method: str = "",
) -> SignalResult | None:
    """Why ``column`` cannot carry signal ``name``, or None if it can.

    Skipped when either side lacks the column or has no value in it (the deployment does not
    record it); short of data when a side has values but fewer than ``min_rows``.
    """
    for side, frame in (("reference", reference), ("current", current)):
        if column not in frame.columns:
            return not_run(
                name, "skipped", f"the {side} window has no {column!r} column", method=method
            )
    ref_rows, cur_rows = len(values(reference, column)), len(values(current, column))
    for side, rows in (("reference", ref_rows), ("current", cur_rows)):
        if rows == 0:
            return not_run(
                name,
                "skipped",
                f"no {side} sample has a {column!r} value",
                method=method,
                reference_rows=ref_rows,
                current_rows=cur_rows,
            )
    if min(ref_rows, cur_rows) < min_rows:
        return not_run(
            name,
            "insufficient_data",
            f"{column!r} has {ref_rows} reference and {cur_rows} current values; "
            f"at least {min_rows} are needed on each side",
            method=method,
            reference_rows=ref_rows,
            current_rows=cur_rows,
        )
    return None
