"""What a check is handed: two windows of samples (``Side``) and what to compute (``MonitorSpec``).

Both are plain data built by the daemon from its store and configuration. Nothing here imports
pandas or numpy, so the types can be used where the heavy libraries must not load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

Task = Literal["classification", "generation"]


class Signal(StrEnum):
    """What a check measures; each signal belongs to a group (``SIGNAL_GROUPS``).

    The one list of signals: the daemon's configuration, metrics and docs take theirs from here.
    """

    descriptors = "descriptors"
    text = "text"
    embedding = "embedding"
    prediction = "prediction"
    confidence = "confidence"
    performance = "performance"
    judge = "judge"
    feedback = "feedback"
    format_validity = "format_validity"
    refusal = "refusal"
    errors = "errors"
    latency = "latency"


class SignalGroup(StrEnum):
    """What a signal's drift says: the inputs changed (data), the outputs changed (output), or
    the answers got worse (quality)."""

    data = "data"
    output = "output"
    quality = "quality"


# The group each signal's result is reported under. The descriptors signal also yields
# ``output_descriptors`` (group output) when outputs are described.
SIGNAL_GROUPS: Mapping[str, SignalGroup] = {
    Signal.descriptors: SignalGroup.data,
    Signal.text: SignalGroup.data,
    Signal.embedding: SignalGroup.data,
    Signal.prediction: SignalGroup.output,
    Signal.confidence: SignalGroup.output,
    Signal.performance: SignalGroup.quality,
    Signal.judge: SignalGroup.quality,
    Signal.feedback: SignalGroup.quality,
    Signal.format_validity: SignalGroup.quality,
    Signal.refusal: SignalGroup.quality,
    Signal.errors: SignalGroup.output,
    Signal.latency: SignalGroup.output,
}
OUTPUT_DESCRIPTORS = "output_descriptors"
RESULT_GROUPS: Mapping[str, SignalGroup] = {**SIGNAL_GROUPS, OUTPUT_DESCRIPTORS: SignalGroup.output}

# What makes sense for one task only, and what a task checks when the configuration names no
# signals.
CLASSIFICATION_ONLY = frozenset({Signal.prediction, Signal.confidence, Signal.performance})
GENERATION_ONLY = frozenset(
    {Signal.judge, Signal.format_validity, Signal.refusal, Signal.errors, Signal.latency}
)
DEFAULT_SIGNALS: Mapping[str, tuple[Signal, ...]] = {
    "classification": (
        Signal.descriptors,
        Signal.text,
        Signal.embedding,
        Signal.prediction,
        Signal.confidence,
        Signal.performance,
    ),
    "generation": (
        Signal.descriptors,
        Signal.text,
        Signal.embedding,
        Signal.judge,
        Signal.feedback,
        Signal.format_validity,
        Signal.refusal,
        Signal.errors,
        Signal.latency,
    ),
}
EmbeddingMethod = Literal["classifier_cv", "evidently_model", "novelty"]
"""The embedding signal's tests (``monitors.domain``); ``classifier_cv`` is the default."""
EMBEDDING_METHODS: tuple[str, ...] = get_args(EmbeddingMethod)

TEXT_DESCRIPTORS = ("chars", "words", "sentences", "non_letter_pct", "is_json", "refusal")
"""Descriptor columns computed at ingest, each prefixed ``input_`` or ``output_``."""
BOOLEAN_DESCRIPTORS = frozenset({"is_json", "refusal"})
REGEX_DESCRIPTOR_PREFIX = "regex_"


@dataclass(frozen=True)
class Side:
    """One window of samples: a frame with one row per sample, and their embeddings if computed.

    ``frame`` has the columns listed in the package documentation; a missing column means the
    signals built on it cannot be computed. ``embeddings`` is an ``(n, d)`` array aligned with the
    frame's rows. ``total`` is how many rows the window held before the capped draw, for reports.
    """

    frame: pd.DataFrame
    embeddings: np.ndarray | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        if self.embeddings is not None:
            shape = tuple(self.embeddings.shape)
            if len(shape) != 2:
                raise ValueError(f"embeddings must be a 2-D array (rows, dimensions), got {shape}")
            if shape[0] != len(self.frame):
                raise ValueError(
                    f"embeddings have {shape[0]} rows but the frame has {len(self.frame)}: "
                    "they must be aligned row for row"
                )
        if self.total is not None and self.total < len(self.frame):
            raise ValueError(f"total ({self.total}) is smaller than the frame ({len(self.frame)})")

    @property
    def rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class MonitorSpec:
    """What to compute on the two windows, and how strict to be.

    ``thresholds`` overrides a signal's default threshold, in that signal's own unit: a p-value or
    distance for single-column drift, the share of drifted columns for descriptors, a domain
    classifier's ROC AUC for text and embedding, an absolute fall or rise for quality rates.
    """

    task: Task
    signals: tuple[str, ...]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    min_rows: int = 50
    quality_drop: float = 0.05
    text_max_rows: int = 1000
    embedding_method: str = "classifier_cv"
    labels: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in ("classification", "generation"):
            raise ValueError(f"task must be 'classification' or 'generation', not {self.task!r}")
        known = ", ".join(SIGNAL_GROUPS)
        for name in self.signals:
            if name not in SIGNAL_GROUPS:
                raise ValueError(f"unknown signal {name!r}; known signals: {known}")
        if len(set(self.signals)) != len(self.signals):
            raise ValueError(f"signals {list(self.signals)} name a signal twice")
        wrong = CLASSIFICATION_ONLY if self.task == "generation" else GENERATION_ONLY
        misplaced = [name for name in self.signals if name in wrong]
        if misplaced:
            raise ValueError(f"signals {misplaced} do not apply to task {self.task!r}")
        for name in self.thresholds:
            if name not in RESULT_GROUPS:
                raise ValueError(f"threshold for unknown signal {name!r}; known signals: {known}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, got {self.min_rows}")
        if not 0.0 < self.quality_drop <= 1.0:
            raise ValueError(f"quality_drop must be in (0, 1], got {self.quality_drop}")
        if self.embedding_method not in EMBEDDING_METHODS:
            raise ValueError(
                f"embedding_method must be one of {', '.join(EMBEDDING_METHODS)}, "
                f"not {self.embedding_method!r}"
            )
        if self.text_max_rows < 1:
            raise ValueError(f"text_max_rows must be at least 1, got {self.text_max_rows}")

    def threshold(self, name: str, default: float) -> float:
        """The configured threshold of result ``name``, else ``default``.

        ``output_descriptors`` falls back to the ``descriptors`` threshold: both are shares of
        drifted columns and are configured as one signal.
        """
        if name in self.thresholds:
            return float(self.thresholds[name])
        if name == OUTPUT_DESCRIPTORS and "descriptors" in self.thresholds:
            return float(self.thresholds["descriptors"])
        return default

    def overrides(self, name: str) -> bool:
        """Whether the configuration sets the threshold of result ``name``."""
        return name in self.thresholds or (
            name == OUTPUT_DESCRIPTORS and "descriptors" in self.thresholds
        )
