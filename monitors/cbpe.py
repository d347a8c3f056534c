"""Accuracy before the labels arrive: confidence-based performance estimation (CBPE).

The idea is NannyML's CBPE. On the labelled reference, learn how often a prediction made with
confidence c turns out right (an isotonic regression of correctness on confidence: monotone, no
assumed shape, and exact on average). A current prediction made with confidence c is then right
with that probability, so the expected accuracy of the current window is the mean of those
probabilities, and its spread follows from summing independent Bernoulli outcomes.

It assumes the model's confidence means on current traffic what it meant on the reference (no
concept shift): it sees a model growing unsure, not a model confidently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """P(correct | confidence) learnt on the reference, as a monotone step-wise linear map."""

    confidences: np.ndarray
    probabilities: np.ndarray
    reference_accuracy: float
    reference_rows: int

    def probability(self, confidence: np.ndarray) -> np.ndarray:
        """P(correct) of predictions made with ``confidence``, clipped to the learnt range."""
        clipped: np.ndarray = np.interp(
            np.asarray(confidence, dtype=float), self.confidences, self.probabilities
        )
        return clipped


@dataclass(frozen=True)
class Estimate:
    accuracy: float
    std_error: float
    rows: int


def calibrate(confidence: np.ndarray, correct: np.ndarray) -> Calibration:
    """Fit P(correct | confidence) on labelled predictions; both arrays are aligned and finite."""
    from sklearn.isotonic import IsotonicRegression

    confidence = np.asarray(confidence, dtype=float)
    outcome = np.asarray(correct, dtype=float)
    if confidence.shape != outcome.shape or confidence.ndim != 1:
        raise ValueError(
            f"confidence {confidence.shape} and correct {outcome.shape} must be aligned 1-D arrays"
        )
    if len(confidence) == 0:
        raise ValueError("cannot calibrate on zero labelled predictions")
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(confidence, outcome)
    return Calibration(
        confidences=np.asarray(model.X_thresholds_, dtype=float),
        probabilities=np.asarray(model.y_thresholds_, dtype=float),
        reference_accuracy=float(outcome.mean()),
        reference_rows=len(outcome),
    )


def estimate_accuracy(calibration: Calibration, confidence: np.ndarray) -> Estimate:
    """The expected accuracy of predictions made with ``confidence``, and its standard error."""
    p = calibration.probability(confidence)
    if len(p) == 0:
        raise ValueError("cannot estimate the accuracy of zero predictions")
    return Estimate(
        accuracy=float(p.mean()),
        std_error=float(np.sqrt(np.sum(p * (1 - p))) / len(p)),
        rows=len(p),
    )
