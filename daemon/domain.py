"""driftd's vocabulary: the enumerations that config, store, API, metrics and docs share.

Each word means the same thing everywhere it appears, so it is defined once, here.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What is deployed: weights the team tuned, or a base model plus a prompt."""

    finetuned = "finetuned"
    prompted = "prompted"


class Task(StrEnum):
    """What the deployment produces: labels from a known set, or free text."""

    classification = "classification"
    generation = "generation"


class CheckStatus(StrEnum):
    """The verdict of one check."""

    ok = "ok"
    drift = "drift"
    insufficient_data = "insufficient_data"
    failed = "failed"


class JobState(StrEnum):
    """Where a job stands, from queueing to its end."""

    queued = "queued"
    awaiting_approval = "awaiting_approval"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class VersionKind(StrEnum):
    """What a version holds."""

    model = "model"
    prompt = "prompt"


class VersionState(StrEnum):
    """Where a version stands in the promotion cycle."""

    candidate = "candidate"
    active = "active"
    retired = "retired"
    rejected = "rejected"


class ReferenceKind(StrEnum):
    """What a check compares its current window with (``monitor.reference.kind``)."""

    previous_window = "previous_window"
    fixed = "fixed"
    dataset = "dataset"
    baseline = "baseline"
