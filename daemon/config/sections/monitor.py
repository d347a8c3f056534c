"""``monitor``: when a deployment is checked, on which signals, against which reference."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from daemon.config.sections import Section
from daemon.config.types import (
    Duration,
    RelativePath,
    Schedule,
    ScheduleSpec,
)
from daemon.domain import ReferenceKind
from monitors.spec import (
    DEFAULT_SIGNALS,
    EmbeddingMethod,
    Signal,
)


class AfterPromotion(StrEnum):
    """What a check compares with once a version driftd made is active."""

    baseline = "baseline"
    keep = "keep"


class Reference(Section):
    kind: ReferenceKind = Field(
        ReferenceKind.previous_window,
        description="`previous_window` (the window before the current one), `fixed` "
        "(`start`..`end`), `dataset` (a file, e.g. the training data) or `baseline` (the "
        "first `samples` samples of the active version).",
    )
    start: datetime | None = Field(None, description="`fixed`: start, ISO 8601 with zone.")
    end: datetime | None = Field(None, description="`fixed`: end, ISO 8601 with zone.")
    path: RelativePath | None = Field(
        None, description="`dataset`: CSV, JSONL or Parquet file, relative to this file."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="`dataset`: sample field → column of `path` holding it, for a file whose "
        "columns are not named as sample fields, as `driftd ingest --map FIELD=COLUMN` reads "
        "one; e.g. `{input: text, prediction: category}`. A classification training set's "
        "label column maps to `prediction`: the check compares the distribution of predictions "
        "in the window with the reference's, and the labels a model was trained on are the "
        "predictions a healthy model gives. Checked against the file's header at start-up.",
    )
    samples: int = Field(
        1000,
        ge=10,
        description="A version's baseline: its first `samples` samples from its promotion on "
        "(kind `baseline`, and `after_promotion: baseline`).",
    )
    after_promotion: AfterPromotion = Field(
        AfterPromotion.baseline,
        description="What checks compare with while a version made by a re-tune or a prompt "
        "revision (one with a parent or a job) is active: `baseline` (its baseline: the current "
        "window starts after it, and checks say `insufficient_data` until the version has "
        "served `samples` samples) or `keep` (the reference above, over the whole window). A "
        "version without either (the first one, a rollback to it) is checked against the "
        "reference above; kind `baseline` follows every active version.",
    )

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Self:
        if self.kind is ReferenceKind.fixed:
            if self.start is None or self.end is None:
                raise ValueError("kind 'fixed' needs both 'start' and 'end'")
            if self.start.tzinfo is None or self.end.tzinfo is None:
                raise ValueError("'start' and 'end' need a time zone, e.g. 2026-01-01T00:00:00Z")
            if self.start >= self.end:
                raise ValueError("'start' must be before 'end'")
        if self.kind is ReferenceKind.dataset and self.path is None:
            raise ValueError("kind 'dataset' needs 'path'")
        if self.columns and self.kind is not ReferenceKind.dataset:
            raise ValueError("'columns' is only for kind 'dataset'")
        return self


class Monitor(Section):
    schedule: ScheduleSpec = Field(
        Schedule(every=timedelta(hours=1)),
        description="When checks run: `every <duration>` or a cron expression.",
    )
    window: Duration = Field(timedelta(hours=24), description="Length of the current window.")
    reference: Reference = Field(default_factory=Reference, description="What is compared to.")
    signals: tuple[Signal, ...] | None = Field(
        None,
        description="Signals to compute; unset means the task's defaults ("
        + "; ".join(f"{task}: {', '.join(names)}" for task, names in DEFAULT_SIGNALS.items())
        + ").",
    )
    thresholds: dict[Signal, float] = Field(
        default_factory=dict,
        description="Per-signal drift threshold overriding the method's default.",
    )
    quality_drop: float = Field(
        0.05, gt=0.0, le=1.0, description="Absolute fall of a quality metric that counts as drift."
    )
    min_rows: int = Field(
        50, ge=1, description="Fewer rows on either side → status `insufficient_data`."
    )
    max_rows: int = Field(
        5000, ge=10, le=1_000_000, description="Cap of each side's reproducible uniform draw."
    )
    text_max_rows: int = Field(
        1000, ge=10, description="Sub-cap for the text-content drift signal (the slow one)."
    )
    embedding_model: str = Field(
        "default",
        description="`default` (all-MiniLM-L6-v2 shipped with driftd, offline), a hub id, a "
        "local path, or `openai:<model>`.",
    )
    embedding_method: EmbeddingMethod = Field(
        "classifier_cv",
        description="Embedding drift test: `classifier_cv` (a logistic regression cross-fitted "
        "over 5 folds, every row scored; a shift of the whole mix), `evidently_model` "
        "(Evidently's ModelDriftMethod, one train/test split) or `novelty` (the share of "
        "current rows less like their nearest reference row than 95% of reference rows are "
        "like theirs: new kinds of input, such as questions about intents a classifier never "
        "learnt, even spread over many topics). A `thresholds.embedding` is an AUC for the "
        "first two and a share for `novelty`.",
    )
    timeout: Duration = Field(timedelta(minutes=10), description="A check running longer fails.")
    warm: bool = Field(
        True,
        description="Warm checks (with the `embedding` signal): as samples arrive, a background "
        "embedder in the check worker embeds those the next check will likely draw (a sample's "
        "place in the draw is known from its request id), and the draws of both windows that "
        "still lack embeddings, so that a check finds its draw embedded. It works behind "
        "ingest (at most a tenth of a core while ingest is busy), and drops what its queue "
        "cannot hold (`driftd_embeddings_skipped_total`): the check then embeds those itself, "
        "as with `false`. It uses the check's model and settings.",
    )

    @model_validator(mode="after")
    def _rows(self) -> Self:
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) exceeds max_rows ({self.max_rows})")
        return self
