"""Backfill: load past traffic from a JSONL, CSV or Parquet file through the ingest pipeline.

The same checks, sampling, redaction, descriptors and storage as the API, chunk by chunk. A row
without a ``request_id`` gets ``<file name>:<line>``, so running the same backfill twice stores
nothing twice. Problems are reported by line (CSV, JSONL) or row (Parquet) and field.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from daemon.errors import DriftdError
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn, problems_of
from daemon.store import Store

FORMATS = ("jsonl", "csv", "parquet")
_SAMPLE = TypeAdapter(SampleIn)
_FIELDS = frozenset(SampleIn.model_fields)


class BackfillError(DriftdError):
    """The file cannot be read, or holds rows that are invalid (and were not to be skipped)."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass
class BackfillReport:
    """What a backfill did; ``problems`` are ``(where, message)`` for the invalid rows."""

    rows: int = 0
    new: int = 0
    duplicate: int = 0
    sampled_out: int = 0
    invalid: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    redacted: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Row:
    where: str  # "line 12" or "row 12", for messages
    values: dict[str, Any]


def file_format(path: Path, declared: str | None) -> str:
    name = (declared or path.suffix.lstrip(".")).lower()
    name = {"ndjson": "jsonl", "json": "jsonl", "pq": "parquet"}.get(name, name)
    if name not in FORMATS:
        raise BackfillError(
            f"{path}: cannot tell the format from {path.suffix!r}; pass --format "
            f"({', '.join(FORMATS)})"
        )
    return name


def read_rows(path: Path, fmt: str, mapping: Mapping[str, str]) -> Iterator[Row]:
    """Rows as sample fields: columns renamed by ``mapping`` (field → column), ``metadata.x``
    columns gathered into ``metadata``, empty CSV cells read as missing."""
    readers: dict[str, Callable[[Path], Iterator[tuple[str, dict[str, Any]]]]] = {
        "jsonl": _jsonl,
        "csv": _csv,
        "parquet": _parquet,
    }
    renames = {column: name for name, column in mapping.items()}
    unknown_fields = sorted(set(mapping) - _FIELDS)
    if unknown_fields:
        raise BackfillError(f"--map names fields samples do not have: {unknown_fields}")
    try:
        for where, raw in readers[fmt](path):
            yield Row(where, _as_sample(raw, renames, path, where))
    except OSError as exc:
        raise BackfillError(f"{path}: cannot read it: {exc}") from None


def _as_sample(raw: dict[str, Any], renames: Mapping[str, str], path: Path, where: str) -> Any:
    values: dict[str, Any] = {}
    metadata: dict[str, Any] = dict(raw.pop("metadata", None) or {})
    for column, value in raw.items():
        if value is None or value == "":
            continue
        name = renames.get(column, column)
        if name.startswith("metadata."):
            metadata[name.removeprefix("metadata.")] = value
        elif name in _FIELDS:
            values[name] = value
        else:
            raise BackfillError(
                f"{path}: {where}: column {column!r} is not a sample field; map it with "
                f"--map FIELD={column} or rename it (fields: {', '.join(sorted(_FIELDS))})"
            )
    if metadata:
        values["metadata"] = metadata
    # Ids are held to a safe alphabet (they are stored in clear): a file name with spaces or
    # other characters still names its rows, with those characters replaced.
    name = re.sub(r"[^A-Za-z0-9_.:/+=-]", "_", path.name)
    values.setdefault("request_id", f"{name}:{where.split()[-1]}")
    return values


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise BackfillError(f"{path}: line {number}: not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise BackfillError(f"{path}: line {number}: expected a JSON object per line")
            yield f"line {number}", value


def _csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for record in reader:
            yield f"line {reader.line_num}", dict(record)


def _parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=5000):
        for record in batch.to_pylist():
            number += 1
            yield f"row {number}", record


def backfill(
    rows: Iterator[Row],
    pipeline: DeploymentPipeline,
    store: Store,
    *,
    chunk: int = 1000,
    skip_invalid: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BackfillReport:
    """Store ``rows`` chunk by chunk. Without ``skip_invalid``, the first chunk holding an
    invalid row stops the backfill before that chunk is stored (earlier chunks stay stored)."""
    report = BackfillReport()
    pending: list[Row] = []
    for row in rows:
        pending.append(row)
        if len(pending) >= chunk:
            _store_chunk(pending, pipeline, store, report, skip_invalid)
            if progress:
                progress(len(pending))
            pending = []
    if pending:
        _store_chunk(pending, pipeline, store, report, skip_invalid)
        if progress:
            progress(len(pending))
    return report


def _store_chunk(
    rows: list[Row],
    pipeline: DeploymentPipeline,
    store: Store,
    report: BackfillReport,
    skip_invalid: bool,
) -> None:
    report.rows += len(rows)
    valid: list[tuple[Row, SampleIn]] = []
    bad: set[str] = set()
    for row in rows:
        try:
            valid.append((row, _SAMPLE.validate_python(row.values)))
        except ValidationError as exc:
            bad.add(row.where)
            for problem in problems_of(exc, "samples"):
                report.problems.append((row.where, f"{problem.field}: {problem.message}"))
    for problem in pipeline.check([sample for _, sample in valid]):
        assert problem.index is not None
        where = valid[problem.index][0].where
        bad.add(where)
        report.problems.append((where, f"{problem.field}: {problem.message}"))
    report.invalid += len(bad)
    if bad and not skip_invalid:
        raise BackfillError(
            f"{len(bad)} invalid rows in the chunk starting at {rows[0].where}; nothing of this "
            f"chunk was stored ({report.new + report.duplicate} rows before it were). Fix them, "
            "or pass --skip-invalid",
            report.problems,
        )
    samples = [sample for row, sample in valid if row.where not in bad]
    prepared = pipeline.prepare(samples, datetime.now(UTC))
    report.redacted.update(prepared.redacted)
    report.sampled_out += len(prepared.sampled_out)
    if prepared.samples:
        (result,) = store.insert_batches([(pipeline.name, prepared.samples)])
        report.new += len(result.new)
        report.duplicate += len(result.duplicate)
