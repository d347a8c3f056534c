"""What claimed ticks do, on SQLite and PostgreSQL: a check's verdict goes through the policy to
an audit event and, when the policy says so, a job; scheduled re-tunes obey the same caps;
retention deletes old samples; the embedding cache forgets vectors of a model no longer used."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select

from daemon.config import Config, parse_config
from daemon.domain import CheckStatus, JobState
from daemon.errors import ConfigError
from daemon.scheduler import CheckDone, Tick
from daemon.scheduler.actions import Actions
from daemon.store import NewSample, Store, versions
from daemon.store import jobs as job_store
from daemon.store.claims import finish_claim
from daemon.store.lease import acquire
from daemon.store.models import Job, Sample, Version
from tests.helpers.checks import new_check
from tests.helpers.configs import finetuned_config

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

CONFIG = """\
deployments:
  - name: bot
    kind: prompted
    task: generation
    prompt: {model: gpt-4o-mini, system: "You are helpful."}
    judge: {rubric: "The answer is helpful."}
    policy: {on_drift: retune, consecutive: 2, cooldown: 1h, max_jobs_per_day: 1}
    retune: {schedule: "0 3 * * *", golden_set: golden.jsonl}
"""


class FakeChecks:
    """Stands in for the check workers: records a check with the verdict it is told to give,
    as ``Checker.run`` would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.verdicts: list[str] = []

    def run(self, deployment: str, **_: Any) -> CheckDone:
        status = self.verdicts.pop(0)
        drifted, judge = status == "drift", {"judge": 0.4}
        check = new_check(
            status, drifted=judge if drifted else None, calm=None if drifted else judge, rows=100
        )
        check_id = self.store.record_check(deployment, check)
        return CheckDone(check_id, status, ("judge",) if drifted else (), 0.01)


def config(tmp_path: Any) -> Config:
    (tmp_path / "golden.jsonl").write_text('{"input": "hi", "expected": "hello"}\n')
    text = CONFIG + f"scheduling: {{jobs_dir: {tmp_path / 'jobs'}}}\n"
    return parse_config(text, environ={}, base_dir=tmp_path)


def with_failures(store: Store) -> None:
    """A prompted deployment whose users disliked three answers: something to revise on."""
    store.ensure_deployment("bot", "prompted", "generation")
    now = datetime.now(UTC)
    store.insert_samples(
        "bot",
        [
            NewSample(
                f"bad-{i}",
                now - timedelta(minutes=i),
                input=f"q {i}",
                output="meh",
                feedback_score=0.0,
            )
            for i in range(3)
        ],
    )


def tick(kind: str) -> Tick:
    return Tick("bot", kind, datetime.now(UTC).replace(microsecond=0))


def test_two_drifted_checks_create_one_job_and_every_decision_is_recorded(
    store: Store, tmp_path: Any
) -> None:
    with_failures(store)
    checks = FakeChecks(store)
    actions = Actions(config(tmp_path), store, checks)  # type: ignore[arg-type]
    checks.verdicts = ["drift", "drift", "drift"]
    for _ in range(3):
        actions.check(tick("check"))
    jobs = job_store.list_jobs(store, deployment="bot")
    assert [(job.kind, job.trigger, job.state) for _, job in jobs] == [
        ("prompt_revision", "drift", "queued")
    ]
    decisions = [e for e in store.recent_events("bot") if e.kind == "policy.decision"]
    reasons = [e.evidence["reason"] for e in reversed(decisions)]
    assert reasons == ["hysteresis", "acted", "cooldown"]
    (_, job) = jobs[0]
    assert job.spec["lineage"]["check_ids"]
    failing = Path(job.spec["failing_file"]).read_text().splitlines()
    assert [json.loads(line)["why"] for line in failing] == ["negative feedback"] * 3
    assert job.spec["active"]["system"] == "You are helpful."
    assert job.spec["lineage"]["decision_event_id"] == decisions[1].id


