"""The ``driftd`` command line.

This is the edge where the environment is read; everything below it receives plain values. Heavy
libraries (torch, transformers, Evidently) are never imported here, so every command starts fast.
Exit status: 0 success, 1 a runtime failure (e.g. the store is unreachable), 2 bad usage or a bad
configuration file.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer

from daemon import __version__
from daemon.config import ENV_STORAGE_URL, Config, load_config, parse_config
from daemon.config.models import Server
from daemon.errors import ConfigError, DriftdError

EXIT_FAILURE = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="driftd",
    help="Watch LLM deployments for drift, export it to Prometheus, re-tune and roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and describe driftd.yaml.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the store's schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="DRIFTD_CONFIG",
        help="Configuration file.",
        show_default=True,
    ),
]

# Libraries whose versions matter when reading a bug report, in the order people ask for them.
_REPORTED = (
    "torch",
    "transformers",
    "evidently",
    "apscheduler",
    "sqlalchemy",
    "alembic",
    "openai",
    "prometheus-client",
    "fastapi",
    "pydantic",
)


def _fail(message: str, status: int) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(status)


def _load(path: Path) -> Config:
    try:
        return load_config(path, environ=os.environ)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


@app.command("version")
def version_command() -> None:
    """Print driftd's version and those of the libraries it runs on."""
    typer.echo(f"driftd {__version__}")
    typer.echo(f"python {platform.python_version()} ({sys.implementation.name})")
    for name in _REPORTED:
        try:
            typer.echo(f"{name} {version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name} not installed")


@config_app.command("validate")
def config_validate(file: Annotated[Path, typer.Argument(help="The file to check.")]) -> None:
    """Validate a configuration file; exit 2 and name every problem if it is invalid."""
    config = _load(file)
    names = ", ".join(f"{d.name} ({d.kind}, {d.task})" for d in config.deployments) or "none"
    typer.echo(f"{file}: valid; {len(config.deployments)} deployment(s): {names}")


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown), generated from the models."""
    from daemon.config.reference import render_reference

    typer.echo(render_reference(), nl=False)


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = Path("driftd.yaml"),
    url: Annotated[
        str | None, typer.Option(help=f"Store URL; overrides {ENV_STORAGE_URL} and the file.")
    ] = None,
) -> None:
    """Create or migrate the store's schema to this version of driftd; safe to run twice."""
    from daemon.store import Store, mask_url, upgrade

    if url is None:
        # Without a file, the defaults (and DRIFTD_STORAGE_URL) still say where the store is.
        settings = _load(config) if config.exists() else parse_config("", environ=os.environ)
        url = settings.storage.url
    try:
        store = Store.open(url)
        try:
            result = upgrade(store.engine)
        finally:
            store.close()
    except DriftdError as exc:
        _fail(f"driftd db upgrade: {exc}", EXIT_FAILURE)
    if result.changed:
        typer.echo(
            f"{mask_url(url)}: schema upgraded from {result.before or 'empty'} to {result.after}"
        )
    else:
        typer.echo(f"{mask_url(url)}: schema already at {result.after}; nothing to do")


@app.command("ingest")
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
        BackfillError,
        backfill,
        check_header,
        missing_message,
        parse_mapping,
        read_rows,
    )
    from daemon.ingest.backfill import file_format as format_of
    from daemon.ingest.pipeline import DeploymentPipeline
    from daemon.store import Store, upgrade

    settings = _load(config)
    try:
        target = settings.deployment(deployment)
    except KeyError:
        names = ", ".join(d.name for d in settings.deployments) or "none"
        _fail(f"{config}: no deployment {deployment!r} (configured: {names})", EXIT_USAGE)
    try:
        fields = parse_mapping(mapping or [])
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
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
        _fail(f"driftd ingest: {exc}", EXIT_USAGE)
    except DriftdError as exc:
        _fail(f"driftd ingest: {exc}", EXIT_FAILURE)
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


@app.command("check")
def check(
    deployment: Annotated[str, typer.Argument(help="The deployment to check.")],
    config: ConfigOption = Path("driftd.yaml"),
    window: Annotated[
        str | None, typer.Option(help="Length of the current window, e.g. 24h (default: config).")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Check against this JSONL, CSV or Parquet file of samples instead."),
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="FIELD=COLUMN: read a sample field of --reference from a differently named "
            "column (as on `driftd ingest`).",
        ),
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Write Evidently's HTML report here.")] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            metavar="",  # a flag: typer would show <bool> as if it took a value
            help="Print the result as JSON instead of a table, also when the check "
            "fails (then with its error); the exit status is the same.",
        ),
    ] = False,
) -> None:
    """Run one check now and store it. Exit 0 ok, 1 drift, 3 insufficient data, 4 failed."""
    import json

    from daemon.checks import Checker
    from daemon.config.types import parse_duration
    from daemon.ingest.backfill import parse_mapping, unknown_fields
    from daemon.store import Store, upgrade

    settings = _load(config)
    try:
        settings.deployment(deployment)
    except KeyError:
        names = ", ".join(d.name for d in settings.deployments) or "none"
        _fail(f"{config}: no deployment {deployment!r} (configured: {names})", EXIT_USAGE)
    try:
        length = parse_duration(window) if window is not None else None
    except ValueError as exc:
        _fail(f"--window: {exc}", EXIT_USAGE)
    if reference is not None and not reference.is_file():
        _fail(f"--reference: no such file: {reference}", EXIT_USAGE)
    if mapping and reference is None:
        _fail("--map applies to --reference FILE; pass the file too", EXIT_USAGE)
    try:
        columns = parse_mapping(mapping or [])
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    unknown = unknown_fields(columns)
    if unknown:
        _fail(f"--map names fields samples do not have: {unknown}", EXIT_USAGE)
    storage = settings.storage
    try:
        store = Store.open(storage.url, busy_timeout=storage.busy_timeout.total_seconds())
        try:
            upgrade(store.engine)
            outcome = Checker(settings, store).run(
                deployment, window=length, reference_file=reference, reference_columns=columns
            )
        finally:
            store.close()
    except DriftdError as exc:
        _fail(f"driftd check: {exc}", EXIT_FAILURE)
    result = outcome.result
    if html is not None and result.snapshot:
        from monitors import render_html

        render_html(result.snapshot, html)
    if as_json:
        printed = {"check_id": outcome.check_id, "error": outcome.error, **result.to_dict()}
        printed.pop("snapshot", None)
        typer.echo(json.dumps(printed, default=str))
    else:
        _print_check(deployment, outcome)
    raise typer.Exit(_CHECK_EXIT.get(result.status, 4))


