"""What a claimed tick does: run a check and let the policy decide, start a scheduled re-tune,
apply retention, prune the embedding cache.

Each function takes a ``Tick`` that the scheduler has already claimed, so none of this runs twice
for the same scheduled time. Every decision is an audit event (``daemon.policy.record``); a job
the policy asks for is created in the ``jobs`` table, where the job runner picks it up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from daemon import promotion
from daemon.config import Config
from daemon.config.models import Deployment, Hooks, Method
from daemon.domain import JobState, VersionKind, VersionState
from daemon.errors import DriftdError
from daemon.policy import decide, decide_scheduled, history_for, record
from daemon.prompts import PromptSpec
from daemon.retune import NotEnoughLabels, method_of, retune_spec
from daemon.revise import NothingFailed, revision_spec
from daemon.scheduler.pool import CheckPool
from daemon.scheduler.scheduler import Tick, record_failed_check
from daemon.store import Store, versions
from daemon.store import jobs as job_store
from daemon.store.lease import epoch_is_current
from daemon.store.models import Deployment as DeploymentRow
from daemon.store.models import Job, Sample, Version
from daemon.watch import watch

if TYPE_CHECKING:
    from daemon.metrics import LeaderCounters

log = logging.getLogger("driftd.scheduler")

RETENTION_BATCH = 10_000
SETTLE_LOOKBACK = 200  # succeeded jobs looked at per pass, newest first


def job_kind_for(deployment: Deployment) -> str:
    """The job a re-tune of ``deployment`` is: a prompt revision or a model re-tune."""
    return "revise_prompt" if method_of(deployment) is Method.prompt_revision else "retrain"


class Actions:
    """The work behind each job kind of the scheduler, for the deployments of ``config``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        checks: CheckPool,
        *,
        owner: str = "driftd",
        epoch: Callable[[], int | None] = lambda: None,
        lease_name: str = "scheduler",
        metrics: LeaderCounters | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.checks = checks
        self.owner = owner
        self._epoch = epoch
        self._lease_name = lease_name

    def work(self) -> dict[str, Any]:
        from daemon.scheduler.scheduler import CHECK, EMBEDDINGS, JUDGE, RETENTION, RETUNE

        return {
            CHECK: self.check,
            JUDGE: self.judge,
            RETUNE: self.retune,
            RETENTION: self.retention,
            EMBEDDINGS: self.embeddings,
        }

    def check(self, tick: Tick) -> None:
        deployment = self.config.deployment(tick.deployment)
        started = time.perf_counter()
        status = "failed"
        try:
            done = self.checks.run(tick.deployment, scheduled_for=tick.scheduled_for)
            status = done.status
            log.info(
                "check done",
                extra={
                    "deployment": tick.deployment,
                    "check_id": done.check_id,
                    "status": done.status,
                    "seconds": round(done.seconds, 3),
                },
            )
        except DriftdError as error:
            check_id = record_failed_check(
                self.store, tick.deployment, tick, deployment.monitor.window, error
            )
            log.error(
                "check failed",
                extra={"deployment": tick.deployment, "check_id": check_id, "error": str(error)},
            )
        finally:
            if self.metrics is not None:
                self.metrics.checked(tick.deployment, status, time.perf_counter() - started)
        watch(self.store, deployment, self.rollback, min_rows=deployment.monitor.min_rows)
        now = datetime.now(UTC)
        policy = deployment.policy
        history = history_for(self.store, tick.deployment, now, policy.consecutive)
        decision = decide(policy, history, now, estimated_cost_usd=None)
        self._act(deployment, decision, trigger="drift")

    def rollback(self, deployment: str) -> None:
        """Roll ``deployment`` back to its previous version, as the leader (fenced)."""
        epoch = self._epoch()
        if epoch is None:
            return  # not the leader (any more): the next check of the next leader decides
        lease = self._lease_name
        promotion.rollback(
            self.store,
            self._hooks(deployment),
            deployment,
            actor=f"leader:{self.owner}",
            fence=lambda connection: epoch_is_current(connection, lease, epoch),
        )

    def retune(self, tick: Tick) -> None:
        deployment = self.config.deployment(tick.deployment)
        now = datetime.now(UTC)
        policy = deployment.policy
        history = history_for(self.store, tick.deployment, now, policy.consecutive)
        decision = decide_scheduled(
            policy, history, now, job_kind=job_kind_for(deployment), estimated_cost_usd=None
        )
        decision.evidence["scheduled_for"] = tick.scheduled_for.isoformat()
        self._act(deployment, decision, trigger="schedule")

    def _act(self, deployment: Deployment, decision: Any, *, trigger: str) -> None:
        event_id = record(self.store, deployment.name, decision)
        if not decision.creates_job:
            return
        kind = str(decision.job_kind)
        lineage = {
            "trigger": trigger,
            "decision_event_id": event_id,
            "check_ids": decision.evidence.get("check_ids", []),
        }
        spec: dict[str, Any] = {"deployment": deployment.name, "kind": kind, **lineage}
        if kind in ("retrain", "revise_prompt"):
            build = retune_spec if kind == "retrain" else revision_spec
            try:
                spec = build(self.config, self.store, deployment, trigger=trigger, lineage=lineage)
            except (NotEnoughLabels, NothingFailed) as error:
                self.store.add_event(
                    deployment.name,
                    "retune.skipped",
                    str(error),
                    {"decision_event_id": event_id, "reason": type(error).__name__},
                )
                log.warning("re-tune skipped", extra={"deployment": deployment.name})
                return
        job_id = job_store.create_job(
            self.store,
            deployment.name,
            kind,
            trigger,
            spec,
            state=decision.job_state,
            timeout=deployment.retune.timeout,
        )
        log.info(
            "job created",
            extra={"deployment": deployment.name, "job_id": job_id, "job": kind},
        )

    def judge(self, tick: Tick) -> None:
        """Score recent unjudged outputs with the deployment's LLM judge, within its daily cap."""
        import os

        from daemon.judging import JudgeSettings, client_settings, judge_recent

        deployment = self.config.deployment(tick.deployment)
        settings = deployment.judge
        if settings.rubric is None:
            return
        report = judge_recent(
            self.store,
            deployment.name,
            JudgeSettings(
                rubric=settings.rubric,
                model=settings.model,
                client=client_settings(deployment.upstream, os.environ),
                sample_size=settings.sample_size,
                lookback=settings.lookback,
                max_tokens_per_day=settings.max_tokens_per_day,
                max_attempts=settings.max_attempts,
                price_per_million_input_tokens=settings.price_per_million_input_tokens,
                price_per_million_output_tokens=settings.price_per_million_output_tokens,
            ),
            datetime.now(UTC),
        )
        log.info("judge run", extra={"deployment": deployment.name, "report": str(report)})

    def retention(self, tick: Tick) -> None:
        """Delete the samples of ``tick.deployment`` older than ``storage.retention``."""
        cutoff = datetime.now(UTC) - self.config.storage.retention
        deployment_id = self.store.deployment_ids()[tick.deployment]
        deleted = 0
        while True:
            # One transaction per batch: the ingest writer waits for at most one batch's delete,
            # not for the whole backlog.
            with self.store.session() as session:
                ids = list(
                    session.scalars(
                        select(Sample.id)
                        .where(Sample.deployment_id == deployment_id, Sample.ts < cutoff)
                        .limit(RETENTION_BATCH)
                    )
                )
                if ids:
                    session.execute(delete(Sample).where(Sample.id.in_(ids)))
            if not ids:
                break
            deleted += len(ids)
        if deleted:
            self.store.add_event(
                tick.deployment,
                "retention",
                f"deleted {deleted} samples older than {cutoff.isoformat()}",
                {"deleted": deleted, "cutoff": cutoff.isoformat()},
            )

    def embeddings(self, tick: Tick) -> None:
        """Drop cached embeddings made by a model the deployment no longer uses: they will
        never be read again, and each is 1.5 KB."""
        from monitors.encoders import LazyEmbedder

        deployment = self.config.deployment(tick.deployment)
        current = LazyEmbedder(deployment.monitor.embedding_model).name
        deployment_id = self.store.deployment_ids()[tick.deployment]
        with self.store.session() as session:
            result = session.execute(
                update(Sample)
                .where(
                    Sample.deployment_id == deployment_id,
                    Sample.embedding_model.is_not(None),
                    Sample.embedding_model != current,
                )
                .values(embedding=None, embedding_model=None)
            )
            dropped = int(getattr(result, "rowcount", 0) or 0)
        if dropped:
            log.info(
                "stale embeddings dropped",
                extra={"deployment": tick.deployment, "dropped": dropped, "model": current},
            )

    def _hooks(self, name: str) -> Hooks:
        try:
            return self.config.deployment(name).retune.hooks
        except KeyError:  # a deployment in the store that the config no longer names
            return Hooks()

    def settle_jobs(self) -> None:
        """Register and promote the candidates of succeeded jobs, once each.

        A job whose spec names a ``candidate`` (``{"name", "artifact"}``) and asks to
        ``promote`` it leads, when it succeeds, to a version of that name, then to its
        promotion, if the job's ``accuracy`` reaches the spec's ``min_accuracy``, else the version
        is ``rejected``. This runs as a leader chore rather than when the runner sees the job
        end, so that a daemon killed in between still promotes after its restart, and it is
        idempotent: the version's state says whether the job was settled. Promotion is fenced
        by the lease epoch: a deposed leader promotes nothing.
        """
        for deployment, job in self._succeeded_with_candidates():
            self._settle(deployment, job)

    def _succeeded_with_candidates(self) -> list[tuple[str, Job]]:
        with self.store.session(readonly=True) as session:
            rows = session.execute(
                select(DeploymentRow.name, Job)
                .join(DeploymentRow, DeploymentRow.id == Job.deployment_id)
                .where(Job.state == JobState.succeeded.value)
                .order_by(Job.finished_at.desc(), Job.id.desc())
                .limit(SETTLE_LOOKBACK)
            ).all()
        return [
            (name, job)
            for name, job in rows
            if isinstance(job.spec.get("candidate"), dict) and job.spec.get("promote")
        ]

    def _settle(self, deployment: str, job: Job) -> None:
        candidate = job.spec["candidate"]
        name = str(candidate.get("name") or f"job-{job.id}")
        with self.store.session(readonly=True) as session:
            version = session.scalars(
                select(Version).where(Version.job_id == job.id, Version.name == name)
            ).first()
        if version is not None and version.state != VersionState.candidate.value:
            return  # settled already: promoted, rejected, or since retired
        result = job.result or {}
        produced: dict[str, Any] = result.get("candidate") or {}
        gate = result.get("gate") if isinstance(result.get("gate"), dict) else None
        metrics = result.get("metrics")
        if not isinstance(metrics, dict):
            # A prompt revision reports its candidate's scores in the gate's challenger side.
            challenger = (gate or {}).get("challenger")
            scored = challenger.get("metrics") if isinstance(challenger, dict) else None
            metrics = scored if isinstance(scored, dict) else result
        if gate is not None:  # a re-tune: the gate compared it with the champion
            passed = bool(gate.get("passed"))
        else:  # an evaluation of a given model: a floor on its accuracy
            score = metrics.get("accuracy")
            floor = float(job.spec.get("min_accuracy", 0.0))
            passed = isinstance(score, int | float) and float(score) >= floor
        kind = VersionKind.model
        artifact = produced.get("artifact") or candidate.get("artifact")
        if job.kind == "revise_prompt":  # the candidate is a prompt: stored as its JSON
            if not produced:
                return  # no usable proposal: the job's result says why, nothing to register
            kind = VersionKind.prompt
            artifact = PromptSpec.from_json(produced, where=f"job {job.id}").artifact()
        if version is None:
            versions.add_version(
                self.store,
                deployment,
                kind=kind,
                name=name,
                artifact=str(artifact or job.spec.get("model_dir", "")),
                parent=job.spec.get("champion_version"),
                state=VersionState.candidate if passed else VersionState.rejected,
                eval_scores={k: v for k, v in metrics.items() if isinstance(v, int | float)},
                meta={"job_id": job.id, "gate": gate, "lineage": result.get("lineage")},
                job_id=job.id,
            )
        if not passed:
            log.info("candidate rejected", extra={"deployment": deployment, "version": name})
            return
        epoch = self._epoch()
        if epoch is None:
            return  # not the leader (any more): the next leader settles it
        lease = self._lease_name
        promotion.promote(
            self.store,
            self._hooks(deployment),
            deployment,
            name,
            actor=f"leader:{self.owner}",
            fence=lambda connection: epoch_is_current(connection, lease, epoch),
        )
        log.info("candidate promoted", extra={"deployment": deployment, "version": name})
