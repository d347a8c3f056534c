"""A daemon killed (SIGKILL) while a job runs: after a restart the job is adopted or retried by
the rules, never left running, and the promotion that follows its success happens once."""

from __future__ import annotations

import csv
import json
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from daemon.domain import JobState, VersionKind
from daemon.scheduler.leader import LEASE_NAME
from daemon.store import Store, upgrade, versions
from daemon.store import jobs as job_store
from daemon.store.lease import current
from tests.helpers.configs import finetuned_config
from tests.helpers.serve import alive, running, start_driftd
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
LABELS = ["card_arrival", "card_linking", "exchange_rate"]
CONFIG = finetuned_config(
    labels=LABELS,
    scheduling="lease_ttl: 2s, job_poll: 1s, job_heartbeat: 1s, job_stale_after: 3s, "
    "job_backoff: 2s, jobs_dir: jobs",
)


def golden_set(path: Path) -> Path:
    rows: list[dict[str, str]] = []
    with (ROOT / "examples/banking77/data/test.csv").open(encoding="utf-8") as source:
        for row in csv.DictReader(source):
            if row["category"] in LABELS and len(rows) < 40:
                rows.append({"input": row["text"], "label": row["category"]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def renewals(store: Store, count: int) -> Callable[[], bool]:
    """A predicate: whether the leader has renewed its lease ``count`` times since it was first
    asked (each renewal stores a new ``renewed_at``)."""
    seen: set[float] = set()

    def renewed() -> bool:
        lease = current(store, LEASE_NAME)
        if lease is not None:
            seen.add(lease.renewed_at)
        return len(seen) > count

    return renewed


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
        environ = {"DRIFTD_STORAGE_URL": db_url}

        first = start_driftd(Path("driftd.yaml"), tmp_path, env=environ)
        with running(first, timeout=60):
            wait_for(
                lambda: job_store.get_job(store, job_id)[1].handle is not None,
                60,
                "the job to start",
                interval=0.2,
            )
            first.kill()
        _, orphan = job_store.get_job(store, job_id)
        assert orphan.state == JobState.running.value
        pid = int(str(orphan.handle).split(":")[1])
        assert alive(pid), "the job died with its daemon"
        if job_dies_too:
            os.killpg(pid, signal.SIGKILL)
            wait_for(lambda: not alive(pid), 10, "the job to die", interval=0.2)

        second = start_driftd(Path("driftd.yaml"), tmp_path, env=environ)
        with running(second, timeout=60, stop_within=30):
            wait_for(
                lambda: job_store.get_job(store, job_id)[1].state == JobState.succeeded.value,
                90,
                "the job to succeed after the restart",
                interval=0.2,
            )
            wait_for(
                lambda: any(
                    v.name == "v2" and v.state != "candidate"
                    for v in versions.list_versions(store, "intents")
                ),
                30,
                "the candidate to be settled",
                interval=0.2,
            )
            # The leader goes on: four renewals of its lease, one every third of its 2 s TTL,
            # span two seconds, two more passes of its 1 s settling chore: nothing more.
            wait_for(renewals(store, 4), 30, "four renewals of the leader's lease", interval=0.1)
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
