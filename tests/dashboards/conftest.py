"""One running ``driftd serve`` for the tests that read what a real daemon exports.

It is started once per session (a subprocess on SQLite, a free 127.0.0.1 port, a check every
second on one-hour windows) and brought to the state the acceptance of issue 8 names: it has
ingested batches through its API, proxied a call to a fake OpenAI upstream, run checks (one of
which drifts), run two real jobs (``python -m retrain evaluate``: one succeeds, one fails),
promoted a version and rolled it back. The contract test, ``promtool check metrics`` and the
end-to-end Prometheus test all read its ``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config.models import Hooks
from daemon.domain import VersionKind, VersionState
from daemon.retune import promotion
from daemon.store import Store, versions
from daemon.store import jobs as job_store
from tests.fake_openai import CHAT_ROUTE, serve_fake_openai
from tests.helpers.serve import Server, free_port, running, start_driftd

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "examples" / "support-bot" / "golden.jsonl"
LABELS = ["card_arrival", "card_linking", "exchange_rate"]
INGEST_TOKEN, ADMIN_TOKEN = "metrics-ingest", "metrics-admin"
PROXY_TOKEN = "metrics-proxy"
REFUSAL = "I'm sorry, but I can't help with that."
READY_WITHIN = 120.0
PROMETHEUS = shutil.which("prometheus")
CONFIG = """\
scheduling: {{lease_ttl: 3s, job_poll: 1s, jobs_dir: {jobs}}}
metrics: {{store_cache: 1s}}
storage: {{snapshots: {snapshots}}}
deployments:
  - name: bot
    kind: prompted
    task: generation
    prompt: {{model: gpt-4o-mini, system: "You help bank customers."}}
    upstream: {{base_url: "{upstream}", api_key_env: DRIFTD_UPSTREAM_KEY, max_retries: 0}}
    monitor:
      schedule: every 1s
      window: 1h
      min_rows: 20
      max_rows: 200
      timeout: 30s
      signals: [descriptors, refusal, errors]
    retune: {{schedule: "0 3 * * *", golden_set: {golden}}}
    judge: {{rubric: The answer helps the customer., schedule: every 24h}}
