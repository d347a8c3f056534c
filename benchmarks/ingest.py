"""HTTP batch ingest throughput and memory, SQLite beside PostgreSQL, beside raw executemany,
and one `driftd serve` replica on PostgreSQL beside two.

    python benchmarks/ingest.py [--samples 100000] [--batch 500] [--clients 8]

Starts `driftd serve` (redaction and descriptors on, the defaults) on each store in turn, sends
pre-built batches of Banking77 questions with answers (5% of them carrying an e-mail address or
a card number) from concurrent clients, and reports acknowledged samples per second and the
server's peak RSS. The same rows, in their stored form, are then written with the driver's raw
`executemany` into a fresh schema: the ceiling the database itself sets. Last, on PostgreSQL,
one replica pinned to core 0 against two replicas pinned to cores 0 and 1 (the clients split
between them), with the CPU seconds per 1,000 samples of each process: the replica's server, its
ingest workers, and the PostgreSQL backends that serve it. All are measured in one run, so their
ratios hold on a noisy shared machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from daemon.config import parse_config
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.store import NewSample, Store, normalize_url, upgrade
from daemon.store.repository import ROW_COLUMNS, draw_for
from daemon.store.types import to_json_text

ROOT = Path(__file__).resolve().parents[1]
DRIFTD = Path(sys.executable).parent / "driftd"
TOKEN = "bench-token"
CONFIG = """\
ingest: {max_batch: 5000, queue_batches: 64}
deployments:
  - name: support
    kind: prompted
    task: generation
    prompt: {model: gpt-4o-mini, system: You help bank customers.}
"""
ANSWERS = [
    "Cards usually arrive within 5 working days; you can track delivery in the app.",
    "You can freeze the card at once in the app under Card > Security, then order a new one.",
    "Exchange rates are shown in the app and change during the day with the market.",
    "I'm sorry, but I can't see your account. Please contact a human agent in the app.",
]


def questions() -> list[str]:
    with (ROOT / "examples/banking77/data/test.csv").open(encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def bodies(total: int, batch: int, tag: str) -> list[bytes]:
    texts = questions()
    rng = random.Random(7)
    out = []
    for start in range(0, total, batch):
        samples = []
        for i in range(start, min(total, start + batch)):
            text = texts[i % len(texts)]
            roll = rng.random()
            if roll < 0.025:
                text += f" Reach me at client{i}@example.com"
            elif roll < 0.05:
                text += " My card 4111 1111 1111 1111 was declined."
            samples.append(
                {
                    "request_id": f"{tag}-{i}",
                    "input": text,
                    "output": ANSWERS[i % len(ANSWERS)],
                    "latency_ms": 120.0 + i % 50,
                    "tokens_in": 30,
                    "tokens_out": 25,
                }
            )
        out.append(json.dumps({"samples": samples}).encode())
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server(
    url: str, folder: Path, core: int | None = None, text: str = CONFIG
) -> Iterator[tuple[int, int]]:
    """A running `driftd serve` on ``url`` with the configuration ``text``, pinned to ``core``
    if given (its ingest workers inherit the pinning): yields (port, pid)."""
    config = folder / f"driftd-{core}.yaml"
    config.write_text(text)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    environ |= {"DRIFTD_STORAGE_URL": url, "DRIFTD_INGEST_TOKENS": TOKEN}
    process = subprocess.Popen(
        [str(DRIFTD), "serve", "-c", str(config), "--port", str(port)],
        cwd=folder,
        env=environ,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=None if core is None else lambda: os.sched_setaffinity(0, {core}),
    )
    assert process.stderr is not None
    for line in process.stderr:
        if json.loads(line)["message"] == "driftd ready":
            break
    threading.Thread(target=process.stderr.read, daemon=True).start()
    try:
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process and all its descendants (the ingest workers), MiB."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            total += int(line.split()[1])
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += int(peak_rss_mib(int(child)) * 1024)
    return total / 1024


def children_of(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(targets: list[str], payloads: list[bytes], clients: int) -> tuple[int, int, float]:
    """Post every payload, ``clients`` at a time spread over ``targets``, until each is stored;
    returns (samples stored, 429 retries, seconds)."""
    work = list(enumerate(payloads))
    lock = threading.Lock()
    stored = 0
    retries = 0

    def client(target: str) -> None:
        nonlocal stored, retries
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        with httpx.Client(timeout=60) as http:
            while True:
                with lock:
                    if not work:
                        return
                    _, body = work.pop()
                while True:
                    response = http.post(target, content=body, headers=headers)
                    if response.status_code == 429:
                        with lock:
                            retries += 1
                        time.sleep(0.05)
                        continue
                    response.raise_for_status()
                    with lock:
                        stored += response.json()["new"]
                    break

    started = time.perf_counter()
    threads = [
        threading.Thread(target=client, args=(targets[n % len(targets)],)) for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stored, retries, time.perf_counter() - started


def target_of(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/deployments/support/samples"


def http_ingest(url: str, folder: Path, payloads: list[bytes], clients: int) -> dict[str, float]:
    with server(url, folder) as (port, pid):
        stored, retries, elapsed = send([target_of(port)], payloads, clients)
        rss = peak_rss_mib(pid)
    return {"samples/s": stored / elapsed, "peak RSS MiB": rss, "429 retries": retries}


def backends(url: str) -> list[int]:
    """The PostgreSQL server processes serving driftd on the database of ``url``."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            found = connection.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'driftd'"
            )
            return [int(pid) for (pid,) in found]
    finally:
        engine.dispose()


