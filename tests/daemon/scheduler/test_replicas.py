"""Replicas of ``driftd serve`` sharing one store, as an operator runs them: two on PostgreSQL
(one process on SQLite; both stores side by side), a check every second for 60 ticks, then
the leader is killed.

The design promises each tick at most once, and a tick that could not run on time visibly missed
(``driftd_scheduler_runs_total{status="missed"}``): on a loaded 2-core machine a check can outlast
its one-second interval, and APScheduler then skips the next tick rather than queue it. So a gap
under one leader passes only if that leader counted it, and such gaps stay rare."""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from daemon.store import normalize_url
from daemon.store.models import Check, RunClaim
from tests.helpers.configs import minimal_config
from tests.helpers.serve import Server, start_driftd
from tests.helpers.wait import wait_for

TTL = 3.0
TICKS = 60
CONFIG = minimal_config(
    scheduling=f"lease_ttl: {TTL:g}s", monitor="schedule: every 1s, timeout: 30s"
)


def replica(config: Path, db_url: str) -> Server:
    """One ``driftd serve`` of ``config`` on the shared store, not yet ready."""
    return start_driftd(config, config.parent, env={"DRIFTD_STORAGE_URL": db_url})


def missed_checks(replica: Server) -> int:
    """How many check ticks ``replica`` counted as missed (skipped: too late or still busy)."""
    answer = httpx.get(f"{replica.url}/metrics", timeout=5)
    answer.raise_for_status()
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "driftd_scheduler_runs_total" and sample.labels == {
                "kind": "check",
                "status": "missed",
            }:
                return int(sample.value)
    return 0


def claims_and_checks(engine: Engine) -> tuple[list[Any], list[datetime]]:
    with engine.connect() as connection:
        claims = list(
            connection.execute(
                select(RunClaim.scheduled_for, RunClaim.owner, RunClaim.epoch)
                .where(RunClaim.job_kind == "check")
                .order_by(RunClaim.scheduled_for)
            ).all()
        )
        checked = [
            when
            for when in connection.execute(select(Check.scheduled_for)).scalars()
            if when is not None
        ]
    return claims, checked


@pytest.mark.postgres
def test_replicas_run_every_tick_once_and_a_successor_takes_over(
    stores: dict[str, str], tmp_path: Path
) -> None:
    """Both stores at once, each with its own replicas and folder: the scenario waits on the
    clock (60 one-second ticks), so side by side it costs the time of one."""
    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        runs = {
            name: pool.submit(replicas_take_turns, url, tmp_path / name)
            for name, url in stores.items()
        }
    for name, run in runs.items():
        try:
            run.result()
        except AssertionError as failed:
            raise AssertionError(f"{name}: {failed}") from failed


def replicas_take_turns(db_url: str, folder: Path) -> None:
    folder.mkdir()
    config = folder / "driftd.yaml"
    config.write_text(CONFIG)
    postgres = db_url.startswith("postgresql")
    engine = create_engine(normalize_url(db_url))
    replicas = [replica(config, db_url) for _ in range(2 if postgres else 1)]
    try:
        for each in replicas:
            each.wait_ready(60)
        leaders_seen: list[int] = []  # how many replicas led, at each poll

        def ticked() -> bool:
            leaders_seen.append(sum(each.leads() for each in replicas))
            return len(claims_and_checks(engine)[0]) >= TICKS

        wait_for(ticked, TICKS + 120, f"{TICKS} ticks", interval=0.5)
        most = max(leaders_seen)
        assert most == 1, f"{most} leaders at once over {len(leaders_seen)} polls"

        (leader,) = [each for each in replicas if each.leads()]
        missed = missed_checks(leader)
        leader.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.kill()
        before_kill = len(claims_and_checks(engine)[0])
        replicas.remove(leader)
        if not replicas:  # SQLite, one process: the operator restarts it
            replicas.append(replica(config, db_url))
            replicas[0].wait_ready(60)
        (successor,) = replicas
        wait_for(successor.leads, killed + 60 - time.monotonic(), "a successor", interval=0.1)
        took_over = time.monotonic() - killed
        if postgres:
            assert took_over <= TTL + 0.5, f"took over after {took_over:.1f} s (TTL {TTL} s)"
        wait_for(
            lambda: len(claims_and_checks(engine)[0]) >= before_kill + 5,
            killed + 60 - time.monotonic(),
            "the successor to run ticks",
            interval=0.2,
        )
    finally:
        codes = [each.stop(30) for each in replicas]
        assert codes == [0] * len(codes), [each.output() for each in replicas]

    claims, checked = claims_and_checks(engine)
    engine.dispose()
    times = [claim.scheduled_for for claim in claims]
    assert len(times) == len(set(times))
    twice = [when for when, count in Counter(checked).items() if count > 1]
    assert not twice, f"ticks checked twice: {twice}"
    assert set(checked) <= set(times)
    owners = [claim.owner for claim in claims]
    first_owner = owners[0]
    handover = owners.index(next(o for o in owners if o != first_owner))
    assert set(owners[:handover]) == {first_owner}
    assert len(set(owners[handover:])) == 1
    assert claims[handover].epoch > claims[0].epoch
    # Under the first leader: every second, exactly once, and each tick's check recorded (but
    # the one the leader was killed in the middle of).
    led = times[:handover]
    assert len(led) >= TICKS
    gaps = [(a, b) for a, b in pairwise(led) if b - a != timedelta(seconds=1)]
    skipped = sum(int((b - a).total_seconds()) - 1 for a, b in gaps)
    assert skipped <= missed, f"ticks missed under one leader, {missed} counted: {gaps[:5]}"
    assert skipped <= len(led) // 20, f"{skipped} of {len(led)} ticks missed: {gaps[:5]}"
    unchecked = set(led) - set(checked)
    assert len(unchecked) <= 1, sorted(unchecked)
    # The successor: its ticks and at most one catch-up of what was missed during the takeover.
    after = times[handover:]
    assert after[0] > led[-1]
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(after[1:]))
