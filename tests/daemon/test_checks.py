"""The daemon's half of a check: windows and references from the store, embeddings cached,
the result recorded, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from daemon.checks import Checker
from daemon.config import Config, parse_config
from daemon.domain import VersionKind
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.store import Store, versions
from tests.helpers.cli import environ_without, run_driftd
from tests.helpers.configs import finetuned_config

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class HashingEncoder:
    """A stand-in for the sentence encoder: hashed bag of words, normalised. Texts that share
    words are close, so vocabulary shifts show up as embedding drift, as they would for real."""

    name = "hashing-64"

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded += len(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, hashlib.blake2b(word.encode(), digest_size=1).digest()[0] % 64] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def banking77() -> dict[str, list[str]]:
    by_intent: dict[str, list[str]] = {}
    with (ROOT / "examples/banking77/data/train.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_intent.setdefault(row["category"], []).append(row["text"])
    return by_intent


INTENTS = banking77()
KNOWN = sorted(INTENTS)[:10]
UNSEEN = sorted(INTENTS)[40:45]
CONFIG = finetuned_config(
    labels=KNOWN,
    more="    monitor:\n"
    "      window: 6h\n"
    "      min_rows: 50\n"
    "      max_rows: 400\n"
    "      signals: [descriptors, embedding, prediction, confidence, performance]\n",
)


def config(tmp_path: Path) -> Config:
    text = CONFIG + f"storage: {{snapshots: {tmp_path / 'snapshots'}}}\n"
    return parse_config(text, environ={})


def fill(
    store: Store,
    cfg: Config,
    start: datetime,
    intents: list[str],
    count: int,
    tag: str,
    *,
    knows: Sequence[str] = KNOWN,
) -> None:
    """``count`` samples spread over 6 hours from ``start``, through the ingest pipeline,
    answered by a model that ``knows`` some intents."""
    pipeline = DeploymentPipeline(cfg.deployments[0])
    items = []
    for i in range(count):
        intent = intents[i % len(intents)]
        texts = INTENTS[intent]
        predicted = intent if intent in knows else KNOWN[0]  # unseen intents look like one
        items.append(
            SampleIn(
                request_id=f"{tag}-{i}",
                ts=start + timedelta(seconds=i * 6 * 3600 / count),
                input=texts[(i // len(intents)) % len(texts)],
                prediction=predicted,
                confidence=0.9,
                label=intent,
            )
        )
    prepared = pipeline.prepare(items, start)
    store.insert_batches([("intents", prepared.samples)])


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return config(tmp_path)


@pytest.fixture
def filled(store: Store, cfg: Config) -> Store:
    store.ensure_deployment("intents", "finetuned", "classification")
    fill(store, cfg, NOW - timedelta(hours=12), KNOWN, 300, "ref")
    return store


def test_a_shifted_window_drifts_and_everything_is_recorded(filled: Store, cfg: Config) -> None:
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN[:5] + UNSEEN, 300, "cur")
    encoder = HashingEncoder()
    checker = Checker(cfg, filled, lambda model: encoder)
    outcome = checker.run("intents", now=NOW)
    assert outcome.result.status == "drift"
    drifted = {s.name for s in outcome.result.signals if s.drifted}
    assert {"embedding", "prediction", "performance"} <= drifted
    assert (outcome.current.total, outcome.reference.total) == (300, 300)
    assert outcome.reference.kind == "previous_window"
    deployment, stored = filled.get_check(outcome.check_id)
    assert (deployment, stored.status) == ("intents", "drift")
    assert (stored.current_rows, stored.reference_rows) == (300, 300)
    assert stored.signals["status"] == "drift"
    if outcome.snapshot_path is not None:
        assert json.loads(outcome.snapshot_path.read_text())
        assert stored.snapshot_path == str(outcome.snapshot_path)
    (event,) = filled.recent_events("intents")
    assert event.kind == "check.completed"
    assert event.evidence["check_id"] == outcome.check_id
    assert "embedding" in event.evidence["drifted"]


def test_embeddings_are_computed_once_and_cached(filled: Store, cfg: Config) -> None:
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN, 300, "cur")
    encoder = HashingEncoder()
    checker = Checker(cfg, filled, lambda model: encoder)
    first = checker.run("intents", now=NOW)
    assert encoder.encoded == 600
    second = checker.run("intents", now=NOW)
    assert encoder.encoded == 600  # all read back from the store
    assert first.result.status == second.result.status == "ok"
    assert [s.score for s in first.result.signals] == [s.score for s in second.result.signals]


def test_the_draw_is_capped_and_reproducible(filled: Store, cfg: Config) -> None:
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN, 1000, "big")
    checker = Checker(cfg, filled, lambda model: HashingEncoder())
    first = checker.run("intents", now=NOW)
    again = checker.run("intents", now=NOW)
    assert (first.current.total, len(first.current.samples)) == (1000, 400)
    assert [s.request_id for s in first.current.samples] == [
        s.request_id for s in again.current.samples
    ]


def test_a_sliding_window_draws_mostly_the_rows_it_drew_before(filled: Store, cfg: Config) -> None:
    # Capped draws of 400 out of 1,000 rows: an hour later the window has lost a sixth of its
    # rows, and the draw keeps the rows it still holds, so few new embeddings are computed.
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN, 1000, "big")
    encoder = HashingEncoder()
    checker = Checker(cfg, filled, lambda model: encoder)
    first = checker.run("intents", now=NOW)
    computed = encoder.encoded
    later = checker.run("intents", now=NOW + timedelta(hours=1))
    before = {s.request_id for s in first.current.samples}
    after = {s.request_id for s in later.current.samples}
    assert len(after) == 400
    assert len(before & after) >= 300  # a fresh draw would share 400 * 0.4 = 160 on average
    # Both sides fresh would be 800 texts; the reference window now holds an hour of rows the
    # first check drew as current, and the current one mostly rows it drew before.
    assert encoder.encoded - computed < 400


def test_each_check_is_added_to_the_configured_evidently_workspace(
    filled: Store, tmp_path: Path
) -> None:
    from evidently.ui.workspace import Workspace

    workspace = tmp_path / "evidently"
    text = CONFIG + (
        f"storage: {{snapshots: {tmp_path / 'snapshots'}, evidently_workspace: {workspace}}}\n"
    )
    cfg = parse_config(text, environ={})
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN, 300, "cur")
    checker = Checker(cfg, filled, lambda model: HashingEncoder())
    checker.run("intents", now=NOW)
    checker.run("intents", now=NOW + timedelta(minutes=5))
    space = Workspace(str(workspace))
    (project,) = space.search_project("intents")
    assert len(space.list_runs(project.id)) == 2


def test_too_few_samples_is_insufficient_data_not_an_error(filled: Store, cfg: Config) -> None:
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN, 10, "few")
    outcome = Checker(cfg, filled, lambda model: HashingEncoder()).run("intents", now=NOW)
    assert outcome.result.status == "insufficient_data"
    assert filled.get_check(outcome.check_id)[1].status == "insufficient_data"


def test_a_baseline_reference_needs_an_active_version(filled: Store, tmp_path: Path) -> None:
    text = CONFIG.replace(
        "      window: 6h\n", "      window: 6h\n      reference: {kind: baseline}\n"
    )
    cfg = parse_config(text + f"storage: {{snapshots: {tmp_path}}}\n", environ={})
    outcome = Checker(cfg, filled, lambda model: HashingEncoder()).run("intents", now=NOW)
    assert outcome.result.status == "insufficient_data"
    assert outcome.reference.reason == "the deployment has no active version yet"


def following(tmp_path: Path, start: datetime, end: datetime, after_promotion: str) -> Config:
    """The configuration of a deployment checked against its original traffic (``start`` to
    ``end``), that follows a promoted version or keeps that reference."""
    reference = (
        "      reference:\n"
        "        kind: fixed\n"
        f"        start: {start.isoformat()}\n"
        f"        end: {end.isoformat()}\n"
        "        samples: 150\n"
        f"        after_promotion: {after_promotion}\n"
    )
    text = CONFIG.replace("      window: 6h\n", "      window: 6h\n" + reference)
    return parse_config(text + f"storage: {{snapshots: {tmp_path}}}\n", environ={})


def test_after_a_promotion_checks_follow_the_new_version(store: Store, tmp_path: Path) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    versions.add_version(store, "intents", kind=VersionKind.model, name="v1", artifact="m1")
    first = versions.promote(store, "intents", "v1", actor="test").active.promoted_at
    assert first is not None
    # v1 served its intents, then the traffic shifted toward intents it never learnt.
    original = (first - timedelta(hours=12), first - timedelta(hours=6))
    cfg = following(tmp_path, *original, "baseline")
    kept = following(tmp_path, *original, "keep")
    fill(store, cfg, original[0], KNOWN, 300, "ref")
    fill(store, cfg, original[1], KNOWN[:5] + UNSEEN, 300, "shift")
    checker = Checker(cfg, store, lambda model: HashingEncoder())
    assert checker.run("intents", now=first).result.status == "drift"

    # A re-tune made v2 from v1; promoted, it serves the shifted traffic and knows every intent.
    versions.add_version(
        store, "intents", kind=VersionKind.model, name="v2", artifact="m2", parent="v1"
    )
    promoted = versions.promote(store, "intents", "v2", actor="test").active.promoted_at
    assert promoted is not None
    fill(
        store,
        cfg,
        promoted + timedelta(minutes=1),
        KNOWN[:5] + UNSEEN,
        300,
        "v2",
        knows=list(INTENTS),
    )

    # Until v2 has served its baseline's 150 samples (the first 3 hours), there is no verdict.
    early = checker.run("intents", now=promoted + timedelta(hours=2))
    assert early.result.status == "insufficient_data"
    assert early.reference.reason is not None
    assert early.reference.reason.startswith("collecting the baseline of version v2: 100 of 150")
    assert early.current.start == promoted  # nothing v1 served counts

    # Then the current window holds what v2 served after its baseline, and the deployment that
    # recovered checks ok.
    later = promoted + timedelta(hours=6, minutes=2)
    outcome = checker.run("intents", now=later)
    assert outcome.result.status == "ok", outcome.result.to_dict()
    assert (outcome.reference.kind, outcome.reference.total) == ("baseline", 150)
    assert outcome.reference.start == promoted
    assert outcome.current.total == 150
    baseline = {s.request_id for s in outcome.reference.samples}
    assert baseline.isdisjoint(s.request_id for s in outcome.current.samples)
    stored = store.get_check(outcome.check_id)[1]
    assert (stored.reference_kind, stored.reference_rows, stored.current_total) == (
        "baseline",
        150,
        150,
    )

    # Keeping the configured reference, v2's traffic still drifts from v1's original one.
    assert (
        Checker(kept, store, lambda model: HashingEncoder()).run("intents", now=later).result.status
        == "drift"
    )

    # Rolled back to v1, which no re-tune made: the configured reference again.
    versions.rollback(store, "intents", actor="test")
    back = checker.run("intents", now=later)
    assert (back.reference.kind, back.result.status) == ("fixed", "drift")


def test_a_reference_file_goes_through_the_ingest_pipeline(
    filled: Store, cfg: Config, tmp_path: Path
) -> None:
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN, 300, "cur")
    path = tmp_path / "reference.jsonl"
    lines = [
        {
            "request_id": f"f{i}",
            "input": INTENTS[KNOWN[i % 10]][i // 10] + " mail a@b.co",
            "prediction": KNOWN[i % 10],
            "confidence": 0.9,
            "label": KNOWN[i % 10],
        }
        for i in range(300)
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    outcome = Checker(cfg, filled, lambda model: HashingEncoder()).run(
        "intents", now=NOW, reference_file=path
    )
    assert outcome.reference.kind == "dataset"
    assert outcome.reference.total == 300
    assert all("<EMAIL>" in s.input for s in outcome.reference.samples)
    assert outcome.result.status in ("ok", "drift")


def training_csv(path: Path, intents: list[str], rows: int) -> Path:
    """A training set as Banking77 ships it: columns ``text,category``."""
    with path.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow(["text", "category"])
        for i in range(rows):
            intent = intents[i % len(intents)]
            writer.writerow([INTENTS[intent][i // len(intents)], intent])
    return path


def test_a_training_set_reference_is_read_through_its_columns(
    filled: Store, tmp_path: Path
) -> None:
    training_csv(tmp_path / "train.csv", KNOWN, 300)
    reference = (
        "      reference:\n"
        "        kind: dataset\n"
        "        path: train.csv\n"
        "        columns: {input: text, prediction: category}\n"
    )
    text = (
        CONFIG.replace("      window: 6h\n", "      window: 6h\n" + reference)
        + f"storage: {{snapshots: {tmp_path / 'snapshots'}}}\n"
    )
    cfg = parse_config(text, base_dir=tmp_path, environ={})
    fill(filled, cfg, NOW - timedelta(hours=6), KNOWN, 300, "cur")
    outcome = Checker(cfg, filled, lambda model: HashingEncoder()).run("intents", now=NOW)
    assert outcome.error is None
    assert (outcome.reference.kind, outcome.reference.total) == ("dataset", 300)
    assert {s.prediction for s in outcome.reference.samples} == set(KNOWN)
    # A healthy window, against the data the model was trained on: nothing drifts.
    assert outcome.result.status == "ok", outcome.result.to_dict()


def test_the_check_command(tmp_path: Path) -> None:
    db = tmp_path / "driftd.db"
    cfg = config(tmp_path)
    with Store.open(f"sqlite:///{db}") as store:
        from daemon.store import upgrade

        upgrade(store.engine)
        store.ensure_deployment("intents", "finetuned", "classification")
        now = datetime.now(UTC)
        fill(store, cfg, now - timedelta(hours=12), KNOWN, 200, "ref")
        fill(store, cfg, now - timedelta(hours=6), KNOWN[:5] + UNSEEN, 200, "cur")
    (tmp_path / "driftd.yaml").write_text(
        CONFIG.replace(
            "signals: [descriptors, embedding, prediction, confidence, performance]",
            "signals: [descriptors, prediction, performance]",
        )
    )
    result = run_driftd("check", "intents", "--json", "--html", "report.html", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    printed = json.loads(result.stdout)
    assert printed["status"] == "drift"
    check_id = printed["check_id"]
    report = run_driftd("report", str(check_id), "--html", "again.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "again.html").stat().st_size > 1000
    # The table, on a terminal of 80 columns: every line fits, every name reads whole.
    narrow = {**environ_without(), "COLUMNS": "80"}
    table = run_driftd("check", "intents", cwd=tmp_path, env=narrow)
    assert table.returncode == 1, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80, table.stdout
    assert "…" not in table.stdout
    assert any(word.endswith("drifted_columns_share") for word in table.stdout.split())
    empty = run_driftd("check", "intents", "--window", "1m", cwd=tmp_path, env=narrow)
    assert empty.returncode == 3, empty.stderr
    # ... and says why no signal ran.
    assert "every signal: insufficient_data — the reference window has" in " ".join(
        empty.stdout.split()
    )


def test_the_check_command_maps_the_columns_of_a_reference_file(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'driftd.db'}") as store:
        from daemon.store import upgrade

        upgrade(store.engine)
        store.ensure_deployment("intents", "finetuned", "classification")
        fill(store, config(tmp_path), datetime.now(UTC) - timedelta(hours=6), KNOWN, 200, "cur")
    (tmp_path / "driftd.yaml").write_text(
        CONFIG.replace(
            "signals: [descriptors, embedding, prediction, confidence, performance]",
            "signals: [descriptors, prediction]",
        )
    )
    training_csv(tmp_path / "train.csv", KNOWN, 200)

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return run_driftd("check", "intents", "--reference", "train.csv", *args, cwd=tmp_path)

    mapped = check("--map", "input=text", "--map", "prediction=category", "--json")
    assert mapped.returncode == 0, mapped.stderr
    printed = json.loads(mapped.stdout)
    assert (printed["status"], printed["reference_rows"]) == ("ok", 200)
    # A reference it cannot read fails the check: exit 4, the result printed with its error,
    # and stored like a scheduled check that failed.
    unmapped = check()
    assert unmapped.returncode == 4
    assert "column 'text' is not a sample field" in unmapped.stderr
    failed = json.loads(check("--json").stdout)
    assert failed["status"] == "failed"
    assert "column 'text' is not a sample field" in failed["error"]
    with Store.open(f"sqlite:///{tmp_path / 'driftd.db'}") as store:
        stored = store.get_check(failed["check_id"])[1]
    assert (stored.status, stored.reference_kind) == ("failed", "dataset")
    assert stored.error is not None
    assert "column 'text'" in stored.error
    wrong = check("--map", "intent=category")
    assert wrong.returncode == 2
    assert "--map names fields samples do not have: ['intent']" in wrong.stderr
