"""A daemon killed (SIGKILL) while a job runs: after a restart the job is adopted or retried by
the rules, never left running, and the promotion that follows its success happens once."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest

from daemon.domain import JobState, VersionKind
from daemon.store import Store, upgrade, versions
from daemon.store import jobs as job_store

ROOT = Path(__file__).resolve().parents[3]
DRIFTD = Path(sys.executable).parent / "driftd"
LABELS = ["card_arrival", "card_linking", "exchange_rate"]
CONFIG = """\
scheduling: {lease_ttl: 2s, job_poll: 1s, job_heartbeat: 1s, job_stale_after: 3s, jobs_dir: jobs}
deployments:
  - name: intents
    kind: finetuned
    task: classification
    model: {name: ./model}
    labels: [card_arrival, card_linking, exchange_rate]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(folder: Path, db_url: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    port = free_port()
    process = subprocess.Popen(
        [str(DRIFTD), "serve", "-c", "driftd.yaml", "--port", str(port)],
        cwd=folder,
        env={**environ, "DRIFTD_STORAGE_URL": db_url},
        stdout=subprocess.DEVNULL,
        stderr=(folder / f"daemon-{port}.log").open("w"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except httpx.HTTPError:
            assert process.poll() is None, "the daemon exited at start"
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the daemon did not come up")


def golden_set(path: Path) -> Path:
    rows: list[dict[str, str]] = []
    with (ROOT / "examples/banking77/data/test.csv").open(encoding="utf-8") as source:
        for row in csv.DictReader(source):
            if row["category"] in LABELS and len(rows) < 40:
                rows.append({"input": row["text"], "label": row["category"]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("job_dies_too", [False, True], ids=["job-survives", "job-killed"])
def test_a_job_outlives_a_killed_daemon_and_its_candidate_is_promoted_once(
    job_dies_too: bool,
    db_url: str,
    tmp_path: Path,
    tiny_classifier: Callable[[Sequence[str], str], Path],
) -> None:
    (tmp_path / "driftd.yaml").write_text(CONFIG)
    model = tiny_classifier(LABELS, "card_arrival")
    with Store.open(db_url) as store:
        upgrade(store.engine)
        store.ensure_deployment("intents", "finetuned", "classification")
        versions.add_version(store, "intents", kind=VersionKind.model, name="v1", artifact="v1")
        versions.promote(store, "intents", "v1", actor="test")
        spec = {
            "golden_set": str(golden_set(tmp_path / "golden.jsonl")),
            "model_dir": str(model),
            "batch_size": 4,
            "pace_s": 0.6,  # ten batches: about 6 s of work, time to kill the daemon under it
            "candidate": {"name": "v2", "artifact": str(model)},
            "promote": True,
        }
        job_id = job_store.create_job(store, "intents", "evaluate", "manual", spec)

        first = serve(tmp_path, db_url)
        try:
            wait_for(
                lambda: job_store.get_job(store, job_id)[1].handle is not None,
                60,
                "the job to start",
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        _, running = job_store.get_job(store, job_id)
        assert running.state == JobState.running.value
        pid = int(str(running.handle).split(":")[1])
        assert alive(pid), "the job died with its daemon"
        if job_dies_too:
            os.killpg(pid, signal.SIGKILL)
            wait_for(lambda: not alive(pid), 10, "the job to die")

        second = serve(tmp_path, db_url)
        try:
            wait_for(
                lambda: job_store.get_job(store, job_id)[1].state == JobState.succeeded.value,
                90,
                "the job to succeed after the restart",
            )
            wait_for(
                lambda: any(
                    v.name == "v2" and v.state != "candidate"
                    for v in versions.list_versions(store, "intents")
                ),
                30,
                "the candidate to be settled",
            )
            time.sleep(2.5)  # a few more passes of the leader's settling chore: nothing more
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
        _, done = job_store.get_job(store, job_id)
        events = store.recent_events("intents", limit=500)
        by_name = {v.name: v.state for v in versions.list_versions(store, "intents")}
    assert done.attempt == (2 if job_dies_too else 1)
    assert done.result is not None
    assert done.result["metrics"]["accuracy"] > 0
    assert by_name == {"v1": "retired", "v2": "active"}
    promoted = [e.evidence["new"]["name"] for e in events if e.kind == "version.promoted"]
    assert sorted(promoted) == ["v1", "v2"]  # v1 by the test, v2 once by the leader
    assert not alive(pid)