def replicas(
    url: str, folder: Path, payloads: list[bytes], clients: int, cores: list[int]
) -> dict[str, float]:
    """One pinned replica per core of ``cores`` on ``url``, the clients split between them:
    samples/s and CPU seconds per 1,000 samples of the servers, workers and backends."""
    warmup, measured = payloads[: 2 * len(cores)], payloads[2 * len(cores) :]
    with ExitStack() as stack:
        servers = [stack.enter_context(server(url, folder, core)) for core in cores]
        targets = [target_of(port) for port, _ in servers]
        for target, body in zip(targets * 2, warmup, strict=True):
            send([target], [body], 1)  # every replica has its connections before the clock
        groups = {
            "server": [pid for _, pid in servers],
            "workers": [child for _, pid in servers for child in children_of(pid)],
            "PostgreSQL": backends(url),
        }
        before = {pid: cpu_seconds(pid) for pids in groups.values() for pid in pids}
        stored, retries, elapsed = send(targets, measured, clients)
        groups["PostgreSQL"] = backends(url)  # and any it opened meanwhile, from 0
        spent = {
            name: sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids)
            for name, pids in groups.items()
        }
    per_thousand = {f"{name} CPU s/1k": 1000 * cpu / stored for name, cpu in spent.items()}
    return {"samples/s": stored / elapsed, "429 retries": retries} | per_thousand


def raw_executemany(url: str, payloads: list[bytes]) -> dict[str, float]:
    """The same rows in stored form, written by the driver alone (no HTTP, no checks)."""
    store = Store.open(url)
    upgrade(store.engine)
    deployment = parse_config(CONFIG, environ={}).deployments[0]
    store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
    pipeline = DeploymentPipeline(deployment)
    now = datetime.now(UTC)
    prepared = []
    for body in payloads:
        items = [SampleIn.model_validate(s) for s in json.loads(body)["samples"]]
        prepared.extend(pipeline.prepare(items, now).samples)
    dialect = store.engine.dialect.name
    rows = [stored_form(deployment.name, sample, now, dialect) for sample in prepared]
    mark = "%s" if dialect == "postgresql" else "?"
    columns = ", ".join(ROW_COLUMNS)
    sql = f"INSERT INTO samples ({columns}) VALUES ({', '.join([mark] * len(ROW_COLUMNS))})"
    with store.engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        started = time.perf_counter()
        if store.engine.dialect.name == "sqlite":
            cursor.execute("BEGIN")  # the engine runs SQLite in autocommit mode otherwise
        for start in range(0, len(rows), 5000):
            cursor.executemany(sql, rows[start : start + 5000])
        raw.commit()
        elapsed = time.perf_counter() - started
    store.close()
    return {"samples/s": len(rows) / elapsed}


