"""Classification quality: measured once labels arrive, estimated from confidences before."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from monitors import CheckResult, MonitorSpec, Side, run_check

DEGRADED = 0.3
SPEC = MonitorSpec(
    task="classification", signals=("prediction", "confidence", "performance"), seed=3
)

Windows = dict[str, pd.DataFrame]
Simulate = Callable[[pd.DataFrame, float, int], pd.DataFrame]


@pytest.fixture(scope="module")
def predicted(questions: Windows, simulate: Simulate) -> Windows:
    return {
        "reference": simulate(questions["reference"], 0.0, 1),
        "healthy": simulate(questions["current"], 0.0, 2),
        "degraded": simulate(questions["current"], DEGRADED, 2),
    }


def accuracy(frame: pd.DataFrame) -> float:
    return float((frame["prediction"] == frame["label"]).mean())


def unlabelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(label=None)


def check(reference: pd.DataFrame, current: pd.DataFrame) -> CheckResult:
    return run_check(Side(reference), Side(current), SPEC)


def test_a_model_wrong_on_a_third_of_traffic_drifts_in_measured_accuracy(
    predicted: Windows,
) -> None:
    reference, current = predicted["reference"], predicted["degraded"]
    result = check(reference, current)
    performance = result.signal("performance")
    assert performance.status == "drift"
    assert performance.method == "evidently:accuracy+macro_f1"
    assert performance.group == "quality"
    assert performance.details["estimated"] is False
    measured = performance.details["metrics"]["accuracy"]
    # Evidently's accuracy is the plain share of right predictions, on each side.
    assert measured["reference"] == pytest.approx(accuracy(reference))
    assert measured["current"] == pytest.approx(accuracy(current))
    # Degraded rows are right about 5% of the time instead of about 82%.
    expected_fall = DEGRADED * (accuracy(reference) - 0.055)
    assert measured["fall"] == pytest.approx(expected_fall, abs=0.04)
    assert performance.score is not None
    assert performance.score >= measured["fall"]
    assert performance.threshold == SPEC.quality_drop
    assert 0.0 < performance.details["metrics"]["macro_f1"]["current"] < 1.0
    # Lower confidences are also drift of the confidence distribution.
    assert result.signal("confidence").status == "drift"
    assert result.status == "drift"
    assert (
        CheckResult.from_dict(json.loads(json.dumps(result.to_dict(), allow_nan=False))) == result
    )


def test_without_labels_the_estimate_follows_the_true_accuracy(predicted: Windows) -> None:
    reference, current = predicted["reference"], predicted["degraded"]
    performance = check(reference, unlabelled(current)).signal("performance")
    assert performance.status == "drift"
    assert performance.method == "cbpe"
    assert performance.details["estimated"] is True
    estimate = performance.details["metrics"]["accuracy"]
    assert estimate["current"] == pytest.approx(accuracy(current), abs=0.03)
    assert estimate["reference"] == pytest.approx(accuracy(reference))
    assert estimate["std_error"] < 0.02
    assert "labelled" in performance.details["reason"]


def test_a_healthy_model_is_ok_measured_and_estimated(predicted: Windows) -> None:
    reference, current = predicted["reference"], predicted["healthy"]
    measured = check(reference, current)
    assert measured.signal("performance").status == "ok"
    assert measured.status == "ok", [(s.name, s.status, s.score) for s in measured.signals]
    estimated = check(reference, unlabelled(current)).signal("performance")
    assert estimated.status == "ok"
    assert estimated.details["metrics"]["accuracy"]["current"] == pytest.approx(
        accuracy(current), abs=0.03
    )


def test_a_few_labels_are_not_enough_to_measure_so_it_estimates(predicted: Windows) -> None:
    current = unlabelled(predicted["degraded"])
    current.loc[:9, "label"] = predicted["degraded"]["label"][:10]
    performance = check(predicted["reference"], current).signal("performance")
    assert performance.method == "cbpe"
    assert performance.details["labelled_current_rows"] == 10


def test_missing_confidences_are_left_out_of_the_estimate(predicted: Windows) -> None:
    current = unlabelled(predicted["degraded"])
    current.loc[current.index % 2 == 0, "confidence"] = np.nan
    result = check(predicted["reference"], current)
    performance = result.signal("performance")
    assert performance.status == "drift"
    assert performance.current_rows == 500
    assert performance.details["current_rows_without_confidence"] == 500
    assert result.signal("confidence").current_rows == 500


def test_no_confidence_at_all_leaves_the_estimate_skipped(predicted: Windows) -> None:
    current = unlabelled(predicted["degraded"]).assign(confidence=np.nan)
    result = check(predicted["reference"], current)
    assert result.signal("confidence").status == "skipped"
    performance = result.signal("performance")
    assert performance.status == "insufficient_data"
    assert "confidences" in performance.details["reason"]
    # The label mix still moved (degraded rows predict random intents), so the check ran.
    assert result.status in ("ok", "drift")


def test_no_labels_anywhere_skips_performance_with_the_reason(predicted: Windows) -> None:
    result = check(unlabelled(predicted["reference"]), unlabelled(predicted["degraded"]))
    performance = result.signal("performance")
    assert performance.status == "skipped"
    assert performance.details["reason"] == (
        "the reference has no labelled predictions to compare with"
    )


def test_predictions_outside_the_label_set_are_counted(predicted: Windows) -> None:
    labels = tuple(sorted(set(predicted["reference"]["label"])))[:-5]
    spec = MonitorSpec(task="classification", signals=("performance",), labels=labels)
    result = run_check(Side(predicted["reference"]), Side(predicted["healthy"]), spec)
    share = result.signal("performance").details["unknown_prediction_share"]
    assert 0.0 < share < 0.3


def test_label_mix_drift_needs_more_than_sampling_noise(banking77: pd.DataFrame) -> None:
    """77 intents at 1,000 rows a side: Jensen-Shannon noise alone is about 0.14, above 0.1."""
    rng = np.random.default_rng(5)
    draw = banking77.sample(n=3000, random_state=5)["category"].to_numpy()
    reference = pd.DataFrame({"prediction": draw[:1000]})
    same = pd.DataFrame({"prediction": draw[1000:2000]})
    spec = MonitorSpec(task="classification", signals=("prediction",), seed=5)
    steady = run_check(Side(reference), Side(same), spec).signal("prediction")
    assert steady.status == "ok"
    assert steady.score is not None
    assert steady.score > 0.1
    assert steady.threshold == steady.details["noise_threshold"] > 0.1
    skewed = draw[2000:].copy()
    skewed[rng.permutation(1000)[:300]] = "card_arrival"
    moved = run_check(Side(reference), Side(pd.DataFrame({"prediction": skewed})), spec)
    assert moved.signal("prediction").status == "drift"
    assert moved.signal("prediction").method == "evidently:jensenshannon"
