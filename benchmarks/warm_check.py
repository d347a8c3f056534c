"""Warm checks: the first check of a window once the background embedder has done its work.

    python benchmarks/warm_check.py [--parts a,b,c] [--size 100000] [--serve-samples 20000]
                                    [--background 90] [--ingest-samples 200000] [--settle 30]
                                    [--workdir DIR]

(a) The first scheduled check of a 100k window beside naive Evidently on the same windows. The
store is filled as ``benchmarks/check.py`` fills it (reference window, then a stable and a
shifted window of ``--size`` Banking77 samples each, 1 day long); in a child process the
background embedder (``daemon.warm.Warmer``, as the check worker runs it) sweeps the draws of
the windows the check at ``now`` reads and embeds what they lack, then ``Checker.run`` runs the
first check of the window, then a second. The naive run is ``benchmarks/check.py``'s (every
sample of both windows to Evidently, embeddings given), on the shifted and the stable window.

(b) ``driftd serve`` with one deployment (6 h window, default monitor): ``--serve-samples``
samples in each of two 6 h windows ending now are sent through the HTTP API, then the daemon
keeps running for ``--background`` seconds and is stopped; then ``driftd check`` runs twice and
each run's wall time is measured (the command's imports included). With ``monitor.warm: false``
the same, as the control.

(c) HTTP ingest throughput of ``--ingest-samples`` samples (8 clients, batches of 500) into
``driftd serve`` with warm checks on and off, alternating, twice each, ``--settle`` seconds after
the daemon is ready (its check worker boots in the background, with warm checks loading the
model: ``--settle 0`` measures ingest during that boot).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from check import run_child as run_check_child
from check_setup import WINDOW, config_text, corpus, fill, layouts, memory, preload
from ingest import ANSWERS, free_port, questions

from daemon.config import load_config
from daemon.store import Store, upgrade

ROOT = Path(__file__).resolve().parents[1]
DRIFTD = Path(sys.executable).parent / "driftd"
TOKEN = "bench-token"
SERVE_CONFIG = """\
ingest: {{max_batch: 5000, queue_batches: 64}}
storage: {{url: "sqlite:///{db}", snapshots: {snapshots}}}
deployments:
  - name: support
    kind: prompted
    task: generation
    prompt: {{model: gpt-4o-mini, system: You help bank customers.}}
    monitor: {{window: 6h, warm: {warm}}}
