"""Replicas of ``driftd serve`` sharing one store, as an operator runs them: two on PostgreSQL
(one process on SQLite; both stores side by side), a check every second for 60 ticks, then
the leader is killed.

The design promises each tick at most once, and a tick that could not run on time visibly missed
(``driftd_scheduler_runs_total{status="missed"}``): on a loaded 2-core machine a check can outlast
its one-second interval, and no replica may then have a free worker within the tick's grace. So
a gap passes only if the replicas counted it, and such gaps stay rare. Every replica runs checks
(``daemon.scheduler.spread``); the last test kills one that does not lead in the middle of one."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
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
        missed = sum(missed_checks(each) for each in replicas)
        leader.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        killed_at = datetime.now(UTC)
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
    # Before the kill: every second, exactly once, each tick's check recorded (but the one the
    # leader was killed in the middle of), and with two replicas both ran checks.
    led = [claim for claim in claims if claim.scheduled_for < killed_at - timedelta(seconds=1)]
    if postgres:
        assert len({claim.owner for claim in led}) == 2, Counter(c.owner for c in led)
    led_times = [claim.scheduled_for for claim in led]
    assert len(led_times) >= TICKS - 2
    gaps = [(a, b) for a, b in pairwise(led_times) if b - a != timedelta(seconds=1)]
    skipped = sum(int((b - a).total_seconds()) - 1 for a, b in gaps)
    assert skipped <= missed, f"ticks missed, {missed} counted: {gaps[:5]}"
    assert skipped <= len(led_times) // 20, f"{skipped} of {len(led_times)} missed: {gaps[:5]}"
    unchecked = set(led_times) - set(checked)
    assert len(unchecked) <= 1, sorted(unchecked)
    # The successor leads under a higher epoch (a replica that does not lead claims with 0).
    epochs_before = {claim.epoch for claim in led} - {0}
    epochs_after = {claim.epoch for claim in claims if claim.scheduled_for > killed_at} - {0}
    assert epochs_after, "the successor ran no check as the leader"
    assert min(epochs_after) > max(epochs_before)


SPREAD_CONFIG = (
    "scheduling: {lease_ttl: 3s, job_heartbeat: 1s, job_stale_after: 2s, check_workers: 1}\n"
    "deployments:\n"
    + "".join(
        f"  - name: bot{number}\n"
        "    kind: prompted\n"
        "    task: generation\n"
        '    prompt: {model: gpt-4o-mini, system: "You help bank customers."}\n'
        "    monitor: {schedule: every 2s, timeout: 30s}\n"
        for number in range(3)
    )
)


def check_workers(server: Server) -> list[int]:
    """The pids of ``server``'s check worker processes (spawned by multiprocessing)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def claim_rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(
                    RunClaim.deployment_id,
                    RunClaim.scheduled_for,
                    RunClaim.owner,
                    RunClaim.attempt,
                    RunClaim.claimed_at,
                    RunClaim.finished_at,
                ).where(RunClaim.job_kind == "check")
            ).all()
        )


def check_rows(engine: Engine) -> Counter[tuple[int, datetime | None]]:
    with engine.connect() as connection:
        return Counter(
            (deployment_id, when)
            for deployment_id, when in connection.execute(
                select(Check.deployment_id, Check.scheduled_for)
            ).all()
        )


@pytest.mark.postgres
def test_every_replica_runs_checks_and_a_killed_one_loses_no_tick(
    stores: dict[str, str], tmp_path: Path
) -> None:
    """Two ``driftd serve`` on PostgreSQL, three deployments on a check every 2 s: both replicas
    claim and run checks, and when the one that does not lead is SIGKILLed in the middle of a
    check (its worker frozen first, so the check is surely under way), the leader re-runs that
    tick once its heartbeat is stale; every tick is checked exactly once."""
    db_url = stores["postgresql"]
    config = tmp_path / "driftd.yaml"
    config.write_text(SPREAD_CONFIG)
    engine = create_engine(normalize_url(db_url))
    replicas = [replica(config, db_url) for _ in range(2)]
    frozen: list[int] = []
    try:
        for each in replicas:
            each.wait_ready(60)

        def both_ran() -> bool:
            owners = {row.owner.split(":")[1] for row in claim_rows(engine) if row.finished_at}
            return {str(each.pid) for each in replicas} <= owners

        wait_for(both_ran, 60, "both replicas to run checks", interval=0.5)
        (leader,) = [each for each in replicas if each.leads()]
        (follower,) = [each for each in replicas if each is not leader]
        frozen = check_workers(follower)
        assert frozen, "the follower has no check worker"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)

        def stuck() -> Any:
            now = datetime.now(UTC)
            for row in claim_rows(engine):
                mine = row.owner.split(":")[1] == str(follower.pid)
                if mine and row.finished_at is None and now - row.claimed_at > timedelta(seconds=1):
                    return row
            return None

        lost = wait_for(stuck, 30, "a check of the follower to be under way", interval=0.2)
        follower.kill()
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        replicas.remove(follower)

        def rerun() -> Any:
            for row in claim_rows(engine):
                if (row.deployment_id, row.scheduled_for) == (
                    lost.deployment_id,
                    lost.scheduled_for,
                ) and row.finished_at is not None:
                    return row
            return None

        again = wait_for(rerun, 30, "the lost tick to run again", interval=0.2)
        assert again.owner.split(":")[1] == str(leader.pid)
        assert again.attempt == 2
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        codes = [each.stop(30) for each in replicas]
        assert codes == [0] * len(codes), [each.output() for each in replicas]

    claims = claim_rows(engine)
    checked = check_rows(engine)
    engine.dispose()
    twice = [tick for tick, count in checked.items() if count > 1]
    assert not twice, f"ticks checked twice: {twice}"
    finished = {(row.deployment_id, row.scheduled_for) for row in claims if row.finished_at}
    assert finished <= set(checked), sorted(finished - set(checked))[:3]
    assert set(checked) <= {(row.deployment_id, row.scheduled_for) for row in claims}
    assert (lost.deployment_id, lost.scheduled_for) in checked
