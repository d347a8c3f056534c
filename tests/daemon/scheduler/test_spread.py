"""Checks on every replica, in one process: two schedulers on one store with a check slot each,
three deployments on a check every second. The work records a check row for its tick, as a real
check does, so each test asserts from the run claims and the ``checks`` rows."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy import select, update

from daemon.config import Config, parse_config
from daemon.errors import DriftdError
from daemon.metrics import LeaderCounters
from daemon.scheduler import Scheduler, Tick
from daemon.scheduler.scheduler import CHECK, record_failed_check
from daemon.store import Store
from daemon.store.models import Check, RunClaim
from tests.helpers.wait import wait_for

DEPLOYMENTS = ("a", "b", "c")
CONFIG = (
    "scheduling: {lease_ttl: 2s, job_heartbeat: 1s, job_stale_after: 2s}\n"
    "deployments:\n"
    + "".join(
        f"  - name: {name}\n"
        "    kind: prompted\n"
        "    task: generation\n"
        '    prompt: {model: gpt-4o-mini, system: "You help bank customers."}\n'
        "    monitor: {schedule: every 1s}\n"
        for name in DEPLOYMENTS
    )
)


def config() -> Config:
    return parse_config(CONFIG, environ={})


class Checks:
    """A check that takes ``seconds`` and stores a (failed, but real) row for its tick."""

    def __init__(self, store: Store, name: str, seconds: float) -> None:
        self.store = store
        self.name = name
        self.seconds = seconds
        self.ran: list[Tick] = []
        self.lock = threading.Lock()

    def __call__(self, tick: Tick) -> None:
        time.sleep(self.seconds)
        record_failed_check(self.store, tick.deployment, tick, timedelta(hours=1), DriftdError("x"))
        with self.lock:
            self.ran.append(tick)


def replica(store: Store, name: str, work: Checks, counters: LeaderCounters) -> Scheduler:
    return Scheduler(config(), store, name, {CHECK: work}, metrics=counters, check_slots=1)


def runs(counters: LeaderCounters, status: str) -> float:
    registry = CollectorRegistry()
    registry.register(counters)
    value = registry.get_sample_value(
        "driftd_scheduler_runs_total", {"kind": CHECK, "status": status}
    )
    return value or 0.0


def claims(store: Store) -> list[RunClaim]:
    with store.session(readonly=True) as session:
        return list(session.scalars(select(RunClaim).where(RunClaim.job_kind == CHECK)))


def checked(store: Store) -> list[datetime | None]:
    with store.session(readonly=True) as session:
        return list(session.scalars(select(Check.scheduled_for)))


def test_every_replica_claims_checks_and_each_tick_runs_once(store: Store) -> None:
    for name in DEPLOYMENTS:
        store.ensure_deployment(name, "prompted", "generation")
    # A check takes 0.4 s and three come due each second: one slot cannot keep up, two can.
    works = {name: Checks(store, name, 0.4) for name in ("one", "two")}
    counters = {name: LeaderCounters() for name in works}
    replicas = [replica(store, name, works[name], counters[name]) for name in works]
    for each in replicas:
        each.start()
    try:
        wait_for(lambda: all(len(w.ran) >= 4 for w in works.values()), 20, "both to run checks")
    finally:
        for each in replicas:
            each.stop(timedelta(seconds=3))
    stored = claims(store)
    keys = [(c.deployment_id, c.scheduled_for) for c in stored]
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
    ran = [(t.deployment, t.scheduled_for) for w in works.values() for t in w.ran]
    assert len(ran) == len(set(ran)), Counter(ran).most_common(3)
    assert len(ran) == len(stored)
    assert {c.owner for c in stored} == {"one", "two"}
    assert all(c.finished_at is not None for c in stored)
    assert len(checked(store)) == len(ran)
    # Neither replica waited on the other: both ran checks (at least four each, above), and a
    # replica tries each tick at most once, so the claims it lost are at most the ticks claimed.
    # How the ticks and the conflicts split between them is the machine's doing (a busy CI
    # machine starves one thread for a while), so no tighter share is asserted; the benchmark
    # measures it (3-5% conflicts).
    for name, work in works.items():
        assert runs(counters[name], "ran") == len(work.ran)
        assert runs(counters[name], "claimed_elsewhere") <= len(stored)


def test_a_check_whose_replica_died_is_run_again_once(store: Store) -> None:
    for name in DEPLOYMENTS:
        store.ensure_deployment(name, "prompted", "generation")
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    # Replica "dead" claimed two ticks and died: one before its check was recorded, one after.
    lost, recorded = Tick("a", CHECK, when), Tick("b", CHECK, when)
    for tick in (lost, recorded):
        assert store.claim_run(tick.deployment, CHECK, tick.scheduled_for, "dead", 0)
    record_failed_check(store, "b", recorded, timedelta(hours=1), DriftdError("x"))
    with store.session() as session:
        session.execute(
            update(RunClaim).values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=30))
        )
    work, counters = Checks(store, "heir", 0.0), LeaderCounters()
    heir = replica(store, "heir", work, counters)
    heir.start()
    try:
        wait_for(lambda: runs(counters, "rerun") >= 1, 10, "the lost tick to run again")
        wait_for(
            lambda: all(c.finished_at for c in claims(store) if c.scheduled_for == when),
            5,
            "both claims to be finished",
        )
    finally:
        heir.stop(timedelta(seconds=3))
    again = [t for t in work.ran if t.scheduled_for == when]
    assert again == [lost]
    of_tick = [c for c in claims(store) if c.scheduled_for == when]
    assert {(c.owner, c.attempt) for c in of_tick} == {("heir", 2)}
    assert Counter(t for t in checked(store) if t == when) == {when: 2}  # a's and b's, once each
    assert runs(counters, "rerun") == 1


def test_a_tick_no_replica_could_take_in_its_grace_is_missed_and_counted(store: Store) -> None:
    store.ensure_deployment("a", "prompted", "generation")
    work, counters = Checks(store, "late", 0.0), LeaderCounters()
    late = replica(store, "late", work, counters)
    spread = late._spread
    assert spread is not None
    spread.start()
    try:
        spread.offer(Tick("a", CHECK, datetime.now(UTC) - timedelta(seconds=5)))
        wait_for(lambda: runs(counters, "missed") == 1, 5, "the tick to be dropped")
    finally:
        spread.stop(timedelta(seconds=1))
    assert work.ran == []
    assert claims(store) == []
