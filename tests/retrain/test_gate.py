"""The gate: candidate against active version on one golden set, with a paired bootstrap interval.

The pure comparison is fed predictions built by hand, so each verdict can be worked out on
paper; the job runs end to end with two tiny real transformers classifiers that always answer
one label each, on Banking77 questions.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrain.__main__ import main
from retrain.contract import Verdict
from retrain.evaluate import score
from retrain.gate import GUARD_TOLERANCE, compare, compare_scores, qualify, resampled_scores
from tests.helpers.banking77 import golden_set
from tests.helpers.jobs import run_retrain, write_spec

LABELS = ["card_arrival", "card_linking", "exchange_rate", "refund_not_showing_up"]
MAJORITY = "card_arrival"
# Golden examples per label from Banking77's test split: card_arrival is 60% of them.
MIX = {"card_arrival": 18, "card_linking": 6, "exchange_rate": 6}


def labelled(right: int, wrong: int, label: str = "a", instead: str = "b") -> list[str]:
    return [label] * right + [instead] * wrong


def test_a_clearly_better_candidate_passes_with_an_interval_above_zero() -> None:
    truth = ["a"] * 100 + ["b"] * 100
    # The active version gets 70% of each class right, the candidate 95%.
    active = labelled(70, 30, "a", "b") + labelled(70, 30, "b", "a")
    candidate = labelled(95, 5, "a", "b") + labelled(95, 5, "b", "a")

    verdict = compare(active, candidate, truth, metric="accuracy", seed=7)

    assert verdict.passed
    assert verdict.active is not None
    assert verdict.active["accuracy"] == pytest.approx(0.70)
    assert verdict.candidate["accuracy"] == pytest.approx(0.95)
    assert verdict.difference == pytest.approx(0.25)
    low, high = verdict.ci
    assert 0 < low < 0.25 < high < 0.4
    [reason] = verdict.reasons
    assert "candidate scores 0.9500 against the active version's 0.7000" in reason
    assert "lower bound clears the margin of 0.0000" in reason
    result = verdict.verdict()
    assert Verdict.model_validate_json(result.model_dump_json()) == result
    assert result.ci == (low, high)


def test_a_worse_candidate_is_rejected_saying_by_how_much() -> None:
    truth = ["a"] * 50 + ["b"] * 50
    active = labelled(45, 5, "a", "b") + labelled(45, 5, "b", "a")
    candidate = labelled(30, 20, "a", "b") + labelled(30, 20, "b", "a")

    verdict = compare(active, candidate, truth, metric="macro_f1")

    assert not verdict.passed
    assert verdict.difference is not None
    assert verdict.difference < 0
    assert verdict.ci[1] < 0
    [reason] = verdict.reasons
    assert reason.startswith(
        "macro_f1: the candidate scores 0.6000 against the active version's 0.9000"
    )
    assert "a difference of -0.3000" in reason
    assert "That is short of the margin of 0.0000." in reason


def test_the_margin_is_held_against_the_intervals_lower_bound() -> None:
    truth = ["a"] * 400
    active = labelled(300, 100)
    # Right wherever the active version is, and on 40 of its 100 misses: +0.10, give or take 0.03.
    candidate = labelled(340, 60)

    lenient = compare(active, candidate, truth, metric="accuracy", margin=0.0)
    estimate_only = compare(active, candidate, truth, metric="accuracy", margin=0.09)
    beyond = compare(active, candidate, truth, metric="accuracy", margin=0.2)

    assert lenient.difference == pytest.approx(0.1)
    low, _ = lenient.ci
    assert 0 < low < 0.09
    assert lenient.passed
    # 0.10 reaches a margin of 0.09, but the interval's lower bound does not: not enough.
    assert not estimate_only.passed
    assert "the interval's lower bound" in estimate_only.reasons[0]
    assert "the gain may be chance; a larger golden set would tell" in estimate_only.reasons[0]
    assert not beyond.passed
    assert "That is short of the margin of 0.2000." in beyond.reasons[0]


def test_a_candidate_as_good_as_the_active_passes_a_zero_margin() -> None:
    truth = ["a", "b", "c"] * 20
    same = ["a", "b", "b"] * 20

    verdict = compare(same, list(same), truth, metric="accuracy")

    assert verdict.ci == (0.0, 0.0)
    assert verdict.passed


def test_a_guard_metric_that_drops_rejects_an_otherwise_better_candidate() -> None:
    # Three copies of: 80 "a", 10 "b", 10 "c".
    truth = (["a"] * 80 + ["b"] * 10 + ["c"] * 10) * 3
    # The active version misses 20 "a" (as "b") and nothing else; the candidate gets every "a"
    # right but never answers "c": better accuracy, worse macro-F1.
    active = (["a"] * 60 + ["b"] * 20 + ["b"] * 10 + ["c"] * 10) * 3
    candidate = (["a"] * 80 + ["b"] * 10 + ["a"] * 10) * 3

    unguarded = compare(active, candidate, truth, metric="accuracy", seed=1)
    guarded = compare(
        active, candidate, truth, metric="accuracy", guard_metrics=["macro_f1"], seed=1
    )

    assert unguarded.passed
    assert unguarded.difference == pytest.approx(0.1)
    assert not guarded.passed
    assert guarded.ci == unguarded.ci
    guard = guarded.guards["macro_f1"]
    assert guard.active == pytest.approx((2 * 60 / 140 + 2 * 10 / 40 + 1.0) / 3)
    assert guard.candidate == pytest.approx((2 * 80 / 170 + 1.0 + 0.0) / 3)
    assert not guard.ok
    assert guarded.verdict().guards["macro_f1"].ok is False
    assert guarded.reasons[1].startswith("Guard macro_f1: the candidate scores 0.6471")
    assert f"beyond the tolerance of {GUARD_TOLERANCE:.4f}" in guarded.reasons[1]


def test_a_guard_tolerates_a_drop_within_the_tolerance() -> None:
    truth = ["a"] * 200 + ["b"] * 200 + ["c"] * 20
    active = ["a"] * 180 + ["b"] * 20 + ["b"] * 200 + ["c"] * 20
    # 20 more "a" right, 4 "c" lost: accuracy up, macro-F1 down by 0.007.
    candidate = ["a"] * 200 + ["b"] * 200 + ["c"] * 16 + ["a"] * 4

    verdict = compare(
        active, candidate, truth, metric="accuracy", guard_metrics=["macro_f1"], seed=2
    )

    guard = verdict.guards["macro_f1"]
    assert -GUARD_TOLERANCE < guard.difference < 0
    assert guard.ok
    assert verdict.passed
    assert f"within the tolerance of {GUARD_TOLERANCE:.4f}" in verdict.reasons[1]


def test_the_verdict_is_the_same_for_the_same_seed() -> None:
    rng = np.random.default_rng(3)
    truth = [str(x) for x in rng.integers(0, 5, 150)]
    active = [t if rng.random() < 0.7 else "0" for t in truth]
    candidate = [t if rng.random() < 0.8 else "1" for t in truth]

    first = compare(active, candidate, truth, metric="macro_f1", seed=11)
    again = compare(active, candidate, truth, metric="macro_f1", seed=11)
    other = compare(active, candidate, truth, metric="macro_f1", seed=12)

    assert first.verdict() == again.verdict()
    assert other.ci != first.ci
    assert other.difference == first.difference


def test_resamples_are_scored_as_evaluate_scores_them() -> None:
    rng = np.random.default_rng(5)
    labels = ["a", "b", "c", "d"]
    truth = [labels[i] for i in rng.integers(0, 4, 60)]
    # Some predictions are outside the golden set's labels: always wrong.
    predicted = [t if rng.random() < 0.6 else ["a", "b", "z"][i % 3] for i, t in enumerate(truth)]
    # Small resamples, so that some leave out a label of the golden set altogether.
    indices = rng.integers(0, 60, size=(30, 8))

    for metric in ("accuracy", "macro_f1"):
        fast = resampled_scores(truth, predicted, indices, metric)
        slow = [
            score([truth[i] for i in row], [predicted[i] for i in row])[metric] for row in indices
        ]
        assert fast == pytest.approx(slow), metric


def test_a_first_version_passes_when_it_clears_min_score() -> None:
    truth = ["a"] * 100 + ["b"] * 100
    predictions = labelled(90, 10, "a", "b") + labelled(90, 10, "b", "a")

    free = qualify(predictions, truth, metric="accuracy")
    cleared = qualify(predictions, truth, metric="accuracy", min_score=0.8)
    missed = qualify(predictions, truth, metric="accuracy", min_score=0.89)

    assert free.passed
    assert "No min_score is set, so it passes." in free.reasons[0]
    assert free.verdict().active is None
    assert free.difference is None
    assert free.ci[0] < 0.9 < free.ci[1]
    assert cleared.passed
    assert not missed.passed
    assert "the gain may be chance" in missed.reasons[0]


def test_predictions_for_other_examples_are_refused() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3 golden examples"):
        compare(["a", "b"], ["a", "b", "c"], ["a", "b", "c"], metric="accuracy")
    with pytest.raises(ValueError, match="metric must be one of accuracy, macro_f1"):
        compare(["a"], ["a"], ["a"], metric="judge_score")


# The job, end to end.


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """Thirty Banking77 questions: 18 card_arrival, 6 card_linking, 6 exchange_rate."""
    return golden_set(tmp_path / "golden.jsonl", MIX)


@pytest.fixture
def majority(tiny_classifier: Callable[[Sequence[str], str], Path]) -> Path:
    return tiny_classifier(LABELS, MAJORITY)


@pytest.fixture
def minority(tiny_classifier: Callable[[Sequence[str], str], Path]) -> Path:
    return tiny_classifier(LABELS, "card_linking")


@pytest.mark.parametrize("candidate_answers", ["majority", "minority"])
def test_python_m_retrain_gate_lets_the_model_that_labels_better_win(
    golden: Path, majority: Path, minority: Path, tmp_path: Path, candidate_answers: str
) -> None:
    candidate, active = (
        (majority, minority) if candidate_answers == "majority" else (minority, majority)
    )
    spec = write_spec(
        tmp_path,
        golden_set=str(golden),
        active={"model_dir": str(active)},
        candidate={"model_dir": str(candidate)},
        metric="accuracy",
        guard_metrics=["macro_f1"],
        bootstrap_samples=2000,
        seed=3,
        output_dir="out",
        batch_size=8,
        deployment="intents",  # the daemon's bookkeeping
    )

    done = run_retrain("gate", "--spec", str(spec))

    # A rejection is a verdict, not a failure: exit 0 either way.
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "exit").read_text().strip() == "0"
    assert "gate: candidate: batch 4/4, 30/30 examples" in done.stdout
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "succeeded"
    assert result["n"] == 30
    assert result["candidate"]["model_dir"] == str(candidate)
    assert result["active"]["model_dir"] == str(active)
    winner, loser = (0.6, 0.2) if candidate_answers == "majority" else (0.2, 0.6)
    assert result["candidate"]["metrics"]["accuracy"] == pytest.approx(winner)
    assert result["active"]["metrics"]["accuracy"] == pytest.approx(loser)
    assert result["difference"] == pytest.approx(winner - loser)
    low, high = result["ci"]
    assert set(result["guards"]) == {"macro_f1"}
    if candidate_answers == "majority":
        assert result["passed"] is True
        assert 0 < low < 0.4 < high
        assert result["guards"]["macro_f1"]["ok"] is True
        assert "gate: the candidate passes" in done.stdout
    else:
        assert result["passed"] is False
        assert low < -0.4 < high < 0
        assert "That is short of the margin of 0.0000." in result["reasons"][0]
        assert "beyond the tolerance" in result["reasons"][1]
        assert "gate: the candidate is rejected" in done.stdout


def test_the_gate_job_without_a_active_applies_min_score(
    golden: Path, majority: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(
        tmp_path,
        golden_set=str(golden),
        active=None,
        candidate={"model_dir": str(majority)},
        min_score=0.9,
        output_dir="out",
    )

    assert main(["gate", "--spec", str(spec)]) == 0

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["passed"] is False
    assert result["active"] is None
    assert result["difference"] is None
    assert result["candidate"]["metrics"]["accuracy"] == pytest.approx(0.6)
    assert result["reasons"][0].startswith("There is no active version to compare with")
    assert "gate: the candidate is rejected" in capsys.readouterr().out


def test_the_gate_reads_a_csv_golden_set_as_banking77_writes_it(
    golden: Path, majority: Path, minority: Path, tmp_path: Path
) -> None:
    # The same thirty questions under Banking77's own columns, text and category, as a CSV
    # golden set named by `retune.golden_set` with `columns: {input: text, label: category}`.
    test_csv = tmp_path / "test.csv"
    with test_csv.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "category"])
        for line in golden.read_text().splitlines():
            row = json.loads(line)
            writer.writerow([row["input"], row["label"]])
    spec = write_spec(
        tmp_path,
        golden_set=str(test_csv),
        active={"model_dir": str(minority)},
        candidate={"model_dir": str(majority)},
        input_field="text",
        label_field="category",
        bootstrap_samples=500,
        output_dir="out",
    )

    assert main(["gate", "--spec", str(spec)]) == 0

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["n"] == 30
    assert result["golden_set"] == str(test_csv)
    assert result["candidate"]["metrics"]["accuracy"] == pytest.approx(0.6)
    assert result["active"]["metrics"]["accuracy"] == pytest.approx(0.2)
    assert result["passed"] is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"active": "absent"}, "'active' is required"),
        ({"active": "models/v1"}, "'active' must be {\"model_dir\": PATH} or null"),
        ({"candidate": {"model_dir": "nowhere"}}, "candidate.model_dir"),
        ({"metric": "judge_score"}, "'metric' must name accuracy or macro_f1, got 'judge_score'"),
        ({"guard_metrics": ["f2"]}, "'guard_metrics' must name accuracy or macro_f1, got 'f2'"),
        ({"margin": 2}, "'margin' must be a number from 0 to 1, got 2"),
        ({"bootstrap_samples": 10}, "'bootstrap_samples' must be a whole number from 100"),
    ],
)
def test_a_bad_gate_spec_exits_2_naming_the_problem(
    golden: Path, majority: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    spec: dict[str, Any] = {
        "golden_set": str(golden),
        "active": {"model_dir": str(majority)},
        "candidate": {"model_dir": str(majority)},
        "output_dir": "out",
    }
    spec.update(change)
    if spec["active"] == "absent":
        del spec["active"]
    path = write_spec(tmp_path, **spec)

    done = run_retrain("gate", "--spec", str(path))

    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "out").exists()


def test_numeric_scores_pass_when_the_whole_interval_clears_the_margin() -> None:
    active = [0.2, 0.3, 0.25, 0.4, 0.1, 0.3, 0.2, 0.35] * 10
    better = [min(1.0, x + 0.5) for x in active]
    verdict = compare_scores(active, better, margin=0.1, bootstrap_samples=500, seed=3)
    assert verdict.passed
    assert verdict.metric == "judge_score"
    assert verdict.difference == pytest.approx(0.5)
    assert verdict.ci[0] > 0.1
    # Deterministic for a seed: the same call gives the same interval.
    again = compare_scores(active, better, margin=0.1, bootstrap_samples=500, seed=3)
    assert again.ci == verdict.ci


def test_numeric_scores_that_are_no_better_are_rejected() -> None:
    active = [0.6, 0.7, 0.5, 0.8, 0.6, 0.7] * 5
    noisy = [0.7, 0.6, 0.6, 0.7, 0.5, 0.8] * 5  # the same mean, shuffled per example
    verdict = compare_scores(active, noisy, bootstrap_samples=500)
    assert not verdict.passed
    assert verdict.ci[0] < 0 < verdict.ci[1]


@pytest.mark.parametrize(
    ("active", "candidate", "message"),
    [
        ([], [], "no scores"),
        ([0.5, 0.5], [0.5], "1 candidate scores for 2 active scores"),
        ([0.5, 1.5], [0.5, 0.5], "active scores must be numbers from 0 to 1, got 1.5"),
    ],
)
def test_numeric_scores_that_cannot_be_compared_say_why(
    active: list[float], candidate: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compare_scores(active, candidate)