_CHECK_EXIT = {"ok": 0, "drift": 1, "insufficient_data": 3, "failed": 4}


def _print_check(deployment: str, outcome: Any) -> None:
    from rich.console import Console

    from daemon.check_table import render

    result = outcome.result
    current, reference = outcome.current, outcome.reference
    title = (
        f"check {outcome.check_id} of {deployment}: {result.status} — current "
        f"{result.current_rows} of {current.total} rows, reference ({reference.kind}) "
        f"{result.reference_rows} of {reference.total}"
    )
    console = Console()
    console.print(render(title, [signal.to_dict() for signal in result.signals]))
    if outcome.error and result.status == "failed":
        # Unwrapped: the reason is one line to read or grep, whatever the terminal's width.
        Console(stderr=True).print(
            f"the check failed: {outcome.error}", markup=False, soft_wrap=True
        )
    elif outcome.error:
        console.print(f"the check failed: {outcome.error}", markup=False)
    elif outcome.reference.reason:
        console.print(f"reference: {outcome.reference.reason}", markup=False)
    if outcome.snapshot_path:
        console.print(f"Evidently snapshot: {outcome.snapshot_path}")


@app.command("report")
def report(
    check_id: Annotated[int, typer.Argument(help="The id `driftd check` printed.")],
    html: Annotated[Path, typer.Option(help="Where to write the HTML report.")],
    config: ConfigOption = Path("driftd.yaml"),
) -> None:
    """Render a stored check's Evidently snapshot as an HTML report."""
    import json

    from daemon.store import Store

    settings = _load(config)
    try:
        with Store.open(settings.storage.url) as store:
            deployment, stored = store.get_check(check_id)
    except DriftdError as exc:
        _fail(f"driftd report: {exc}", EXIT_FAILURE)
    if not stored.snapshot_path or not Path(stored.snapshot_path).is_file():
        _fail(
            f"check {check_id} of {deployment} has no snapshot on disk "
            f"({stored.snapshot_path or 'none was saved'})",
            EXIT_FAILURE,
        )
    from monitors import render_html

    render_html(json.loads(Path(stored.snapshot_path).read_text(encoding="utf-8")), html)
    typer.echo(f"{html}: report of check {check_id} of {deployment} ({stored.status})")


@app.command("serve")
def serve(
    config: ConfigOption = Path("driftd.yaml"),
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Override server.port.")
    ] = None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT: migrate the store, load the deployments, serve."""
    from daemon.api import Tokens
    from daemon.logs import setup_logging
    from daemon.serve import Daemon

    settings = _load(config)
    if host is not None or port is not None:
        server = Server(
            host=host if host is not None else settings.server.host,
            port=port if port is not None else settings.server.port,
        )
        settings = settings.model_copy(update={"server": server})
    setup_logging(settings.logging.level, settings.logging.format)
    daemon = Daemon(settings, Tokens.from_environ(os.environ), environ=os.environ)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        daemon.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
    except DriftdError as exc:
        _fail(f"driftd serve: {exc}", EXIT_FAILURE)
    try:
        daemon.serve()
    except SystemExit:
        # uvicorn exits this way when it cannot bind; it has logged why.
        daemon.stop()
        _fail(
            f"driftd serve: cannot listen on {settings.server.host}:{settings.server.port}",
            EXIT_FAILURE,
        )
    daemon.stop()


@app.command("demo")
def demo(
    workdir: Annotated[
        Path, typer.Option("--dir", help="Working folder; a new run resets it.")
    ] = Path("driftd-demo"),
    small: Annotated[
        bool, typer.Option(help="Fewer intents, questions and epochs: one to two minutes, for CI.")
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="The daemon's port (default: 8477 if free)."),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Leave the daemon running at the end, until Ctrl-C.")
    ] = False,
    data: Annotated[
        Path | None, typer.Option(help="Folder of Banking77's train.csv and test.csv.")
    ] = None,
) -> None:
    """Watch the whole loop offline: drift, policy, re-tuning job, gate, promotion, recovery."""
    from daemon.demo import DemoOptions, run_demo

    # The app's model runs in this process, which starts subprocesses: no tokenizers warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    options = DemoOptions(workdir=workdir, small=small, port=port, keep=keep, data=data)
    try:
        run_demo(options, os.environ)
    except DriftdError as exc:
        _fail(f"driftd demo: {exc}", EXIT_FAILURE)
    except KeyboardInterrupt:
        _fail("driftd demo: interrupted; the daemon and its jobs were stopped", 130)


from daemon.cli_admin import register  # noqa: E402  (it imports the helpers defined above)

register(app)


def main() -> None:
    app(prog_name="driftd")
