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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

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


@app.command("serve")
def serve(
    config: ConfigOption = Path("driftd.yaml"),
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Override server.port.")
    ] = None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT: migrate the store, load the deployments, serve."""
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
    daemon = Daemon(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        daemon.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
    except DriftdError as exc:
        _fail(f"driftd serve: {exc}", EXIT_FAILURE)
    try:
        daemon.wait()
    finally:
        daemon.stop()


def main() -> None:
    app(prog_name="driftd")
