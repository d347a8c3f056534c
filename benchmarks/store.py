"""Store throughput: bulk sample inserts and capped window draws, SQLite beside PostgreSQL.

    python benchmarks/store.py [--rows 100000] [--postgres URL]

Both stores are measured in the same run, one after the other, so their ratio is meaningful on
a shared, noisy machine even when the absolute numbers are not. PostgreSQL gets a fresh database
that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from daemon.store import NewSample, Store, normalize_url, upgrade

START = datetime(2026, 1, 1, tzinfo=UTC)


def samples(count: int, offset: int = 0) -> list[NewSample]:
    """Samples shaped like ingest's: text in and out, a prediction, descriptors, latency."""
    return [
        NewSample(
            f"req-{offset + i}",
            START + timedelta(seconds=offset + i),
            input=f"I still have not received my new card, order {offset + i}",
            output="card_arrival",
            prediction="card_arrival",
            confidence=0.93,
            descriptors={"chars": 52, "words": 10, "non_letter_share": 0.12},
            latency_ms=41.0,
        )
        for i in range(count)
    ]


@contextmanager
def sqlite_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(f"sqlite:///{Path(folder) / 'bench.db'}")
        upgrade(store.engine)
        yield store
        store.close()


@contextmanager
def postgres_store(url: str) -> Iterator[Store]:
    admin = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"driftd_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    store = Store.open(make_url(normalize_url(url)).set(database=name).render_as_string(False))
    try:
        upgrade(store.engine)
        yield store
    finally:
        store.close()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def timed(action: Callable[[], object], repeat: int = 3) -> float:
    """Median seconds of ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure(store: Store, rows: int) -> dict[str, float]:
    store.ensure_deployment("bench", "finetuned", "classification")
    results: dict[str, float] = {}
    # Bulk: the whole load in calls of 10,000 (a backfill, or the benchmark of issue 2).
    chunks = [samples(min(10_000, rows - offset), offset) for offset in range(0, rows, 10_000)]
    started = time.perf_counter()
    for chunk in chunks:
        store.insert_samples("bench", chunk)
    results["bulk insert, rows/s"] = rows / (time.perf_counter() - started)
    # Ingest-like: batches of 100 new samples, one transaction each.
    batches = [samples(100, rows + 100 * i) for i in range(50)]
    started = time.perf_counter()
    for batch in batches:
        store.insert_samples("bench", batch)
    results["batches of 100, rows/s"] = 5_000 / (time.perf_counter() - started)
    # Re-sent batches: every row a duplicate.
    started = time.perf_counter()
    for batch in batches[:10]:
        store.insert_samples("bench", batch)
    results["re-sent batches of 100, rows/s"] = 1_000 / (time.perf_counter() - started)
    end = START + timedelta(seconds=rows)
    results["window of all rows, draw 5,000, s"] = timed(
        lambda: store.read_window("bench", START, end, max_rows=5_000, seed=1)
    )
    results["window of 10% of rows, draw 5,000, s"] = timed(
        lambda: store.read_window(
            "bench", START, START + timedelta(seconds=rows // 10), max_rows=5_000, seed=1
        )
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with sqlite_store() as store:
        lite = measure(store, args.rows)
    with postgres_store(args.postgres) as store:
        pg = measure(store, args.rows)
    print(f"{args.rows:,} samples; {platform.node()}, {platform.processor() or platform.machine()}")
    print("| measure | SQLite | PostgreSQL | PostgreSQL / SQLite |")
    print("|---|---|---|---|")
    for key in lite:
        digits = 0 if "rows/s" in key else 3
        ratio = pg[key] / lite[key]
        print(f"| {key} | {lite[key]:,.{digits}f} | {pg[key]:,.{digits}f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