"""


@dataclass
class RunningDriftd:
    """A ``driftd serve`` subprocess and how to read it."""

    server: Server
    db_url: str

    @property
    def base_url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def metrics_text(self) -> str:
        answer = httpx.get(f"{self.base_url}/metrics", timeout=10)
        answer.raise_for_status()
        return answer.text

    def names(self) -> set[str]:
        """Every sample name of the current ``/metrics`` (``_bucket``, ``_total`` … included)."""
        return {
            sample.name
            for family in text_string_to_metric_families(self.metrics_text())
            for sample in family.samples
        }

    def sample(self, name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None


def _traffic(start: datetime, count: int, tag: str, refusals: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "request_id": f"{tag}-{i}",
            "ts": (start + timedelta(seconds=i * 3000 / count)).isoformat(),
            "input": f"How do I change the address on my account number {i}?",
            "output": REFUSAL if i < refusals else f"Open Settings, then Address ({i}).",
            "error": "upstream timeout" if i % 10 == 0 else None,
        }
        for i in range(count)
    ]


def _post(base_url: str, path: str, body: Any, token: str = INGEST_TOKEN) -> httpx.Response:
    return httpx.post(
        f"{base_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _jobs(store: Store, model_dir: Path, tmp: Path) -> Sequence[int]:
    good = {
        "golden_set": str(GOLDEN),
        "model_dir": str(model_dir),
        "label_field": "intent",
        "batch_size": 5,
    }
    broken = {"golden_set": str(tmp / "missing.jsonl"), "model_dir": str(tmp)}
    return [
        job_store.create_job(store, "bot", "evaluate", "manual", good, max_attempts=1),
        job_store.create_job(store, "bot", "evaluate", "manual", broken, max_attempts=1),
    ]


def _promote_and_roll_back(store: Store) -> None:
    active = store.active_version("bot")
    assert active is not None, "the daemon registers prompt-1 of a prompted deployment"
    versions.add_version(
        store,
        "bot",
        kind=VersionKind.prompt,
        name="prompt-2",
        artifact=active.artifact,
        state=VersionState.candidate,
    )
    promotion.promote(store, Hooks(), "bot", "prompt-2", actor="cli:metrics-test")
    promotion.rollback(store, Hooks(), "bot", actor="cli:metrics-test")


@pytest.fixture(scope="session")
def running_driftd(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_classifier: Callable[[Sequence[str], str], Path],
) -> Iterator[RunningDriftd]:
    """A running daemon that has ingested, proxied, checked, run jobs, promoted and rolled back."""
    model_dir = tiny_classifier(LABELS, "card_arrival")
    tmp = tmp_path_factory.mktemp("driftd-serve")
    with serve_fake_openai() as upstream:
        config = tmp / "driftd.yaml"
        config.write_text(
            CONFIG.format(
                jobs=tmp / "jobs",
                snapshots=tmp / "snapshots",
                upstream=upstream.base_url,
                golden=GOLDEN,
            )
        )
        db_url = f"sqlite:///{tmp / 'driftd.db'}"
        environ = {
            "DRIFTD_STORAGE_URL": db_url,
            "DRIFTD_INGEST_TOKENS": INGEST_TOKEN,
            "DRIFTD_ADMIN_TOKENS": ADMIN_TOKEN,
            "DRIFTD_PROXY_TOKENS": PROXY_TOKEN,
            "DRIFTD_UPSTREAM_KEY": upstream.api_key,
            "OMP_NUM_THREADS": "1",
        }
        server = start_driftd(config, tmp, env=environ, log=tmp / "driftd.log")
        driftd = RunningDriftd(server, db_url)
        with running(server, timeout=READY_WITHIN, stop_within=30, exit_code=None):
            server.wait_leading(READY_WITHIN)
            now = datetime.now(UTC)
            for batch in (
                _traffic(now - timedelta(minutes=115), 60, "ref"),
                _traffic(now - timedelta(minutes=55), 60, "cur", refusals=30),
            ):
                answer = _post(driftd.base_url, "/v1/deployments/bot/samples", {"samples": batch})
                assert answer.status_code == 200, answer.text
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
            path = "/proxy/bot/v1/chat/completions"
            proxied = _post(driftd.base_url, path, chat, PROXY_TOKEN)
            assert proxied.status_code == 200, proxied.text
            upstream.script_error(CHAT_ROUTE, 503, "overloaded", type="server_error")
            failed = _post(driftd.base_url, path, chat, PROXY_TOKEN)
            assert failed.status_code == 503, failed.text
            store = Store.open(db_url)
            try:
                job_ids = _jobs(store, model_dir, tmp)
                _promote_and_roll_back(store)
            finally:
                store.close()

            def settled() -> bool:
                names = driftd.names()
                ended = driftd.sample("driftd_jobs_total", kind="evaluate", status="succeeded")
                failed = driftd.sample("driftd_jobs_total", kind="evaluate", status="failed")
                return (
                    "driftd_drift_score" in names
                    and "driftd_check_last_success_timestamp_seconds" in names
                    and ended == 1
                    and failed == 1
                )

            what = f"jobs {job_ids} to end and a check to drift"
            server.wait_until(settled, READY_WITHIN, what, interval=0.3)
            yield driftd


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Path], Server]]:
    """Starts a real Prometheus on a configuration file, in ``tmp_path`` on a free port: the
    server, once ready; stopped at the end. The test is skipped where it is not installed."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian: prometheus)")
    binary = PROMETHEUS
    with contextlib.ExitStack() as stack:

        def start(config: Path) -> Server:
            port = free_port()
            args = [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ]
            log = tmp_path / "prometheus.log"
            server = Server(args, cwd=tmp_path, env=os.environ, port=port, log=log)
            ready = running(server, timeout=60, path="/-/ready", stop_within=20, exit_code=None)
            return stack.enter_context(ready)

        yield start
