"""The policy engine: what driftd does after a check (hysteresis, routing, cooldown, caps, budget,
approval, dry run), the history it reads from the store and the audit event it leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon.config.models import Action, Approval, Budget, Policy, SignalGroup
from daemon.domain import CheckStatus, JobState
from daemon.errors import StoreError
from daemon.policy import (
    EVENT_KIND,
    CheckSummary,
    Decision,
    DecisionAction,
    DriftedSignal,
    History,
    Reason,
    decide,
    decide_scheduled,
    history_for,
    record,
)
from daemon.store import Job, Store
from monitors import SIGNAL_GROUPS
from monitors.result import CheckStatus as Verdict
from tests.helpers.checks import new_check

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
RETUNE = Policy(on_drift=Action.retune, consecutive=2, cooldown=timedelta(hours=6))


def summary(
    check_id: int, status: str = "drift", *drifted: str, hours_ago: int = 0
) -> CheckSummary:
    """A check of ``status`` in which the signals named in ``drifted`` drifted."""
    return CheckSummary(
        check_id=check_id,
        status=CheckStatus(status),
        finished_at=NOW - timedelta(hours=hours_ago),
        drifted={name: DriftedSignal(SIGNAL_GROUPS[name], 0.31, 0.1) for name in drifted},
    )


def quality_drift(*ids: int) -> tuple[CheckSummary, ...]:
    """Checks, newest first, that each found judge-score (quality) drift."""
    return tuple(summary(i, "drift", "judge", hours_ago=n) for n, i in enumerate(ids))


def history(*checks: CheckSummary, **extra: Any) -> History:
    return History(checks=checks, **extra)


def decided(
    policy: Policy, past: History, estimate: float | None = None, kind: str = "finetune"
) -> Decision:
    return decide(policy, past, NOW, job_kind=kind, estimated_cost_usd=estimate)


# --- hysteresis ---------------------------------------------------------------------------------


def test_one_drifted_check_of_two_needed_waits() -> None:
    decision = decided(RETUNE, history(*quality_drift(7)))

    assert (decision.action, decision.reason) == (DecisionAction.none, Reason.hysteresis)
    assert not decision.creates_job
    assert decision.rule == "act after 2 drifted checks in a row; 1 so far (no earlier check)"
    assert decision.evidence["run"] == 1
    assert decision.evidence["drifted"] == {
        "judge": {"group": "quality", "score": 0.31, "threshold": 0.1}
    }


def test_two_drifted_checks_in_a_row_start_a_retune() -> None:
    decision = decided(RETUNE, history(*quality_drift(8, 7)))

    assert (decision.action, decision.reason) == (DecisionAction.retune, Reason.acted)
    assert (decision.job_kind, decision.job_state) == ("finetune", JobState.queued)
    assert decision.decided_at == NOW
    assert decision.evidence["check_ids"] == [8, 7]
    assert decision.evidence["run"] == 2
    assert "in 2 checks in a row triggers retune" in decision.rule


def test_consecutive_one_acts_on_the_first_drift() -> None:
    policy = RETUNE.model_copy(update={"consecutive": 1})

    decision = decided(policy, history(*quality_drift(3)))

    assert decision.action is DecisionAction.retune


@pytest.mark.parametrize("breaker", ["insufficient_data", "failed", "ok"])
def test_a_check_without_drift_breaks_the_run(breaker: str) -> None:
    policy = RETUNE.model_copy(update={"consecutive": 3})
    checks = (*quality_drift(12, 11), summary(10, breaker), *quality_drift(9, 8))

    decision = decided(policy, history(*checks))

    assert decision.reason is Reason.hysteresis
    assert decision.rule == (
        f"act after 3 drifted checks in a row; 2 so far (check 10 before them was {breaker})"
    )
    assert decision.evidence["check_ids"] == [12, 11, 10]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("ok", Reason.no_drift),
        ("insufficient_data", Reason.insufficient_data),
        ("failed", Reason.check_failed),
    ],
)
def test_a_latest_check_without_drift_does_nothing(status: str, reason: Reason) -> None:
    decision = decided(RETUNE, history(summary(20, status), *quality_drift(19, 18)))

    assert (decision.action, decision.reason) == (DecisionAction.none, reason)
    assert decision.evidence["check_id"] == 20
    assert decision.evidence["drifted"] == {}


def test_no_checks_yet() -> None:
    decision = decided(RETUNE, history())

    assert (decision.action, decision.reason) == (DecisionAction.none, Reason.no_checks)
    assert decision.evidence["check_ids"] == []


# --- routing ------------------------------------------------------------------------------------


def test_quality_drift_triggers_a_retune() -> None:
    checks = (summary(2, "drift", "judge", "embedding"), summary(1, "drift", "feedback"))

    decision = decided(RETUNE, history(*checks))

    assert decision.action is DecisionAction.retune
    assert decision.evidence["checks"][0]["groups"] == ["data", "quality"]


def test_input_data_drift_alone_only_alerts() -> None:
    checks = (summary(2, "drift", "embedding", "text"), summary(1, "drift", "descriptors"))

    decision = decided(RETUNE, history(*checks))

    assert (decision.action, decision.reason) == (DecisionAction.alert, Reason.group_not_routed)
    assert not decision.creates_job
    assert decision.rule == (
        "only drift in output, quality in each of the last 2 checks may trigger retune; "
        "drifted groups were check 2: data; check 1: data, so alert"
    )
    assert set(decision.evidence["drifted"]) == {"embedding", "text"}


def test_one_routed_check_in_a_run_of_data_drift_only_alerts() -> None:
    checks = (summary(2, "drift", "judge"), summary(1, "drift", "embedding"))

    decision = decided(RETUNE, history(*checks))

    assert (decision.action, decision.reason) == (DecisionAction.alert, Reason.group_not_routed)


def test_act_on_data_lets_input_drift_retune() -> None:
    policy = RETUNE.model_copy(update={"act_on": (SignalGroup.data,)})
    checks = (summary(2, "drift", "embedding"), summary(1, "drift", "text"))

    assert decided(policy, history(*checks)).action is DecisionAction.retune
    assert decided(policy, history(*quality_drift(2, 1))).reason is Reason.group_not_routed


def test_a_prompted_deployments_retune_is_a_prompt_revision_job() -> None:
    decision = decided(RETUNE, history(*quality_drift(2, 1)), kind="prompt_revision")

    assert decision.action is DecisionAction.retune
    assert (decision.job_kind, decision.job_state) == ("prompt_revision", JobState.queued)


# --- on_drift none / alert ----------------------------------------------------------------------


def test_on_drift_none_only_records() -> None:
    policy = RETUNE.model_copy(update={"on_drift": Action.none})

    decision = decided(policy, history(*quality_drift(2, 1)))

    assert (decision.action, decision.reason) == (DecisionAction.none, Reason.on_drift_none)
    assert decision.rule == "policy.on_drift is none: drift in check 2 is only recorded"
    assert decision.evidence["drifted"]["judge"]["score"] == 0.31


def test_on_drift_alert_alerts_after_the_run() -> None:
    policy = RETUNE.model_copy(update={"on_drift": Action.alert})

    first = decided(policy, history(*quality_drift(1)))
    second = decided(policy, history(*quality_drift(2, 1)))

    assert first.reason is Reason.hysteresis
    assert (second.action, second.reason) == (DecisionAction.alert, Reason.alert_only)
    assert not second.creates_job


# --- cooldown -----------------------------------------------------------------------------------


def test_cooldown_holds_a_retune_then_lets_it_through() -> None:
    recent = history(*quality_drift(9, 8), last_action_at=NOW - timedelta(hours=2))
    old = history(*quality_drift(9, 8), last_action_at=NOW - timedelta(hours=6))

    held = decided(RETUNE, recent)
    acted = decided(RETUNE, old)

    assert (held.action, held.reason) == (DecisionAction.hold, Reason.cooldown)
    assert not held.creates_job
    assert held.evidence["intended"] == "retune"
    assert held.evidence["next_action_at"] == "2026-03-02T16:00:00+00:00"
    assert held.rule == (
        "cooldown of 6h after an action: the last was at 2026-03-02T10:00:00+00:00, "
        "the next may come at 2026-03-02T16:00:00+00:00; retune held"
    )
    assert acted.action is DecisionAction.retune


def test_cooldown_holds_alerts_too() -> None:
    checks = (summary(2, "drift", "embedding"), summary(1, "drift", "embedding"))
    past = history(*checks, last_action_at=NOW - timedelta(minutes=30))

    decision = decided(RETUNE, past)

    assert (decision.action, decision.reason) == (DecisionAction.hold, Reason.cooldown)
    assert decision.evidence["intended"] == "alert"


# --- daily cap and budget -----------------------------------------------------------------------


def test_daily_cap_holds_the_third_job_of_the_day() -> None:
    at_cap = decided(RETUNE, history(*quality_drift(2, 1), jobs_last_24h=2))
    below = decided(RETUNE, history(*quality_drift(2, 1), jobs_last_24h=1))

    assert (at_cap.action, at_cap.reason) == (DecisionAction.hold, Reason.daily_cap)
    assert at_cap.rule == "at most 2 jobs per day; 2 created in the last 24 h"
    assert at_cap.evidence["jobs_last_24h"] == 2
    assert below.action is DecisionAction.retune


def test_a_cap_of_zero_jobs_never_starts_one() -> None:
    policy = RETUNE.model_copy(update={"max_jobs_per_day": 0})

    decision = decided(policy, history(*quality_drift(2, 1)))

    assert (decision.action, decision.reason) == (DecisionAction.hold, Reason.daily_cap)


def test_daily_budget_exhausted_by_spend_plus_estimate() -> None:
    policy = RETUNE.model_copy(update={"budget": Budget(max_usd_per_day=10.0)})
    spent = history(*quality_drift(2, 1), jobs_last_24h=1, spent_usd_last_24h=8.0)

    over = decided(policy, spent, estimate=3.0)
    exactly = decided(policy, spent, estimate=2.0)

    assert (over.action, over.reason) == (DecisionAction.hold, Reason.budget)
    assert over.rule == (
        "spend cap $10.00 per day; $8.00 spent in the last 24 h + $3.00 estimated = $11.00"
    )
    assert over.evidence["spent_usd_last_24h"] == 8.0
    assert over.evidence["estimated_cost_usd"] == 3.0
    assert exactly.action is DecisionAction.retune


def test_daily_budget_without_an_estimate_counts_spend_only() -> None:
    policy = RETUNE.model_copy(update={"budget": Budget(max_usd_per_day=10.0)})

    spent_out = decided(policy, history(*quality_drift(2, 1), spent_usd_last_24h=10.0))
    left = decided(policy, history(*quality_drift(2, 1), spent_usd_last_24h=9.5))

    assert spent_out.reason is Reason.budget
    assert "the job's cost is not estimated" in spent_out.rule
    assert left.action is DecisionAction.retune


def test_a_job_estimated_over_the_per_job_cap_is_not_started() -> None:
    policy = RETUNE.model_copy(update={"budget": Budget(max_usd_per_job=5.0)})

    over = decided(policy, history(*quality_drift(2, 1)), estimate=6.0)
    within = decided(policy, history(*quality_drift(2, 1)), estimate=4.99)

    assert (over.action, over.reason) == (DecisionAction.hold, Reason.budget)
    assert over.rule == "spend cap $5.00 per job; this one is estimated at $6.00"
    assert within.action is DecisionAction.retune


# --- approval and dry run -----------------------------------------------------------------------


def test_manual_approval_creates_the_job_awaiting_approval() -> None:
    policy = RETUNE.model_copy(update={"approval": Approval.manual})

    decision = decided(policy, history(*quality_drift(2, 1)))

    assert (decision.action, decision.reason) == (DecisionAction.retune, Reason.manual_approval)
    assert (decision.job_kind, decision.job_state) == ("finetune", JobState.awaiting_approval)
    assert decision.rule.endswith("approval is manual, so the job awaits approval")


def test_dry_run_records_what_would_have_happened_without_a_job() -> None:
    policy = RETUNE.model_copy(update={"dry_run": True, "approval": Approval.manual})

    decision = decided(policy, history(*quality_drift(2, 1)))

    assert (decision.action, decision.reason) == (DecisionAction.none, Reason.dry_run)
    assert (decision.job_kind, decision.job_state) == (None, None)
    assert decision.evidence["would_be"] == {
        "action": "retune",
        "reason": "manual_approval",
        "job_kind": "finetune",
        "job_state": "awaiting_approval",
    }
    assert decision.rule.startswith("dry run: would have created a finetune job")


def test_dry_run_keeps_holds_and_alerts() -> None:
    policy = RETUNE.model_copy(update={"dry_run": True})
    data_drift = (summary(2, "drift", "text"), summary(1, "drift", "text"))

    held = decided(policy, history(*quality_drift(2, 1), jobs_last_24h=2))
    alert = decided(policy, history(*data_drift))

    assert held.reason is Reason.daily_cap
    assert alert.action is DecisionAction.alert


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="has no timezone"):
        decide(
            RETUNE,
            history(),
            NOW.replace(tzinfo=None),
            job_kind="finetune",
            estimated_cost_usd=None,
        )


# --- the store: history_for and record, on SQLite and PostgreSQL --------------------------------


def record_check(
    store: Store, deployment: str, at: datetime, status: Verdict, **drifted: float
) -> int:
    check = new_check(status, at=at, drifted=drifted, calm={"embedding": 0.51}, rows=400)
    return store.record_check(deployment, check)


def add_job(
    store: Store, deployment: str, created_at: datetime, cost_usd: float | None, kind: str
) -> None:
    deployment_id = store.deployment_ids()[deployment]
    with store.session() as session:
        session.add(
            Job(
                deployment_id=deployment_id,
                kind=kind,
                trigger="drift",
                state="succeeded",
                created_at=created_at,
                spec={},
                cost_usd=cost_usd,
            )
        )


def test_a_stored_check_summarises_its_drifted_signals(store: Store, deployment: str) -> None:
    check_id = record_check(store, deployment, NOW, "drift", judge=0.42, refusal=0.71)

    (check,) = store.recent_checks(deployment)
    summarised = CheckSummary.from_check(check)

    assert summarised == CheckSummary(
        check_id=check_id,
        status=CheckStatus.drift,
        finished_at=NOW,
        drifted={
            "judge": DriftedSignal("quality", 0.42, 0.55),
            "refusal": DriftedSignal("quality", 0.71, 0.55),
        },
    )


def test_history_for_reads_checks_jobs_and_actions(store: Store, deployment: str) -> None:
    store.ensure_deployment("classifier", "finetuned", "classification")
    record_check(store, deployment, NOW - timedelta(hours=3), "ok")
    middle = record_check(store, deployment, NOW - timedelta(hours=2), "drift", judge=0.3)
    newest = record_check(store, deployment, NOW - timedelta(hours=1), "drift", feedback=0.2)
    add_job(store, deployment, NOW - timedelta(hours=23), 1.25, "prompt_revision")
    add_job(store, deployment, NOW - timedelta(hours=5), None, "evaluate")
    add_job(store, deployment, NOW - timedelta(hours=25), 40.0, "prompt_revision")  # a day ago
    add_job(store, "classifier", NOW - timedelta(hours=1), 7.0, "finetune")  # not ours
    add_job(store, deployment, NOW + timedelta(hours=1), 3.0, "prompt_revision")  # after `now`
    acted = decided(RETUNE, history(*quality_drift(2, 1))).evidence
    store.add_event(
        deployment, EVENT_KIND, "alert", {**acted, "action": "alert"}, ts=NOW - timedelta(hours=4)
    )
    store.add_event(
        deployment, EVENT_KIND, "held", {**acted, "action": "hold"}, ts=NOW - timedelta(hours=1)
    )
    store.add_event(deployment, "check.completed", "drift", {"action": "alert"}, ts=NOW)

    past = history_for(store, deployment, NOW, consecutive=2)

    assert [c.check_id for c in past.checks] == [newest, middle]
    assert past.checks[0].drifted == {"feedback": DriftedSignal("quality", 0.2, 0.55)}
    assert past.jobs_last_24h == 2
    assert past.spent_usd_last_24h == pytest.approx(1.25)
    # The alert 4 h ago is the last action: the later hold is not one, nor a check event, and
    # the newest job (5 h ago) is older.
    assert past.last_action_at == NOW - timedelta(hours=4)


def test_history_of_a_quiet_deployment(store: Store, deployment: str) -> None:
    past = history_for(store, deployment, NOW, consecutive=3)

    assert past == History(checks=(), last_action_at=None, jobs_last_24h=0, spent_usd_last_24h=0)


def test_the_latest_job_counts_as_the_last_action(store: Store, deployment: str) -> None:
    add_job(store, deployment, NOW - timedelta(minutes=10), 0.5, "finetune")

    past = history_for(store, deployment, NOW, consecutive=2)

    assert past.last_action_at == NOW - timedelta(minutes=10)
    assert decided(RETUNE, History(quality_drift(2, 1), past.last_action_at)).reason is (
        Reason.cooldown
    )


def test_history_of_an_unknown_deployment(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown deployment 'nowhere'"):
        history_for(store, "nowhere", NOW, consecutive=2)


def test_record_leaves_one_event_per_decision_with_its_evidence(
    store: Store, deployment: str
) -> None:
    before = NOW - timedelta(hours=1)
    first = record_check(store, deployment, before, "drift", judge=0.42)
    waiting = decide(
        RETUNE,
        history_for(store, deployment, before, 2),
        before,
        job_kind="finetune",
        estimated_cost_usd=0.0,
    )
    ids = [record(store, deployment, waiting)]
    second = record_check(store, deployment, NOW, "drift", judge=0.47)
    acting = decide(
        RETUNE,
        history_for(store, deployment, NOW, 2),
        NOW,
        job_kind="finetune",
        estimated_cost_usd=0.0,
    )

    ids.append(record(store, deployment, acting))

    events = store.recent_events(deployment)
    assert [e.id for e in events] == ids[::-1]
    assert all(e.kind == "policy.decision" for e in events)
    latest = events[0]
    assert latest.ts == NOW
    assert latest.message == f"retune (acted): {acting.rule}"
    assert latest.evidence["action"] == "retune"
    assert latest.evidence["reason"] == "acted"
    assert latest.evidence["rule"] == acting.rule
    assert (latest.evidence["job_kind"], latest.evidence["job_state"]) == ("finetune", "queued")
    assert latest.evidence["check_ids"] == [second, first]
    assert latest.evidence["drifted"] == {
        "judge": {"group": "quality", "score": 0.47, "threshold": 0.55}
    }
    assert latest.evidence["policy"]["cooldown"] == "6h"
    assert (events[1].evidence["action"], events[1].evidence["reason"]) == ("none", "hysteresis")
    assert events[1].ts == before
    assert events[1].evidence["check_ids"] == [first]


def test_a_persistent_drift_acts_as_often_as_the_policy_allows(
    store: Store, deployment: str
) -> None:
    """Hourly checks that all find quality drift for a day: the engine waits out the
    hysteresis, then re-tunes once per 6 h cooldown, and holds every check in between."""
    policy = RETUNE.model_copy(update={"max_jobs_per_day": 3})
    reasons = []
    for hour in range(24):
        now = NOW + timedelta(hours=hour)
        record_check(store, deployment, now, "drift", judge=0.4)
        decision = decide(
            policy,
            history_for(store, deployment, now, 2),
            now,
            job_kind="finetune",
            estimated_cost_usd=0.0,
        )
        record(store, deployment, decision)
        if decision.creates_job:
            add_job(store, deployment, now, 0.0, str(decision.job_kind))
        reasons.append(decision.reason.value)

    acted_at = [hour for hour, reason in enumerate(reasons) if reason == "acted"]
    assert reasons[0] == "hysteresis"
    assert acted_at == [1, 7, 13]  # the 4th job (hour 19) would exceed 3 per day
    assert reasons[19] == "daily_cap"
    assert reasons.count("cooldown") == 24 - 1 - 3 - reasons.count("daily_cap")
    assert len(store.recent_events(deployment, limit=100)) == 24


def test_dry_run_would_be_actions_start_the_cooldown(store: Store, deployment: str) -> None:
    policy = RETUNE.model_copy(update={"dry_run": True, "consecutive": 1})
    reasons = []
    for hour in range(3):
        now = NOW + timedelta(hours=hour)
        record_check(store, deployment, now, "drift", judge=0.4)
        decision = decide(
            policy,
            history_for(store, deployment, now, 1),
            now,
            job_kind="finetune",
            estimated_cost_usd=None,
        )
        record(store, deployment, decision)
        reasons.append(decision.reason)

    assert reasons == [Reason.dry_run, Reason.cooldown, Reason.cooldown]
    assert history_for(store, deployment, NOW + timedelta(hours=2), 1).last_action_at == NOW
    assert history_for(store, deployment, NOW + timedelta(hours=2), 1).jobs_last_24h == 0


# --- scheduled re-tunes: no drift needed, the same caps ----------------------------------------


def scheduled(policy: Policy, past: History, estimate: float | None = None) -> Decision:
    return decide_scheduled(policy, past, NOW, job_kind="finetune", estimated_cost_usd=estimate)


def test_a_scheduled_retune_needs_no_drift() -> None:
    decision = scheduled(RETUNE, history())
    assert (decision.action, decision.reason) == (DecisionAction.retune, Reason.scheduled)
    assert (decision.job_kind, decision.job_state) == ("finetune", JobState.queued)
    assert decision.evidence["trigger"] == "schedule"


def test_a_scheduled_retune_waits_for_approval_when_approval_is_manual() -> None:
    manual = RETUNE.model_copy(update={"approval": Approval.manual})
    assert scheduled(manual, history()).job_state is JobState.awaiting_approval


def test_a_scheduled_retune_holds_on_the_cap_the_budget_and_the_cooldown() -> None:
    capped = scheduled(RETUNE, history(jobs_last_24h=2))
    assert (capped.action, capped.reason, capped.creates_job) == (
        DecisionAction.hold,
        Reason.daily_cap,
        False,
    )
    budget = RETUNE.model_copy(update={"budget": Budget(max_usd_per_day=10.0)})
    spent = scheduled(budget, history(spent_usd_last_24h=8.0), estimate=5.0)
    assert (spent.reason, spent.creates_job) == (Reason.budget, False)
    recent = scheduled(RETUNE, history(last_action_at=NOW - timedelta(hours=1)))
    assert (recent.reason, recent.creates_job) == (Reason.cooldown, False)


def test_a_scheduled_retune_in_dry_run_only_says_what_it_would_do() -> None:
    dry = scheduled(RETUNE.model_copy(update={"dry_run": True}), history())
    assert (dry.action, dry.reason, dry.creates_job) == (DecisionAction.none, Reason.dry_run, False)
    assert dry.evidence["would_be"]["job_kind"] == "finetune"
