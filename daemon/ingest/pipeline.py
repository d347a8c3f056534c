"""From what an app sent to what is stored: check, sample, redact, describe.

One ``DeploymentPipeline`` per deployment, built from its configuration at start-up. The ingest
API, the proxy and the backfill all go through it, so a sample is treated the same whichever way
it arrived. Nothing here touches the store: the writer does.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daemon.config.models import AlwaysKeep, Deployment
from daemon.domain import Task
from daemon.ingest.describe import DEFAULT_REFUSAL_PHRASES, Describer
from daemon.ingest.redact import Redactor
from daemon.ingest.schema import FeedbackIn, Message, Problem, SampleIn
from daemon.store import NewSample
from daemon.store.repository import FeedbackUpdate

_SAMPLING_PERSON = b"driftd.sample.v1"


def sampled_in(deployment: str, request_id: str, rate: float) -> bool:
    """Whether a request is kept at ``rate``: a hash of its id, so the answer never changes."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(
        f"{deployment}\x00{request_id}".encode(), digest_size=8, person=_SAMPLING_PERSON
    ).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch ready for the writer, and the request ids that sampling left out."""

    samples: list[NewSample]
    sampled_out: list[str] = field(default_factory=list)
    redacted: Counter[str] = field(default_factory=Counter)


class DeploymentPipeline:
    """Checks, samples, redacts and describes one deployment's traffic."""

    def __init__(self, deployment: Deployment) -> None:
        self.name = deployment.name
        self.task = deployment.task
        self.labels = frozenset(deployment.labels)
        sampling = deployment.sampling
        self.rate = sampling.rate
        self.keep_errors = AlwaysKeep.errors in sampling.always_keep
        self.keep_negative = AlwaysKeep.negative_feedback in sampling.always_keep
        redaction = deployment.redaction
        self.redactor = (
            Redactor(
                kinds=[kind.value for kind in redaction.kinds],
                extra=[(p.name, p.pattern) for p in redaction.extra],
            )
            if redaction.enabled
            else None
        )
        described = deployment.descriptors
        self.describer = Describer(
            refusal_phrases=described.refusal_phrases or DEFAULT_REFUSAL_PHRASES,
            patterns=[(p.name, p.pattern) for p in described.patterns],
        )

    def check(self, samples: Sequence[SampleIn]) -> list[Problem]:
        """What this deployment's task requires beyond the schema: a classifier's prediction
        and label are among its labels; a generator has no predictions."""
        problems = []
        for index, sample in enumerate(samples):
            if self.task is Task.classification:
                if sample.prediction is None and sample.error is None:
                    problems.append(
                        Problem(
                            index=index,
                            field="prediction",
                            message="required for a classification deployment "
                            "(unless 'error' says why there is none)",
                        )
                    )
                elif sample.prediction is not None:
                    problems += self._label_problems(index, "prediction", sample.prediction)
                if sample.label is not None:
                    problems += self._label_problems(index, "label", sample.label)
                unknown = set(sample.probabilities or ()) - self.labels
                if unknown:
                    problems.append(
                        Problem(
                            index=index,
                            field="probabilities",
                            message=f"not labels of the deployment: {sorted(unknown)[:5]}",
                        )
                    )
            else:
                for name in ("prediction", "confidence", "probabilities"):
                    if getattr(sample, name) is not None:
                        problems.append(
                            Problem(
                                index=index,
                                field=name,
                                message="only for classification deployments",
                            )
                        )
        return problems

    def check_feedback(self, items: Sequence[FeedbackIn]) -> list[Problem]:
        """What this deployment's task requires of feedback: a classifier's true label is one
        of its labels (a generator's label is free text, redacted when stored)."""
        if self.task is not Task.classification:
            return []
        return [
            problem
            for index, item in enumerate(items)
            if item.label is not None
            for problem in self._label_problems(index, "label", item.label)
        ]

    def _label_problems(self, index: int, field: str, label: str) -> list[Problem]:
        if label in self.labels:
            return []
        message = f"{label!r} is not one of the deployment's labels ({len(self.labels)} configured)"
        return [Problem(index=index, field=field, message=message)]

    def prepare(self, samples: Iterable[SampleIn], now: datetime) -> Prepared:
        """Sample, redact and describe; ``now`` stands in for a missing ``ts``. Redactions are
        counted in the result (the caller adds them to its ``ReplicaMetrics``)."""
        kept: list[NewSample] = []
        sampled_out: list[str] = []
        redacted: Counter[str] = Counter()
        for sample in samples:
            if not self._keeps(sample):
                sampled_out.append(sample.request_id)
                continue
            kept.append(self._stored_form(sample, now, redacted))
        return Prepared(samples=kept, sampled_out=sampled_out, redacted=redacted)

    def feedback(self, item: FeedbackIn, now: datetime, redacted: Counter[str]) -> FeedbackUpdate:
        """The update a feedback item makes to its sample (the comment, and a generation
        deployment's label, redacted first, the redactions counted in ``redacted``); a
        classification label must have passed ``check_feedback``."""
        score, kind = _feedback_score(item.thumb, item.score)
        comment = None if item.comment is None else self._redact(item.comment, redacted)
        return FeedbackUpdate(
            request_id=item.request_id,
            label=self._stored_label(item.label, redacted),
            label_ts=now if item.label is not None else None,
            feedback_score=score,
            feedback_kind=kind,
            feedback_comment=comment,
            judge_score=item.judge_score,
        )

    def _keeps(self, sample: SampleIn) -> bool:
        if sampled_in(self.name, sample.request_id, self.rate):
            return True
        if self.keep_errors and sample.error is not None:
            return True
        return self.keep_negative and sample.feedback is not None and sample.feedback.negative

    def _stored_form(self, sample: SampleIn, now: datetime, redacted: Counter[str]) -> NewSample:
        redact = self._redact
        messages: list[dict[str, Any]] | None = None
        if isinstance(sample.input, str):
            text = redact(sample.input, redacted)
        else:
            messages = [
                {"role": m.role, "content": redact(m.content, redacted)} for m in sample.input
            ]
            text = _last_user_text(sample.input, messages)
        output = None if sample.output is None else redact(sample.output, redacted)
        descriptors = {
            "input": self.describer.describe(text),
            "output": self.describer.describe(output),
        }
        feedback = sample.feedback
        score, kind = (
            (None, None) if feedback is None else _feedback_score(feedback.thumb, feedback.score)
        )
        return NewSample(
            sample.request_id,
            sample.ts or now,
            input=text,
            input_messages=messages,
            output=output,
            prediction=sample.prediction,
            confidence=sample.confidence,
            probabilities=sample.probabilities,
            label=self._stored_label(sample.label, redacted),
            label_ts=(sample.ts or now) if sample.label is not None else None,
            feedback_score=score,
            feedback_kind=kind,
            descriptors=descriptors,
            model_version=sample.model_version,
            prompt_version=sample.prompt_version,
            latency_ms=sample.latency_ms,
            tokens_in=sample.tokens_in,
            tokens_out=sample.tokens_out,
            error=None if sample.error is None else redact(sample.error, redacted),
            meta={
                key: redact(value, redacted) if isinstance(value, str) else value
                for key, value in sample.metadata.items()
            }
            or None,
        )

    def _stored_label(self, label: str | None, redacted: Counter[str]) -> str | None:
        # A classification label is one of the configured labels; a generation label is free
        # text (a reference answer, a correction) that can hold PII like the output can.
        if label is None or self.task is Task.classification:
            return label
        return self._redact(label, redacted)

    def _redact(self, text: str, counts: Counter[str]) -> str:
        return text if self.redactor is None else self.redactor.redact(text, counts)


def _feedback_score(thumb: str | None, score: float | None) -> tuple[float | None, str | None]:
    """Feedback as stored: a thumb is a score of 1 (up) or 0 (down); the kind says which."""
    if thumb is not None:
        return (1.0 if thumb == "up" else 0.0), "thumb"
    if score is not None:
        return score, "score"
    return None, None


def _last_user_text(messages: Sequence[Message], redacted: list[dict[str, Any]]) -> str:
    """The text a chat sample is described and compared by: what the user last asked."""
    for original, stored in zip(reversed(messages), reversed(redacted), strict=True):
        if original.role == "user":
            return str(stored["content"])
    return str(redacted[-1]["content"])
