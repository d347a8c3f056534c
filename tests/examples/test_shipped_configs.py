"""Every configuration driftd ships, run as its user runs it: ``driftd serve`` on the file as
shipped, from a fresh working directory laid out as its comments say (the embedded SQLite store,
the file's own relative paths, tokens and keys from the environment), real traffic drawn from the
example's data through the ingest API (or the proxy, in front of llm-katan), then a check run by
the daemon's scheduler on the leader (``POST /v1/deployments/NAME/checks``: a tick of its own,
claimed, run in the check workers and stored like every scheduled one), which must complete.

- examples/banking77/driftd.yaml: healthy traffic checks ok; traffic with 20% of questions from
  intents the model never learnt drifts.
- deploy/compose/driftd.yaml: mounted as compose.yaml mounts it, beside the Banking77 data.
- examples/support-bot/driftd.yaml: an hour of calls through the proxy to llm-katan (the
  upstream named by ``OPENAI_BASE_URL``, its key in ``OPENAI_API_KEY``), against a previous day
  of the same traffic.
- deploy/docker/driftd.yaml and the Helm chart's rendered ConfigMap: no deployment, so the
  daemon must start, be ready and serve an empty list.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.serve import Server, running, start_driftd, start_katan

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77"
SUPPORT_BOT = ROOT / "examples" / "support-bot"
COMPOSE = ROOT / "deploy" / "compose"
INGEST, PROXY, ADMIN = "ingest-example-token", "proxy-example-token", "admin-example-token"
UPSTREAM_KEY = "sk-example-upstream-key"
START_TIMEOUT = 120.0
CHECK_TIMEOUT = 300.0


@dataclass
class Served:
    """A running ``driftd serve``, and what its users call on it."""

    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, method: str, path: str, token: str = ADMIN, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def send_samples(self, deployment: str, samples: list[dict[str, Any]]) -> None:
        for start in range(0, len(samples), 200):
            batch = samples[start : start + 200]
            answer = self.call(
                "POST", f"/v1/deployments/{deployment}/samples", INGEST, json={"samples": batch}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["received"] == len(batch)

    def scheduled_check(self, deployment: str) -> dict[str, Any]:
        """Have the leader's scheduler check ``deployment`` now; the stored check."""
        self.server.wait_leading(START_TIMEOUT)
        started = self.call("POST", f"/v1/deployments/{deployment}/checks")
        assert started.status_code == 202, started.text
        tick = datetime.fromisoformat(started.json()["scheduled_for"])

        def stored() -> dict[str, Any] | None:
            listed = self.call("GET", "/v1/checks", params={"deployment": deployment})
            assert listed.status_code == 200, listed.text
            for check in listed.json():
                when = check.get("scheduled_for")
                if when is not None and datetime.fromisoformat(when) == tick:
                    return dict(self.call("GET", f"/v1/checks/{check['id']}").json())
            return None

        return self.server.wait_until(stored, CHECK_TIMEOUT, f"the check of {tick}", interval=1)


@contextlib.contextmanager
def serve(config: Path, cwd: Path, environ: Mapping[str, str] | None = None) -> Iterator[Served]:
    """``driftd serve -c CONFIG`` in ``cwd`` on 127.0.0.1 and a free port, with driftd's
    tokens (and ``environ``) in its environment, none of the OpenAI client's settings; stopped
    with SIGTERM, which must exit 0, having logged no traceback."""
    env = {
        "DRIFTD_INGEST_TOKENS": INGEST,
        "DRIFTD_PROXY_TOKENS": PROXY,
        "DRIFTD_ADMIN_TOKENS": ADMIN,
        **(environ or {}),
    }
    server = start_driftd(
        config,
        cwd,
        env=env,
        host="127.0.0.1",
        without=("DRIFTD_", "OPENAI_"),
        log=cwd / "driftd.log",
    )
    with running(server, timeout=START_TIMEOUT):
        yield Served(server)
    assert "Traceback" not in server.output(), server.output()


