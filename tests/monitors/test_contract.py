"""The package's promises to the daemon: cheap to import, strict inputs, plain JSON out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from monitors import CheckResult, MonitorSpec, Side, SignalResult
from monitors.cbpe import calibrate, estimate_accuracy
from monitors.domain import null_auc_threshold
from monitors.result import overall_status
from tests.helpers.imports import loaded_after


def test_importing_monitors_loads_no_heavy_library() -> None:
    code = "import monitors; from monitors import MonitorSpec, Side, CheckResult"
    heavy = ("evidently", "pandas", "torch", "transformers", "sklearn")
    assert loaded_after(code, heavy) == []


def test_run_check_and_render_html_load_on_first_use() -> None:
    import monitors

    assert callable(monitors.run_check)
    assert callable(monitors.render_html)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = monitors.nothing


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"signals": ("drift",)}, "unknown signal 'drift'"),
        ({"signals": ("text", "text")}, "name a signal twice"),
        ({"signals": ("judge",)}, r"signals \['judge'\] do not apply to task 'classification'"),
        ({"signals": (), "thresholds": {"speed": 1.0}}, "threshold for unknown signal 'speed'"),
        ({"signals": (), "min_rows": 0}, "min_rows must be at least 1"),
        ({"signals": (), "quality_drop": 0.0}, r"quality_drop must be in \(0, 1\]"),
        ({"signals": (), "text_max_rows": 0}, "text_max_rows must be at least 1"),
    ],
)
def test_a_spec_names_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MonitorSpec(task="classification", **kwargs)  # type: ignore[arg-type]


def test_a_side_keeps_embeddings_aligned_with_rows() -> None:
    frame = pd.DataFrame({"input": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="embeddings have 2 rows but the frame has 3"):
        Side(frame, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="2-D array"):
        Side(frame, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="total"):
        Side(frame, total=2)
    assert Side(frame, np.zeros((3, 4), np.float32), total=10).rows == 3


def signal(name: str, status: str, **extra: object) -> SignalResult:
    fields: dict[str, object] = {
        "name": name,
        "group": "data",
        "method": "evidently:ks",
        "score": 0.5,
        "threshold": 0.05,
        "drifted": status == "drift",
        "status": status,
        "reference_rows": 100,
        "current_rows": 90,
    }
    fields.update(extra)
    return SignalResult(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statuses", "overall"),
    [
        (["ok", "drift", "failed"], "drift"),
        (["ok", "failed", "skipped"], "ok"),
        (["failed", "skipped", "insufficient_data"], "failed"),
        (["skipped", "insufficient_data"], "insufficient_data"),
        ([], "insufficient_data"),
        (["ok", "ok"], "ok"),
    ],
)
def test_the_check_status_follows_its_signals(statuses: list[str], overall: str) -> None:
    signals = [signal(f"s{i}", status) for i, status in enumerate(statuses)]
    assert overall_status(signals) == overall


def test_results_are_plain_json_whatever_the_details_hold() -> None:
    odd = signal(
        "confidence",
        "drift",
        score=np.float64(0.25),
        threshold=float("nan"),
        details={"p": np.float32(0.5), "n": np.int64(3), "flags": np.array([True, False])},
    )
    assert odd.score == 0.25
    assert odd.threshold is None
    assert odd.details == {"p": 0.5, "n": 3, "flags": [True, False]}
    result = CheckResult("drift", [odd, signal("text", "ok")], {"confidence": 0.1}, 100, 90)
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert CheckResult.from_dict(json.loads(text)) == result
    assert result.signal("text").status == "ok"
    with pytest.raises(KeyError, match="no signal 'latency'"):
        result.signal("latency")


def test_a_verdict_agrees_with_its_status() -> None:
    with pytest.raises(ValueError, match="drifted=True"):
        signal("text", "ok", drifted=True)
    with pytest.raises(ValueError, match="unknown signal status"):
        signal("text", "great")


def test_the_domain_classifier_threshold_shrinks_with_more_rows() -> None:
    # The 99th percentile: half of each side scored (a train/test split) or all of it.
    assert null_auc_threshold(1000, 1000) == pytest.approx(0.542, abs=0.001)
    assert null_auc_threshold(1000, 1000, scored=1) == pytest.approx(0.530, abs=0.001)
    assert null_auc_threshold(5000, 5000, scored=1) == pytest.approx(0.513, abs=0.001)
    assert null_auc_threshold(100, 100) > 0.6


def test_cbpe_recovers_the_accuracy_of_a_calibrated_model() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.beta(5, 2, 4000)
    correct = rng.random(4000) < confidence
    calibration = calibrate(confidence[:2000], correct[:2000])
    assert calibration.reference_accuracy == pytest.approx(correct[:2000].mean())
    estimate = estimate_accuracy(calibration, confidence[2000:])
    assert estimate.accuracy == pytest.approx(correct[2000:].mean(), abs=0.02)
    assert estimate.rows == 2000
    # Out of the learnt range, probabilities stay at the ends of the calibration.
    assert 0.0 <= float(calibration.probability(np.array([-1.0, 2.0]))[0]) <= 1.0
    with pytest.raises(ValueError, match="aligned"):
        calibrate(confidence[:10], correct[:9])
