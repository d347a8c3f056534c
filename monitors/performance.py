"""Quality of a classification deployment: accuracy and macro-F1, measured or estimated.

With at least ``min_rows`` labelled current rows, Evidently's ``Accuracy`` and ``F1Score``
(macro-averaged for several classes) are computed on both windows' labelled rows; the score is
the larger fall of the two from reference to current. Without them, the current accuracy is
estimated from the confidences (``cbpe``), calibrated on the labelled reference, and compared to
the reference's measured accuracy; ``details["estimated"]`` says which it was. Either way the
signal drifts when the fall reaches ``quality_drop`` (absolute: 0.05 is five points).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from monitors import cbpe, report
from monitors.signal import Outcome, not_run, verdict
from monitors.spec import MonitorSpec

NAME = "performance"
MEASURED = "evidently:accuracy+macro_f1"
ESTIMATED = "cbpe"


def performance(reference: pd.DataFrame, current: pd.DataFrame, spec: MonitorSpec) -> Outcome:
    for side, frame in (("reference", reference), ("current", current)):
        if "prediction" not in frame.columns or frame["prediction"].isna().all():
            return not_run(NAME, "skipped", f"the {side} window has no predictions"), None
    ref = _labelled(reference)
    if len(ref) == 0:
        return not_run(
            NAME,
            "skipped",
            "the reference has no labelled predictions to compare with",
            details={"estimated": False},
        ), None
    if len(ref) < spec.min_rows:
        return not_run(
            NAME,
            "insufficient_data",
            f"the reference has {len(ref)} labelled predictions; at least {spec.min_rows} "
            "are needed",
            reference_rows=len(ref),
            details={"estimated": False},
        ), None
    cur = _labelled(current)
    if len(cur) >= spec.min_rows:
        return _measured(ref, cur, spec)
    return _estimated(ref, current, spec, labelled_current=len(cur))


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    if "label" not in frame.columns:
        return frame.iloc[:0]
    keep = frame["label"].notna() & frame["prediction"].notna()
    picked = frame.loc[keep, [c for c in ("label", "prediction", "confidence") if c in frame]]
    return picked.assign(
        label=picked["label"].astype(str), prediction=picked["prediction"].astype(str)
    )


def _measured(ref: pd.DataFrame, cur: pd.DataFrame, spec: MonitorSpec) -> Outcome:
    from evidently import MulticlassClassification
    from evidently.metrics import Accuracy, F1Score

    accuracy, f1 = Accuracy(), F1Score()
    snapshot = report.run(
        [accuracy, f1],
        ref[["label", "prediction"]],
        cur[["label", "prediction"]],
        {"label": "cat", "prediction": "cat"},
        tests=False,
        classification=[MulticlassClassification(target="label", prediction_labels="prediction")],
    )
    values: dict[str, dict[str, float]] = {}
    for key, metric in (("accuracy", accuracy), ("macro_f1", f1)):
        before = float(snapshot.context.get_reference_metric_result(metric.metric_id).value)
        after = float(snapshot.context.get_metric_result(metric.metric_id).value)
        values[key] = {"reference": before, "current": after, "fall": before - after}
    score = max(item["fall"] for item in values.values())
    threshold = spec.threshold(NAME, spec.quality_drop)
    details: dict[str, Any] = {"estimated": False, "metrics": values}
    details.update(_unknown_predictions(cur, spec))
    return verdict(
        NAME,
        MEASURED,
        score=score,
        threshold=threshold,
        drifted=score >= threshold,
        reference_rows=len(ref),
        current_rows=len(cur),
        details=details,
    ), snapshot


def _estimated(
    ref: pd.DataFrame, current: pd.DataFrame, spec: MonitorSpec, *, labelled_current: int
) -> Outcome:
    reason_prefix = (
        f"only {labelled_current} current predictions are labelled (fewer than {spec.min_rows})"
    )
    if "confidence" not in ref.columns or "confidence" not in current.columns:
        return not_run(
            NAME,
            "skipped",
            f"{reason_prefix} and there are no confidences to estimate accuracy from",
            reference_rows=len(ref),
            details={"estimated": True},
        ), None
    calibrate_on = ref[np.isfinite(ref["confidence"].astype(float))]
    predicted = current[current["prediction"].notna()]
    confidence = predicted["confidence"].astype(float)
    confidence = confidence[np.isfinite(confidence)]
    if min(len(calibrate_on), len(confidence)) < spec.min_rows:
        return not_run(
            NAME,
            "insufficient_data",
            f"{reason_prefix}; estimating needs {spec.min_rows} confidences on each side, "
            f"there are {len(calibrate_on)} labelled reference and {len(confidence)} current ones",
            reference_rows=len(calibrate_on),
            current_rows=len(confidence),
            details={"estimated": True},
        ), None
    calibration = cbpe.calibrate(
        calibrate_on["confidence"].to_numpy(float),
        (calibrate_on["label"] == calibrate_on["prediction"]).to_numpy(),
    )
    estimate = cbpe.estimate_accuracy(calibration, confidence.to_numpy(float))
    fall = calibration.reference_accuracy - estimate.accuracy
    threshold = spec.threshold(NAME, spec.quality_drop)
    details: dict[str, Any] = {
        "estimated": True,
        "reason": f"{reason_prefix}: accuracy estimated from confidences",
        "metrics": {
            "accuracy": {
                "reference": calibration.reference_accuracy,
                "current": estimate.accuracy,
                "fall": fall,
                "std_error": estimate.std_error,
            }
        },
        "calibration": "isotonic P(correct | confidence) on the labelled reference",
        "current_rows_without_confidence": int(len(predicted) - len(confidence)),
        "labelled_current_rows": labelled_current,
    }
    details.update(_unknown_predictions(predicted, spec))
    return verdict(
        NAME,
        ESTIMATED,
        score=fall,
        threshold=threshold,
        drifted=fall >= threshold,
        reference_rows=calibration.reference_rows,
        current_rows=estimate.rows,
        details=details,
    ), None


def _unknown_predictions(frame: pd.DataFrame, spec: MonitorSpec) -> dict[str, float]:
    """Share of predictions outside the configured label set, when one is configured."""
    if not spec.labels or len(frame) == 0:
        return {}
    known = frame["prediction"].astype(str).isin(set(spec.labels))
    return {"unknown_prediction_share": float(1.0 - known.mean())}
