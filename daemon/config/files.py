"""The data files a configuration names (a monitor's reference data set, the re-tuning data, the
golden sets): that each exists, and that its header holds the columns the configuration maps,
read from the header alone, so that ``driftd config validate`` finds a wrong column before the
first check or job does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from daemon.config.models import Config, Deployment, ReferenceKind
from daemon.domain import Kind, Task
from retrain import dataset
from retrain.contract import REFERENCE_KEYS

# A place in the configuration: keys and list indexes from the top, as in error messages.
Loc = tuple[str | int, ...]


def data_files(config: Config) -> Iterator[tuple[Loc, Path]]:
    """The data files a configuration names; they must exist when it is loaded, so a typo is
    found by ``config validate`` and not by the first re-tuning, at night."""
    for i, deployment in enumerate(config.deployments):
        files: list[tuple[Loc, Path | None]] = [
            (("monitor", "reference", "path"), deployment.monitor.reference.path),
            (("retune", "data", "training_data"), deployment.retune.data.training_data),
            (("retune", "golden_set"), _golden_path(deployment)),
        ]
        for loc, path in files:
            if path is not None:
                yield ("deployments", i, *loc), path


def _golden_path(deployment: Deployment) -> Path | None:
    golden = deployment.retune.golden_set
    return None if golden is None else golden.path


def column_problems(config: Config) -> Iterator[tuple[Loc, str]]:
    """The columns each data file lacks, from its header alone (a CSV's first line, a JSONL
    file's first record, a Parquet schema), so that a file a check or a re-tuning cannot read is
    refused at start-up, not found by every scheduled run. Missing files are reported before."""
    for i, deployment in enumerate(config.deployments):
        found = (*_reference(deployment), *_training(deployment), *_golden(deployment))
        for loc, message in found:
            yield ("deployments", i, *loc), message


def _reference(deployment: Deployment) -> Iterator[tuple[Loc, str]]:
    from daemon.errors import BackfillError
    from daemon.ingest.backfill import (
        column_problems,
        file_format,
        read_columns,
        sample_fields,
        unknown_fields,
    )

    reference = deployment.monitor.reference
    loc: Loc = ("monitor", "reference", "columns")
    if reference.kind is not ReferenceKind.dataset or reference.path is None:
        return
    unknown = unknown_fields(reference.columns)
    for field in unknown:
        fields = ", ".join(sample_fields())
        yield (*loc, field), f"{field!r} is not a sample field; the fields: {fields}"
    path = reference.path
    if unknown or not path.is_file():
        return
    try:
        columns = read_columns(path, file_format(path, None))
    except BackfillError as exc:
        yield ("monitor", "reference", "path"), str(exc)
        return
    has = _columns_of(path, columns)
    found = column_problems(columns, reference.columns)
    for field, column in found.missing.items():
        yield (*loc, field), f"column {column!r} is not in {path} ({has})"
    if found.unmapped:
        named = ", ".join(map(repr, found.unmapped))
        yield (
            loc,
            (
                f"{path} has columns that are not sample fields ({named}): map a field to each, "
                f"e.g. {{input: {found.unmapped[0]}}}, or leave them out of the file ({has}; the "
                f"fields: {', '.join(sample_fields())})"
            ),
        )
    elif found.no_input and not found.missing:
        yield (
            loc,
            (
                f"no column of {path} gives the sample field 'input': map it, e.g. "
                f"{{input: COLUMN}} ({has})"
            ),
        )


def _training(deployment: Deployment) -> Iterator[tuple[Loc, str]]:
    data = deployment.retune.data
    path = data.training_data
    if path is None or not path.is_file():
        return
    try:
        columns = _job_file_columns(path, "training data")
    except ValueError as exc:
        yield ("retune", "data", "training_data"), str(exc)
        return
    holds = {"input_field": "the input", "label_field": "the label (or wanted output)"}
    for key, what in holds.items():
        column = getattr(data, key)
        if column not in columns:
            yield (
                ("retune", "data", key),
                (
                    f"column {column!r} is not in {path} ({_columns_of(path, columns)}); set "
                    f"retune.data.{key} to the column that holds {what}"
                ),
            )


def _golden(deployment: Deployment) -> Iterator[tuple[Loc, str]]:
    golden = deployment.retune.golden_set
    if golden is None or not golden.path.is_file():
        return
    path = golden.path
    try:
        columns = _job_file_columns(path, "a golden set")
    except ValueError as exc:
        yield ("retune", "golden_set"), str(exc)
        return
    holds = {"input": "the input"}
    # A generation deployment's golden set may hold no wanted answer: its label column is
    # needed only where it is named.
    if deployment.task is Task.classification or "label" in golden.columns.model_fields_set:
        holds["label"] = "the label"
    for field, what in holds.items():
        column = getattr(golden.columns, field)
        if column not in columns:
            yield (
                ("retune", "golden_set", "columns", field),
                (
                    f"column {column!r} is not in {path} ({_columns_of(path, columns)}); set "
                    f"retune.golden_set.columns.{field} to the column that holds {what}, as in "
                    "golden_set: {path: FILE, columns: {input: COLUMN, label: COLUMN}}"
                ),
            )
    if "label" not in holds:  # a named label column is checked above
        yield from _scorable(deployment, path, columns)


def _scorable(deployment: Deployment, path: Path, columns: list[str]) -> Iterator[tuple[Loc, str]]:
    """A fine-tuned generation model that can re-tune is gated by the judge's rubric or, without
    one, by the golden set's reference answers: one of the two must be there before a paid
    fine-tune runs, not found missing by its gate."""
    golden = deployment.retune.golden_set
    if (
        golden is None
        or deployment.kind is not Kind.finetuned
        or deployment.task is not Task.generation
        or not deployment.retunes
        or deployment.judge.rubric is not None
    ):
        return
    # retrain.scoring reads the label column first, then these.
    wanted = (golden.columns.label, *REFERENCE_KEYS)
    if any(column in columns for column in wanted):
        return
    yield (
        ("retune", "golden_set", "columns", "label"),
        (
            f"a fine-tuned generation model is gated by judge.rubric or by reference answers in "
            f"its golden set, and this deployment has neither: judge.rubric is not set and "
            f"{path} has no column {' or '.join(map(repr, dict.fromkeys(wanted)))} "
            f"({_columns_of(path, columns)}); set judge.rubric, or name the column of wanted "
            "answers in retune.golden_set.columns.label"
        ),
    )


def _job_file_columns(path: Path, what: str) -> list[str]:
    """The columns of a file a job reads, from its header; ``ValueError`` says why there are
    none: a suffix the job cannot read the file by, or a file that is not what it says."""
    from daemon.errors import BackfillError
    from daemon.ingest.backfill import read_columns

    fmt = dataset.FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: {what} is read as CSV (.csv), JSONL (.jsonl) or Parquet (.parquet), by "
            f"its suffix; got {path.suffix!r}"
        )
    try:
        return read_columns(path, fmt)
    except BackfillError as exc:
        raise ValueError(str(exc)) from None


def _columns_of(path: Path, columns: list[str]) -> str:
    if not columns:
        return "it has no header" if path.suffix.lower() == ".csv" else "it has no record"
    return f"its columns: {', '.join(columns)}"
