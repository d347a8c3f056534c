"""Replicas of ``driftd serve`` sharing one store, as an operator runs them: two on PostgreSQL
(one process on SQLite), a check every second for over 100 ticks, then the leader is killed.

The design promises each tick at most once, and a tick that could not run on time visibly missed
(``driftd_scheduler_runs_total{status="missed"}``): on a loaded 2-core machine a check can outlast
its one-second interval, and APScheduler then skips the next tick rather than queue it. So a gap
under one leader passes only if that leader counted it, and such gaps stay rare."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from daemon.store import normalize_url
from daemon.store.models import Check, RunClaim

DRIFTD = Path(sys.executable).parent / "driftd"
TTL = 3.0
TICKS = 100
CONFIG = f"""\
scheduling: {{lease_ttl: {TTL:g}s}}
deployments:
  - name: bot
    kind: prompted
    task: generation
    prompt: {{model: gpt-4o-mini, system: "You are helpful."}}
    monitor: {{schedule: every 1s, timeout: 30s}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Replica:
    def __init__(self, config: Path, db_url: str) -> None:
        self.port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
        self.log = (config.parent / f"replica-{self.port}.log").open("w")
        self.process = subprocess.Popen(
            [str(DRIFTD), "serve", "-c", str(config), "--port", str(self.port)],
            cwd=config.parent,
            env={**environ, "DRIFTD_STORAGE_URL": db_url},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def health(self) -> dict[str, object] | None:
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        return dict(answer.json())

    def missed_checks(self) -> int:
        """How many check ticks this replica counted as missed (skipped: too late or still busy)."""
        answer = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
        answer.raise_for_status()
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if sample.name == "driftd_scheduler_runs_total" and sample.labels == {
                    "kind": "check",
                    "status": "missed",
                }:
                    return int(sample.value)
        return 0

    def leads(self) -> bool:
        health = self.health()
        return bool(health and health["leader"])

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"replica on port {self.port} exited: see {self.log.name}")
            if self.health() is not None:
                return
            time.sleep(0.2)
        raise AssertionError(f"replica on port {self.port} not up within {timeout} s")

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert self.process.wait(timeout=30) == 0
            finally:
                if self.process.poll() is None:
                    self.process.kill()
        self.log.close()


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


def test_replicas_run_every_tick_once_and_a_successor_takes_over(
    db_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "driftd.yaml"
    config.write_text(CONFIG)
    postgres = db_url.startswith("postgresql")
    engine = create_engine(normalize_url(db_url))
    replicas = [Replica(config, db_url) for _ in range(2 if postgres else 1)]
    try:
        for replica in replicas:
            replica.wait_ready()
        most_leaders, polls = 0, 0
        deadline = time.monotonic() + TICKS + 120
        while time.monotonic() < deadline:
            leaders = sum(replica.leads() for replica in replicas)
            most_leaders, polls = max(most_leaders, leaders), polls + 1
            if len(claims_and_checks(engine)[0]) >= TICKS:
                break
            time.sleep(0.5)
        claims, _ = claims_and_checks(engine)
        assert len(claims) >= TICKS, f"only {len(claims)} ticks ran"
        assert most_leaders == 1, f"{most_leaders} leaders at once over {polls} polls"

        (leader,) = [replica for replica in replicas if replica.leads()]
        missed = leader.missed_checks()
        leader.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.process.wait(timeout=10)
        before_kill = len(claims_and_checks(engine)[0])
        replicas.remove(leader)
        leader.log.close()
        if not replicas:  # SQLite, one process: the operator restarts it
            replicas.append(Replica(config, db_url))
            replicas[0].wait_ready()
        (successor,) = replicas
        while not successor.leads() and time.monotonic() - killed < 60:
            time.sleep(0.1)
        took_over = time.monotonic() - killed
        assert successor.leads()
        if postgres:
            assert took_over <= TTL + 0.5, f"took over after {took_over:.1f} s (TTL {TTL} s)"
        while len(claims_and_checks(engine)[0]) < before_kill + 5:
            assert time.monotonic() - killed < 60, "the successor runs no ticks"
            time.sleep(0.2)
    finally:
        for replica in replicas:
            replica.end()

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
