"""Quality of a generation deployment: the judge's scores and the rates of bad outcomes.

- ``judge``: the mean judge score fell by at least ``quality_drop`` and Evidently finds the
  scores' distribution drifted (normed Wasserstein above its noise level, see ``columns``). The
  score reported is the fall of the mean.
- ``feedback`` (share of negative feedback, a score below 0.5 — a thumb down is 0),
  ``format_validity`` (share of outputs that are valid JSON), ``refusal`` (share of outputs that
  are refusals), ``errors`` (share of failed requests): the rate moved the bad way by at least
  ``quality_drop`` (absolute, e.g. 2% -> 7%) and Evidently's Z-test for two proportions says the
  change is not chance (p < 0.05). The score reported is that worsening, so it is comparable
  across the four and positive only when things got worse.

Requiring both keeps small windows quiet (a 5-point move in 60 samples is often noise) and large
ones relevant (at 5,000 rows a 0.5-point move is "significant" but nobody should be paged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from monitors import columns, report
from monitors.signal import Outcome, unavailable, values, verdict
from monitors.spec import MonitorSpec

Z_TEST_P_VALUE = 0.05


def judge_drift(reference: pd.DataFrame, current: pd.DataFrame, spec: MonitorSpec) -> Outcome:
    method = "evidently:wasserstein+mean_fall"
    missing = unavailable("judge", "judge_score", reference, current, spec.min_rows, method=method)
    if missing is not None:
        return missing, None
    ref, cur = columns.column_values(reference, current, "judge_score", "num")
    test, noise, snapshot = columns.distance_test("judge_score", "num", ref, cur, seed=spec.seed)
    fall = float(ref.mean() - cur.mean())
    threshold = spec.threshold("judge", spec.quality_drop)
    return verdict(
        "judge",
        method,
        score=fall,
        threshold=threshold,
        drifted=test.drifted and fall >= threshold,
        reference_rows=len(ref),
        current_rows=len(cur),
        details={
            "mean": {"reference": float(ref.mean()), "current": float(cur.mean())},
            "distribution": {
                "method": "evidently:wasserstein",
                "score": test.score,
                "threshold": test.threshold,
                "noise_threshold": noise,
                "drifted": test.drifted,
            },
        },
    ), snapshot


@dataclass(frozen=True)
class Rate:
    """A share of samples that is bad news, read from one column."""

    column: str
    flag: Callable[[pd.Series], pd.Series]
    worse: Literal["rise", "fall"]
    counts: str
    outputs_only: bool = False


RATES: dict[str, Rate] = {
    "feedback": Rate(
        "feedback_score", lambda s: s.astype(float) < 0.5, "rise", "negative feedback"
    ),
    "format_validity": Rate(
        "output_is_json", lambda s: s.astype(bool), "fall", "valid JSON outputs", outputs_only=True
    ),
    "refusal": Rate(
        "output_refusal", lambda s: s.astype(bool), "rise", "refusals", outputs_only=True
    ),
    "errors": Rate("error", lambda s: s.astype(bool), "rise", "failed requests"),
}


def rate_drift(
    name: str, reference: pd.DataFrame, current: pd.DataFrame, spec: MonitorSpec
) -> Outcome:
    from evidently.metrics import ValueDrift

    rate = RATES[name]
    method = "evidently:z+rate_change"
    if rate.outputs_only:
        # Descriptors of a missing output are False by construction, not a finding.
        reference, current = (
            frame[frame["output"].notna()] if "output" in frame.columns else frame
            for frame in (reference, current)
        )
    missing = unavailable(name, rate.column, reference, current, spec.min_rows, method=method)
    if missing is not None:
        return missing, None
    ref = rate.flag(values(reference, rate.column)).rename("flag")
    cur = rate.flag(values(current, rate.column)).rename("flag")
    snapshot = report.run(
        [ValueDrift(column="flag", method="z", threshold=Z_TEST_P_VALUE)],
        ref.to_frame(),
        cur.to_frame(),
        {"flag": "cat"},
    )
    test = report.value_drifts(snapshot)["flag"]
    before, after = float(ref.mean()), float(cur.mean())
    worsening = after - before if rate.worse == "rise" else before - after
    threshold = spec.threshold(name, spec.quality_drop)
    details: dict[str, Any] = {
        "counts": rate.counts,
        "column": rate.column,
        "rate": {"reference": before, "current": after},
        "worse_when": rate.worse,
        "z_test": {"p_value": test.score, "threshold": test.threshold, "significant": test.drifted},
    }
    return verdict(
        name,
        method,
        score=worsening,
        threshold=threshold,
        drifted=test.drifted and worsening >= threshold,
        reference_rows=len(ref),
        current_rows=len(cur),
        details=details,
    ), snapshot
