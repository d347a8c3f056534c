"""HTTP batch ingest throughput and memory, SQLite beside PostgreSQL, beside raw executemany.

    python benchmarks/ingest.py [--samples 100000] [--batch 500] [--clients 4]

Starts `driftd serve` (redaction and descriptors on, the defaults) on each store in turn, sends
pre-built batches of Banking77 questions with answers (5% of them carrying an e-mail address or
a card number) from concurrent clients, and reports acknowledged samples per second and the
server's peak RSS. The same rows, in their stored form, are then written with the driver's raw
`executemany` into a fresh schema: the ceiling the database itself sets. All four are measured
in one run, so their ratios hold on a noisy shared machine.
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
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from daemon.config import parse_config
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.store import Store, normalize_url, upgrade
from daemon.store.repository import ROW_COLUMNS, RowEncoder

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
def server(url: str, folder: Path, text: str = CONFIG) -> Iterator[tuple[int, int]]:
    """A running `driftd serve` on ``url`` with the configuration ``text``: yields (port, pid)."""
    config = folder / "driftd.yaml"
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


def http_ingest(url: str, folder: Path, payloads: list[bytes], clients: int) -> dict[str, float]:
    with server(url, folder) as (port, pid):
        target = f"http://127.0.0.1:{port}/v1/deployments/support/samples"
        work = list(enumerate(payloads))
        lock = threading.Lock()
        stored = 0
        retries = 0

        def client() -> None:
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
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        rss = peak_rss_mib(pid)
    return {"samples/s": stored / elapsed, "peak RSS MiB": rss, "429 retries": retries}


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
    rows = RowEncoder(dialect).encode(deployment.name, 1, prepared).rows
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


if __name__ == "__main__":
    main()