def stored_form(deployment: str, sample: NewSample, now: datetime, dialect: str) -> tuple[Any, ...]:
    """A sample as a tuple of ``ROW_COLUMNS``, the values the driver binds: JSON as text,
    times as naive UTC on SQLite (as its column type writes them)."""
    values: list[Any] = [1, draw_for(deployment, sample.request_id), now]
    values += [getattr(sample, name) for name in ROW_COLUMNS[3:]]
    for i, value in enumerate(values):
        if isinstance(value, dict | list):
            values[i] = to_json_text(value)
        elif isinstance(value, datetime) and dialect == "sqlite":
            values[i] = value.astimezone(UTC).replace(tzinfo=None)
    return tuple(values)


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    admin = create_engine(
        normalize_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    name = f"driftd_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(normalize_url(server_url)).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lite = f"sqlite:///{folder / 'http.db'}"
        results["HTTP ingest, SQLite"] = http_ingest(
            lite, folder, bodies(args.samples, args.batch, "s"), args.clients
        )
        with postgres_database(args.postgres) as url:
            results["HTTP ingest, PostgreSQL"] = http_ingest(
                url, folder, bodies(args.samples, args.batch, "p"), args.clients
            )
        raw_payloads = bodies(args.samples, args.batch, "r")
        results["raw executemany, SQLite"] = raw_executemany(
            f"sqlite:///{folder / 'raw.db'}", raw_payloads
        )
        with postgres_database(args.postgres) as url:
            results["raw executemany, PostgreSQL"] = raw_executemany(url, raw_payloads)
        pinned: dict[str, dict[str, float]] = {}
        for cores in ([0], [0, 1]):
            with postgres_database(args.postgres) as url:
                name = f"{len(cores)} replica(s), core {'+'.join(map(str, cores))}"
                pinned[name] = replicas(
                    url, folder, bodies(args.samples, args.batch, "q"), args.clients, cores
                )
    print(
        f"{args.samples:,} samples, batches of {args.batch}, {args.clients} clients; "
        f"{platform.machine()}, {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d}"
    )
    print("| path | samples/s | server peak RSS MiB | 429 retries |")
    print("|---|---|---|---|")
    for name, row in results.items():
        rss = row.get("peak RSS MiB")
        retries = row.get("429 retries")
        print(
            f"| {name} | {row['samples/s']:,.0f} | "
            f"{'' if rss is None else f'{rss:,.0f}'} | "
            f"{'' if retries is None else f'{retries:.0f}'} |"
        )
    speed = {name: row["samples/s"] for name, row in results.items()}
    http = speed["HTTP ingest, PostgreSQL"]
    print(
        f"\nPostgreSQL HTTP / SQLite HTTP: {http / speed['HTTP ingest, SQLite']:.2f}; "
        f"PostgreSQL HTTP / raw executemany PostgreSQL: "
        f"{http / speed['raw executemany, PostgreSQL']:.2f}\n"
    )
    print(
        "| PostgreSQL, pinned | samples/s | server CPU s/1k | workers CPU s/1k "
        "| PostgreSQL CPU s/1k | 429 retries |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in pinned.items():
        print(
            f"| {name} | {row['samples/s']:,.0f} | {row['server CPU s/1k']:.3f} | "
            f"{row['workers CPU s/1k']:.3f} | {row['PostgreSQL CPU s/1k']:.3f} | "
            f"{row['429 retries']:.0f} |"
        )
    one, two = (row["samples/s"] for row in pinned.values())
    print(f"\ntwo replicas / one: {two / one:.2f}")


if __name__ == "__main__":
    main()
