"""Durable before acknowledged: a driftd killed with SIGKILL loses nothing it acknowledged."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from daemon.store import Sample, normalize_url

DRIFTD = Path(sys.executable).parent / "driftd"
TOKEN = "crash-test-token"
CONFIG = """\
deployments:
  - name: bot
    kind: prompted
    task: generation
    prompt: {model: gpt-4o-mini, system: You help bank customers.}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(config: Path, db_url: str, port: int) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    environ |= {"DRIFTD_STORAGE_URL": db_url, "DRIFTD_INGEST_TOKENS": TOKEN}
    process = subprocess.Popen(
        [str(DRIFTD), "serve", "-c", str(config), "--port", str(port)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        if json.loads(line)["message"] == "driftd ready":
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process
    process.kill()
    raise AssertionError("driftd did not become ready")


def send_until_refused(
    url: str, client: int, acknowledged: list[str], lock: threading.Lock
) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as http:
        for batch in range(10_000):
            ids = [f"c{client}-b{batch}-{i}" for i in range(50)]
            body = {"samples": [{"request_id": rid, "input": "q", "output": "a"} for rid in ids]}
            try:
                response = http.post(url, json=body)
            except httpx.HTTPError:
                return  # the server is gone; what was acknowledged is what counts
            if response.status_code == 200:
                with lock:
                    acknowledged.extend(ids)
            elif response.status_code != 429:
                raise AssertionError(f"unexpected {response.status_code}: {response.text}")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def stored_ids(db_url: str) -> set[str]:
    engine = create_engine(normalize_url(db_url))
    try:
        with engine.connect() as connection:
            return set(connection.execute(select(Sample.request_id)).scalars())
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", range(5))
def test_every_acknowledged_sample_survives_sigkill(run: int, db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "driftd.yaml"
    config.write_text(CONFIG)
    port = free_port()
    server = serve(config, db_url, port)
    url = f"http://127.0.0.1:{port}/v1/deployments/bot/samples"
    acknowledged: list[str] = []
    lock = threading.Lock()
    clients = [
        threading.Thread(target=send_until_refused, args=(url, n, acknowledged, lock))
        for n in range(3)
    ]
    try:
        for client in clients:
            client.start()
        time.sleep(random.Random(run).uniform(0.5, 2.0))
        workers = children(server.pid)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
        for client in clients:
            client.join(timeout=30)
    assert len(acknowledged) >= 50, "the clients got nothing acknowledged before the kill"
    assert workers, "the server had no ingest workers"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "ingest workers outlived the server"

    restarted = serve(config, db_url, port)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ready"
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=10) == 0
    missing = set(acknowledged) - stored_ids(db_url)
    assert not missing, f"{len(missing)} acknowledged samples were lost, e.g. {sorted(missing)[:3]}"