def test_a_scheduled_retune_creates_a_job_then_waits_out_the_cooldown(
    store: Store, tmp_path: Any
) -> None:
    with_failures(store)
    actions = Actions(config(tmp_path), store, FakeChecks(store))  # type: ignore[arg-type]
    actions.retune(tick("retune"))
    actions.retune(tick("retune"))
    jobs = job_store.list_jobs(store, deployment="bot")
    assert [(job.kind, job.trigger) for _, job in jobs] == [("prompt_revision", "schedule")]
    decisions = [e for e in store.recent_events("bot") if e.kind == "policy.decision"]
    assert [e.evidence["reason"] for e in reversed(decisions)] == ["scheduled", "cooldown"]


def test_a_failed_check_is_recorded_as_failed(store: Store, tmp_path: Any) -> None:
    from daemon.errors import CheckTimeout

    class TimingOut(FakeChecks):
        def run(self, deployment: str, **_: Any) -> CheckDone:
            raise CheckTimeout("check of deployment 'bot' ran longer than its timeout")

    store.ensure_deployment("bot", "prompted", "generation")
    actions = Actions(config(tmp_path), store, TimingOut(store))  # type: ignore[arg-type]
    actions.check(tick("check"))
    (check,) = store.recent_checks("bot")
    assert check.status == CheckStatus.failed.value
    assert check.error is not None
    assert "timeout" in check.error


def sample(request_id: str, ts: datetime) -> NewSample:
    return NewSample(request_id=request_id, ts=ts, input="hello", output="hi")


def test_retention_deletes_old_samples_and_keeps_recent_ones(store: Store, tmp_path: Any) -> None:
    store.ensure_deployment("bot", "prompted", "generation")
    now = datetime.now(UTC)
    store.insert_samples("bot", [sample(f"old-{i}", now - timedelta(days=40)) for i in range(5)])
    store.insert_samples("bot", [sample(f"new-{i}", now - timedelta(days=1)) for i in range(3)])
    Actions(config(tmp_path), store, FakeChecks(store)).retention(tick("retention"))  # type: ignore[arg-type]
    with store.session(readonly=True) as session:
        left = sorted(session.scalars(select(Sample.request_id)))
    assert left == ["new-0", "new-1", "new-2"]
    (event,) = [e for e in store.recent_events("bot") if e.kind == "retention"]
    assert event.evidence["deleted"] == 5


def test_embeddings_of_a_model_no_longer_used_are_dropped(store: Store, tmp_path: Any) -> None:
    store.ensure_deployment("bot", "prompted", "generation")
    now = datetime.now(UTC)
    store.insert_samples("bot", [sample(f"s-{i}", now) for i in range(4)])
    with store.session(readonly=True) as session:
        ids = list(session.scalars(select(Sample.id).order_by(Sample.id)))
    store.store_embeddings("old-model/int8/128", {ids[0]: b"\0" * 8, ids[1]: b"\0" * 8})
    store.store_embeddings("all-MiniLM-L6-v2/int8/128", {ids[2]: b"\0" * 8})
    Actions(config(tmp_path), store, FakeChecks(store)).embeddings(tick("embeddings"))  # type: ignore[arg-type]
    with store.session(readonly=True) as session:
        kept = session.execute(
            select(Sample.embedding_model, func.count())
            .where(Sample.embedding.is_not(None))
            .group_by(Sample.embedding_model)
        ).all()
    assert [tuple(row) for row in kept] == [("all-MiniLM-L6-v2/int8/128", 1)]


FINETUNED = finetuned_config(
    labels=("card_arrival", "card_linking"),
    more="    policy: {on_drift: retune, consecutive: 1}\n"
    "    retune:\n"
    "      golden_set: golden.jsonl\n"
    "      data: {min_labelled: 5}\n",
)


def finetuned(tmp_path: Any, *, models: Path | None = None, consecutive: int = 1) -> Config:
    golden = {"input": "where is my card", "label": "card_arrival"}
    (tmp_path / "golden.jsonl").write_text(json.dumps(golden) + "\n")
    text = FINETUNED + f"scheduling: {{jobs_dir: {tmp_path / 'jobs'}}}\n"
    text = text.replace("consecutive: 1", f"consecutive: {consecutive}")
    if models is not None:
        text = text.replace("retune:\n", f"retune:\n      hooks: {{models_dir: {models}}}\n")
    return parse_config(text, environ={}, base_dir=tmp_path)


