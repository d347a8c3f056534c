"""Settling a succeeded job: its candidate registered as a version, then promoted if it passed.

A job whose spec names a ``candidate`` and asks to ``promote`` it leads, when it succeeds, to a
version of that name (``retrain.contract.Settlement`` reads that off any spec), then to its
promotion through the hooks (``daemon.retune.promotion``) if its gate passed (or, for a job
without a gate, if its ``accuracy`` reaches the spec's ``min_accuracy``); else the version is
``rejected``. Settling runs as a leader chore rather than when the runner sees the job end, so
that a daemon killed in between still promotes after its restart, and it is idempotent: the
version's state says whether the job was settled. Promotion is fenced by the lease epoch: a
deposed leader promotes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from daemon.config.models import Hooks
from daemon.domain import VersionKind, VersionState
from daemon.prompts import PromptSpec
from daemon.retune import promotion
from daemon.store import Job, Store, versions
from daemon.store import jobs as job_store
from daemon.store.lease import epoch_is_current
from retrain.contract import (
    EvaluateResult,
    FineTuneResult,
    JobResult,
    Json,
    PromptRevisionResult,
    Settlement,
    TrainResult,
    read_result,
    upgraded,
)

log = logging.getLogger("driftd.scheduler")

SETTLE_LOOKBACK = 200  # succeeded jobs looked at per pass, newest first


@dataclass(frozen=True, slots=True)
class Leader:
    """Who settles: the lease it must hold (its epoch now, None once lost), the actor its
    promotions are recorded under, and each deployment's hooks."""

    epoch: Callable[[], int | None]
    lease_name: str
    actor: str
    hooks: Callable[[str], Hooks]


def settle_jobs(store: Store, leader: Leader) -> None:
    """Register and promote the candidates of succeeded jobs, once each."""
    for deployment, job, spec in _succeeded_with_candidates(store):
        settle(store, deployment, job, spec, leader)


def _succeeded_with_candidates(store: Store) -> list[tuple[str, Job, Settlement]]:
    found = []
    for name, job in job_store.succeeded_jobs(store, SETTLE_LOOKBACK):
        try:
            settlement = Settlement.model_validate(upgraded(job.spec))
        except ValidationError as error:
            if "candidate" in job.spec:  # else there is nothing to settle anyway
                log.warning(
                    "job spec not understood; its candidate is not settled",
                    extra={"deployment": name, "job_id": job.id, "error": str(error)},
                )
            continue
        if settlement.candidate is not None and settlement.promote:
            found.append((name, job, settlement))
    return found


def settle(store: Store, deployment: str, job: Job, spec: Settlement, leader: Leader) -> None:
    """Register the candidate of one succeeded job, and promote it if it passed."""
    assert spec.candidate is not None
    name = spec.candidate.name or f"job-{job.id}"
    version = versions.job_version(store, job.id, name)
    if version is not None and version.state != VersionState.candidate.value:
        return  # settled already: promoted, rejected, or since retired
    try:
        result = read_result(job.kind, job.result or {})
    except ValueError as error:
        log.error(
            "job result not understood; its candidate is not settled",
            extra={"deployment": deployment, "job_id": job.id, "error": str(error)},
        )
        return
    gate = result.gate if isinstance(result, FineTuneResult | PromptRevisionResult) else None
    scores = _scores(result)
    if gate is not None:  # a re-tune: the gate compared it with the active version
        passed = gate.passed
    else:  # an evaluation of a given model: a floor on its accuracy
        score = scores.get("accuracy")
        passed = isinstance(score, int | float) and float(score) >= spec.min_accuracy
    kind = VersionKind.model
    artifact = spec.candidate.artifact
    if isinstance(result, FineTuneResult) and result.candidate is not None:
        artifact = result.candidate.artifact or artifact
    if isinstance(result, PromptRevisionResult):  # the candidate is a prompt: stored as its JSON
        if result.candidate is None:
            return  # no usable proposal: the job's result says why, nothing to register
        kind = VersionKind.prompt
        produced = result.candidate.model_dump(mode="json")
        artifact = PromptSpec.from_json(produced, where=f"job {job.id}").artifact()
    if version is None:
        versions.add_version(
            store,
            deployment,
            kind=kind,
            name=name,
            artifact=str(artifact or spec.model_dir or ""),
            parent=spec.active_version,
            state=VersionState.candidate if passed else VersionState.rejected,
            eval_scores={k: v for k, v in scores.items() if _is_number(v)},
            meta={
                "job_id": job.id,
                "gate": None if gate is None else gate.model_dump(mode="json", exclude_unset=True),
                "lineage": _lineage(result),
            },
            job_id=job.id,
        )
    if not passed:
        log.info("candidate rejected", extra={"deployment": deployment, "version": name})
        return
    epoch = leader.epoch()
    if epoch is None:
        return  # not the leader (any more): the next leader settles it
    lease = leader.lease_name
    promotion.promote(
        store,
        leader.hooks(deployment),
        deployment,
        name,
        actor=leader.actor,
        fence=lambda connection: epoch_is_current(connection, lease, epoch),
    )
    log.info("candidate promoted", extra={"deployment": deployment, "version": name})


def _scores(result: JobResult) -> Json:
    """A succeeded job's scores of its candidate: its metrics, else the gate's candidate's (a
    prompt revision reports them there)."""
    if isinstance(result, EvaluateResult | TrainResult):
        return result.metrics
    if isinstance(result, FineTuneResult) and result.metrics is not None:
        return result.metrics
    gate = result.gate if isinstance(result, FineTuneResult | PromptRevisionResult) else None
    if gate is not None and gate.candidate is not None:
        return gate.candidate.metrics
    return {}


def _lineage(result: JobResult) -> Json | None:
    return result.lineage if isinstance(result, FineTuneResult) else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
