"""Scoring recent outputs with the LLM judge, within a daily token cap.

``judge_recent`` picks the deployment's recent samples that have an output and no judge score,
has ``retrain.judge`` score them, stores each score on its sample and records one audit event
(``judge.run``) with the counts, the tokens and the cost. Those events are also the judge's
ledger: the tokens spent in the last 24 hours are summed from them to hold the daily cap, and
the samples they list as failed are left out of the next runs for that day, so an output the
judge cannot score is not sent again at every tick.

Blocking (HTTP calls to the judge, store writes): the scheduler runs it off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from daemon.config.models import Upstream
from daemon.errors import DriftdError
from daemon.store import Store, judgements
from daemon.store.types import require_aware
from retrain.judge import ClientSettings, Judgement, JudgeSample, TokenBudget, judge

EVENT_KIND = "judge.run"
DAY = timedelta(hours=24)
# Failures listed in an event, with their errors: enough to see what went wrong.
_ERRORS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """What the judge scores with, and how much of it: the rubric, the model and its API,
    how many samples one run takes from how far back, and the cap of tokens per 24 hours."""

    rubric: str
    model: str
    client: ClientSettings
    sample_size: int = 50
    lookback: timedelta = DAY
    max_tokens_per_day: int | None = None
    max_attempts: int = 3
    max_answer_tokens: int = 200
    price_per_million_input_tokens: float | None = None
    price_per_million_output_tokens: float | None = None

    def __post_init__(self) -> None:
        if self.sample_size < 1:
            raise ValueError(f"sample_size must be at least 1, got {self.sample_size}")
        if self.lookback <= timedelta(0):
            raise ValueError(f"lookback must be positive, got {self.lookback}")


@dataclass(frozen=True, slots=True)
class JudgeReport:
    """What one run did; ``event_id`` is None when it did nothing worth an audit entry (nothing
    to judge, or the cap already spent before it began)."""

    deployment: str
    picked: int
    scored: int
    failed: int
    tokens: int
    spent_today: int
    cost_usd: float | None
    stopped: str | None = None
    detail: str | None = None
    event_id: int | None = None


def client_settings(upstream: Upstream, environ: Mapping[str, str]) -> ClientSettings:
    """The judge's API from a deployment's ``upstream``, its key read from ``environ``."""
    key = environ.get(upstream.api_key_env, "").strip()
    if not key:
        raise DriftdError(
            f"the LLM judge needs an API key: set the environment variable "
            f"{upstream.api_key_env} (named by the deployment's upstream.api_key_env)"
        )
    return ClientSettings(
        api_key=key,
        base_url=upstream.base_url,
        timeout_s=upstream.timeout.total_seconds(),
        max_retries=upstream.max_retries,
    )


def spent_today(store: Store, deployment: str, now: datetime) -> tuple[int, set[int]]:
    """Tokens the judge spent on ``deployment`` in the 24 hours before ``now``, and the ids of
    the samples it failed to score in that time, from the ``judge.run`` events."""
    require_aware("now", now)
    spent = judgements.ledger(store, deployment, EVENT_KIND, now - DAY, now)
    return spent.tokens, spent.failed


def judge_recent(
    store: Store, deployment: str, settings: JudgeSettings, now: datetime
) -> JudgeReport:
    """Judge up to ``settings.sample_size`` recent unjudged outputs of ``deployment``, within
    the daily token cap; store the scores and record the run."""
    require_aware("now", now)
    spent, failed_before = spent_today(store, deployment, now)
    cap = settings.max_tokens_per_day
    if cap is not None and spent >= cap:
        return JudgeReport(
            deployment,
            0,
            0,
            0,
            0,
            spent,
            None,
            "budget",
            f"the judge's daily cap of {cap} tokens is spent ({spent} in the last 24 h)",
        )
    samples = judgements.unjudged_samples(
        store, deployment, now - settings.lookback, now, settings.sample_size, failed_before
    )
    if not samples:
        return JudgeReport(deployment, 0, 0, 0, 0, spent, None)
    judgement = judge(
        [JudgeSample(s.id, s.input, s.output or "") for s in samples],
        rubric=settings.rubric,
        model=settings.model,
        client=settings.client,
        budget=TokenBudget(cap, spent),
        max_attempts=settings.max_attempts,
        max_tokens=settings.max_answer_tokens,
    )
    cost = _cost(judgement, settings)
    scored = {int(s.sample_id): s.score for s in judgement.scores if s.score is not None}
    failures = [s for s in judgement.scores if s.score is None]
    evidence: dict[str, Any] = {
        "model": settings.model,
        "picked": len(samples),
        "scored": len(scored),
        "failed": len(failures),
        "failed_ids": [int(s.sample_id) for s in failures],
        "errors": [{"sample_id": s.sample_id, "error": s.error} for s in failures[:_ERRORS_SHOWN]],
        "mean_score": sum(scored.values()) / len(scored) if scored else None,
        "tokens": judgement.tokens,
        "tokens_in": judgement.tokens_in,
        "tokens_out": judgement.tokens_out,
        "cost_usd": cost,
        "spent_24h": spent + judgement.tokens,
        "max_tokens_per_day": cap,
        "stopped": judgement.stopped.value if judgement.stopped else None,
        "detail": judgement.detail,
    }
    message = (
        f"{deployment}: judge {settings.model} scored {len(scored)} of {len(samples)} samples "
        f"({len(failures)} failed, {judgement.tokens} tokens"
        + (f", ${cost:.4f}" if cost is not None else "")
        + ")"
        + (f"; stopped: {judgement.detail}" if judgement.detail else "")
    )
    event_id = judgements.record_run(
        store, deployment, scored, kind=EVENT_KIND, ts=now, message=message, evidence=evidence
    )
    return JudgeReport(
        deployment=deployment,
        picked=len(samples),
        scored=len(scored),
        failed=len(failures),
        tokens=judgement.tokens,
        spent_today=spent + judgement.tokens,
        cost_usd=cost,
        stopped=evidence["stopped"],
        detail=judgement.detail,
        event_id=event_id,
    )


def _cost(judgement: Judgement, settings: JudgeSettings) -> float | None:
    price_in = settings.price_per_million_input_tokens
    price_out = settings.price_per_million_output_tokens
    if price_in is None and price_out is None:
        return None
    return (
        judgement.tokens_in * (price_in or 0.0) + judgement.tokens_out * (price_out or 0.0)
    ) / 1e6
