"""Data drift on real traffic: Banking77 questions, a fifth of them from intents never seen."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from monitors import CheckResult, MonitorSpec, Side, export_to_workspace, render_html, run_check

SIGNALS = ("descriptors", "text", "embedding")
SPEC = MonitorSpec(task="classification", signals=SIGNALS, seed=7)


@pytest.fixture(scope="module")
def shifted(intent_windows: dict[str, Side]) -> CheckResult:
    return run_check(intent_windows["reference"], intent_windows["shifted"], SPEC)


@pytest.fixture(scope="module")
def stable(intent_windows: dict[str, Side]) -> CheckResult:
    return run_check(intent_windows["reference"], intent_windows["stable"], SPEC)


def test_traffic_from_unseen_intents_is_drift_in_text_and_embeddings(shifted: CheckResult) -> None:
    assert shifted.status == "drift"
    for name in ("text", "embedding"):
        signal = shifted.signal(name)
        assert signal.status == "drift", signal
        assert signal.group == "data"
        assert signal.score is not None
        assert signal.threshold is not None
        # The classifier tells the windows apart: 20% novel traffic caps its AUC at 0.6.
        assert signal.threshold < 0.545
        assert signal.score > signal.threshold
        assert (signal.reference_rows, signal.current_rows) == (1000, 1000)
    assert shifted.signal("embedding").method == "driftd:embeddings:classifier_cv"
    embedding_score = shifted.signal("embedding").score
    assert embedding_score is not None
    assert embedding_score > 0.57
    assert shifted.signal("text").method == "evidently:abs_text_content_drift"


def test_evidently_s_embedding_method_remains_available(intent_windows: dict[str, Side]) -> None:
    spec = replace(SPEC, signals=("embedding",), embedding_method="evidently_model")
    shifted = run_check(intent_windows["reference"], intent_windows["shifted"], spec)
    stable = run_check(intent_windows["reference"], intent_windows["stable"], spec)
    assert shifted.signal("embedding").method == "evidently:embeddings:model"
    assert (shifted.status, stable.status) == ("drift", "ok")


def test_novelty_finds_the_questions_unlike_any_in_the_reference(
    intent_windows: dict[str, Side],
) -> None:
    spec = replace(SPEC, signals=("embedding",), embedding_method="novelty")
    shifted = run_check(intent_windows["reference"], intent_windows["shifted"], spec)
    stable = run_check(intent_windows["reference"], intent_windows["stable"], spec)
    found, calm = shifted.signal("embedding"), stable.signal("embedding")
    assert found.method == calm.method == "driftd:embeddings:novelty"
    assert (shifted.status, stable.status) == ("drift", "ok")
    assert found.score is not None
    assert calm.score is not None
    assert found.threshold is not None
    # 5% of rows like the reference fall under the cutoff by construction; the 1% bound of that
    # share for 1,000 rows is 6.7%. A fifth of the shifted window is new.
    assert found.threshold == pytest.approx(0.067, abs=0.002)
    assert calm.score < found.threshold < 0.15 < found.score
    assert found.details["similarity_cutoff"] == calm.details["similarity_cutoff"]


def test_novelty_leaves_each_reference_row_out_of_its_own_neighbours() -> None:
    from monitors.domain import novelty_share, null_novelty_threshold

    rng = np.random.default_rng(3)
    # Reference rows live in the first 8 dimensions, new ones in the last 8: unlike any of them.
    reference = np.hstack([rng.normal(size=(400, 8)), np.zeros((400, 8))]).astype(np.float32)
    new = np.hstack([np.zeros((50, 8)), rng.normal(size=(50, 8))]).astype(np.float32)
    # The reference against itself: were a row its own neighbour, every similarity would be 1
    # and nothing could fall below the cutoff.
    share, cutoff = novelty_share(reference, reference[:200])
    assert cutoff < 0.9
    assert share == 0.0
    assert novelty_share(reference, np.vstack([reference[200:350], new]))[0] == 0.25
    assert 0.05 < null_novelty_threshold(400) < 0.09
    assert null_novelty_threshold(50) > null_novelty_threshold(5000) > 0.05


def test_a_new_sample_of_the_same_intents_is_no_drift(stable: CheckResult) -> None:
    assert stable.status == "ok", [(s.name, s.status, s.score) for s in stable.signals]
    for name in ("text", "embedding"):
        signal = stable.signal(name)
        assert signal.status == "ok"
        assert signal.score is not None
        assert signal.threshold is not None
        assert signal.score < signal.threshold - 0.01


def test_question_lengths_do_not_change_with_the_intents(
    shifted: CheckResult, stable: CheckResult
) -> None:
    for result in (shifted, stable):
        descriptors = result.signal("descriptors")
        assert descriptors.status == "ok"
        assert descriptors.method == "evidently:drifted_columns_share"
        assert descriptors.threshold == 0.5
        columns = descriptors.details["columns"]
        assert set(columns) >= {"input_chars", "input_words", "input_is_json"}
        assert {"method", "score", "threshold", "drifted"} <= set(columns["input_chars"])
    # Classification outputs are None: there are no output descriptors to compare.
    assert "output_descriptors" not in shifted.names


def test_the_result_is_plain_json_and_comes_back_equal(shifted: CheckResult) -> None:
    text = json.dumps(shifted.to_dict(), allow_nan=False)
    assert CheckResult.from_dict(json.loads(text)) == shifted
    assert set(shifted.timings) == set(SIGNALS)
    assert all(seconds >= 0 for seconds in shifted.timings.values())


def test_snapshots_go_to_an_evidently_workspace_one_project_per_deployment(
    shifted: CheckResult, stable: CheckResult, tmp_path: Path
) -> None:
    from evidently.ui.workspace import Workspace

    workspace = tmp_path / "workspace"
    for number, result in enumerate((shifted, stable), start=1):
        assert result.snapshot is not None
        stored = json.loads(json.dumps(result.snapshot))
        export_to_workspace(stored, workspace, "intents", run_name=f"check {number}")
    space = Workspace(str(workspace))
    (project,) = space.search_project("intents")
    assert len(space.list_runs(project.id)) == 2


def test_the_snapshot_renders_as_evidently_html(shifted: CheckResult, tmp_path: Path) -> None:
    assert shifted.snapshot is not None
    path = tmp_path / "check.html"
    render_html(json.loads(json.dumps(shifted.snapshot)), path)
    html = path.read_text(encoding="utf-8")
    assert "driftd: signals of this check" in html
    assert "Signal: text" in html
    assert "Signal: descriptors" in html


def test_a_configured_threshold_replaces_the_default(intent_windows: dict[str, Side]) -> None:
    strict = replace(SPEC, signals=("embedding",), thresholds={"embedding": 0.9})
    result = run_check(intent_windows["reference"], intent_windows["shifted"], strict)
    embedding = result.signal("embedding")
    assert embedding.threshold == 0.9
    assert embedding.status == "ok"
    assert embedding.details["threshold_kind"] == "configured"


def test_text_drift_runs_on_a_capped_draw(intent_windows: dict[str, Side]) -> None:
    capped = replace(SPEC, signals=("text",), text_max_rows=300)
    text = run_check(intent_windows["reference"], intent_windows["shifted"], capped).signal("text")
    assert (text.reference_rows, text.current_rows) == (300, 300)
    assert text.details["drawn_rows"] == {"reference": 300, "current": 300}
    assert text.details["window_rows"] == {"reference": 1000, "current": 1000}
    # A smaller draw has a wider spread under no change, so a higher threshold.
    assert text.threshold is not None
    assert text.threshold > 0.55
