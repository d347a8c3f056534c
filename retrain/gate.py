"""The ``gate`` job: does a candidate beat the active version on the golden set, by enough, clearly?

Both models label the SAME golden examples, so the comparison is paired: the difference of the
gate's metric (candidate minus active) comes with a 95% confidence interval from a paired
bootstrap, which resamples example indices and scores both models on each resample. A
candidate passes when the interval's LOWER bound reaches the margin and no guard metric is
worse than the active version's by more than ``GUARD_TOLERANCE``.

Why the lower bound and not the point estimate: the gate runs unattended, and its verdict
replaces the model that serves production. On a golden set of a few hundred examples, a point
estimate a little above the active version's is often luck of the draw, and promoting on luck makes
versions flip back and forth. Turning down a candidate costs little (the active version keeps
serving; an operator can still promote it by hand with force), while promoting a worse one costs
a regression users see until the watch rolls it back. So the gate asks for evidence: a
candidate that labels every example as the active version does passes a margin of 0 (its interval is
[0, 0]), one that differs passes only if the gain is larger than the noise.

The spec (``job.json``) names:

``golden_set``
    A JSONL, CSV or Parquet file, read as the ``evaluate`` job reads it (``input_field``,
    ``label_field``).
``active``
    ``{"model_dir": ...}``, or ``null`` when the deployment has no model yet: then the candidate
    passes when the lower bound of its score's interval reaches ``min_score`` (or at once when
    ``min_score`` is unset). The key is required, so that a misspelt key cannot turn a
    comparison into a first promotion without anyone noticing.
``candidate``
    ``{"model_dir": ...}``: the model to judge.
``metric`` (``accuracy``), ``margin`` (0), ``guard_metrics`` ([]), ``bootstrap_samples`` (1000),
``seed`` (0), ``min_score`` (null)
    As ``retune.gate`` in ``driftd.yaml``; metrics are ``accuracy`` and ``macro_f1``.
``output_dir``, ``batch_size`` (32), ``max_length`` (128), ``pace_s`` (0)
    As for ``evaluate``.

The spec is ``retrain.contract.GateSpec``; relative paths are read from the spec's directory.
The result (``retrain.contract.GateJobResult``) holds ``passed``, ``metric``,
``active`` and ``candidate`` (``model_dir`` and ``metrics`` as ``evaluate`` reports them),
``difference``, ``ci``, ``guards`` and ``reasons`` (plain sentences). A rejection is a result,
not a failure: the job succeeds (exit 0) whichever way the verdict goes.

``compare`` and ``qualify`` are pure (predictions in, a verdict out; no torch), for other jobs
that already hold predictions. ``compare_scores`` is the same paired comparison for per-example
numeric scores (an LLM judge's, metric ``judge_score``): the mean instead of a label metric,
drawn from the same bootstrap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from retrain.contract import (
    LABEL_METRICS,
    SCORE_METRIC,
    GateJobResult,
    GateSpec,
    GuardCheck,
    Metrics,
    Side,
    Verdict,
)
from retrain.errors import EvaluationError
from retrain.evaluate import Classifier, read_golden_set, score

Progress = Callable[[str], None]

METRICS = LABEL_METRICS
"""The label metrics ``compare`` and ``qualify`` judge on; ``compare_scores`` reports
``SCORE_METRIC``, the mean of per-example scores (an LLM judge's)."""
CONFIDENCE = 0.95
GUARD_TOLERANCE = 0.01
"""How much worse than the active version a guard metric may be: one example in a hundred. A guard
catches a real regression elsewhere, not one golden example flipping on a small set."""

# Float noise between sklearn's point metrics and the bootstrap's: 0.1 + 0.2 is not 0.3.
_EPSILON = 1e-9
# Resample indices held in memory at once (int64): bounds memory at any bootstrap_samples.
_CELLS_PER_CHUNK = 2_000_000


@dataclass(frozen=True, slots=True)
class Guard:
    """A metric the candidate may not lose on: both scores and the verdict."""

    metric: str
    active: float
    candidate: float
    tolerance: float

    @property
    def difference(self) -> float:
        return self.candidate - self.active

    @property
    def ok(self) -> bool:
        return self.difference + self.tolerance + _EPSILON >= 0

    def check(self) -> GuardCheck:
        """The guard as a verdict reports it."""
        return GuardCheck(
            active=self.active,
            candidate=self.candidate,
            difference=self.difference,
            tolerance=self.tolerance,
            ok=self.ok,
        )


@dataclass(frozen=True, slots=True)
class GateResult:
    """The gate's verdict and its evidence.

    ``ci`` is the 95% interval of what was held against the bar: the difference of ``metric``
    (candidate minus active) when there is an active version, the candidate's own score when
    there is none (``difference`` is then None).
    """

    passed: bool
    metric: str
    n: int
    active: Metrics | None
    candidate: Metrics
    difference: float | None
    ci: tuple[float, float]
    margin: float
    min_score: float | None
    bootstrap_samples: int
    seed: int
    guards: dict[str, Guard] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def verdict(self) -> Verdict:
        """The verdict as a job's result holds it (``retrain.contract.Verdict``)."""
        return Verdict(
            passed=self.passed,
            metric=self.metric,
            n=self.n,
            active=None if self.active is None else Side(metrics=self.active),
            candidate=Side(metrics=self.candidate),
            difference=self.difference,
            ci=self.ci,
            margin=self.margin,
            min_score=self.min_score,
            guards={name: guard.check() for name, guard in self.guards.items()},
            reasons=list(self.reasons),
            bootstrap_samples=self.bootstrap_samples,
            seed=self.seed,
        )


def compare(
    active_predictions: Sequence[str],
    candidate_predictions: Sequence[str],
    truth: Sequence[str],
    *,
    metric: str,
    margin: float = 0.0,
    guard_metrics: Sequence[str] = (),
    bootstrap_samples: int = 1000,
    seed: int = 0,
    guard_tolerance: float = GUARD_TOLERANCE,
) -> GateResult:
    """Judge a candidate against the active version on the same golden examples.

    Passes when the lower bound of the 95% paired-bootstrap interval of the difference
    (candidate minus active) reaches ``margin`` (see the module's docstring for why the
    bound and not the point estimate), and every guard metric is at most ``guard_tolerance``
    below the active version's. Deterministic for a given ``seed``.
    """
    _check_inputs(truth, metric, guard_metrics, bootstrap_samples, active_predictions)
    _check_inputs(truth, metric, guard_metrics, bootstrap_samples, candidate_predictions)
    active = score(list(truth), list(active_predictions))
    candidate = score(list(truth), list(candidate_predictions))
    difference = candidate[metric] - active[metric]
    low, high = _interval(
        truth, [active_predictions, candidate_predictions], metric, bootstrap_samples, seed
    )
    n = len(truth)
    reasons = [
        _difference_reason(metric, active[metric], candidate[metric], difference, low, high)
        + " "
        + _verdict_of_bound(low, margin, "the margin", difference, n)
    ]
    guards: dict[str, Guard] = {}
    for name in dict.fromkeys(guard_metrics):
        guard = Guard(name, active[name], candidate[name], guard_tolerance)
        guards[name] = guard
        reasons.append(_guard_reason(guard))
    passed = low + _EPSILON >= margin and all(guard.ok for guard in guards.values())
    return GateResult(
        passed=passed,
        metric=metric,
        n=n,
        active=active,
        candidate=candidate,
        difference=difference,
        ci=(low, high),
        margin=margin,
        min_score=None,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        guards=guards,
        reasons=reasons,
    )


def compare_scores(
    active_scores: Sequence[float],
    candidate_scores: Sequence[float],
    *,
    metric: str = SCORE_METRIC,
    margin: float = 0.0,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> GateResult:
    """Judge a candidate against the active version on per-example numeric scores in [0, 1] (an
    LLM judge's, say) of the SAME examples, with the same evidence rule as ``compare``.

    The statistic is the mean score; the difference (candidate minus active) comes with a
    95% paired-bootstrap interval, and the candidate passes when its lower bound reaches
    ``margin``. Deterministic for a given ``seed``. The result has ``compare``'s shape, with
    ``{metric: mean}`` as each side's metrics and no guards.
    """
    if not active_scores:
        raise ValueError("no scores: there is nothing to compare on")
    if len(candidate_scores) != len(active_scores):
        raise ValueError(
            f"{len(candidate_scores)} candidate scores for {len(active_scores)} active "
            "scores: both must be scored on every example of the same set"
        )
    for side, scores in (("active", active_scores), ("candidate", candidate_scores)):
        bad = [x for x in scores if not (isinstance(x, int | float) and 0.0 <= x <= 1.0)]
        if bad:
            raise ValueError(f"{side} scores must be numbers from 0 to 1, got {bad[0]!r}")
    if bootstrap_samples < 1:
        raise ValueError(f"bootstrap_samples must be at least 1, got {bootstrap_samples}")
    active = float(np.mean(active_scores))
    candidate = float(np.mean(candidate_scores))
    difference = candidate - active
    low, high = _score_interval([active_scores, candidate_scores], bootstrap_samples, seed)
    n = len(active_scores)
    reason = (
        _difference_reason(metric, active, candidate, difference, low, high)
        + " "
        + _verdict_of_bound(low, margin, "the margin", difference, n)
    )
    return GateResult(
        passed=low + _EPSILON >= margin,
        metric=metric,
        n=n,
        active={metric: active},
        candidate={metric: candidate},
        difference=difference,
        ci=(low, high),
        margin=margin,
        min_score=None,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        reasons=[reason],
    )


def qualify(
    candidate_predictions: Sequence[str],
    truth: Sequence[str],
    *,
    metric: str,
    min_score: float | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> GateResult:
    """Judge a first version, with no active version to beat: it passes when the lower bound of the
    95% bootstrap interval of its ``metric`` reaches ``min_score`` (the same evidence rule as
    against an active version), or at once when ``min_score`` is None."""
    _check_inputs(truth, metric, (), bootstrap_samples, candidate_predictions)
    candidate = score(list(truth), list(candidate_predictions))
    low, high = _interval(truth, [candidate_predictions], metric, bootstrap_samples, seed)
    value = candidate[metric]
    n = len(truth)
    stated = (
        f"There is no active version to compare with; the candidate's {metric} is {value:.4f} on "
        f"{n} golden examples (95% confidence interval {low:.4f} to {high:.4f})."
    )
    if min_score is None:
        reason = f"{stated} No min_score is set, so it passes."
    else:
        reason = f"{stated} " + _verdict_of_bound(low, min_score, "min_score", value, n)
    return GateResult(
        passed=min_score is None or low + _EPSILON >= min_score,
        metric=metric,
        n=n,
        active=None,
        candidate=candidate,
        difference=None,
        ci=(low, high),
        margin=0.0,
        min_score=min_score,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        reasons=[reason],
    )


def resampled_scores(
    truth: Sequence[str],
    predicted: Sequence[str],
    indices: npt.NDArray[np.integer[Any]],
    metric: str,
) -> npt.NDArray[np.float64]:
    """``metric`` of ``predicted`` on each resample (a row of example ``indices``), as
    ``retrain.evaluate.score`` computes it on that resample's examples.

    The same definition as ``score`` (macro-F1 over the labels present in the resample's
    truth, a prediction outside them simply wrong), computed from a confusion matrix per row
    with numpy: ``score`` itself costs milliseconds a call, a thousand resamples of two models
    would take seconds, and the configuration allows a hundred thousand.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    truth_codes, [predicted_codes], classes = _encode(truth, [predicted])
    return _scores(truth_codes, predicted_codes, classes, np.asarray(indices, np.int64), metric)


def _encode(
    truth: Sequence[str], models: Sequence[Sequence[str]]
) -> tuple[npt.NDArray[np.int64], list[npt.NDArray[np.int64]], int]:
    """Labels as numbers: the golden set's labels sorted, as ``score`` orders them, and one
    more number for every prediction outside them (always wrong)."""
    position = {label: i for i, label in enumerate(sorted(set(truth)))}
    classes = len(position)
    truth_codes = np.array([position[label] for label in truth], dtype=np.int64)
    coded = [
        np.array([position.get(label, classes) for label in predicted], dtype=np.int64)
        for predicted in models
    ]
    return truth_codes, coded, classes


def _scores(
    truth: npt.NDArray[np.int64],
    predicted: npt.NDArray[np.int64],
    classes: int,
    indices: npt.NDArray[np.int64],
    metric: str,
) -> npt.NDArray[np.float64]:
    rows, size = indices.shape
    width = classes + 1
    offsets = (np.arange(rows, dtype=np.int64) * width * width)[:, None]
    codes = truth[indices] * width + predicted[indices] + offsets
    confusion = np.bincount(codes.ravel(), minlength=rows * width * width).reshape(
        rows, width, width
    )
    diagonal = np.arange(classes)
    correct = confusion[:, diagonal, diagonal]
    if metric == "accuracy":
        accuracy: npt.NDArray[np.float64] = correct.sum(axis=1) / size
        return accuracy
    support = confusion[:, :classes, :].sum(axis=2)
    predictions = confusion[:, :, :classes].sum(axis=1)
    denominator = support + predictions
    f1 = np.divide(
        2.0 * correct,
        denominator,
        out=np.zeros(denominator.shape, dtype=np.float64),
        where=denominator > 0,
    )
    present = support > 0
    averaged: npt.NDArray[np.float64] = (f1 * present).sum(axis=1) / present.sum(axis=1)
    return averaged


def _interval(
    truth: Sequence[str],
    models: Sequence[Sequence[str]],
    metric: str,
    samples: int,
    seed: int,
) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the last model's metric minus the first's
    (or of the only model's metric), resampling the SAME indices for every model."""
    truth_codes, coded, classes = _encode(truth, models)

    def statistic(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        scored = [_scores(truth_codes, codes, classes, indices, metric) for codes in coded]
        return scored[-1] - scored[0] if len(scored) == 2 else scored[0]

    cells = max(len(truth), (classes + 1) ** 2)
    return _bootstrap(len(truth), statistic, samples, seed, cells_per_resample=cells)


def _score_interval(
    models: Sequence[Sequence[float]], samples: int, seed: int
) -> tuple[float, float]:
    """As ``_interval``, for per-example numeric scores: the statistic is the mean score (of
    the last model minus the first's, or of the only model)."""
    values = [np.asarray(scores, dtype=np.float64) for scores in models]

    def statistic(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        means: list[npt.NDArray[np.float64]] = [s[indices].mean(axis=1) for s in values]
        return means[-1] - means[0] if len(means) == 2 else means[0]

    n = len(values[0])
    return _bootstrap(n, statistic, samples, seed, cells_per_resample=n)


def _bootstrap(
    n: int,
    statistic: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]],
    samples: int,
    seed: int,
    *,
    cells_per_resample: int,
) -> tuple[float, float]:
    """The 95% percentile interval of ``statistic`` over ``samples`` resamples of ``n``
    example indices (one row of indices per resample, drawn with replacement), in chunks of
    rows so that memory stays bounded at any ``samples``. Deterministic for a given ``seed``.

    One resampling loop for every statistic, so that the label gate and the score gate draw
    the same indices for the same seed and differ only in what they compute on them."""
    chunk = max(1, _CELLS_PER_CHUNK // max(1, cells_per_resample))
    rng = np.random.default_rng(seed)
    values: list[npt.NDArray[np.float64]] = []
    for start in range(0, samples, chunk):
        indices = rng.integers(0, n, size=(min(chunk, samples - start), n), dtype=np.int64)
        values.append(statistic(indices))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(np.concatenate(values), [tail, 100 - tail])
    return float(low), float(high)


def _check_inputs(
    truth: Sequence[str],
    metric: str,
    guard_metrics: Sequence[str],
    bootstrap_samples: int,
    predictions: Sequence[str],
) -> None:
    if not truth:
        raise ValueError("the golden set is empty: there is nothing to compare on")
    if len(predictions) != len(truth):
        raise ValueError(
            f"{len(predictions)} predictions for {len(truth)} golden examples: both models "
            "must label every example of the same golden set"
        )
    for name in (metric, *guard_metrics):
        if name not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {name!r}")
    if bootstrap_samples < 1:
        raise ValueError(f"bootstrap_samples must be at least 1, got {bootstrap_samples}")


def _difference_reason(
    metric: str, active: float, candidate: float, difference: float, low: float, high: float
) -> str:
    return (
        f"{metric}: the candidate scores {candidate:.4f} against the active version's "
        f"{active:.4f}, a difference of {difference:+.4f} (95% confidence interval "
        f"{low:+.4f} to {high:+.4f})."
    )


def _verdict_of_bound(low: float, bar: float, bar_name: str, estimate: float, n: int) -> str:
    if low + _EPSILON >= bar:
        return f"The interval's lower bound clears {bar_name} of {bar:.4f}."
    if estimate + _EPSILON >= bar:
        return (
            f"The estimate reaches {bar_name} of {bar:.4f} but the interval's lower bound "
            f"({low:+.4f}) does not: on {n} golden examples the gain may be chance; a larger "
            "golden set would tell."
        )
    return f"That is short of {bar_name} of {bar:.4f}."


def _guard_reason(guard: Guard) -> str:
    stated = (
        f"Guard {guard.metric}: the candidate scores {guard.candidate:.4f} against the "
        f"active's {guard.active:.4f}"
    )
    if guard.difference >= 0:
        return f"{stated}, no worse."
    if guard.ok:
        return f"{stated}, within the tolerance of {guard.tolerance:.4f}."
    return (
        f"{stated}, {-guard.difference:.4f} worse, beyond the tolerance of "
        f"{guard.tolerance:.4f}: the candidate may not lose on {guard.metric}."
    )


# The job.


def run(spec: GateSpec, progress: Progress) -> GateJobResult:
    """Label the golden set with both models and judge the candidate; the job's result."""
    started = time.monotonic()
    examples = read_golden_set(spec.golden_set, spec.input_field, spec.label_field)
    texts = [example.input for example in examples]
    truth = [example.label for example in examples]
    progress(f"gate: {len(examples)} examples of {len(set(truth))} labels from {spec.golden_set}")
    candidate_dir = spec.candidate.model_dir
    active_dir = None if spec.active is None else spec.active.model_dir
    candidate = _predict("candidate", candidate_dir, texts, truth, spec, progress)
    if active_dir is None:
        verdict = qualify(
            candidate,
            truth,
            metric=spec.metric,
            min_score=spec.min_score,
            bootstrap_samples=spec.bootstrap_samples,
            seed=spec.seed,
        )
    else:
        active = _predict("active", active_dir, texts, truth, spec, progress)
        verdict = compare(
            active,
            candidate,
            truth,
            metric=spec.metric,
            margin=spec.margin,
            guard_metrics=spec.guard_metrics,
            bootstrap_samples=spec.bootstrap_samples,
            seed=spec.seed,
        )
    for reason in verdict.reasons:
        progress(f"gate: {reason}")
    progress(f"gate: the candidate {'passes' if verdict.passed else 'is rejected'}")
    found = verdict.verdict()
    if found.candidate is not None:
        found.candidate.model_dir = str(candidate_dir)
    if found.active is not None:
        found.active.model_dir = str(active_dir)
    timing = {
        "golden_set": str(spec.golden_set),
        "duration_s": round(time.monotonic() - started, 3),
    }
    return GateJobResult(**{**dict(found), **timing})


def _predict(
    role: str,
    model_dir: Path,
    texts: list[str],
    truth: list[str],
    spec: GateSpec,
    progress: Progress,
) -> list[str]:
    classifier = Classifier(model_dir)
    progress(f"gate: {role} {model_dir} predicts {len(classifier.labels)} labels")
    if not set(truth) & set(classifier.labels.values()):
        raise EvaluationError(
            f"none of the golden set's labels is a label of the {role} in {model_dir}: "
            "its config.json must name them in id2label"
        )

    def relabel(line: str) -> None:
        progress(f"gate: {role}: {line.removeprefix('evaluate: ')}")

    return classifier.predict(
        texts,
        batch_size=spec.batch_size,
        max_length=spec.max_length,
        pace_s=spec.pace_s,
        progress=relabel,
    )
