"""``judge``: the LLM judge that scores a generation deployment's outputs."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from daemon.config.sections import Section
from daemon.config.types import (
    Duration,
    Schedule,
    ScheduleSpec,
)


class Judge(Section):
    rubric: str | None = Field(
        None,
        min_length=1,
        description="What a good output is, for the LLM judge; unset means no judging.",
    )
    model: str = Field(
        "gpt-4o-mini",
        min_length=1,
        description="Chat model that judges, served by the deployment's upstream.",
    )
    schedule: ScheduleSpec = Field(
        Schedule(every=timedelta(minutes=15)), description="When recent outputs are judged."
    )
    sample_size: int = Field(
        50, ge=1, le=10_000, description="Unjudged recent samples scored per run, newest first."
    )
    lookback: Duration = Field(
        timedelta(hours=24), description="How far back unjudged samples are taken."
    )
    max_tokens_per_day: int | None = Field(
        200_000, ge=1, description="Cap on the judge's tokens in any 24 h; unset means no cap."
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="Requests per sample before it counts as failed."
    )
    price_per_million_input_tokens: float | None = Field(
        None, ge=0.0, description="For the cost in the audit trail."
    )
    price_per_million_output_tokens: float | None = Field(
        None, ge=0.0, description="For the cost in the audit trail."
    )