def banking77_rows(name: str) -> list[dict[str, str]]:
    with (BANKING77 / "data" / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def banking77_traffic(unseen_share: float, rows: int = 400) -> list[dict[str, Any]]:
    """An hour of the intent classifier's traffic, ending now: distinct questions of Banking77's
    test split, their intents in the proportions of the training data (what healthy traffic
    looks like), predicted right; ``unseen_share`` of them instead from intents the model never
    learnt, each predicted as one of the 20 it knows."""
    config = yaml.safe_load((BANKING77 / "driftd.yaml").read_text(encoding="utf-8"))
    labels = list(config["deployments"][0]["labels"])
    mix = Counter(row["category"] for row in banking77_rows("served-train.csv"))
    questions: dict[str, list[str]] = {}
    for row in banking77_rows("test.csv"):
        questions.setdefault(row["category"], []).append(row["text"])
    pick = random.Random(77)
    unseen = round(rows * unseen_share)
    seen = rows - unseen
    total = sum(mix.values())
    quotas = {label: seen * mix[label] // total for label in labels}
    for label in sorted(labels, key=lambda name: seen * mix[name] % total, reverse=True):
        if sum(quotas.values()) == seen:
            break
        quotas[label] += 1
    drawn = [
        (question, label)
        for label in labels
        for question in pick.sample(questions[label], quotas[label])
    ]
    others = [(q, intent) for intent, qs in questions.items() if intent not in labels for q in qs]
    drawn += [(question, pick.choice(labels)) for question, _ in pick.sample(others, unseen)]
    pick.shuffle(drawn)
    now = datetime.now(UTC)
    return [
        {
            "request_id": f"req-{index}",
            "ts": (now - timedelta(seconds=3600 * (rows - index) / rows)).isoformat(),
            "input": question,
            "prediction": prediction,
            "confidence": round(pick.uniform(0.55, 0.99), 3),
            "latency_ms": pick.randint(20, 80),
        }
        for index, (question, prediction) in enumerate(drawn)
    ]


def signal_verdicts(check: dict[str, Any]) -> dict[str, str]:
    return {
        item["name"]: item.get("status", "")
        for item in check["signals"].get("signals", [])
        if isinstance(item, dict) and "name" in item
    }


@pytest.mark.parametrize(("unseen_share", "verdict"), [(0.0, "ok"), (0.2, "drift")])
def test_the_banking77_example_checks_healthy_traffic_ok_and_unseen_intents_as_drift(
    tmp_path: Path, unseen_share: float, verdict: str
) -> None:
    # As `make run` runs it, but from a fresh working directory (where driftd.db goes).
    with serve(BANKING77 / "driftd.yaml", tmp_path) as served:
        served.send_samples("banking77-intents", banking77_traffic(unseen_share))
        check = served.scheduled_check("banking77-intents")
    assert check["error"] is None, check["error"]
    assert check["reference_kind"] == "dataset"
    assert check["current_rows"] == 400
    assert check["status"] == verdict, (check["drifted"], signal_verdicts(check))
    if verdict == "drift":  # the questions unlike any the model was trained on
        assert "embedding" in check["drifted"], signal_verdicts(check)
    assert (tmp_path / "driftd.db").is_file()


def test_the_compose_stacks_config_checks_as_mounted_there(tmp_path: Path) -> None:
    # compose.yaml mounts the file at /etc/driftd/driftd.yaml and examples/banking77/data at
    # /etc/driftd/data, and runs in /var/lib/driftd; here on SQLite instead of its PostgreSQL.
    etc, work = tmp_path / "etc" / "driftd", tmp_path / "var" / "lib" / "driftd"
    etc.mkdir(parents=True)
    work.mkdir(parents=True)
    (etc / "driftd.yaml").symlink_to(COMPOSE / "driftd.yaml")
    (etc / "data").symlink_to(BANKING77 / "data", target_is_directory=True)
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))
    mounts = compose["services"]["driftd"]["volumes"]
    assert "./driftd.yaml:/etc/driftd/driftd.yaml:ro" in mounts
    assert "../../examples/banking77/data:/etc/driftd/data:ro" in mounts
    with serve(etc / "driftd.yaml", work, {"DRIFTD_STORAGE_URL": "sqlite:///driftd.db"}) as served:
        served.send_samples("banking77-intents", banking77_traffic(0.0))
        check = served.scheduled_check("banking77-intents")
    assert check["error"] is None, check["error"]
    assert check["status"] == "ok", (check["drifted"], signal_verdicts(check))


@pytest.fixture
def katan(tmp_path: Path) -> Iterator[str]:
    """llm-katan (echo backend) on 127.0.0.1 serving the support bot's model name, accepting only
    ``UPSTREAM_KEY``: its OpenAI base URL."""
    server = start_katan(tmp_path, UPSTREAM_KEY, "--name", "gpt-4o-mini")
    with running(server, path="/health", stop_within=10, exit_code=None):
        yield f"{server.url}/v1"


