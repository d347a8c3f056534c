"""Backfill through the ingest pipeline (SQLite and PostgreSQL), and `driftd ingest`."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from daemon.config import parse_config
from daemon.config.models import Deployment
from daemon.errors import BackfillError
from daemon.ingest.backfill import (
    BackfillReport,
    backfill,
    check_header,
    file_format,
    missing_message,
    read_rows,
)
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.store import Sample, Store
from tests.helpers.cli import environ_without, run_driftd
from tests.helpers.configs import finetuned_config

CONFIG = finetuned_config(labels=("card_arrival", "lost_card"))
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def intents(store: Store) -> Deployment:
    deployment = parse_config(CONFIG, environ={}).deployments[0]
    store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
    return deployment


def stored(store: Store) -> dict[str, Sample]:
    with store.session(readonly=True) as session:
        return {s.request_id: s for s in session.scalars(select(Sample))}


def run(
    path: Path,
    fmt: str,
    intents: Deployment,
    store: Store,
    *,
    mapping: dict[str, str] | None = None,
    chunk: int = 1000,
    skip_invalid: bool = False,
) -> BackfillReport:
    rows = read_rows(path, fmt, mapping or {})
    pipeline = DeploymentPipeline(intents)
    return backfill(rows, pipeline, store, chunk=chunk, skip_invalid=skip_invalid)


def test_jsonl_is_stored_once_however_often_it_is_loaded(
    tmp_path: Path, store: Store, intents: Deployment
) -> None:
    path = tmp_path / "traffic.jsonl"
    rows = [
        {
            "request_id": f"r{i}",
            "ts": "2026-10-01T10:00:00+00:00",
            "input": f"card question {i}, reply to me@example.com",
            "prediction": "card_arrival",
            "metadata": {"region": "eu"},
        }
        for i in range(25)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    first = run(path, "jsonl", intents, store, chunk=10)
    assert (first.rows, first.new, first.duplicate, first.invalid) == (25, 25, 0, 0)
    assert first.redacted == {"email": 25}
    again = run(path, "jsonl", intents, store, chunk=10)
    assert (again.new, again.duplicate) == (0, 25)
    sample = stored(store)["r3"]
    assert sample.input == "card question 3, reply to <EMAIL>"
    assert sample.meta == {"region": "eu"}


def test_csv_columns_are_mapped_and_rows_get_stable_ids(
    tmp_path: Path, store: Store, intents: Deployment
) -> None:
    path = tmp_path / "past.csv"
    path.write_text(
        "text,category,metadata.channel,confidence\n"
        "Where is my card?,card_arrival,app,0.9\n"
        "I lost my card,lost_card,web,\n"
    )
    mapping = {"input": "text", "prediction": "category"}
    report = run(path, "csv", intents, store, mapping=mapping)
    assert report.new == 2
    rows = stored(store)
    assert sorted(rows) == ["past.csv:2", "past.csv:3"]
    first = rows["past.csv:2"]
    assert (first.input, first.prediction, first.confidence) == (
        "Where is my card?",
        "card_arrival",
        0.9,
    )
    assert first.meta == {"channel": "app"}
    assert rows["past.csv:3"].confidence is None
    assert run(path, "csv", intents, store, mapping=mapping).duplicate == 2


def test_a_file_name_outside_the_id_alphabet_still_names_its_rows(
    tmp_path: Path, store: Store, intents: Deployment
) -> None:
    path = tmp_path / "past week @ eu.csv"
    path.write_text("text,category\nWhere is my card?,card_arrival\n")
    report = run(path, "csv", intents, store, mapping={"input": "text", "prediction": "category"})
    assert report.new == 1
    assert sorted(stored(store)) == ["past_week___eu.csv:2"]


def test_parquet(tmp_path: Path, store: Store, intents: Deployment) -> None:
    path = tmp_path / "past.parquet"
    table = pa.table(
        {
            "request_id": ["p1", "p2"],
            "input": ["a", "b"],
            "prediction": ["lost_card", "card_arrival"],
            "latency_ms": [12.5, 40.0],
        }
    )
    pq.write_table(table, path)
    assert run(path, file_format(path, None), intents, store).new == 2
    assert stored(store)["p1"].latency_ms == 12.5


def test_invalid_rows_stop_before_their_chunk_unless_skipped(
    tmp_path: Path, store: Store, intents: Deployment
) -> None:
    path = tmp_path / "mixed.jsonl"
    good = {"input": "q", "prediction": "lost_card"}
    lines = [good] * 4 + [
        {"input": "q", "prediction": "pizza"},
        good,
        {"input": "q", "prediction": "lost_card", "confidence": 3},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(
        BackfillError, match="2 invalid rows in the chunk starting at line 5"
    ) as caught:
        run(path, "jsonl", intents, store, chunk=4)
    assert [where for where, _ in caught.value.problems] == ["line 7", "line 5"]
    assert len(stored(store)) == 4  # the first chunk stays stored
    report = run(path, "jsonl", intents, store, chunk=4, skip_invalid=True)
    assert (report.invalid, report.new, report.duplicate) == (2, 1, 4)
    assert sorted(stored(store)) == [f"mixed.jsonl:{n}" for n in (1, 2, 3, 4, 6)]


def test_rows_the_store_could_not_hold_are_invalid_rows(
    tmp_path: Path, store: Store, intents: Deployment
) -> None:
    """The backfill validates with the API's schema: what would have failed in the store (or
    been stored wrong) is an invalid row, named by line and field."""
    path = tmp_path / "crafted.jsonl"
    good = {"input": "q", "prediction": "lost_card"}
    lines = [
        good,
        good | {"latency_ms": float("nan")},
        good | {"tokens_in": 2**40},
        good | {"input": "a\x00b"},
        good | {"ts": "0001-01-01T00:00:00+01:00"},
        good | {"label": "pizza"},
        good | {"request_id": "jane@example.com"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))

    with pytest.raises(BackfillError, match="6 invalid rows") as caught:
        run(path, "jsonl", intents, store)

    fields = [(where, message.split(":")[0]) for where, message in caught.value.problems]
    assert sorted(fields) == [
        ("line 2", "latency_ms"),
        ("line 3", "tokens_in"),
        ("line 4", "input"),
        ("line 5", "ts"),
        ("line 6", "label"),
        ("line 7", "request_id"),
    ]
    assert stored(store) == {}
    report = run(path, "jsonl", intents, store, skip_invalid=True)
    assert (report.invalid, report.new) == (6, 1)
    assert sorted(stored(store)) == ["crafted.jsonl:1"]


def test_unknown_columns_and_formats_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("text,colour\nhello,red\n")
    with pytest.raises(BackfillError, match="column 'colour' is not a sample field"):
        list(read_rows(path, "csv", {"input": "text"}))
    with pytest.raises(BackfillError, match="--map names fields samples do not have"):
        list(read_rows(path, "csv", {"inptu": "text"}))
    with pytest.raises(BackfillError, match="pass --format"):
        file_format(tmp_path / "x.txt", None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a"}\n{nope\n')
    with pytest.raises(BackfillError, match="line 2: not valid JSON"):
        list(read_rows(bad, "jsonl", {}))


def test_the_ingest_command(tmp_path: Path) -> None:
    (tmp_path / "driftd.yaml").write_text(CONFIG)
    data = tmp_path / "past.csv"
    data.write_text("text,category\nWhere is my card?,card_arrival\nPizza?,pizza\n")
    command = ["ingest", "past.csv", "-d", "intents", "--map", "input=text"]
    command += ["--map", "prediction=category"]
    refused = run_driftd(*command, cwd=tmp_path)
    assert refused.returncode == 2
    assert "past.csv: line 3: prediction: 'pizza' is not one of the deployment's labels" in (
        refused.stderr
    )
    done = run_driftd(*command, "--skip-invalid", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stored (new)" in done.stdout
    assert "│ 1" in done.stdout.split("stored (new)")[1].splitlines()[0]
    unknown = run_driftd("ingest", "past.csv", "-d", "nope", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "no deployment 'nope' (configured: intents)" in unknown.stderr


def test_rows_without_a_required_field_are_counted_not_listed(
    tmp_path: Path, store: Store, intents: Deployment
) -> None:
    path = tmp_path / "unpredicted.jsonl"
    lines = [{"input": "q"}] * 3 + [{"input": "q", "prediction": "lost_card"}, {"error": "boom"}]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(BackfillError, match="4 invalid rows") as caught:
        run(path, "jsonl", intents, store)
    assert caught.value.missing == {"prediction": 3, "input": 1}
    assert caught.value.problems == []
    report = run(path, "jsonl", intents, store, skip_invalid=True)
    assert (report.invalid, report.new, dict(report.missing)) == (
        4,
        1,
        {"prediction": 3, "input": 1},
    )
    assert missing_message("prediction", 3, intents.task) == (
        "3 rows have no 'prediction' (required for a classification deployment): map a column "
        "to it with --map prediction=COLUMN"
    )


def test_a_file_without_a_column_for_a_required_field_is_refused_from_its_header(
    tmp_path: Path, intents: Deployment
) -> None:
    path = tmp_path / "past.csv"
    path.write_text("text,category\n" + "Where is my card?,card_arrival\n" * 412)
    with pytest.raises(BackfillError, match="no column gives 'prediction'") as caught:
        check_header(path, "csv", {"input": "text"}, intents.task)
    assert caught.value.missing == {"prediction": 412}
    check_header(path, "csv", {"input": "text", "prediction": "category"}, intents.task)
    # An error column may stand in for the prediction, row by row.
    errors = tmp_path / "errors.csv"
    errors.write_text("input,error\nq,timeout\n")
    check_header(errors, "csv", {}, intents.task)


def test_the_ingest_command_names_a_missing_field_once_with_its_count(tmp_path: Path) -> None:
    (tmp_path / "driftd.yaml").write_text(CONFIG)
    (tmp_path / "past.csv").write_text("text,category\n" + "Where is my card?,card_arrival\n" * 412)
    result = run_driftd("ingest", "past.csv", "-d", "intents", "--map", "input=text", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("prediction") == 3, result.stderr  # one line, and the summary
    assert (
        "past.csv: 412 rows have no 'prediction' (required for a classification deployment): "
        "map a column to it with --map prediction=COLUMN" in result.stderr
    )
    assert "its columns are text, category; nothing was stored" in result.stderr


def test_the_readme_ingest_command_works_as_printed(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = [line for line in readme.splitlines() if line.startswith("driftd ingest ")]
    command = shlex.split(line.split("#")[0])
    # The example's store is driftd.db in the working directory; the test's is its own.
    environ = {**environ_without(), "DRIFTD_STORAGE_URL": f"sqlite:///{tmp_path / 'driftd.db'}"}
    result = run_driftd(*command[1:], cwd=ROOT, env=environ)
    assert result.returncode == 0, result.stderr
    file = ROOT / command[2]
    with file.open(encoding="utf-8", newline="") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    new = result.stdout.split("stored (new)")[1].splitlines()[0]
    assert f"│ {rows} " in new, result.stdout
