"""What a claimed tick does: run a check and let the policy decide, start a scheduled re-tune,
apply retention, prune the embedding cache.

Each function takes a ``Tick`` that the scheduler has already claimed, so none of this runs twice
for the same scheduled time. Every decision is an audit event (``daemon.policy.record``); a job
the policy asks for is created in the ``jobs`` table, where the job runner picks it up.

When checks run on every replica (``follow_up="leader"``), what comes after a check is the
leader's: ``follow_up_checks`` watches the active version and lets the policy decide, once per
deployment for the checks that finished since. Neither is safe on a replica that does not lead:
a rollback is fenced by the leader's epoch (a follower's would be refused, and the regression
never rolled back), and creating a job is not idempotent — ``create_job`` inserts a row, and the
policy reads its cooldown and daily cap in a transaction of its own, so two replicas deciding
after two checks of one deployment at once could both create a re-tune. One leader thread
deciding in turn is what makes the cooldown hold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.config.models import Deployment, Method
from daemon.errors import DriftdError, NotEnoughLabels, NothingFailed
from daemon.policy import decide, decide_scheduled, history_for, record
from daemon.retune import promotion
from daemon.retune.settle import Leader, settle_jobs
from daemon.retune.specs import finetune_spec, method_of, prompt_revision_spec
from daemon.retune.watch import watch
from daemon.scheduler.pool import CheckPool
from daemon.scheduler.scheduler import Tick, record_failed_check
from daemon.store import Store
from daemon.store import jobs as job_store
from daemon.store.claims import followed_up, to_follow_up
from daemon.store.lease import epoch_is_current
from daemon.store.retention import delete_samples_before, drop_embeddings
from retrain.contract import FineTuneSpec, JobSpec, Json, PromptRevisionSpec

if TYPE_CHECKING:
    from daemon.metrics import LeaderCounters

log = logging.getLogger("driftd.scheduler")

RETENTION_BATCH = 10_000
FOLLOW_UP_BATCH = 1_000


def job_kind_for(deployment: Deployment) -> str:
    """The job a re-tune of ``deployment`` runs: a prompt revision or a fine-tune."""
    if method_of(deployment) is Method.prompt_revision:
        return PromptRevisionSpec.KIND
    return FineTuneSpec.KIND


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
        follow_up: str = "inline",
    ) -> None:
        if follow_up not in ("inline", "leader"):
            raise ValueError(f"follow_up is 'inline' or 'leader', not {follow_up!r}")
        self._follow_up = follow_up
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
        if self._follow_up == "inline":
            self.after_check(deployment)

    def follow_up_checks(self) -> int:
        """As the leader: watch and decide once for each deployment with checks that finished
        since the last follow-up (on any replica); returns how many checks were followed up.

        The claims are marked after the decisions: a leader that dies in between leaves them to
        the next one, which decides again on the same checks — the cooldown that the first
        decision's job or alert started keeps that from acting twice."""
        if self._epoch() is None:
            return 0
        claims = to_follow_up(self.store, "check", FOLLOW_UP_BATCH)
        configured = {d.name for d in self.config.deployments}
        for name in dict.fromkeys(claim.deployment for claim in claims):
            if name not in configured:
                continue  # removed from the config since its check ran
            try:
                self.after_check(self.config.deployment(name))
            except Exception:
                log.exception("the follow-up of a check failed", extra={"deployment": name})
        return followed_up(self.store, [claim.id for claim in claims])

    def after_check(self, deployment: Deployment) -> None:
        """Watch the active version (rolling back a regression) and let the policy decide."""
        watch(self.store, deployment, self.rollback, min_rows=deployment.monitor.min_rows)
        now = datetime.now(UTC)
        policy = deployment.policy
        history = history_for(self.store, deployment.name, now, policy.consecutive)
        decision = decide(
            policy, history, now, job_kind=job_kind_for(deployment), estimated_cost_usd=None
        )
        self._act(deployment, decision, trigger="drift")

    def rollback(self, deployment: str) -> None:
        """Roll ``deployment`` back to its previous version, as the leader (fenced)."""
        epoch = self._epoch()
        if epoch is None:
            return  # not the leader (any more): the next check of the next leader decides
        lease = self._lease_name
        promotion.rollback(
            self.store,
            self.config.hooks_of(deployment),
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
        lineage: Json = {
            "trigger": trigger,
            "decision_event_id": event_id,
            "check_ids": decision.evidence.get("check_ids", []),
        }
        builders = {FineTuneSpec.KIND: finetune_spec, PromptRevisionSpec.KIND: prompt_revision_spec}
        build = builders.get(kind)
        if build is None:
            raise ValueError(f"the policy asked for a {kind} job, which no spec is built for")
        try:
            spec: JobSpec = build(
                self.config, self.store, deployment, trigger=trigger, lineage=lineage
            )
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
            spec.to_json(),
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
        deleted = delete_samples_before(self.store, tick.deployment, cutoff, RETENTION_BATCH)
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
        dropped = drop_embeddings(self.store, tick.deployment, current)
        if dropped:
            log.info(
                "stale embeddings dropped",
                extra={"deployment": tick.deployment, "dropped": dropped, "model": current},
            )

    def settle_jobs(self) -> None:
        """Register and promote the candidates of succeeded jobs, once each, as the leader
        (``daemon.retune.settle``)."""
        leader = Leader(
            epoch=self._epoch,
            lease_name=self._lease_name,
            actor=f"leader:{self.owner}",
            hooks=self.config.hooks_of,
        )
        settle_jobs(self.store, leader)
