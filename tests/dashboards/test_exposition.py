"""What a running ``driftd serve`` exports, checked by Prometheus' own tools: ``promtool check
metrics`` lints the real ``/metrics``, and a real Prometheus scrapes the daemon and answers
queries for a drift score and the leader gauge through its HTTP API."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.serve import Server

PROMTOOL = shutil.which("promtool")
QUERY_WITHIN = 60.0


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


def test_prometheus_scrapes_a_drift_score_and_the_leader(
    running_driftd: Any, prometheus: Callable[[Path], Server], tmp_path: Path
) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: driftd\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{running_driftd.port}']}}]\n"
    )
    server = prometheus(config)

    def scraped() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        scores = query(server.url, 'driftd_drift_score{deployment="bot"}')
        leader = query(server.url, "driftd_leader")
        return (scores, leader) if scores and leader else None

    what = "Prometheus to have driftd_drift_score and driftd_leader from the daemon"
    scores, leader = server.wait_until(scraped, QUERY_WITHIN, what, interval=0.5)
    assert [(s["metric"]["job"], float(s["value"][1])) for s in leader] == [("driftd", 1.0)]
    refusal = [s for s in scores if s["metric"]["signal"] == "refusal"]
    assert refusal, scores
    value = float(refusal[0]["value"][1])
    assert value == pytest.approx(0.5, abs=0.1)  # half of the current answers refuse
