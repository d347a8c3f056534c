"""Generation quality: refusals, errors, latency, the judge, feedback and output format."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pytest

from monitors import CheckResult, MonitorSpec, Side, run_check

QUALITY = ("refusal", "errors", "latency", "judge", "feedback", "format_validity")
SPEC = MonitorSpec(task="generation", signals=("descriptors", *QUALITY), seed=11)
ROWS = 600

Describe = Callable[[Sequence[str | None], str], pd.DataFrame]


def answers(
    banking77: pd.DataFrame,
    describe: Describe,
    *,
    seed: int,
    refusal: float = 0.02,
    errors: float = 0.01,
    latency_ms: float = 400.0,
    judge: float = 0.8,
    negative: float = 0.1,
    invalid_json: float = 0.02,
) -> pd.DataFrame:
    """A support bot's window: JSON answers to Banking77 questions, with the given rates."""
    rng = np.random.default_rng(seed)
    questions = banking77["text"].sample(n=ROWS, random_state=seed).tolist()
    outputs: list[str] = []
    for question in questions:
        roll = rng.random()
        if roll < refusal:
            outputs.append("I'm sorry, but I can't help with that request.")
        elif roll < refusal + invalid_json:
            outputs.append(f"Answer: we will look into '{question[:30]}' shortly")
        else:
            outputs.append(f'{{"answer": "Here is how to deal with: {question[:40]}"}}')
    failed = rng.random(ROWS) < errors
    frame = pd.DataFrame(
        {
            "input": questions,
            "output": [None if bad else text for bad, text in zip(failed, outputs, strict=True)],
            "error": failed,
            "latency_ms": rng.lognormal(np.log(latency_ms), 0.3, ROWS),
            "judge_score": np.clip(rng.normal(judge, 0.1, ROWS), 0.0, 1.0),
            # Half the answers get a thumb: 0 (down) with probability ``negative``, else 1.
            "feedback_score": np.where(
                rng.random(ROWS) < 0.5, (rng.random(ROWS) >= negative).astype(float), np.nan
            ),
        }
    )
    described = [describe(questions, "input_"), describe(frame["output"].tolist(), "output_")]
    return pd.concat([frame, *described], axis=1)


@pytest.fixture(scope="module")
def reference(banking77: pd.DataFrame, describe: Describe) -> pd.DataFrame:
    return answers(banking77, describe, seed=1)


@pytest.fixture(scope="module")
def worse(banking77: pd.DataFrame, describe: Describe, reference: pd.DataFrame) -> CheckResult:
    current = answers(
        banking77,
        describe,
        seed=2,
        refusal=0.12,
        errors=0.12,
        latency_ms=700.0,
        judge=0.65,
        negative=0.3,
        invalid_json=0.15,
    )
    return run_check(Side(reference), Side(current), SPEC)


@pytest.fixture(scope="module")
def same(banking77: pd.DataFrame, describe: Describe, reference: pd.DataFrame) -> CheckResult:
    return run_check(Side(reference), Side(answers(banking77, describe, seed=2)), SPEC)


def test_more_refusals_errors_and_slower_answers_are_drift(worse: CheckResult) -> None:
    assert worse.status == "drift"
    for name in QUALITY:
        assert worse.signal(name).status == "drift", worse.signal(name)
    refusal = worse.signal("refusal")
    assert refusal.group == "quality"
    assert refusal.method == "evidently:z+rate_change"
    rate = refusal.details["rate"]
    assert rate["current"] - rate["reference"] == pytest.approx(refusal.score)
    assert refusal.score == pytest.approx(0.10, abs=0.04)
    assert refusal.details["z_test"]["significant"] is True
    errors = worse.signal("errors")
    assert errors.group == "output"
    assert errors.score == pytest.approx(0.11, abs=0.03)
    latency = worse.signal("latency")
    assert latency.method == "evidently:wasserstein"
    assert latency.details["current"]["p50"] > 1.5 * latency.details["reference"]["p50"]
    judge = worse.signal("judge")
    assert judge.score == pytest.approx(0.15, abs=0.03)
    assert judge.details["distribution"]["drifted"] is True
    # Fewer outputs are valid JSON: the worsening is the fall of that rate.
    validity = worse.signal("format_validity")
    assert validity.details["worse_when"] == "fall"
    assert validity.score is not None
    assert validity.score > 0.1


def test_the_whole_result_is_strict_json(worse: CheckResult) -> None:
    text = json.dumps(worse.to_dict(), allow_nan=False)
    assert CheckResult.from_dict(json.loads(text)) == worse
    assert worse.snapshot is not None
    assert set(worse.timings) == set(worse.names)


def test_outputs_are_described_and_compared_too(worse: CheckResult) -> None:
    output = worse.signal("output_descriptors")
    assert output.group == "output"
    # Failed requests have no output; only the rows with one are compared.
    assert output.current_rows < ROWS
    assert "output_refusal" in output.details["columns"]


def test_the_same_service_on_other_questions_is_ok(same: CheckResult) -> None:
    assert same.status == "ok", [(s.name, s.status, s.score) for s in same.signals]
    for name in QUALITY:
        assert same.signal(name).status == "ok"


def test_a_small_rise_in_a_small_window_is_not_drift(
    banking77: pd.DataFrame, describe: Describe
) -> None:
    """Refusals from 2% to 8% in 60 answers: above quality_drop, but not distinguishable."""
    spec = MonitorSpec(task="generation", signals=("refusal",), min_rows=20)
    before = answers(banking77, describe, seed=3).head(60)
    after = answers(banking77, describe, seed=4, refusal=0.08).head(60)
    refusal = run_check(Side(before), Side(after), spec).signal("refusal")
    assert refusal.status == "ok"
    assert refusal.details["z_test"]["significant"] is False


def test_without_judge_or_feedback_columns_those_signals_are_skipped(
    banking77: pd.DataFrame, describe: Describe, reference: pd.DataFrame
) -> None:
    bare = reference.drop(columns=["judge_score", "feedback_score"])
    current = answers(banking77, describe, seed=2, errors=0.1).drop(
        columns=["judge_score", "feedback_score"]
    )
    result = run_check(Side(bare), Side(current), SPEC)
    for name in ("judge", "feedback"):
        signal = result.signal(name)
        assert signal.status == "skipped"
        assert "no" in signal.details["reason"]
    assert result.signal("errors").status == "drift"
    assert result.status == "drift"


def test_judge_scores_never_given_are_skipped(
    banking77: pd.DataFrame, describe: Describe, reference: pd.DataFrame
) -> None:
    current = answers(banking77, describe, seed=2).assign(judge_score=np.nan)
    judge = run_check(Side(reference), Side(current), SPEC).signal("judge")
    assert judge.status == "skipped"
    assert judge.details["reason"] == "no current sample has a 'judge_score' value"
