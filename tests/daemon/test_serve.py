"""``driftd serve`` as an operator runs it: start on SQLite, stop cleanly on a signal."""

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect

from tests.helpers.serve import free_port, start_driftd

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77" / "driftd.yaml"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_on_sqlite_and_exits_0_within_5s_of_a_signal(
    signum: signal.Signals, tmp_path: Path
) -> None:
    server = start_driftd(BANKING77, tmp_path)
    try:
        ready = server.wait_logged("driftd ready")
    finally:
        if server.process.poll() is None:
            server.process.send_signal(signum)
    store = next(r for r in ready if r["message"] == "store ready")
    assert store["store"] == "sqlite:///driftd.db"
    assert store["migrated"] is True
    watched = [r["deployment"] for r in ready if r["message"] == "watching deployment"]
    assert watched == ["banking77-intents"]
    engine = create_engine(f"sqlite:///{tmp_path / 'driftd.db'}")
    assert "samples" in inspect(engine).get_table_names()
    engine.dispose()

    started = time.monotonic()
    assert server.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    tail = server.records()
    assert [r["message"] for r in tail[-2:]] == ["driftd stopping", "driftd stopped"]
    assert tail[-2]["reason"] == signum.name


def test_serve_a_second_time_finds_the_schema_in_place(tmp_path: Path) -> None:
    for expected in (True, False):
        server = start_driftd(BANKING77, tmp_path)
        records = server.wait_logged("driftd ready")
        assert server.stop(5) == 0
        store = next(r for r in records if r["message"] == "store ready")
        assert store["migrated"] is expected


def test_host_and_port_flags_override_the_file(tmp_path: Path) -> None:
    port = free_port()
    server = start_driftd(BANKING77, tmp_path, host="localhost", port=port)
    records = server.wait_logged("driftd ready")
    try:
        health = server.health()
        assert health is not None
        assert health["status"] == "ok"
        assert isinstance(health["leader"], bool)
    finally:
        assert server.stop(5) == 0
    assert (records[-1]["host"], records[-1]["port"]) == ("localhost", port)


def test_serve_answers_http_and_stores_what_it_acknowledges(tmp_path: Path) -> None:
    port = free_port()
    env = {"DRIFTD_INGEST_TOKENS": "old-token,new-token"}
    server = start_driftd(BANKING77, tmp_path, env=env, port=port)
    records = server.wait_logged("driftd ready")
    assert "old-token" not in json.dumps(records)
    base = server.url
    try:
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
        assert "/v1/deployments/{name}/samples" in httpx.get(f"{base}/openapi.json").json()["paths"]
        sample = {"request_id": "r1", "input": "Where is my card?", "prediction": "card_arrival"}
        url = f"{base}/v1/deployments/banking77-intents/samples"
        assert httpx.post(url, json={"samples": [sample]}).status_code == 401
        response = httpx.post(
            url, json={"samples": [sample]}, headers={"Authorization": "Bearer new-token"}
        )
        assert response.json() == {"received": 1, "new": 1, "duplicate": 0, "sampled_out": 0}
    finally:
        assert server.stop(5) == 0
    engine = create_engine(f"sqlite:///{tmp_path / 'driftd.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT request_id FROM samples").scalars().all() == [
            "r1"
        ]
    engine.dispose()


def test_serve_without_tokens_warns_that_writes_are_refused(tmp_path: Path) -> None:
    server = start_driftd(BANKING77, tmp_path)
    records = server.wait_logged("driftd ready")
    assert server.stop(5) == 0
    warnings = [r["message"] for r in records if r["level"] == "warning"]
    assert any("every write is refused (401)" in m for m in warnings)


def test_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = start_driftd(BANKING77, tmp_path, port=port)
        assert server.process.wait(timeout=30) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in server.output()


def test_serve_with_a_broken_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "driftd.yaml").write_text("server: {port: high}\n")
    server = start_driftd(None, tmp_path)
    assert server.process.wait(timeout=30) == 2
    assert "driftd.yaml:1: server.port: expected a valid integer" in server.output()


def test_serve_with_an_unreachable_store_exits_1(tmp_path: Path) -> None:
    env = {"DRIFTD_STORAGE_URL": "postgresql://postgres@127.0.0.1:9/nowhere"}
    server = start_driftd(BANKING77, tmp_path, env=env)
    assert server.process.wait(timeout=30) == 1
    assert "127.0.0.1:9" in server.output()
    assert "Traceback" not in server.output()


def test_the_python_client_feeds_a_running_driftd(tmp_path: Path) -> None:
    from daemon.client import Client

    port = free_port()
    server = start_driftd(BANKING77, tmp_path, env={"DRIFTD_INGEST_TOKENS": "t1"}, port=port)
    server.wait_logged("driftd ready")
    try:
        with Client(server.url, "banking77-intents", "t1", batch_size=10) as client:
            for i in range(30):
                client.log(f"c{i}", "Where is my card?", prediction="card_arrival", confidence=0.8)
            assert client.flush(timeout=10)
            client.feedback("c3", label="lost_or_stolen_card")
            assert client.flush(timeout=10)
            stats = client.stats
        assert (stats.sent, stats.rejected, stats.failed, stats.dropped) == (31, 0, 0, 0)
    finally:
        assert server.stop(5) == 0
    engine = create_engine(f"sqlite:///{tmp_path / 'driftd.db'}")
    with engine.connect() as connection:
        result = connection.exec_driver_sql("SELECT request_id, label FROM samples")
        rows: dict[str, str | None] = dict(result.tuples().all())
    engine.dispose()
    assert len(rows) == 30
    assert rows["c3"] == "lost_or_stolen_card"
