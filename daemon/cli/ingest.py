"""``driftd ingest``: backfill past traffic from a file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from daemon.cli.common import EXIT_FAILURE, EXIT_USAGE, ConfigOption, deployment_of, fail, load
from daemon.errors import BackfillError, DriftdError


def ingest(
    file: Annotated[Path, typer.Argument(help="JSONL, CSV or Parquet file of samples.")],
    deployment: Annotated[str, typer.Option("--deployment", "-d", help="Deployment name.")],
    config: ConfigOption = Path("driftd.yaml"),
    file_format: Annotated[
        str | None, typer.Option("--format", help="jsonl, csv or parquet; default: by suffix.")
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map", help="FIELD=COLUMN: read a sample field from a differently named column."
        ),
    ] = None,
    chunk: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per transaction.")] = 1000,
    skip_invalid: Annotated[
        bool, typer.Option(help="Store the valid rows and report the invalid ones.")
    ] = False,
) -> None:
    """Backfill past traffic through the same checks, sampling, redaction and storage as the API."""
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from daemon.ingest.backfill import (
        backfill,
        check_header,
        missing_message,
        parse_mapping,
        read_rows,
    )
    from daemon.ingest.backfill import file_format as format_of
    from daemon.ingest.pipeline import DeploymentPipeline
    from daemon.store import Store, upgrade

    settings = load(config)
    target = deployment_of(settings, deployment, config)
    try:
        fields = parse_mapping(mapping or [])
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    console = Console(stderr=True, soft_wrap=True)

    def show(problems: list[tuple[str, str]], missing: Mapping[str, int]) -> None:
        for name, rows in missing.items():
            message = missing_message(name, rows, target.task)
            console.print(f"{file}: {message}", markup=False, highlight=False)
        for where, message in problems[:50]:
            console.print(f"{file}: {where}: {message}", markup=False, highlight=False)
        if len(problems) > 50:
            console.print(f"... and {len(problems) - 50} more problems")

    storage = settings.storage
    try:
        fmt = format_of(file, file_format)
        check_header(file, fmt, fields, target.task)
        total = _count_rows(file, fmt)
        store = Store.open(storage.url, busy_timeout=storage.busy_timeout.total_seconds())
        try:
            upgrade(store.engine)
            store.ensure_deployment(target.name, target.kind, target.task)
            with Progress(
                *Progress.get_default_columns()[:-1],
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                task = progress.add_task(f"{file.name} → {target.name}", total=total)
                report = backfill(
                    read_rows(file, fmt, fields),
                    DeploymentPipeline(target),
                    store,
                    chunk=chunk,
                    skip_invalid=skip_invalid,
                    progress=lambda n: progress.advance(task, n),
                )
        finally:
            store.close()
    except BackfillError as exc:
        show(exc.problems, exc.missing)
        fail(f"driftd ingest: {exc}", EXIT_USAGE)
    except DriftdError as exc:
        fail(f"driftd ingest: {exc}", EXIT_FAILURE)
    summary = Table(title=f"{file} → {target.name}", show_header=False)
    for label, value in (
        ("rows read", report.rows),
        ("stored (new)", report.new),
        ("duplicate (already stored)", report.duplicate),
        ("sampled out", report.sampled_out),
        ("invalid, skipped", report.invalid),
        ("redacted", ", ".join(f"{k} {n}" for k, n in sorted(report.redacted.items())) or "none"),
    ):
        summary.add_row(label, str(value))
    Console().print(summary)
    show(report.problems, report.missing)


def _count_rows(file: Path, fmt: str) -> int | None:
    """Rows in the file for the progress bar (None when counting would cost a full read)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(file).metadata.num_rows)
    try:
        with file.open("rb") as handle:
            lines = sum(1 for line in handle if line.strip())
    except OSError:
        return None
    return lines - 1 if fmt == "csv" else lines