"""


# --- (a) ---------------------------------------------------------------------------------------


def child_warm(spec: dict[str, Any]) -> dict[str, Any]:
    """The background embedder's sweep until idle, then the window's 1st and 2nd check."""
    from daemon.checks import Checker
    from daemon.warm import WarmChannel, Warmer, warm_plans

    preload()
    config = load_config(spec["config"])
    now = datetime.fromisoformat(spec["now"])
    with Store.open(config.storage.url) as store:
        checker = Checker(config, store)
        plans = [
            p for p in warm_plans(config, store.deployment_ids()) if p.deployment == spec["name"]
        ]
        channel = WarmChannel(plans, config.scheduling.warm_queue)
        warmer = Warmer(channel, store, checker.encoder, threading.Lock(), clock=lambda: now)
        started = time.perf_counter()
        warmed = 0
        while done := warmer.step():
            warmed += done
        background = time.perf_counter() - started
        channel.close()
        runs = []
        for _ in range(2):
            started = time.perf_counter()
            outcome = checker.run(spec["name"], now=now, window=WINDOW)
            runs.append((time.perf_counter() - started, outcome))
    (first_s, first), (second_s, _) = runs
    return {
        "background_s": background,
        "warmed": warmed,
        "first_s": first_s,
        "second_s": second_s,
        "embedded_by_check": first.embedded,
        "status": first.result.status,
        "drifted": sorted(s.name for s in first.result.signals if s.drifted),
        "embedding_score": next(
            (s.score for s in first.result.signals if s.name == "embedding"), None
        ),
        "peak_rss_mib": memory()["VmHWM"],
        "load": os.getloadavg()[0],
    }


def run_child(spec: dict[str, Any], logs: Path) -> dict[str, Any]:
    log = logs / f"{spec['label']}.log"
    print(f"  {spec['label']} ...", file=sys.stderr, flush=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    with log.open("w", encoding="utf-8") as errors:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['label']} failed:\n{log.read_text(encoding='utf-8')[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def part_a(folder: Path, size: int) -> None:
    logs = folder / "logs"
    config_path = folder / "driftd.yaml"
    config_path.write_text(
        config_text([size], folder / "bench.db", folder / "snapshots"), encoding="utf-8"
    )
    config = load_config(config_path)
    data = corpus(config)
    common = {"config": str(config_path), "folder": str(folder)}
    texts = json.dumps(data.texts)
    if (
        not (folder / "embeddings.npy").exists()
        or (folder / "texts.json").read_text(encoding="utf-8") != texts
    ):
        (folder / "texts.json").write_text(texts, encoding="utf-8")
        # The naive run looks its embeddings up in a table of every distinct text.
        run_check_child({"kind": "embed", "label": "embed-corpus", **common}, logs)
    (folder / "bench.db").unlink(missing_ok=True)
    (plan,) = layouts([size], size)
    with Store.open(config.storage.url) as store:
        upgrade(store.engine)
        filled, fill_s = fill(store, data, [plan])
    print(f"(a) {filled:,} samples stored in {fill_s:.0f} s", file=sys.stderr)
    assert plan.stable_now is not None
    rows = []
    for name, now in (("shifted", plan.shifted_now), ("stable", plan.stable_now)):
        run = {**common, "deployment": plan.deployment, "name": plan.deployment}
        warm = run_child(
            {"kind": "warm", "label": f"warm-{name}", **run, "now": now.isoformat()}, logs
        )
        naive = run_check_child(
            {"kind": "naive", "label": f"naive-{name}", **run, "now": now.isoformat()},
            logs,
            timeout=900,
            max_rss_mib=8192,
        )
        rows.append((name, warm, naive))
    print(f"\n(a) {size:,} samples per window, draws capped at 5,000 a side\n")
    print(
        "| window | background sweep, s (embeddings) | driftd 1st check, s (embedded by it) "
        "| driftd 2nd check, s | naive Evidently, s | naive / 1st | driftd verdict | naive "
        "verdict (drifted) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, warm, naive in rows:
        naive_s = naive.get("wall_s")
        ratio = f"{naive_s / warm['first_s']:.1f}x" if naive_s else "—"
        naive_drifted = sorted(k for k, v in naive.get("verdicts", {}).items() if v)
        naive_verdict = (
            naive.get("stopped") if "stopped" in naive else ("drift" if naive["drift"] else "ok")
        )
        print(
            f"| {name} | {warm['background_s']:.1f} ({warm['warmed']:,}) | "
            f"{warm['first_s']:.1f} ({warm['embedded_by_check']}) | {warm['second_s']:.1f} | "
            f"{naive_s if naive_s is None else round(naive_s, 1)} | {ratio} | "
            f"{warm['status']} ({', '.join(warm['drifted']) or 'none'}) | "
            f"{naive_verdict} ({', '.join(naive_drifted) or 'none'}) |"
        )
    print("\n(a) raw:", json.dumps(rows, default=str)[:4000])


# --- (b), (c) ----------------------------------------------------------------------------------


@contextmanager
def serve(folder: Path, *, warm: bool, tag: str) -> Iterator[tuple[int, int, Path]]:
    """A running `driftd serve` on a fresh SQLite store: yields (port, pid, config path)."""
    work = folder / tag
    work.mkdir(parents=True)
    config = work / "driftd.yaml"
    config.write_text(
        SERVE_CONFIG.format(
            db=work / "driftd.db", snapshots=work / "snapshots", warm=str(warm).lower()
        )
    )
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    environ |= {"DRIFTD_INGEST_TOKENS": TOKEN}
    log = (work / "serve.log").open("w")
    process = subprocess.Popen(
        [str(DRIFTD), "serve", "-c", str(config), "--host", "127.0.0.1", "--port", str(port)],
        cwd=work,
        env=environ,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        log.write(line)
        if json.loads(line)["message"] == "driftd ready":
            break
    stderr = process.stderr
    threading.Thread(target=lambda: log.writelines(stderr), daemon=True).start()
    try:
        yield port, process.pid, config
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def payloads(total: int, batch: int, tag: str, end: datetime | None) -> list[bytes]:
    """Batches of Banking77 questions with answers; with ``end``, ``total`` samples spread over
    the two 6 h windows before it (half each), else stamped on arrival."""
    texts = questions()
    out = []
    for start in range(0, total, batch):
        samples = []
        for i in range(start, min(total, start + batch)):
            sample: dict[str, Any] = {
                "request_id": f"{tag}-{i}",
                "input": texts[(i * 7919) % len(texts)],
                "output": ANSWERS[i % len(ANSWERS)],
                "latency_ms": 120.0 + i % 50,
            }
            if end is not None:
                at = end - timedelta(hours=12) + timedelta(hours=12) * (i + 0.5) / total
                sample["ts"] = at.isoformat()
            samples.append(sample)
        out.append(json.dumps({"samples": samples}).encode())
    return out


def send(port: int, bodies: list[bytes], clients: int = 8) -> float:
    """Send every batch from ``clients`` threads; acknowledged samples per second."""
    target = f"http://127.0.0.1:{port}/v1/deployments/support/samples"
    work = list(bodies)
    lock = threading.Lock()
    stored = 0

    def client() -> None:
        nonlocal stored
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        with httpx.Client(timeout=60) as http:
            while True:
                with lock:
                    if not work:
                        return
                    body = work.pop()
                while (
                    response := http.post(target, content=body, headers=headers)
                ).status_code == 429:
                    time.sleep(0.05)
                response.raise_for_status()
                with lock:
                    stored += response.json()["new"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stored / (time.perf_counter() - started)


def scrape(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def timed_check(config: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(DRIFTD), "check", "support", "-c", str(config), "--json"],
        cwd=config.parent,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"driftd check failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    drifted = [s["name"] for s in result["signals"] if s.get("drifted")]
    return wall, f"{result['status']} ({', '.join(drifted) or 'none'})"


def part_b(folder: Path, per_window: int, background: float) -> None:
    print(
        f"\n(b) {per_window:,} samples in each of two 6 h windows through `driftd serve`, "
        f"{background:g} s of background work, then `driftd check` twice\n"
    )
    print(
        "| warm checks | ingest, samples/s | embeddings warmed | skipped (queue full) "
        "| 1st `driftd check`, s | 2nd, s | 1st / 2nd | verdicts |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for warm in (True, False):
        end = datetime.now(UTC) - timedelta(minutes=1)
        bodies = payloads(2 * per_window, 500, f"b{int(warm)}", end)
        with serve(folder, warm=warm, tag=f"b-{'on' if warm else 'off'}") as (port, _, config):
            rate = send(port, bodies)
            time.sleep(background)
            warmed = scrape(port, "driftd_embeddings_warmed_total")
            skipped = scrape(port, "driftd_embeddings_skipped_total")
        first, verdict1 = timed_check(config)
        second, verdict2 = timed_check(config)
        print(
            f"| {'on' if warm else 'off'} | {rate:,.0f} | {warmed:,.0f} | {skipped:,.0f} | "
            f"{first:.1f} | {second:.1f} | {first / second:.2f}x | {verdict1}; {verdict2} |",
            flush=True,
        )


def part_c(folder: Path, samples: int, settle: float) -> None:
    print(
        f"\n(c) HTTP ingest of {samples:,} samples (8 clients, batches of 500), "
        f"{settle:g} s after the daemon is ready\n"
    )
    print("| warm checks | run 1, samples/s | run 2, samples/s | mean |")
    print("|---|---|---|---|")
    rates: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(2):
        for warm in (True, False) if round_ == 0 else (False, True):
            bodies = payloads(samples, 500, f"c{round_}{int(warm)}", None)
            tag = f"c-{round_}-{'on' if warm else 'off'}"
            with serve(folder, warm=warm, tag=tag) as (port, _, _):
                # The check worker boots after the daemon is ready (imports, and with warm
                # checks the model): measure ingest beside a booted worker, or not at all.
                time.sleep(settle)
                rates[warm].append(send(port, bodies))
    for warm in (True, False):
        r = rates[warm]
        print(f"| {'on' if warm else 'off'} | {r[0]:,.0f} | {r[1]:,.0f} | {sum(r) / 2:,.0f} |")
    print(f"\non / off: {sum(rates[True]) / sum(rates[False]):.2f}")


CHILDREN = {"warm": child_warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--serve-samples", type=int, default=20_000)
    parser.add_argument("--background", type=float, default=90.0)
    parser.add_argument("--ingest-samples", type=int, default=200_000)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec), default=str))
        return
    parts = set(args.parts.split(","))
    began = time.perf_counter()
    with ExitStack() as stack:
        if args.workdir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftd-warm-")))
        else:
            folder = args.workdir.resolve()
            folder.mkdir(parents=True, exist_ok=True)
        (folder / "logs").mkdir(exist_ok=True)
        print(
            f"{datetime.now(UTC):%Y-%m-%d}; {platform.machine()}, {os.cpu_count()} cores; "
            f"Python {platform.python_version()}"
        )
        if "a" in parts:
            part_a(folder, args.size)
        if "b" in parts:
            part_b(folder, args.serve_samples, args.background)
        if "c" in parts:
            part_c(folder, args.ingest_samples, args.settle)
    print(f"\nwhole run {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
