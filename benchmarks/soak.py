"""Memory under a long soak: 1M stored samples, steady ingest, checks every minute.

    python benchmarks/soak.py [--stored 1000000] [--minutes 30] [--rate 2000] [--every 10]

Starts `driftd serve` on a fresh SQLite store (its defaults: redaction and descriptors on, ingest
workers, check workers), fills it with ``--stored`` Banking77 samples spread over the last eight
hours, then sends ``--rate`` samples per second for ``--minutes`` while the deployment is checked
every minute (10-minute windows against the previous window, embeddings of the capped draw). The
resident memory of the serve process tree (the server, its ingest and check workers and anything
else it started) is summed every ``--every`` seconds. It prints the samples, a text plot and the
figures that say whether memory climbs: the first and last third's medians, the peak, and the
least-squares slope in MiB per hour over the soak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from ingest import ANSWERS, TOKEN, questions, server
from ingest import CONFIG as INGEST_CONFIG

# ingest.py's deployment, checked every minute over 10-minute windows.
CONFIG = INGEST_CONFIG + (
    "    monitor: {schedule: every 1m, window: 10m, max_rows: 5000, min_rows: 100}\n"
)
BATCH = 200
FILL_CLIENTS = 8


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += tree(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass  # a worker that was just replaced
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """Rss and Pss of one process, KiB (Pss shares each page among the processes mapping it)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                found[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(summed RSS, summed PSS) of the process tree of ``pid``, MiB. RSS counts a shared library
    once per process mapping it; PSS splits it, so its sum is what the tree really holds."""
    readings = [memory_kib(p) for p in tree(pid)]
    return (
        sum(r.get("Rss", 0) for r in readings) / 1024,
        sum(r.get("Pss", 0) for r in readings) / 1024,
    )


def batch_body(texts: list[str], first: int, count: int, when: datetime | None) -> bytes:
    samples = []
    for i in range(first, first + count):
        sample: dict[str, object] = {
            "request_id": f"s-{i}",
            "input": texts[i % len(texts)],
            "output": ANSWERS[i % len(ANSWERS)],
            "latency_ms": 120.0 + i % 50,
            "tokens_in": 30,
            "tokens_out": 25,
        }
        if when is not None:
            sample["ts"] = (when + timedelta(microseconds=i % 997)).isoformat()
        samples.append(sample)
    return json.dumps({"samples": samples}).encode()


def post(http: httpx.Client, url: str, body: bytes) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    while True:
        response = http.post(url, content=body, headers=headers)
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "0.05")))
            continue
        response.raise_for_status()
        return int(response.json()["new"])


def fill(url: str, texts: list[str], stored: int) -> float:
    """Store ``stored`` samples spread over the eight hours before now; seconds taken."""
    start = datetime.now(UTC) - timedelta(hours=8)
    step = timedelta(hours=8) / stored
    batches = list(range(0, stored, 1000))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if not batches:
                        return
                    first = batches.pop()
                post(http, url, batch_body(texts, first, 1000, start + step * first))

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(FILL_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


Reading = tuple[float, float, float]  # seconds into the soak, summed RSS MiB, summed PSS MiB


def soak(
    url: str, pid: int, texts: list[str], first: int, rate: int, seconds: float, every: float
) -> tuple[list[Reading], int]:
    """Send ``rate`` samples/s for ``seconds``, reading the tree's memory every ``every`` s."""
    readings: list[Reading] = []
    sent = 0
    began = time.perf_counter()
    next_reading = began
    with httpx.Client(timeout=120) as http:
        while (now := time.perf_counter()) - began < seconds:
            if now >= next_reading:
                readings.append((now - began, *tree_memory_mib(pid)))
                next_reading += every
            due = int((now - began) * rate)
            if sent < due:
                count = min(BATCH, due - sent)
                sent += post(http, url, batch_body(texts, first + sent, count, None))
            else:
                time.sleep(BATCH / rate / 4)
    readings.append((time.perf_counter() - began, *tree_memory_mib(pid)))
    return readings, sent


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    spread = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / spread * 3600


def text_plot(points: list[tuple[float, float]], width: int = 60, height: int = 12) -> str:
    """(seconds, MiB) as rows of characters: minutes across, MiB up from 0."""
    top = max(m for _, m in points) * 1.1
    end = points[-1][0]
    columns: list[list[float]] = [[] for _ in range(width)]
    for t, m in points:
        columns[min(width - 1, int(t / end * width))].append(m)
    heights: list[float] = []
    for column in columns:  # an empty column (fewer readings than columns) repeats its left
        heights.append(statistics.fmean(column) if column else (heights[-1] if heights else 0.0))
    lines = []
    for row in range(height, 0, -1):
        level = top * row / height
        lines.append(f"{level:7.0f} MiB |" + "".join("#" if h >= level else " " for h in heights))
    lines.append(" " * 12 + "+" + "-" * width)
    lines.append(" " * 13 + f"0 min{' ' * (width - 11)}{end / 60:.0f} min")
    return "\n".join(lines)


def processes(pid: int) -> list[tuple[str, float]]:
    """Each process of the tree of ``pid``: its command line, shortened, and its PSS in MiB."""
    found = []
    for member in tree(pid):
        try:
            argv = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        command = " ".join(a.decode(errors="replace") for a in argv if a)[-70:]
        found.append((command, memory_kib(member).get("Pss", 0) / 1024))
    return found


def stored_checks(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        return dict(connection.execute("SELECT status, count(*) FROM checks GROUP BY status"))


def summary(name: str, points: list[tuple[float, float]]) -> str:
    third = max(1, len(points) // 3)
    first = statistics.median(m for _, m in points[:third])
    last = statistics.median(m for _, m in points[-third:])
    return (
        f"{name} MiB: first third median {first:.0f}, last third median {last:.0f}, "
        f"peak {max(m for _, m in points):.0f}, slope {slope_per_hour(points):+.1f} MiB/h"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=2000, help="samples per second")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between readings")
    args = parser.parse_args()
    texts = questions()
    random.Random(3).shuffle(texts)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        database = folder / "soak.db"
        with server(f"sqlite:///{database}", folder, text=CONFIG) as (port, pid):
            url = f"http://127.0.0.1:{port}/v1/deployments/support/samples"
            fill_seconds = fill(url, texts, args.stored)
            after_fill = tree_memory_mib(pid)
            readings, sent = soak(
                url, pid, texts, args.stored, args.rate, args.minutes * 60, args.every
            )
            members = processes(pid)
            checks = stored_checks(database)
        size_gib = database.stat().st_size / 2**30
    seconds = readings[-1][0]
    print(
        f"{platform.machine()}, {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d}; "
        f"filled {args.stored:,} samples in {fill_seconds:.0f} s "
        f"({args.stored / fill_seconds:,.0f}/s); tree after the fill: RSS {after_fill[0]:.0f} "
        f"MiB, PSS {after_fill[1]:.0f} MiB"
    )
    print(
        f"soak: {sent:,} samples in {seconds / 60:.1f} min ({sent / seconds:,.0f}/s); "
        f"checks stored: {checks}; store {size_gib:.2f} GiB; {len(readings)} readings"
    )
    pss = [(t, p) for t, _, p in readings]
    print(summary("summed RSS", [(t, r) for t, r, _ in readings]))
    print(summary("summed PSS", pss))
    print("PSS of the tree over the soak:")
    print(text_plot(pss))
    print("processes at the end (PSS MiB):")
    for command, mib in members:
        print(f"  {mib:7.0f}  {command}")
    print("readings (s, RSS, PSS):", " ".join(f"{t:.0f}:{r:.0f}:{p:.0f}" for t, r, p in readings))


if __name__ == "__main__":
    main()
