"""One check: compare a current window with a reference window, signal by signal.

``run_check`` computes every signal the spec names, each on its own so that one failing (an
Evidently error on odd data) leaves the others standing, times each, and merges the Evidently
reports they ran into one snapshot. It never raises for data: a signal that cannot be computed
says why in its result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from monitors import columns, domain, performance, quality, report
from monitors.result import CheckResult, SignalResult, overall_status
from monitors.signal import Outcome, failed, not_run
from monitors.spec import OUTPUT_DESCRIPTORS, MonitorSpec, Side

log = logging.getLogger(__name__)

Compute = Callable[[Side, Side, MonitorSpec], Outcome]

COMPUTE: dict[str, Compute] = {
    "descriptors": lambda r, c, s: columns.descriptor_drift("descriptors", r.frame, c.frame, s),
    OUTPUT_DESCRIPTORS: lambda r, c, s: columns.descriptor_drift(
        OUTPUT_DESCRIPTORS, r.frame, c.frame, s
    ),
    "text": domain.text_drift,
    "embedding": domain.embedding_drift,
    "prediction": lambda r, c, s: columns.distance_drift(
        "prediction", "prediction", "cat", r.frame, c.frame, s
    ),
    "confidence": lambda r, c, s: columns.distance_drift(
        "confidence", "confidence", "num", r.frame, c.frame, s
    ),
    "performance": lambda r, c, s: performance.performance(r.frame, c.frame, s),
    "judge": lambda r, c, s: quality.judge_drift(r.frame, c.frame, s),
    "feedback": lambda r, c, s: quality.rate_drift("feedback", r.frame, c.frame, s),
    "format_validity": lambda r, c, s: quality.rate_drift("format_validity", r.frame, c.frame, s),
    "refusal": lambda r, c, s: quality.rate_drift("refusal", r.frame, c.frame, s),
    "errors": lambda r, c, s: quality.rate_drift("errors", r.frame, c.frame, s),
    "latency": lambda r, c, s: columns.distance_drift(
        "latency", "latency_ms", "num", r.frame, c.frame, s
    ),
}


def result_names(spec: MonitorSpec) -> list[str]:
    """The results a check of ``spec`` produces, in order: its signals, ``descriptors`` twice."""
    names: list[str] = []
    for name in spec.signals:
        names.append(name)
        if name == "descriptors":
            names.append(OUTPUT_DESCRIPTORS)
    return names


def run_check(reference: Side, current: Side, spec: MonitorSpec) -> CheckResult:
    """Compare ``current`` with ``reference`` on the signals of ``spec``."""
    ref_rows, cur_rows = reference.rows, current.rows
    if min(ref_rows, cur_rows) < spec.min_rows:
        reason = (
            f"the reference window has {ref_rows} rows and the current one {cur_rows}; "
            f"at least {spec.min_rows} are needed on each side"
        )
        described = any(str(column).startswith("output_") for column in current.frame.columns)
        short = [
            not_run(
                name, "insufficient_data", reason, reference_rows=ref_rows, current_rows=cur_rows
            )
            for name in result_names(spec)
            if name != OUTPUT_DESCRIPTORS or described
        ]
        return CheckResult("insufficient_data", short, {}, ref_rows, cur_rows, None)

    signals: list[SignalResult] = []
    timings: dict[str, float] = {}
    parts: list[tuple[str, object]] = []
    with report.quiet():
        for name in result_names(spec):
            started = time.perf_counter()
            try:
                result, snapshot = COMPUTE[name](reference, current, spec)
            except Exception as exc:  # any failure of one signal is that signal's result
                result, snapshot = failed(name, exc), None
            if name == OUTPUT_DESCRIPTORS and result.status == "skipped":
                continue  # a deployment without outputs has no output descriptors to report
            timings[name] = time.perf_counter() - started
            signals.append(result)
            if snapshot is not None:
                parts.append((name, snapshot))
        merged = _merge(parts, signals)
    return CheckResult(overall_status(signals), signals, timings, ref_rows, cur_rows, merged)


def _merge(parts: list[tuple[str, object]], signals: list[SignalResult]) -> dict[str, Any] | None:
    if not parts:
        return None
    try:
        return report.merge(parts, signals)
    except Exception:  # the verdicts stand without their pictures
        log.exception("could not merge the Evidently reports of this check into one snapshot")
        return None