def test_a_retrain_job_gets_the_labelled_production_samples(store: Store, tmp_path: Any) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    now = datetime.now(UTC)
    labelled = [
        NewSample(
            request_id=f"l-{i}", ts=now - timedelta(hours=1), input=f"q {i}", label="card_linking"
        )
        for i in range(6)
    ]
    store.insert_samples("intents", [*labelled, sample("unlabelled", now)])
    checks = FakeChecks(store)
    checks.verdicts = ["drift"]
    actions = Actions(finetuned(tmp_path), store, checks)  # type: ignore[arg-type]
    actions.check(Tick("intents", "check", now))
    ((_, job),) = job_store.list_jobs(store, deployment="intents")
    assert (job.kind, job.spec["method"], job.spec["task"]) == (
        "finetune",
        "trainer",
        "classification",
    )
    rows = [json.loads(line) for line in Path(job.spec["production_file"]).read_text().splitlines()]
    assert [row["input"] for row in rows] == [f"q {i}" for i in range(6)]
    assert all(row["label"] == "card_linking" and row["sample_id"] for row in rows)
    assert job.spec["golden_set"].endswith("golden.jsonl")
    assert job.spec["lineage"]["check_ids"]


def test_too_few_labels_skip_the_retrain_and_say_why(store: Store, tmp_path: Any) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    checks = FakeChecks(store)
    checks.verdicts = ["drift"]
    actions = Actions(finetuned(tmp_path), store, checks)  # type: ignore[arg-type]
    actions.check(Tick("intents", "check", datetime.now(UTC)))
    assert job_store.list_jobs(store, deployment="intents") == []
    (skipped,) = [e for e in store.recent_events("intents") if e.kind == "retune.skipped"]
    assert "0 labelled samples" in skipped.message
    assert "min_labelled is 5" in skipped.message


def finished_retune(store: Store, name: str, passed: bool, artifact: Path) -> int:
    """A re-tune job that succeeded with ``passed`` as its gate's verdict."""
    artifact.mkdir()
    spec = {"candidate": {"name": name}, "promote": True, "active_version": "v1"}
    job_id = job_store.create_job(store, "intents", "finetune", "drift", spec)
    with store.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = JobState.succeeded.value
        job.finished_at = datetime.now(UTC)
        job.result = {
            "candidate": {"name": name, "artifact": str(artifact)},
            "gate": {"passed": passed, "difference": 0.2 if passed else -0.1},
            "metrics": {"accuracy": 0.9 if passed else 0.6},
        }
    return job_id


def test_the_leader_promotes_a_passed_candidate_and_rejects_a_worse_one(
    store: Store, tmp_path: Any
) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    versions.add_version(store, "intents", kind="model", name="v1", artifact="/models/v1")
    versions.promote(store, "intents", "v1", actor="test")
    models = tmp_path / "models"
    models.mkdir()
    cfg = finetuned(tmp_path, models=models)
    actions = Actions(cfg, store, FakeChecks(store), epoch=lambda: 1)  # type: ignore[arg-type]
    assert acquire(store, "scheduler", "driftd", 10.0) is not None  # epoch 1: the leader

    finished_retune(store, "worse", passed=False, artifact=tmp_path / "worse")
    actions.settle_jobs()
    states = {v.name: v.state for v in versions.list_versions(store, "intents")}
    assert states == {"v1": "active", "worse": "rejected"}

    finished_retune(store, "better", passed=True, artifact=tmp_path / "better")
    actions.settle_jobs()
    actions.settle_jobs()  # a second pass changes nothing
    states = {v.name: v.state for v in versions.list_versions(store, "intents")}
    assert states == {"v1": "retired", "worse": "rejected", "better": "active"}
    promoted = [e for e in store.recent_events("intents") if e.kind == "version.promoted"]
    assert [e.evidence["new"]["name"] for e in promoted] == ["better", "v1"]
    assert (models / "current").resolve() == (tmp_path / "better").resolve()


