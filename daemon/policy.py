"""The policy engine: what to do after a completed drift check, and the audit record of it.

``decide`` is a pure function of the deployment's ``Policy``, a ``History`` and the time, so every
rule is testable without a database and a recorded decision can be re-derived from its evidence.
``history_for`` reads that history from the store; ``record`` leaves one ``policy.decision`` audit
event per decision, whatever it is ("held because of the cooldown" included): the record is how an
operator learns why driftd did, or did not, act. Creating the job is the caller's part.

Precedence, first match wins:

1. The latest check must be ``drift``: otherwise ``none`` with reason ``no_drift`` (ok),
   ``insufficient_data``, ``check_failed`` or ``no_checks``.
2. ``on_drift: none`` → ``none`` / ``on_drift_none``: the drift is recorded, nothing else.
3. Hysteresis: fewer than ``consecutive`` drift checks in a row → ``none`` / ``hysteresis``. An
   ``ok`` check resets the run; ``insufficient_data`` and ``failed`` ones break it too, since they
   say nothing about whether the drift persisted.
4. Routing sets the intent. A job needs drift in an ``act_on`` group in *every* check of the run,
   so one routed blip inside a run of input drift does not start a re-tune. Otherwise the intent is
   an alert, reason ``group_not_routed``. With ``on_drift: alert`` routed drift is an alert too,
   reason ``alert_only``.
5. Cooldown, for alerts and jobs alike: less than ``cooldown`` since the last action → ``hold`` /
   ``cooldown``. First among the holds because it is what normally stops a persistent drift from
   acting at every check.
6. Jobs only: ``max_jobs_per_day`` jobs created in the last 24 h (0: never) → ``hold`` /
   ``daily_cap``; then the budget → ``hold`` / ``budget``: the estimate over ``max_usd_per_job``,
   or the last 24 h's spend plus the estimate over ``max_usd_per_day``.
7. The job: ``awaiting_approval`` with ``approval: manual`` (reason ``manual_approval``), else
   ``queued`` (reason ``acted``).
8. ``dry_run`` turns a decision that would create a job into ``none`` / ``dry_run``, the would-be
   decision in ``evidence["would_be"]``. Holds stay holds and alerts still go out: a dry run
   "starts no job", as the configuration says.

A would-be action of a dry run starts the cooldown like a real one (``history_for`` counts it), so
a dry run records the cadence the policy would really have rather than "would re-tune" at every
check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from daemon.config.models import Action, Approval, Policy
from daemon.config.types import format_duration
from daemon.domain import CheckStatus, JobState
from daemon.store import Check, Store
from daemon.store.activity import activity
from daemon.store.types import require_aware
from monitors.spec import RESULT_GROUPS

EVENT_KIND = "policy.decision"
DAY = timedelta(hours=24)
UNKNOWN_GROUP = "unknown"


class DecisionAction(StrEnum):
    """What the policy decided: nothing, an alert, a job, or an action held back by a limit."""

    none = "none"
    alert = "alert"
    retune = "retune"
    hold = "hold"


# Decisions that start the cooldown: something was (or, in a dry run, would have been) done.
ACTIONS = frozenset({DecisionAction.alert, DecisionAction.retune})


class Reason(StrEnum):
    """Why, as a short stable code for metrics labels, filters and tests."""

    no_checks = "no_checks"
    no_drift = "no_drift"
    insufficient_data = "insufficient_data"
    check_failed = "check_failed"
    on_drift_none = "on_drift_none"
    hysteresis = "hysteresis"
    group_not_routed = "group_not_routed"
    alert_only = "alert_only"
    cooldown = "cooldown"
    daily_cap = "daily_cap"
    budget = "budget"
    manual_approval = "manual_approval"
    acted = "acted"
    dry_run = "dry_run"
    scheduled = "scheduled"


@dataclass(frozen=True, slots=True)
class DriftedSignal:
    """A signal that drifted in a check: its group and how far past its threshold it was."""

    group: str
    score: float | None
    threshold: float | None


@dataclass(frozen=True, slots=True)
class CheckSummary:
    """What the policy needs of a stored check: its verdict, when, and which signals drifted."""

    check_id: int
    status: CheckStatus
    finished_at: datetime
    drifted: Mapping[str, DriftedSignal] = field(default_factory=dict)

    @classmethod
    def from_check(cls, check: Check) -> CheckSummary:
        """Summarise a stored check; ``signals`` is ``CheckResult.to_dict`` as the checker stores
        it. A check still without ``finished_at`` counts from its start."""
        return cls(
            check_id=check.id,
            status=CheckStatus(check.status),
            finished_at=check.finished_at or check.started_at,
            drifted=_drifted_signals(check.signals),
        )

    @property
    def groups(self) -> frozenset[str]:
        """The signal groups that drifted."""
        return frozenset(signal.group for signal in self.drifted.values())

    def signal_values(self) -> dict[str, dict[str, Any]]:
        """The drifted signals as plain JSON, for evidence."""
        return {
            name: {"group": s.group, "score": s.score, "threshold": s.threshold}
            for name, s in sorted(self.drifted.items())
        }


@dataclass(frozen=True, slots=True)
class History:
    """A deployment's recent past, as far as the policy looks at it.

    ``checks`` are newest first. ``last_action_at`` is when the last job was created or the last
    acting decision (alert, job, a dry run's would-be action) was recorded; ``jobs_last_24h`` and
    ``spent_usd_last_24h`` count the jobs created in the 24 h before the decision.
    """

    checks: tuple[CheckSummary, ...]
    last_action_at: datetime | None = None
    jobs_last_24h: int = 0
    spent_usd_last_24h: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do after a check, and why.

    ``job_kind`` and ``job_state`` are set only when the caller must create a job. ``rule`` is
    the rule that fired as a sentence with its numbers; ``evidence`` is plain JSON.
    """

    action: DecisionAction
    reason: Reason
    rule: str
    decided_at: datetime
    job_kind: str | None = None
    job_state: JobState | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def creates_job(self) -> bool:
        return self.job_kind is not None


def decide(
    policy: Policy,
    history: History,
    now: datetime,
    *,
    job_kind: str,
    estimated_cost_usd: float | None,
) -> Decision:
    """The decision after the latest check of ``history`` under ``policy``; see the module's
    docstring for the precedence. ``job_kind`` is the job a re-tune of this deployment runs
    (``finetune`` or ``prompt_revision``, by its ``retune.method``). ``estimated_cost_usd`` is
    what the job would cost on paid APIs; None when it cannot be estimated, and then only spend
    already made counts against the daily budget."""
    require_aware("now", now)
    if estimated_cost_usd is not None and estimated_cost_usd < 0:
        raise ValueError(f"estimated_cost_usd must be 0 or more, got {estimated_cost_usd}")
    checks = history.checks[: policy.consecutive]
    evidence: dict[str, Any] = {
        "check_ids": [c.check_id for c in checks],
        "checks": [
            {"check_id": c.check_id, "status": c.status.value, "groups": sorted(c.groups)}
            for c in checks
        ],
        "policy": policy.model_dump(mode="json"),
    }

    def decision(
        action: DecisionAction,
        reason: Reason,
        rule: str,
        job: tuple[str, JobState] | None = None,
        **extra: Any,
    ) -> Decision:
        evidence.update(extra)
        return Decision(
            action=action,
            reason=reason,
            rule=rule,
            decided_at=now,
            job_kind=None if job is None else job[0],
            job_state=None if job is None else job[1],
            evidence=evidence,
        )

    if not checks:
        return decision(DecisionAction.none, Reason.no_checks, "no check has completed yet")
    latest = checks[0]
    evidence["check_id"] = latest.check_id
    evidence["drifted"] = latest.signal_values()
    if latest.status is not CheckStatus.drift:
        reason, rule = _quiet(latest)
        return decision(DecisionAction.none, reason, rule)
    if policy.on_drift is Action.none:
        return decision(
            DecisionAction.none,
            Reason.on_drift_none,
            f"policy.on_drift is none: drift in check {latest.check_id} is only recorded",
        )

    run = _run_length(checks)
    evidence["run"] = run
    if run < policy.consecutive:
        return decision(DecisionAction.none, Reason.hysteresis, _hysteresis_rule(policy, checks))

    intent, reason, rule = _intent(policy, checks)
    evidence["intended"] = intent.value
    if history.last_action_at is not None:
        next_at = history.last_action_at + policy.cooldown
        evidence["last_action_at"] = history.last_action_at.isoformat()
        if now < next_at:
            return decision(
                DecisionAction.hold,
                Reason.cooldown,
                f"cooldown of {format_duration(policy.cooldown)} after an action: the last was "
                f"at {history.last_action_at.isoformat()}, the next may come at "
                f"{next_at.isoformat()}; {intent.value} held",
                next_action_at=next_at.isoformat(),
            )
    if intent is DecisionAction.alert:
        return decision(DecisionAction.alert, reason, rule)

    held = _job_limit(policy, history, estimated_cost_usd, evidence)
    if held is not None:
        return decision(DecisionAction.hold, *held)
    if policy.approval is Approval.manual:
        job_state, reason = JobState.awaiting_approval, Reason.manual_approval
        rule += "; approval is manual, so the job awaits approval"
    else:
        job_state = JobState.queued
    if policy.dry_run:
        would_be = {
            "action": intent.value,
            "reason": reason.value,
            "job_kind": job_kind,
            "job_state": job_state.value,
        }
        return decision(
            DecisionAction.none,
            Reason.dry_run,
            f"dry run: would have created a {job_kind} job ({job_state.value}) because {rule}",
            would_be=would_be,
        )
    return decision(intent, reason, rule, (job_kind, job_state))


def decide_scheduled(
    policy: Policy,
    history: History,
    now: datetime,
    *,
    job_kind: str,
    estimated_cost_usd: float | None,
) -> Decision:
    """The decision on a scheduled re-tune (``retune.schedule``): no drift is needed, but the
    cooldown, the daily cap, the budget, approval and dry run apply as they do after drift."""
    require_aware("now", now)
    evidence: dict[str, Any] = {
        "trigger": "schedule",
        "intended": DecisionAction.retune.value,
        "policy": policy.model_dump(mode="json"),
    }

    def decision(action: DecisionAction, reason: Reason, rule: str, **extra: Any) -> Decision:
        evidence.update(extra)
        job = action not in (DecisionAction.hold, DecisionAction.none)
        state = (
            JobState.awaiting_approval if policy.approval is Approval.manual else JobState.queued
        )
        return Decision(
            action=action,
            reason=reason,
            rule=rule,
            decided_at=now,
            job_kind=job_kind if job else None,
            job_state=state if job else None,
            evidence=evidence,
        )

    if history.last_action_at is not None and now < history.last_action_at + policy.cooldown:
        next_at = history.last_action_at + policy.cooldown
        return decision(
            DecisionAction.hold,
            Reason.cooldown,
            f"scheduled {job_kind}: cooldown of {format_duration(policy.cooldown)} after the "
            f"action at {history.last_action_at.isoformat()}; the next may come at "
            f"{next_at.isoformat()}",
            next_action_at=next_at.isoformat(),
        )
    held = _job_limit(policy, history, estimated_cost_usd, evidence)
    if held is not None:
        return decision(DecisionAction.hold, *held)
    rule = f"retune.schedule is due: a scheduled {job_kind}"
    if policy.approval is Approval.manual:
        rule += "; approval is manual, so the job awaits approval"
    if policy.dry_run:
        return decision(
            DecisionAction.none,
            Reason.dry_run,
            f"dry run: would have created a {job_kind} job because {rule}",
            would_be={
                "action": DecisionAction.retune.value,
                "reason": Reason.scheduled.value,
                "job_kind": job_kind,
            },
        )
    return decision(DecisionAction.retune, Reason.scheduled, rule)


def history_for(store: Store, deployment: str, now: datetime, consecutive: int) -> History:
    """Read what ``decide`` needs from the store, as of ``now``: the ``consecutive`` latest
    checks, the jobs created in the 24 h before ``now`` and what they cost, and the last action.
    """
    require_aware("now", now)
    if consecutive < 1:
        raise ValueError(f"consecutive must be at least 1, got {consecutive}")
    checks = tuple(
        CheckSummary.from_check(check)
        for check in store.recent_checks(deployment, limit=consecutive)
    )
    done = activity(
        store,
        deployment,
        now,
        since=now - DAY,
        decision_kind=EVENT_KIND,
        acting=[action.value for action in ACTIONS],
    )
    known = [t for t in (done.last_job_at, done.last_decision_at) if t is not None]
    return History(
        checks=checks,
        last_action_at=max(known) if known else None,
        jobs_last_24h=done.jobs,
        spent_usd_last_24h=done.spent_usd,
    )


def record(store: Store, deployment: str, decision: Decision) -> int:
    """Write the decision's audit event, stamped with the time it was made; returns its id."""
    evidence = {
        **decision.evidence,
        "action": decision.action.value,
        "reason": decision.reason.value,
        "rule": decision.rule,
        "job_kind": decision.job_kind,
        "job_state": None if decision.job_state is None else decision.job_state.value,
    }
    message = f"{decision.action.value} ({decision.reason.value}): {decision.rule}"
    return store.add_event(deployment, EVENT_KIND, message, evidence, ts=decision.decided_at)


def _drifted_signals(stored: Mapping[str, Any]) -> dict[str, DriftedSignal]:
    signals = stored.get("signals")
    if not isinstance(signals, list):
        return {}
    drifted = {}
    for item in signals:
        if not isinstance(item, Mapping) or not item.get("drifted"):
            continue
        name = str(item.get("name"))
        group = item.get("group") or RESULT_GROUPS.get(name, UNKNOWN_GROUP)
        drifted[name] = DriftedSignal(
            group=str(group),
            score=_number(item.get("score")),
            threshold=_number(item.get("threshold")),
        )
    return drifted


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _quiet(latest: CheckSummary) -> tuple[Reason, str]:
    """The reason and rule when the latest check is not a drift."""
    check = f"check {latest.check_id}"
    if latest.status is CheckStatus.ok:
        return Reason.no_drift, f"{check} found no drift"
    if latest.status is CheckStatus.insufficient_data:
        return Reason.insufficient_data, f"{check} had too little data to judge drift"
    return Reason.check_failed, f"{check} failed, and a failed check proves nothing"


def _run_length(checks: tuple[CheckSummary, ...]) -> int:
    """How many checks in a row, newest first, found drift."""
    run = 0
    for check in checks:
        if check.status is not CheckStatus.drift:
            break
        run += 1
    return run


def _hysteresis_rule(policy: Policy, checks: tuple[CheckSummary, ...]) -> str:
    run = _run_length(checks)
    rule = f"act after {policy.consecutive} drifted checks in a row; {run} so far"
    if run < len(checks):
        breaker = checks[run]
        return f"{rule} (check {breaker.check_id} before them was {breaker.status.value})"
    return f"{rule} (no earlier check)"


def _intent(policy: Policy, checks: tuple[CheckSummary, ...]) -> tuple[DecisionAction, Reason, str]:
    """What the drift calls for, before cooldown, caps, budget, approval and dry run."""
    count = len(checks)
    routed = {group.value for group in policy.act_on}
    act_on = ", ".join(sorted(routed)) or "no group"
    if not all(check.groups & routed for check in checks):
        drifted = "; ".join(
            f"check {c.check_id}: {', '.join(sorted(c.groups)) or 'no signal'}" for c in checks
        )
        return (
            DecisionAction.alert,
            Reason.group_not_routed,
            f"only drift in {act_on} in each of the last {count} checks may trigger "
            f"{policy.on_drift.value}; drifted groups were {drifted}, so alert",
        )
    if policy.on_drift is Action.alert:
        return (
            DecisionAction.alert,
            Reason.alert_only,
            f"drift in {act_on} in {count} checks in a row, and policy.on_drift is alert",
        )
    return (
        DecisionAction(policy.on_drift.value),
        Reason.acted,
        f"drift in {act_on} in {count} checks in a row triggers {policy.on_drift.value}",
    )


def _job_limit(
    policy: Policy,
    history: History,
    estimate: float | None,
    evidence: dict[str, Any],
) -> tuple[Reason, str] | None:
    """The daily cap or budget that forbids a job now, if one does; adds the counts to
    ``evidence`` either way."""
    budget = policy.budget
    spent = history.spent_usd_last_24h
    evidence.update(
        jobs_last_24h=history.jobs_last_24h,
        spent_usd_last_24h=spent,
        estimated_cost_usd=estimate,
    )
    if history.jobs_last_24h >= policy.max_jobs_per_day:
        return Reason.daily_cap, (
            f"at most {policy.max_jobs_per_day} jobs per day; "
            f"{history.jobs_last_24h} created in the last 24 h"
        )
    per_job = budget.max_usd_per_job
    if per_job is not None and estimate is not None and estimate > per_job:
        return Reason.budget, (
            f"spend cap ${per_job:.2f} per job; this one is estimated at ${estimate:.2f}"
        )
    if budget.max_usd_per_day is not None:
        cap = budget.max_usd_per_day
        if estimate is None and spent >= cap:
            return Reason.budget, (
                f"spend cap ${cap:.2f} per day; ${spent:.2f} spent in the last 24 h, "
                "and the job's cost is not estimated"
            )
        if estimate is not None and spent + estimate > cap:
            return Reason.budget, (
                f"spend cap ${cap:.2f} per day; ${spent:.2f} spent in the last 24 h "
                f"+ ${estimate:.2f} estimated = ${spent + estimate:.2f}"
            )
    return None
