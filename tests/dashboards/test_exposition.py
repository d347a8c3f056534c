"""What a running ``driftd serve`` exports, checked by Prometheus' own tools: ``promtool check
metrics`` lints the real ``/metrics``, and a real Prometheus scrapes the daemon and answers
queries for a drift score and the leader gauge through its HTTP API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")
QUERY_WITHIN = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_finds_nothing_to_lint_in_the_real_metrics(running_driftd: Any) -> None:
    assert PROMTOOL is not None
    text = running_driftd.metrics_text()
    assert "driftd_drift_score{" in text
    linted = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout.strip() == "", linted.stdout


def test_the_running_leader_counts_its_scheduled_checks(running_driftd: Any) -> None:
    ran = running_driftd.sample("driftd_scheduler_runs_total", kind="check", status="ran")
    assert ran is not None
    assert ran >= 1
    checks = running_driftd.sample("driftd_check_duration_seconds_count", deployment="bot")
    assert checks is not None
    assert checks >= 1
    assert running_driftd.sample("driftd_leader") == 1
    assert (
        running_driftd.sample("driftd_samples_stored_total", deployment="bot", source="api") == 120
    )


def query(base: str, expression: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expression}, timeout=5)
    answer.raise_for_status()
    body = answer.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: prometheus)")
def test_prometheus_scrapes_a_drift_score_and_the_leader(
    running_driftd: Any, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: driftd\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{running_driftd.port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + QUERY_WITHIN
        scores: list[dict[str, Any]] = []
        leader: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not (scores and leader):
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                scores = query(base, 'driftd_drift_score{deployment="bot"}')
                leader = query(base, "driftd_leader")
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.5)
        assert leader, "Prometheus has no driftd_leader after scraping the daemon"
        assert [(s["metric"]["job"], float(s["value"][1])) for s in leader] == [("driftd", 1.0)]
        assert scores, "Prometheus has no driftd_drift_score after scraping the daemon"
        refusal = [s for s in scores if s["metric"]["signal"] == "refusal"]
        assert refusal, scores
        scraped = float(refusal[0]["value"][1])
        assert scraped == pytest.approx(0.5, abs=0.1)  # half of the current answers refuse
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
            log.close()