def test_the_support_bot_example_runs_through_the_proxy_to_llm_katan(
    tmp_path: Path, katan: str
) -> None:
    from openai import OpenAI

    questions = [row["text"] for row in banking77_rows("test.csv")]
    pick = random.Random(5)
    pick.shuffle(questions)
    upstream = {"OPENAI_BASE_URL": katan, "OPENAI_API_KEY": UPSTREAM_KEY}
    with serve(SUPPORT_BOT / "driftd.yaml", tmp_path, upstream) as served:
        # As the config's comment says: the app's client with a proxy token as its API key.
        app = OpenAI(base_url=f"{served.url}/proxy/support-bot/v1", api_key=PROXY, max_retries=0)
        direct = OpenAI(base_url=katan, api_key=UPSTREAM_KEY, max_retries=0)
        # The day before (monitor.reference: previous_window, window 24h): the same kind of
        # traffic, as an app that logs through the ingest API sends it, with what the upstream
        # answered.
        yesterday = datetime.now(UTC) - timedelta(hours=36)
        earlier = []
        for index, question in enumerate(questions[:240]):
            answer = direct.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )
            earlier.append(
                {
                    "request_id": f"day-before-{index}",
                    "ts": (yesterday + timedelta(minutes=index)).isoformat(),
                    "input": question,
                    "output": answer.choices[0].message.content,
                    "latency_ms": 40,
                }
            )
        served.send_samples("support-bot", earlier)
        # This hour, through the proxy (sampling.rate 0.25 keeps about a quarter).
        for question in questions[240:640]:
            completion = app.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )
            assert completion.choices[0].message.content
        check = served.scheduled_check("support-bot")
        prompt = served.call("GET", "/v1/deployments/support-bot/prompt", INGEST)
    assert prompt.status_code == 200, prompt.text
    assert check["error"] is None, check["error"]
    assert check["status"] in {"ok", "drift"}, (check, signal_verdicts(check))
    assert check["current_rows"] >= 50
    stats = json.loads((tmp_path / "katan-stats.json").read_text())
    assert stats, "llm-katan served nothing"


def helm_rendered_config(tmp_path: Path) -> Path:
    helm = shutil.which("helm")
    if helm is None:
        pytest.fail("helm is not on the PATH (.ci/run installs it in .ci/bin)")
    rendered = subprocess.run(
        # With the chart's default values (its smallest install names a Secret for the store).
        [
            helm,
            "template",
            "driftd",
            str(ROOT / "deploy" / "helm" / "driftd"),
            "--kube-version",
            "1.30.0",
            "--set",
            "existingSecret=driftd-env",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for document in yaml.safe_load_all(rendered):
        if document and document.get("kind") == "ConfigMap" and "driftd.yaml" in document["data"]:
            target = tmp_path / "etc" / "driftd" / "driftd.yaml"
            target.parent.mkdir(parents=True)
            target.write_text(document["data"]["driftd.yaml"], encoding="utf-8")
            return target
    raise AssertionError("the chart renders no ConfigMap with driftd.yaml")


@pytest.mark.parametrize("shipped", ["docker", "helm"])
def test_the_image_and_chart_configs_start_ready_with_no_deployment(
    tmp_path: Path, shipped: str
) -> None:
    if shipped == "docker":
        config = tmp_path / "etc" / "driftd" / "driftd.yaml"
        config.parent.mkdir(parents=True)
        config.symlink_to(ROOT / "deploy" / "docker" / "driftd.yaml")
    else:
        config = helm_rendered_config(tmp_path)
    work = tmp_path / "var" / "lib" / "driftd"
    work.mkdir(parents=True)
    # The chart's jobs_dir is absolute (/var/lib/driftd/jobs, its volume); DRIFTD_STORAGE_URL
    # comes from its Secret, SQLite here.
    with serve(config, work, {"DRIFTD_STORAGE_URL": "sqlite:///driftd.db"}) as served:
        listed = served.call("GET", "/v1/deployments")
        metrics = httpx.get(f"{served.url}/metrics", timeout=10)
    assert listed.status_code == 200
    assert listed.json() == []
    assert metrics.status_code == 200
    assert "driftd_" in metrics.text
