"""The leader's clock in one process: two schedulers sharing a store, as two replicas would, on
SQLite and PostgreSQL. The work is a recorder, so these tests are about who runs which tick."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.cron import CronTrigger
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from daemon.config import Config, parse_config
from daemon.config.types import Schedule
from daemon.metrics import LeaderCounters
from daemon.scheduler import Scheduler, Tick
from daemon.scheduler.scheduler import CHECK, GRID_ANCHOR, latest_missed, trigger_for
from daemon.store import Store
from daemon.store.models import RunClaim
from tests.helpers.configs import minimal_config
from tests.helpers.wait import wait_for

CONFIG = minimal_config(scheduling="lease_ttl: 2s", monitor="schedule: every 1s")
OUTCOMES = ("ran", "claimed_elsewhere", "missed", "error")
"""How a tick ends, as ``driftd_scheduler_runs_total`` counts it."""


class Recorder:
    """The work of a tick: remembers who ran which scheduled time."""

    def __init__(self, name: str, runs: list[tuple[str, datetime]]) -> None:
        self.name = name
        self.runs = runs
        self.lock = threading.Lock()

    def __call__(self, tick: Tick) -> None:
        with self.lock:
            self.runs.append((self.name, tick.scheduled_for))


def config() -> Config:
    return parse_config(CONFIG, environ={})


def scheduler(
    store: Store,
    name: str,
    runs: list[tuple[str, datetime]],
    counters: LeaderCounters | None = None,
) -> Scheduler:
    store.ensure_deployment("bot", "prompted", "generation")
    return Scheduler(config(), store, name, {CHECK: Recorder(name, runs)}, metrics=counters)


def scheduler_runs(counters: LeaderCounters, status: str) -> float:
    """How many check ticks ``counters`` saw end as ``status`` (ran, claimed_elsewhere, …)."""
    registry = CollectorRegistry()
    registry.register(counters)
    value = registry.get_sample_value(
        "driftd_scheduler_runs_total", {"kind": CHECK, "status": status}
    )
    return value or 0.0


def test_interval_ticks_sit_on_a_grid_every_replica_shares() -> None:
    trigger = trigger_for(Schedule(every=timedelta(minutes=15)), "UTC")
    fire = trigger.get_next_fire_time(None, datetime(2026, 11, 29, 10, 7, 31, tzinfo=UTC))
    assert fire == datetime(2026, 11, 29, 10, 15, tzinfo=UTC)
    assert (fire - GRID_ANCHOR).total_seconds() % 900 == 0


def test_the_latest_missed_tick_is_found_once() -> None:
    every = trigger_for(Schedule(every=timedelta(hours=1)), "UTC")
    after = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    now = datetime(2026, 11, 29, 5, 30, tzinfo=UTC)
    assert latest_missed(every, after, now) == datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
    assert latest_missed(every, now, now + timedelta(minutes=10)) is None
    cron = CronTrigger.from_crontab("0 3 * * *", timezone="UTC")
    assert latest_missed(cron, after, now) == datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert latest_missed(cron, datetime(2026, 11, 29, 3, 0, tzinfo=UTC), now) is None


def test_one_leader_runs_each_tick_once_and_a_successor_takes_over(store: Store) -> None:
    runs: list[tuple[str, datetime]] = []
    first, second = scheduler(store, "a", runs), scheduler(store, "b", runs)
    first.start()
    wait_for(first.leadership.is_leader, 5, "a to lead")
    second.start()
    try:
        wait_for(lambda: len(runs) >= 5, 15, "five ticks")
        assert not second.leadership.is_leader()
        assert {name for name, _ in runs} == {"a"}
        first.stop(timedelta(seconds=2))  # releases the lease: b leads at once
        handed_over = len(runs)
        wait_for(second.leadership.is_leader, 5, "b to lead")
        wait_for(lambda: len(runs) >= handed_over + 4, 15, "four ticks under b")
    finally:
        second.stop(timedelta(seconds=2))
    times = [when for _, when in runs]
    assert len(times) == len(set(times)), Counter(times).most_common(3)
    assert {name for name, _ in runs} == {"a", "b"}
    assert all(when.microsecond == 0 for when in times)  # on the 1-second grid
    with store.session(readonly=True) as session:
        claims = list(session.scalars(select(RunClaim)))
    assert sorted(c.scheduled_for for c in claims) == sorted(times)
    assert {c.owner for c in claims} == {"a", "b"}
    epochs = {c.owner: c.epoch for c in claims}
    assert epochs["b"] > epochs["a"]


def test_a_claimed_tick_is_not_run_again_by_a_late_replica(store: Store) -> None:
    runs: list[tuple[str, datetime]] = []
    leader = scheduler(store, "a", runs)
    leader.start()
    try:
        wait_for(lambda: len(runs) >= 2, 15, "two ticks")
    finally:
        leader.stop(timedelta(seconds=2))
    late = scheduler(store, "b", runs)
    late.start()
    try:
        wait_for(late.leadership.is_leader, 5, "the late replica to lead")
        lease = late.leadership.lease
        assert lease is not None
        # Replaying a tick a's claim covers does nothing.
        _, when = runs[0]
        assert not store.claim_run("bot", CHECK, when, "b", lease.epoch)
    finally:
        late.stop(timedelta(seconds=2))
    times = [when for _, when in runs]
    assert len(times) == len(set(times))


def test_missed_ticks_after_downtime_are_caught_up_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="driftd.scheduler")
    cfg = parse_config(CONFIG.replace("every 1s", "every 1h"), environ={})
    store.ensure_deployment("bot", "prompted", "generation")
    runs: list[tuple[str, datetime]] = []
    # The last run was five hours ago: four or five ticks were missed while nobody led.
    now = datetime.now(UTC)
    last = trigger_for(Schedule(every=timedelta(hours=1)), "UTC").get_next_fire_time(
        None, now - timedelta(hours=5, minutes=1)
    )
    assert last is not None
    assert store.claim_run("bot", CHECK, last, "old", 1)
    counters = LeaderCounters()
    revived = Scheduler(cfg, store, "new", {CHECK: Recorder("new", runs)}, metrics=counters)

    def catch_ups() -> int:
        return sum(r.getMessage() == "catching up a missed tick" for r in caplog.records)

    def settled() -> float:
        return sum(scheduler_runs(counters, status) for status in OUTCOMES)

    revived.start()
    try:
        wait_for(lambda: len(runs) >= 1, 10, "the catch-up run")
        gained = revived.leadership.lease
        # The leader's thread renews only once its start-up, which starts every catch-up run,
        # is done; each catch-up run then ends counted (ran, claimed elsewhere, missed, error).
        wait_for(lambda: revived.leadership.lease is not gained, 5, "a renewal of the lease")
        wait_for(lambda: settled() == catch_ups(), 5, "every catch-up run to end")
    finally:
        revived.stop(timedelta(seconds=2))
    expected = now.replace(minute=0, second=0, microsecond=0)
    assert runs == [("new", expected)]


@pytest.mark.parametrize("ttl", [2.0])
def test_a_leader_that_cannot_renew_stops_at_its_deadline(store: Store, ttl: float) -> None:
    runs: list[tuple[str, datetime]] = []
    counters = LeaderCounters()
    leader = scheduler(store, "a", runs, counters)
    leader.start()
    wait_for(leader.leadership.is_leader, 5, "a to lead")
    lease = leader.leadership.lease
    assert lease is not None
    # Simulate a store that stops answering: the renewal thread is stopped without releasing,
    # and by the local monotonic clock the lease runs out within the TTL.
    leader.leadership._stop.set()
    wait_for(lambda: not leader.leadership.is_leader(), ttl + 1, "the lease to run out")
    count = len(runs)
    skipped = scheduler_runs(counters, "missed")
    # Two more ticks come and are skipped, counted as missed: the clock still fires.
    wait_for(lambda: scheduler_runs(counters, "missed") >= skipped + 2, 5, "two skipped ticks")
    assert len(runs) <= count + 1  # at most a tick already under way when the lease ran out
    leader.stop(timedelta(seconds=1))
