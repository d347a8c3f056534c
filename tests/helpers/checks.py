"""A check record as the daemon's checker stores it, for tests that need checks in the store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from daemon.domain import ReferenceKind
from daemon.store import NewCheck
from monitors import SIGNAL_GROUPS, CheckResult, SignalResult
from monitors.result import CheckStatus

THRESHOLD = 0.55


def stored_signals(
    status: str,
    drifted: Mapping[str, float] | None = None,
    calm: Mapping[str, float] | None = None,
    rows: int = 500,
) -> dict[str, Any]:
    """A check's ``signals`` exactly as the checker stores them: ``drifted`` signals with their
    scores as drifted, ``calm`` ones as ok, in the order of ``monitors.SIGNAL_GROUPS`` (whose
    names they must be)."""
    drifted, calm = dict(drifted or {}), dict(calm or {})
    scores = {**drifted, **calm}
    unknown = sorted(set(scores) - set(SIGNAL_GROUPS))
    if unknown:
        raise ValueError(f"{unknown} are no signals of monitors.SIGNAL_GROUPS")
    signals = [
        SignalResult(
            name=name,
            group=SIGNAL_GROUPS[name],
            method="roc_auc",
            score=scores[name],
            threshold=THRESHOLD,
            drifted=name in drifted,
            status="drift" if name in drifted else "ok",
            reference_rows=rows,
            current_rows=rows,
        )
        for name in SIGNAL_GROUPS
        if name in scores
    ]
    result = CheckResult(
        status=cast(CheckStatus, status),  # checked by CheckResult itself
        signals=signals,
        timings={},
        reference_rows=rows,
        current_rows=rows,
    )
    return {key: value for key, value in result.to_dict().items() if key != "snapshot"}


def new_check(
    status: str = "ok",
    *,
    at: datetime | None = None,
    drifted: Mapping[str, float] | None = None,
    calm: Mapping[str, float] | None = None,
    rows: int = 500,
    window: timedelta = timedelta(hours=1),
    **fields: Any,
) -> NewCheck:
    """A finished check of the hour (``window``) up to ``at`` (now by default) over ``rows``
    rows on each side, its signals as ``stored_signals`` makes them; ``fields`` are other
    values of ``NewCheck``'s fields (``current_total``, ``scheduled_for``, ``error``, …)."""
    at = at or datetime.now(UTC)
    values: dict[str, Any] = {
        "started_at": at,
        "finished_at": at,
        "status": status,
        "window_start": at - window,
        "window_end": at,
        "reference_kind": ReferenceKind.previous_window,
        "current_rows": rows,
        "reference_rows": rows,
        "current_total": rows,
        "reference_total": rows,
        "signals": stored_signals(status, drifted, calm, rows),
    }
    return NewCheck(**{**values, **fields})