def test_a_result_of_a_newer_release_is_left_unsettled_and_a_spec_of_the_last_one_is_not(
    store: Store, tmp_path: Any
) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    actions = Actions(finetuned(tmp_path), store, FakeChecks(store), epoch=lambda: 1)  # type: ignore[arg-type]
    assert acquire(store, "scheduler", "driftd", 10.0) is not None
    versions.add_version(store, "intents", kind="model", name="v1", artifact="/models/v1")
    versions.promote(store, "intents", "v1", actor="test")
    # The spec of finished_retune has no spec_version: a job queued by the previous release.
    newer = finished_retune(store, "from-the-future", passed=True, artifact=tmp_path / "a")
    with store.session() as session:
        job = session.get(Job, newer)
        assert job is not None
        job.result = {**(job.result or {}), "spec_version": 99}
    finished_retune(store, "from-the-past", passed=False, artifact=tmp_path / "b")

    actions.settle_jobs()

    states = {v.name: v.state for v in versions.list_versions(store, "intents")}
    assert states == {"v1": "active", "from-the-past": "rejected"}


def test_a_check_rolls_back_a_promoted_version_that_serves_worse(
    store: Store, tmp_path: Any
) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    assert acquire(store, "scheduler", "driftd", 10.0) is not None
    for name, parent in (("v1", None), ("v2", "v1")):
        (tmp_path / name).mkdir()
        versions.add_version(
            store, "intents", kind="model", name=name, artifact=str(tmp_path / name), parent=parent
        )
        versions.promote(store, "intents", name, actor="test")
    promoted_at = datetime.now(UTC) - timedelta(hours=1)  # v2 has served for an hour
    with store.session() as session:
        v2 = session.scalars(select(Version).where(Version.name == "v2")).one()
        v2.promoted_at = promoted_at
    for version, start, right in (
        ("v1", promoted_at - timedelta(minutes=50), 45),
        ("v2", promoted_at + timedelta(seconds=1), 30),
    ):
        store.insert_samples(
            "intents",
            [
                NewSample(
                    f"{version}-{i}",
                    start + timedelta(seconds=i),
                    input=f"q {i}",
                    prediction="card_arrival",
                    label="card_arrival" if i < right else "card_linking",
                    model_version=version,
                )
                for i in range(50)
            ],
        )
    models = tmp_path / "models"
    models.mkdir()
    cfg = finetuned(tmp_path, models=models, consecutive=5)
    checks = FakeChecks(store)
    checks.verdicts = ["ok"]
    actions = Actions(cfg, store, checks, epoch=lambda: 1)  # type: ignore[arg-type]
    actions.check(Tick("intents", "check", datetime.now(UTC)))
    active = store.active_version("intents")
    assert active is not None
    assert active.name == "v1"
    kinds = [e.kind for e in store.recent_events("intents")]
    assert {"watch.regressed", "version.rolled_back", "hook.ok"} <= set(kinds)
    assert (models / "current").resolve() == (tmp_path / "v1").resolve()


def test_a_passed_prompt_revision_becomes_the_active_prompt(store: Store, tmp_path: Any) -> None:
    from daemon.prompts import ensure_initial, read_active_prompt

    cfg = config(tmp_path)
    store.ensure_deployment("bot", "prompted", "generation")
    ensure_initial(store, cfg.deployments[0])
    assert acquire(store, "scheduler", "driftd", 10.0) is not None
    revised = {"system": "You are helpful. Answer in one line.", "few_shot": [], "model": "m"}
    spec = {"candidate": {"name": "prompt-2"}, "promote": True, "active_version": "prompt-1"}
    job_id = job_store.create_job(store, "bot", "prompt_revision", "drift", spec)
    with store.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = JobState.succeeded.value
        job.finished_at = datetime.now(UTC)
        job.result = {"passed": True, "candidate": revised, "gate": {"passed": True}}
    Actions(cfg, store, FakeChecks(store), epoch=lambda: 1).settle_jobs()  # type: ignore[arg-type]
    active = read_active_prompt(store, "bot")
    assert active is not None
    assert (active.version, active.system) == ("prompt-2", revised["system"])


