"""How many checks a minute one replica completes, and two on one PostgreSQL, each on a core.

    python benchmarks/check_capacity.py --postgres URL [--deployments 200] [--minutes 3]
                                        [--samples 100] [--signals descriptors,text]

``URL`` is a PostgreSQL server's URL (``postgresql+psycopg://user@127.0.0.1:5432/postgres``):
the benchmark creates a database of its own there (``bench_capacity``) for each setup and drops
it afterwards. ``--deployments`` prompted generation deployments each get a check every minute
over small windows: ``--samples`` samples in the current hour and as many in the hour before
(the reference, ``previous_window``), made of Banking77-like questions and answers through the
ingest pipeline (redacted, described), and ``--signals`` (cheap but real: the descriptors'
statistical tests and the text domain classifier on at most ``--samples`` rows).

Setup 1 runs one ``driftd serve`` (one check worker) pinned to core 0; setup 2 two of them on
the same database, pinned to cores 0 and 1. Each setup warms up until its replicas lead or
follow and the next minute starts, then is measured for ``--minutes`` minutes: checks completed
per minute (``checks`` rows finished in the window), the CPU seconds of each replica's process
tree (utime + stime from ``/proc/<pid>/stat`` of the replica and its children) per check it ran,
the CPU seconds of the PostgreSQL server's processes per check (an upper bound: other users of
the server count too),
and each replica's ``driftd_scheduler_runs_total{kind="check"}`` (ran, claimed_elsewhere — the
claim conflicts —, missed). After each setup, every tick is asserted to have run at most once
(one claim, at most one ``checks`` row) and every finished claim to have exactly one row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from daemon.config import load_config
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.store import Store, normalize_url, upgrade
from daemon.store.models import Check, RunClaim

DATABASE = "bench_capacity"
DRIFTD = Path(sys.executable).parent / "driftd"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORDS = [
    "card",
    "payment",
    "transfer",
    "refund",
    "account",
    "balance",
    "pin",
    "limit",
    "fee",
    "exchange",
    "rate",
    "top",
    "up",
    "cash",
    "withdrawal",
    "declined",
    "pending",
    "verify",
    "identity",
    "lost",
    "stolen",
    "blocked",
    "contactless",
    "statement",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", required=True, help="a PostgreSQL server's URL")
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--signals", default="descriptors,text")
    parser.add_argument("--setups", default="1,2", help="replica counts to run, in order")
    args = parser.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    results = []
    for replicas in [int(n) for n in args.setups.split(",")]:
        results.append(run_setup(args, replicas))
    print(json.dumps(results, indent=2))
    if len(results) == 2 and results[0]["checks_per_minute"]:
        ratio = results[1]["checks_per_minute"] / results[0]["checks_per_minute"]
        print(f"# two replicas / one: {ratio:.2f}x checks per minute")


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    port: int
    core: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def run_setup(args: argparse.Namespace, count: int) -> dict[str, Any]:
    server = make_url(normalize_url(args.postgres))
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    url = server.set(database=DATABASE).render_as_string(hide_password=False)
    folder = Path(tempfile.mkdtemp(prefix="check-capacity-"))
    names = [f"d{i:03d}" for i in range(args.deployments)]
    config = folder / "driftd.yaml"
    config.write_text(config_text(names, url, args.samples, args.signals.split(",")))
    try:
        filled = fill(config, url, names, args.samples)
        print(f"# {count} replica(s): stored {filled:,} samples", flush=True)
        replicas = [start(config, folder, core) for core in range(count)]
        try:
            for each in replicas:
                wait_ready(each)
            # Measure from a minute's start on, after one full minute of ticks.
            now = time.time()
            begin = (now // 60 + 2) * 60 + 5
            time.sleep(begin - now)
            cpu_before = {each.port: tree_cpu(each.process.pid) for each in replicas}
            postgres_before = postgres_cpu()
            runs_before = {each.port: check_runs(each) for each in replicas}
            started = datetime.now(UTC)
            time.sleep(args.minutes * 60)
            ended = datetime.now(UTC)
            cpu = {
                each.port: tree_cpu(each.process.pid) - cpu_before[each.port] for each in replicas
            }
            runs = {
                each.port: Counter(check_runs(each)) - Counter(runs_before[each.port])
                for each in replicas
            }
            postgres = postgres_cpu() - postgres_before
        finally:
            for each in replicas:
                each.process.send_signal(signal.SIGTERM)
            for each in replicas:
                each.process.wait(timeout=60)
        return report(url, count, replicas, started, ended, cpu, postgres, runs, args)
    finally:
        admin.dispose()
        with create_engine(server, isolation_level="AUTOCOMMIT").connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))


def config_text(names: list[str], url: str, samples: int, signals: list[str]) -> str:
    deployments = [
        {
            "name": name,
            "kind": "prompted",
            "task": "generation",
            "prompt": {"model": "gpt-4o-mini", "system": "You help bank customers."},
            "monitor": {
                "schedule": "every 1m",
                "window": "1h",
                "signals": signals,
                "min_rows": min(20, samples),
                "max_rows": samples,
                "text_max_rows": samples,
                "timeout": "50s",
            },
        }
        for name in names
    ]
    return json.dumps(
        {
            "storage": {"url": url},
            "scheduling": {"check_workers": 1, "catch_up": False},
            "deployments": deployments,
        },
        indent=2,
    )


def fill(config_path: Path, url: str, names: list[str], samples: int) -> int:
    """``samples`` per hour over the last two hours of each deployment, through the pipeline."""
    config = load_config(config_path, environ={})
    store = Store.open(url)
    upgrade(store.engine)
    now = datetime.now(UTC)
    total = 0
    for index, name in enumerate(names):
        store.ensure_deployment(name, "prompted", "generation")
        rng = random.Random(index)
        items = []
        for k in range(2 * samples):
            ts = now - timedelta(hours=2) + timedelta(seconds=7200 * k / (2 * samples))
            question = " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(6, 20)))
            items.append(SampleIn(request_id=f"r{k}", ts=ts, input=question, output=answer))
        prepared = DeploymentPipeline(config.deployment(name)).prepare(items, now)
        store.insert_samples(name, prepared.samples)
        total += len(prepared.samples)
    store.engine.dispose()
    return total


def start(config: Path, folder: Path, core: int) -> Replica:
    with socket_port() as port:
        pass
    log = (folder / f"driftd-{core}.log").open("wb")
    process = subprocess.Popen(
        [str(DRIFTD), "serve", "-c", str(config), "--port", str(port)],
        cwd=folder,
        env={k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # Pinned before it execs: its check worker and every other child inherit the core.
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    return Replica(process, port, core)


class socket_port:
    """A free port on 127.0.0.1 (closed again before the server binds it)."""

    def __enter__(self) -> int:
        import socket

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        return int(self.socket.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.socket.close()


def wait_ready(replica: Replica, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise RuntimeError(f"driftd serve on core {replica.core} exited early")
        try:
            if httpx.get(f"{replica.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"driftd serve on core {replica.core} not ready after {timeout:g} s")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        pending += [int(child) for child in children]
    return total


def postgres_cpu() -> float:
    """CPU seconds of every ``postgres`` process on this machine (the server and its backends:
    other users of the server are counted too, so this is an upper bound of the run's)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if head.split("(", 1)[1] == "postgres":
            fields = tail.split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def check_runs(replica: Replica) -> dict[str, float]:
    answer = httpx.get(f"{replica.url}/metrics", timeout=10)
    answer.raise_for_status()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "driftd_scheduler_runs_total" and sample.labels["kind"] == "check":
                found[sample.labels["status"]] = sample.value
    return found


def report(
    url: str,
    count: int,
    replicas: list[Replica],
    started: datetime,
    ended: datetime,
    cpu: dict[int, float],
    postgres: float,
    runs: dict[int, Counter[str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        done = connection.execute(
            select(func.count())
            .select_from(Check)
            .where(Check.finished_at >= started, Check.finished_at < ended)
        ).scalar_one()
        rows = Counter(connection.execute(select(Check.deployment_id, Check.scheduled_for)).all())
        claims = connection.execute(
            select(RunClaim.deployment_id, RunClaim.scheduled_for, RunClaim.finished_at).where(
                RunClaim.job_kind == "check"
            )
        ).all()
    engine.dispose()
    twice = [tick for tick, n in rows.items() if n > 1]
    assert not twice, f"ticks checked twice: {twice[:5]}"
    finished = {(d, when) for d, when, end in claims if end is not None}
    assert finished <= set(rows), f"finished claims without a check: {len(finished - set(rows))}"
    assert set(rows) <= {(d, when) for d, when, _ in claims}, "a check without a claim"
    minutes = (ended - started).total_seconds() / 60
    per_replica = []
    for each in replicas:
        ran = runs[each.port]["ran"] + runs[each.port]["rerun"]
        per_replica.append(
            {
                "core": each.core,
                "ran": int(ran),
                "claimed_elsewhere": int(runs[each.port]["claimed_elsewhere"]),
                "missed": int(runs[each.port]["missed"]),
                "cpu_seconds": round(cpu[each.port], 1),
                "cpu_seconds_per_check": round(cpu[each.port] / ran, 3) if ran else None,
            }
        )
    result = {
        "replicas": count,
        "deployments": args.deployments,
        "samples_per_window": args.samples,
        "signals": args.signals,
        "minutes": round(minutes, 2),
        "checks_completed": int(done),
        "checks_per_minute": round(done / minutes, 1),
        "ticks_due_per_minute": args.deployments,
        "claims": len(claims),
        "postgres_cpu_seconds": round(postgres, 1),
        "postgres_cpu_seconds_per_check": round(postgres / done, 3) if done else None,
        "ticks_checked_twice": len(twice),
        "per_replica": per_replica,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
