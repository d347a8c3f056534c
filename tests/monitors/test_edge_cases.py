"""Odd windows a production deployment does produce: each gets a clear status, never a crash."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from monitors import MonitorSpec, Side, run_check

Describe = Callable[[Sequence[str | None], str], pd.DataFrame]
DATA = ("descriptors", "text", "embedding")


def window(describe: Describe, texts: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"input": list(texts), "output": [None] * len(texts)})
    return pd.concat([frame, describe(list(texts), "input_")], axis=1)


def test_too_few_rows_is_insufficient_data_for_every_signal(describe: Describe) -> None:
    spec = MonitorSpec(task="classification", signals=(*DATA, "performance"), min_rows=50)
    frame = window(describe, ["Where is my card?"] * 30)
    result = run_check(Side(frame), Side(frame), spec)
    assert result.status == "insufficient_data"
    assert result.names == [*DATA, "performance"]
    for signal in result.signals:
        assert signal.status == "insufficient_data"
        assert "at least 50" in signal.details["reason"]
    assert result.snapshot is None
    assert (result.reference_rows, result.current_rows) == (30, 30)


def test_empty_texts_leave_the_text_signal_short_of_vocabulary(describe: Describe) -> None:
    spec = MonitorSpec(task="classification", signals=DATA)
    frame = window(describe, [""] * 120)
    result = run_check(Side(frame), Side(frame.copy()), spec)
    text = result.signal("text")
    assert text.status == "insufficient_data"
    assert "vocabulary" in text.details["reason"]
    assert result.signal("descriptors").status == "ok"
    assert result.signal("embedding").status == "skipped"
    assert result.status == "ok"


def test_identical_texts_on_both_sides(describe: Describe) -> None:
    spec = MonitorSpec(task="classification", signals=DATA)
    frame = window(describe, ["I lost my card yesterday, please block it"] * 200)
    vectors = np.tile(np.linspace(-1, 1, 384, dtype=np.float32), (200, 1))
    result = run_check(Side(frame, vectors), Side(frame.copy(), vectors.copy()), spec)
    assert result.signal("text").status == "insufficient_data"
    assert result.signal("descriptors").status == "ok"
    assert result.signal("embedding").status == "ok"
    assert result.status == "ok"


def test_a_vocabulary_that_grows_is_text_drift(describe: Describe) -> None:
    """Tiny vocabularies still work once the windows differ in words."""
    spec = MonitorSpec(task="classification", signals=("text",))
    before = window(describe, ["card arrival", "card delivery", "card lost"] * 40)
    after = window(describe, ["exchange rate", "transfer fee", "card lost"] * 40)
    text = run_check(Side(before), Side(after), spec).signal("text")
    assert text.status == "drift"


def test_missing_and_broken_embeddings(describe: Describe) -> None:
    frame = window(describe, [f"question number {i}" for i in range(100)])
    spec = MonitorSpec(task="classification", signals=("embedding",))
    absent = run_check(Side(frame), Side(frame, np.ones((100, 384), np.float32)), spec)
    assert absent.signal("embedding").status == "skipped"
    assert absent.signal("embedding").details["reason"] == "no embeddings for the reference window"
    assert absent.status == "insufficient_data"  # nothing could be computed

    mismatched = run_check(
        Side(frame, np.ones((100, 384), np.float32)),
        Side(frame, np.ones((100, 768), np.float32)),
        spec,
    )
    embedding = mismatched.signal("embedding")
    assert embedding.status == "failed"
    assert embedding.error is not None
    assert "same model" in embedding.error
    assert mismatched.status == "failed"  # the only signal that ran failed

    rng = np.random.default_rng(0)
    holes = rng.normal(size=(100, 384)).astype(np.float32)
    holes[:60] = np.nan
    partial = run_check(Side(frame, rng.normal(size=(100, 384))), Side(frame, holes), spec)
    assert partial.signal("embedding").status == "insufficient_data"
    assert partial.signal("embedding").current_rows == 40


def test_one_failing_signal_leaves_the_others_standing(describe: Describe) -> None:
    spec = MonitorSpec(task="classification", signals=("descriptors", "embedding"))
    frame = window(describe, [f"question number {i}" for i in range(100)])
    result = run_check(
        Side(frame, np.ones((100, 8), np.float32)), Side(frame, np.ones((100, 9), np.float32)), spec
    )
    assert result.signal("embedding").status == "failed"
    assert result.signal("descriptors").status == "ok"
    assert result.status == "ok"


def test_all_missing_confidences_and_predictions(describe: Describe) -> None:
    frame = window(describe, [f"question number {i}" for i in range(100)])
    frame = frame.assign(prediction=None, confidence=np.nan, label=None)
    spec = MonitorSpec(task="classification", signals=("prediction", "confidence", "performance"))
    result = run_check(Side(frame), Side(frame.copy()), spec)
    for signal in result.signals:
        assert signal.status == "skipped", signal
        assert signal.details["reason"]
    assert result.status == "insufficient_data"


def test_a_frame_with_only_the_input(describe: Describe) -> None:
    frame = pd.DataFrame({"input": [f"question number {i}" for i in range(100)]})
    spec = MonitorSpec(
        task="generation",
        signals=("descriptors", "judge", "feedback", "format_validity", "refusal", "errors"),
    )
    result = run_check(Side(frame), Side(frame.copy()), spec)
    assert {signal.status for signal in result.signals} == {"skipped"}
    assert result.signal("descriptors").details["reason"] == (
        "no input_* descriptor columns on both sides"
    )


def test_descriptors_with_holes_and_mixed_types(describe: Describe) -> None:
    """Samples stored before a descriptor existed have None there; the rest still compare."""
    frame = window(describe, [f"question number {i}, please" for i in range(120)])
    holed = frame.astype(object)
    holed.loc[:19, ["input_chars", "input_is_json"]] = None
    spec = MonitorSpec(task="classification", signals=("descriptors",))
    descriptors = run_check(Side(frame), Side(holed), spec).signal("descriptors")
    assert descriptors.status == "ok"
    assert descriptors.details["columns"]["input_chars"]["drifted"] is False