GENERATION = """\
deployments:
  - name: helpdesk
    kind: prompted
    task: generation
    prompt: {{model: target-mini, system: "You answer customers' questions, briefly."}}
    upstream: {{base_url: "{base_url}", api_key_env: {key_env}}}
    judge: {{model: judge-large, rubric: "{rubric}"}}
    policy: {{on_drift: retune, consecutive: 1}}
    retune:
      schedule: "0 3 * * *"
      golden_set: golden.jsonl
      candidates: 1
      gate: {{bootstrap_samples: 200}}
scheduling: {{jobs_dir: {jobs}}}
"""
SIGN_OFF = "Kind regards, the support team."
RUBRIC = "The answer helps and ends with the sign-off: " + SIGN_OFF
LLM_KEY_ENV = "DRIFTD_TEST_LLM_KEY"


def generation_config(tmp_path: Path, base_url: str, *, rubric: str | None = RUBRIC) -> Config:
    golden = [{"input": f"How do I reset my PIN, case {i}?"} for i in range(6)]
    (tmp_path / "golden.jsonl").write_text("".join(json.dumps(g) + "\n" for g in golden))
    text = GENERATION.format(
        base_url=base_url, key_env=LLM_KEY_ENV, rubric=rubric, jobs=tmp_path / "jobs"
    )
    if rubric is None:
        text = text.replace('    judge: {model: judge-large, rubric: "None"}\n', "")
    return parse_config(text, environ={}, base_dir=tmp_path)


def helpdesk_traffic(store: Store) -> None:
    """Three answers users disliked or the judge scored low, and four recent ones nobody has
    rated yet (no feedback, no judge score, no label): production inputs to score on."""
    store.ensure_deployment("helpdesk", "prompted", "generation")
    now = datetime.now(UTC)
    failing = [
        NewSample(
            f"bad-{i}",
            now - timedelta(minutes=i + 1),
            input=f"How do I close my account, case {i}?",
            output="Close it online.",
            feedback_score=0.0 if i else None,
            judge_score=None if i else 0.2,
        )
        for i in range(3)
    ]
    fresh = [
        NewSample(
            f"new-{i}",
            now - timedelta(minutes=10 + i),
            input=f"How do I raise my limit, case {i}?",
            output="Ask us.",
        )
        for i in range(4)
    ]
    liked = NewSample(
        "liked", now - timedelta(minutes=20), input="How do I order a card?", judge_score=0.9
    )
    store.insert_samples("helpdesk", [*failing, *fresh, liked])


