"""Backfill: load past traffic from a JSONL, CSV or Parquet file through the ingest pipeline.

The same checks, sampling, redaction, descriptors and storage as the API, chunk by chunk. A row
without a ``request_id`` gets ``<file name>:<line>``, so running the same backfill twice stores
nothing twice. Problems are reported by line (CSV, JSONL) or row (Parquet) and field, except a
required field that rows lack: that is one problem, with the number of rows, since the fix is one
``--map`` for all of them.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from daemon.domain import Task
from daemon.errors import BackfillError
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn, problems_of
from daemon.store import Store

FORMATS = ("jsonl", "csv", "parquet")
_SAMPLE = TypeAdapter(SampleIn)
_FIELDS = frozenset(SampleIn.model_fields)


@dataclass
class BackfillReport:
    """What a backfill did; ``problems`` are ``(where, message)`` for the invalid rows, except
    rows without a required field: ``missing`` counts those by field."""

    rows: int = 0
    new: int = 0
    duplicate: int = 0
    sampled_out: int = 0
    invalid: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    missing: Counter[str] = field(default_factory=Counter)
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
    unknown = unknown_fields(mapping)
    if unknown:
        raise BackfillError(f"--map names fields samples do not have: {unknown}")
    try:
        for where, raw in readers[fmt](path):
            yield Row(where, _as_sample(raw, renames, path, where))
    except OSError as exc:
        raise BackfillError(f"{path}: cannot read it: {exc}") from None


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """``--map`` arguments, ``FIELD=COLUMN`` each, as a mapping field → column."""
    mapping: dict[str, str] = {}
    for item in items:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            raise ValueError(f"--map {item!r}: expected FIELD=COLUMN, e.g. --map input=text")
        mapping[name] = column
    return mapping


def unknown_fields(mapping: Mapping[str, str]) -> list[str]:
    """The fields of a mapping (field → column) that samples do not have."""
    return sorted(set(mapping) - _FIELDS)


def sample_fields() -> list[str]:
    """The fields a column may be mapped to, for messages."""
    return sorted(_FIELDS)


def read_columns(path: Path, fmt: str) -> list[str]:
    """The columns of a file from its header alone: a CSV's first line, the keys of a JSONL
    file's first record, a Parquet file's schema. Cheap whatever the file's size."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if fmt == "csv":
            with path.open(encoding="utf-8", newline="") as handle:
                return next(csv.reader(handle), [])
        for _, record in _jsonl(path):
            return list(record)
        return []
    except (OSError, csv.Error, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BackfillError(f"{path}: cannot read it: {exc}") from None


@dataclass(frozen=True)
class ColumnProblems:
    """What keeps a file's columns from being read as samples under a mapping."""

    missing: dict[str, str]  # field → mapped column the file does not have
    unmapped: list[str]  # columns that are not sample fields and are mapped to none
    no_input: bool  # no column gives the required field `input`


def column_problems(columns: Iterable[str], mapping: Mapping[str, str]) -> ColumnProblems:
    """How ``columns`` fall short of what ``read_rows`` needs under ``mapping``: the same rules,
    checked on a header instead of on every row."""
    columns = list(columns)
    renames = {column: name for name, column in mapping.items()}
    names = [renames.get(column, column) for column in columns]
    return ColumnProblems(
        missing={name: column for name, column in mapping.items() if column not in columns},
        unmapped=[
            column for column, name in zip(columns, names, strict=True) if not _is_field(name)
        ],
        no_input="input" not in names,
    )


def required_fields(task: Task) -> list[str]:
    """The fields every row must give: the input, and a classifier's prediction (which a row
    may instead go without if its ``error`` says why)."""
    return ["input", "prediction"] if task is Task.classification else ["input"]


def absent_fields(columns: Iterable[str], mapping: Mapping[str, str], task: Task) -> list[str]:
    """The required fields no column of a file gives under ``mapping``, from its header."""
    renames = {column: name for name, column in mapping.items()}
    names = {renames.get(column, column) for column in columns}
    return [
        name
        for name in required_fields(task)
        if name not in names and not (name == "prediction" and "error" in names)
    ]


def missing_message(name: str, rows: int, task: Task) -> str:
    """What to say of ``rows`` rows without the required field ``name``, and how to fix it."""
    why = "required for a classification deployment" if name == "prediction" else "required"
    have = "1 row has" if rows == 1 else f"{rows} rows have"
    return f"{have} no {name!r} ({why}): map a column to it with --map {name}=COLUMN"


def check_header(path: Path, fmt: str, mapping: Mapping[str, str], task: Task) -> None:
    """Refuse a CSV or Parquet file whose columns give no required field, before a row is
    stored: every row would lack it. (JSONL records each have their own keys: those rows are
    counted as the backfill meets them.)"""
    if fmt == "jsonl":
        return
    columns = read_columns(path, fmt)
    absent = absent_fields(columns, mapping, task)
    if not absent:
        return
    reader = _csv if fmt == "csv" else _parquet
    try:
        rows = sum(1 for _ in reader(path))
    except (OSError, csv.Error, ValueError) as exc:
        raise BackfillError(f"{path}: cannot read it: {exc}") from None
    raise BackfillError(
        f"{path}: no column gives {' or '.join(repr(name) for name in absent)}; its columns "
        f"are {', '.join(columns) or 'none'}; nothing was stored",
        missing=dict.fromkeys(absent, rows),
    )


def _lacks(values: Mapping[str, Any], name: str) -> bool:
    return name not in values and not (name == "prediction" and "error" in values)


def _is_field(name: str) -> bool:
    """Whether a (renamed) column fills a sample field: one of them, or ``metadata.KEY``."""
    return name in _FIELDS or name.startswith("metadata.")


def _as_sample(raw: dict[str, Any], renames: Mapping[str, str], path: Path, where: str) -> Any:
    values: dict[str, Any] = {}
    metadata: dict[str, Any] = dict(raw.pop("metadata", None) or {})
    for column, value in raw.items():
        if value is None or value == "":
            continue
        name = renames.get(column, column)
        if not _is_field(name):
            raise BackfillError(
                f"{path}: {where}: column {column!r} is not a sample field; map it with "
                f"--map FIELD={column} or rename it (fields: {', '.join(sorted(_FIELDS))})"
            )
        if name.startswith("metadata."):
            metadata[name.removeprefix("metadata.")] = value
        else:
            values[name] = value
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
    required = required_fields(pipeline.task)
    for row in rows:
        lacking = [name for name in required if _lacks(row.values, name)]
        if lacking:
            # Counted, not listed: every such row has the same fix, one --map.
            report.missing.update(lacking)
            bad.add(row.where)
            continue
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
            report.missing,
        )
    samples = [sample for row, sample in valid if row.where not in bad]
    prepared = pipeline.prepare(samples, datetime.now(UTC))
    report.redacted.update(prepared.redacted)
    report.sampled_out += len(prepared.sampled_out)
    if prepared.samples:
        (result,) = store.insert_batches([(pipeline.name, prepared.samples)])
        report.new += len(result.new)
        report.duplicate += len(result.duplicate)
