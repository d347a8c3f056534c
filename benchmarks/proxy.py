"""Latency driftd's proxy adds over a direct call, beside LiteLLM's proxy, at 1, 10, 100 clients.

    python benchmarks/proxy.py [--requests 2000] [--rounds 2] [--litellm PATH]
                               [--baseline-ref REF] [--pin]

One llm-katan (echo backend) on 127.0.0.1 is the upstream of all three paths: called directly,
through `driftd serve` (a subprocess on a temporary SQLite store, one prompted deployment whose
upstream is the llm-katan, so the active prompt is injected and every call is recorded), and
through the LiteLLM proxy (an `openai/` model whose `api_base` is the llm-katan). Per number of
concurrent clients, each path gets ``--requests`` non-streamed chat completions from one aiohttp
ClientSession, split over ``--rounds`` rounds taken in turn (the order rotating), so the machine's
noise falls on all three alike. Added latency is a proxy's percentile minus the direct call's;
requests/s is completed calls over the wall time of the level. Each proxy's CPU time (its
process and every thread and child it has) is read from /proc around each timed level: calls per
CPU-second is what one core running that proxy flat out serves.

``--baseline-ref REF`` runs a second driftd from another commit (``git worktree add`` of REF in a
temporary folder outside the repository, removed afterwards) side by side, so a change is
measured against the code before it in the same run. Each driftd runs as ``python -m daemon
serve`` with ``PYTHONPATH`` set to its own checkout (this benchmark's for the current one).

LiteLLM is not a dependency of driftd and pulls in versions of openai, huggingface_hub and
websockets that driftd's environment must not take, so it lives in a virtualenv of its own:

    python -m venv .litellm && .litellm/bin/pip install "litellm[proxy]==1.106.0"
    python benchmarks/proxy.py --litellm .litellm/bin/litellm

(1.107.0 was reported compromised; 1.106.0 is the newest whose `[proxy]` extra resolves from
the package index this was run against.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench-katan"
KEY_ENV = "DRIFTD_BENCH_UPSTREAM_KEY"
PROXY_TOKEN = "bench-proxy-token"
MASTER_KEY = f"sk-{secrets.token_hex(16)}"  # LiteLLM's own key, checked on every call
MODEL = "katan-echo"
START_TIMEOUT = 120.0
LEVELS = (1, 10, 100)
WARM_UP = 200
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "I still have not received my new card, why?"}],
    "max_tokens": 32,
}
LITELLM_MISSING = """\
LiteLLM's proxy was not found ({where}). It is not a driftd dependency; install it into a
virtualenv of its own (it would change openai, huggingface_hub and websockets in driftd's) and
pass its executable:

    python -m venv .litellm && .litellm/bin/pip install "litellm[proxy]==1.106.0"
    python benchmarks/proxy.py --litellm .litellm/bin/litellm

Avoid litellm 1.107.0 (reported compromised)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def process(
    command: list[str],
    log: Path,
    ready: str,
    env: Mapping[str, str] | None = None,
    cpus: set[int] | None = None,
    cwd: Path | None = None,
) -> Iterator[int]:
    """A subprocess that answers 200 on ``ready`` within START_TIMEOUT; ended by its pid.

    ``cpus``: the CPUs it (and every process it starts) may run on; None leaves it free."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if child.poll() is not None:
                sys.exit(f"{command[0]} exited at start (log {log}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit(f"{command[0]} did not answer {ready} within {START_TIMEOUT:g} s ({log})")
            time.sleep(0.1)
        yield child.pid
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)


def katan(folder: Path, port: int, cpus: set[int] | None) -> contextlib.AbstractContextManager[int]:
    command = [
        sys.executable,
        "-m",
        "llm_katan.cli",
        "--model",
        MODEL,
        "--backend",
        "echo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--stats-file",
        "",  # no stats file: llm-katan would rewrite it on every call
        "--validate-keys",
        "--api-keys",
        f"openai={KEY}",
        "--log-level",
        "warning",
    ]
    return process(command, folder / "katan.log", f"http://127.0.0.1:{port}/health", cpus=cpus)


def driftd(
    folder: Path, port: int, upstream: str, cpus: set[int] | None, source: Path = REPO
) -> contextlib.AbstractContextManager[int]:
    """``driftd serve`` of the checkout at ``source``, its config and store in ``folder``."""
    folder.mkdir(exist_ok=True)
    config = folder / "driftd.yaml"
    config.write_text(
        "deployments:\n"
        "  - name: bot\n"
        "    kind: prompted\n"
        "    task: generation\n"
        "    prompt: {model: katan-echo, system: You help bank customers.}\n"
        f"    upstream: {{base_url: '{upstream}', api_key_env: {KEY_ENV}, timeout: 30s}}\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    environ |= {
        "DRIFTD_STORAGE_URL": f"sqlite:///{folder / 'driftd.db'}",
        "DRIFTD_INGEST_TOKENS": "bench-token",
        "DRIFTD_PROXY_TOKENS": PROXY_TOKEN,
        KEY_ENV: KEY,
        "PYTHONPATH": str(source),
    }
    command = [sys.executable, "-m", "daemon", "serve", "-c", str(config), "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/healthz"
    # From the checkout itself: `python -m` puts the working directory first on the path.
    return process(command, folder / "driftd.log", ready, environ, cpus, cwd=source)


def litellm(
    executable: str, folder: Path, port: int, upstream: str, cpus: set[int] | None
) -> contextlib.AbstractContextManager[int]:
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: '{upstream}'\n"
        f"      api_key: {KEY}\n"
        "litellm_settings: {set_verbose: false, telemetry: false}\n"
        f"general_settings: {{master_key: {MASTER_KEY}}}\n"  # LiteLLM refuses to start without
    )
    environ = dict(os.environ) | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    command = [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/health/liveliness"
    return process(command, folder / "litellm.log", ready, environ, cpus)


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """A temporary worktree of ``ref`` outside the repository; removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="driftd-proxy-baseline-")) / "driftd"
    git = ["git", "-C", str(REPO)]
    subprocess.run([*git, "worktree", "add", "--detach", str(folder), ref], check=True)
    try:
        yield folder
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(folder)], check=False)
        shutil.rmtree(folder.parent, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (all its threads) and its live descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(times.get(p, 0.0) for p in tree)


@dataclass
class Route:
    """A path to the upstream: where to post and with which headers; ``pid``: the proxy's."""

    name: str
    url: str
    headers: dict[str, str]
    pid: int | None = None
    latencies: dict[int, list[float]] = field(default_factory=dict)  # clients -> seconds
    elapsed: dict[int, float] = field(default_factory=dict)  # clients -> wall seconds
    cpu: dict[int, float] = field(default_factory=dict)  # clients -> the proxy's CPU seconds
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # kind -> count, warm-ups included


async def load(path: Route, clients: int, requests: int) -> tuple[list[float], float, int]:
    """``requests`` calls from ``clients`` concurrent tasks: (latencies, wall seconds, failed).

    The client is aiohttp: httpx's pool polls every idle connection on each request, so at 100
    connections the load generator itself would be what is measured."""
    latencies: list[float] = []
    failed = 0
    left = requests
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                started = time.perf_counter()
                try:
                    async with client.post(path.url, json=BODY, headers=path.headers) as response:
                        status = response.status
                        answer = await response.json() if status == 200 else None
                except (aiohttp.ClientError, TimeoutError) as exc:  # counted; the level goes on
                    failed += 1
                    path.errors[type(exc).__name__] = path.errors.get(type(exc).__name__, 0) + 1
                    continue
                took = time.perf_counter() - started
                if answer is not None and answer["choices"]:
                    latencies.append(took)
                else:
                    failed += 1
                    path.errors[f"HTTP {status}"] = path.errors.get(f"HTTP {status}", 0) + 1

        # Connections are opened before the clock starts: a level measures calls, not handshakes.
        await asyncio.gather(*(worker() for _ in range(min(clients, requests))))
        latencies.clear()
        left = requests
        cpu = cpu_seconds(path.pid) if path.pid is not None else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        if path.pid is not None:
            path.cpu[clients] = path.cpu.get(clients, 0.0) + cpu_seconds(path.pid) - cpu
    return latencies, elapsed, failed


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


async def measure(paths: list[Route], requests: int, rounds: int) -> None:
    for path in paths:
        await load(path, 10, WARM_UP)
    for clients in LEVELS:
        for turn in range(rounds):
            order = paths[turn % len(paths) :] + paths[: turn % len(paths)]
            for path in order:
                latencies, elapsed, failed = await load(path, clients, requests // rounds)
                path.latencies.setdefault(clients, []).extend(latencies)
                path.elapsed[clients] = path.elapsed.get(clients, 0.0) + elapsed
                path.failed += failed
            print(f"  {clients} clients, round {turn + 1}/{rounds} done", file=sys.stderr)


def recorded(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])


def report(paths: list[Route], stored: Mapping[str, int], load_avg: tuple[float, ...]) -> None:
    direct, *proxies = paths
    print(f"\nload average before / after: {load_avg[0]:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"python {platform.python_version()}, {os.cpu_count()} cores; samples stored: {stored}")
    print(
        "\n| clients | path | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s"
        " | proxy CPU ms/call | calls per CPU-second |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    added: dict[tuple[str, int], tuple[float, float]] = {}
    per_cpu: dict[tuple[str, int], float] = {}
    for clients in LEVELS:
        base = direct.latencies[clients]
        base50, base99 = percentile(base, 50), percentile(base, 99)
        for path in paths:
            values = path.latencies[clients]
            p50, p99 = percentile(values, 50), percentile(values, 99)
            rate = len(values) / path.elapsed[clients]
            extra = ("", "", "", "")
            if path is not direct:
                added[path.name, clients] = (p50 - base50, p99 - base99)
                cpu = path.cpu.get(clients, 0.0)
                per_cpu[path.name, clients] = len(values) / cpu if cpu > 0 else float("nan")
                extra = (
                    f"{(p50 - base50) * 1e3:.2f}",
                    f"{(p99 - base99) * 1e3:.2f}",
                    f"{cpu / len(values) * 1e3:.3f}",
                    f"{per_cpu[path.name, clients]:,.0f}",
                )
            print(
                f"| {clients} | {path.name} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {extra[0]} |"
                f" {extra[1]} | {rate:,.0f} | {extra[2]} | {extra[3]} |"
            )
    failed = {p.name: (p.failed, p.errors) for p in paths}
    print(f"\nfailed calls: {failed}")
    ours, *others = (p.name for p in proxies)
    top = LEVELS[-1]
    print(
        f"calls/s per core at saturation ({top} clients, calls per CPU-second of the proxy): "
        + ", ".join(f"{name} {per_cpu[name, top]:,.0f}" for name in (ours, *others))
    )
    for other in others:
        ratio = per_cpu[ours, top] / per_cpu[other, top]
        met = f" (target >= 2x the previous commit: met: {ratio >= 2})" if "@" in other else ""
        print(f"  {ours} / {other}: {ratio:.2f}x{met}")
    one = LEVELS[0]
    p50_one = added[ours, one][0]
    print(
        f"target added p50 <= 0.5 ms at {one} client: {p50_one * 1e3:.2f} ms,"
        f" met: {p50_one <= 0.5e-3}"
    )
    for name in (ours, *others):
        print(f"added p50 at {top} clients, {name}: {added[name, top][0] * 1e3:.2f} ms")
    for theirs in (n for n in others if "@" not in n):
        for clients in LEVELS:
            mine, their = added[ours, clients], added[theirs, clients]
            parts = []
            for label, m, o in zip(("p50", "p99"), mine, their, strict=True):
                # A ratio needs a positive added latency on both sides to mean anything.
                parts.append(
                    f"{label} {o / m:.1f}x"
                    if m > 0 and o > 0
                    else f"{label} not measurable ({m * 1e3:.2f} / {o * 1e3:.2f} ms)"
                )
            print(f"{theirs} added / {ours} added at {clients} clients: " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path and level")
    parser.add_argument("--rounds", type=int, default=2, help="turns per level, order rotated")
    parser.add_argument("--litellm", help="the `litellm` executable (default: found on PATH)")
    parser.add_argument("--no-litellm", action="store_true", help="driftd and direct only")
    parser.add_argument(
        "--baseline-ref",
        help="also run driftd as of this git ref (a temporary worktree), side by side",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="give the proxies CPU 1 and the client and upstream CPU 0 (a proxy on its own core)",
    )
    args = parser.parse_args()
    near: set[int] | None = None
    proxies: set[int] | None = None
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2:
            sys.exit("--pin needs at least 2 CPUs")
        near, proxies = {0}, {1}
        os.sched_setaffinity(0, near)
    executable = None
    if not args.no_litellm:
        executable = args.litellm or shutil.which("litellm")
        if executable is None or not Path(executable).exists():
            sys.exit(LITELLM_MISSING.format(where=args.litellm or "not on PATH"))
    load_avg = os.getloadavg()
    stored: dict[str, int] = {}
    with contextlib.ExitStack() as running:
        folder = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="driftd-proxy-")))
        measured = False

        def count_stored() -> None:
            # Once the daemons stopped (their writers drained), before the folder goes.
            if measured:
                for index, name in enumerate(drifts):
                    stored[name] = recorded(folder / f"driftd-{index}" / "driftd.db")

        running.callback(count_stored)
        ports = [free_port() for _ in range(4)]
        upstream = f"http://127.0.0.1:{ports[0]}/v1"
        running.enter_context(katan(folder, ports[0], near))
        drifts = {"driftd": (REPO, ports[1])}
        if args.baseline_ref:
            source = running.enter_context(checkout(args.baseline_ref))
            drifts[f"driftd@{args.baseline_ref}"] = (source, ports[3])
        caller = {"Authorization": f"Bearer {KEY}"}
        paths = [Route("direct", f"{upstream}/chat/completions", caller)]
        for index, (name, (source, port)) in enumerate(drifts.items()):
            pid = running.enter_context(
                driftd(folder / f"driftd-{index}", port, upstream, proxies, source)
            )
            paths.append(
                Route(
                    name,
                    f"http://127.0.0.1:{port}/proxy/bot/v1/chat/completions",
                    {"Authorization": f"Bearer {PROXY_TOKEN}"},
                    pid,
                )
            )
        if executable is not None:
            pid = running.enter_context(litellm(executable, folder, ports[2], upstream, proxies))
            paths.append(
                Route(
                    "litellm",
                    f"http://127.0.0.1:{ports[2]}/v1/chat/completions",
                    {"Authorization": f"Bearer {MASTER_KEY}"},
                    pid,
                )
            )
        asyncio.run(measure(paths, args.requests, args.rounds))
        measured = True
    report(paths, stored, load_avg)


if __name__ == "__main__":
    main()