def read_jsonl(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_a_passed_generation_revision_scored_by_the_judge_becomes_the_active_prompt(
    store: Store, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    from daemon.jobs.executor import LocalExecutor
    from daemon.jobs.runner import JobRunner
    from daemon.prompts import ensure_initial, read_active_prompt

    rule = "End every answer with: " + SIGN_OFF
    fake_openai.script_chat(json.dumps({"system": "You answer customers' questions. " + rule}))
    fake_openai.script_rule(rule, lambda text: f"Do this: {text} {SIGN_OFF}", lambda text: "Ok.")
    fake_openai.script_system(
        RUBRIC,
        lambda message: json.dumps(
            {"score": 1.0 if SIGN_OFF in message.split("ASSISTANT OUTPUT:")[1] else 0.1}
        ),
    )
    cfg = generation_config(tmp_path, fake_openai.base_url)
    helpdesk_traffic(store)
    ensure_initial(store, cfg.deployments[0])
    assert acquire(store, "scheduler", "driftd", 10.0) is not None  # epoch 1: the leader
    actions = Actions(cfg, store, FakeChecks(store), epoch=lambda: 1)  # type: ignore[arg-type]
    actions.retune(Tick("helpdesk", "retune", datetime.now(UTC).replace(microsecond=0)))

    ((_, job),) = job_store.list_jobs(store, deployment="helpdesk")
    assert (job.kind, job.spec["task"]) == ("prompt_revision", "generation")
    assert job.spec["judge"] == {
        "model": "judge-large",
        "base_url": fake_openai.base_url,
        "api_key_env": LLM_KEY_ENV,
        "rubric": RUBRIC,
    }
    assert job.spec["gate"]["metric"] == "judge_score"
    failing = read_jsonl(job.spec["failing_file"])
    assert sorted(row["why"] for row in failing) == ["low judge score"] + ["negative feedback"] * 2
    assert all(row["label"] is None for row in failing)
    fresh = read_jsonl(job.spec["fresh_file"])
    assert sorted(row["input"] for row in fresh) == sorted(
        ["How do I order a card?", *(f"How do I raise my limit, case {i}?" for i in range(4))]
    )

    runner = JobRunner(
        store,
        LocalExecutor(),
        cfg.scheduling.jobs_dir,
        "test-runner",
        heartbeat=timedelta(seconds=1),
        env={LLM_KEY_ENV: fake_openai.api_key},
    )
    runner.run_until_idle(timeout=60)
    ((_, done),) = job_store.list_jobs(store, deployment="helpdesk")
    assert done.state == JobState.succeeded.value, done.error
    assert done.result is not None
    assert done.result["passed"] is True
    assert done.result["gate"]["metric"] == "judge_score"
    assert done.result["evaluated_on"] == {"golden": 6, "fresh": 5}
    assert done.result["tokens"]["judge"] > 0

    actions.settle_jobs()
    active = read_active_prompt(store, "helpdesk")
    assert active is not None
    assert active.system == "You answer customers' questions. " + rule
    assert active.version == job.spec["candidate"]["name"]
    with store.session(readonly=True) as session:
        promoted = session.scalars(select(Version).where(Version.name == active.version)).one()
    # The version keeps the judge's mean score the gate saw, not the job's bookkeeping.
    assert promoted.eval_scores is not None
    assert (
        promoted.eval_scores["judge_score"]
        == done.result["gate"]["candidate"]["metrics"]["judge_score"]
    )
    assert "passed" not in promoted.eval_scores


def test_a_generation_deployment_that_can_revise_needs_a_rubric(tmp_path: Path) -> None:
    # Its revisions are scored by the judge: the configuration says so before anything runs.
    with pytest.raises(ConfigError, match=r"judge\.rubric is not set"):
        generation_config(tmp_path, "http://127.0.0.1:9/v1", rubric=None)


def test_checks_run_on_any_replica_are_followed_up_once_by_the_leader(
    store: Store, tmp_path: Any
) -> None:
    """With ``follow_up="leader"`` a check decides nothing where it ran; the leader's chore
    decides after the checks that finished (here on two other replicas), once each."""
    with_failures(store)
    checks = FakeChecks(store)
    epoch: list[int | None] = [None]
    actions = Actions(
        config(tmp_path),
        store,
        checks,  # type: ignore[arg-type]
        epoch=lambda: epoch[0],
        follow_up="leader",
    )
    checks.verdicts = ["drift", "drift"]
    for replica, when in (("one", tick("check")), ("two", Tick("bot", "check", later()))):
        assert store.claim_run("bot", "check", when.scheduled_for, replica, 0)
        actions.check(when)
        assert finish_claim(store, "bot", "check", when.scheduled_for, replica)
    assert decisions(store) == []
    assert actions.follow_up_checks() == 0  # not the leader: nothing is decided or marked
    epoch[0] = 1
    assert actions.follow_up_checks() == 2
    assert actions.follow_up_checks() == 0
    assert [e.evidence["reason"] for e in decisions(store)] == ["acted"]
    jobs = job_store.list_jobs(store, deployment="bot")
    assert [(job.kind, job.trigger) for _, job in jobs] == [("prompt_revision", "drift")]


def later() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)


def decisions(store: Store) -> list[Any]:
    return [e for e in store.recent_events("bot") if e.kind == "policy.decision"]
