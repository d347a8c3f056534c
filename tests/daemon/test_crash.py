"""Durable before acknowledged: a driftd killed with SIGKILL loses nothing it acknowledged."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from daemon.store import Sample, normalize_url
from tests.helpers.configs import minimal_config
from tests.helpers.serve import Server, alive, free_port, start_driftd
from tests.helpers.wait import wait_for

TOKEN = "crash-test-token"
CONFIG = minimal_config()


def serve_on(config: Path, db_url: str, port: int) -> Server:
    """``driftd serve`` of ``config`` on ``db_url`` and ``port``, ready."""
    env = {"DRIFTD_STORAGE_URL": db_url, "DRIFTD_INGEST_TOKENS": TOKEN}
    server = start_driftd(config, config.parent, env=env, port=port)
    server.wait_ready(30)
    return server


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
    server = serve_on(config, db_url, port)
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
    finally:
        server.kill()
        for client in clients:
            client.join(timeout=30)
    assert len(acknowledged) >= 50, "the clients got nothing acknowledged before the kill"
    assert workers, "the server had no ingest workers"
    wait_for(
        lambda: not any(alive(pid) for pid in workers),
        10,
        "the ingest workers to end with the server",
        interval=0.2,
    )

    restarted = serve_on(config, db_url, port)
    try:
        assert httpx.get(f"{restarted.url}/readyz").json()["status"] == "ready"
    finally:
        assert restarted.stop(10) == 0
    missing = set(acknowledged) - stored_ids(db_url)
    assert not missing, f"{len(missing)} acknowledged samples were lost, e.g. {sorted(missing)[:3]}"
