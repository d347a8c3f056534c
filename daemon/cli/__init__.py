"""The ``driftd`` command line.

This is the edge where the environment is read; everything below it receives plain values. Heavy
libraries (torch, transformers, Evidently) are never imported here, so every command starts fast:
a command imports what it works with when it runs. Exit status: 0 success, 1 a runtime failure
(e.g. the store is unreachable), 2 bad usage or a bad configuration file (``daemon.cli.common``).

The commands live by what they work on: ``config`` (driftd.yaml and the store's schema),
``ingest``, ``check`` (one check now, a stored check's report), ``serve`` (the daemon, the demo)
and ``admin`` (the operator's: checks, jobs, versions, events). This module puts them together.
"""

from __future__ import annotations

import platform
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

import typer

from daemon import __version__
from daemon.cli import admin, check, config, ingest, serve
from daemon.errors import ConfigDeprecation

app = typer.Typer(
    name="driftd",
    help="Watch LLM deployments for drift, export it to Prometheus, re-tune and roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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


_format_warning = warnings.formatwarning


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A configuration warning reads like a configuration error (``FILE:LINE: path: …``), not
    like a traceback line of driftd's own source."""
    if issubclass(category, ConfigDeprecation):
        return f"warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def _print_versions(asked: bool) -> None:
    if not asked:
        return
    typer.echo(f"driftd {__version__}")
    typer.echo(f"python {platform.python_version()} ({sys.implementation.name})")
    for name in _REPORTED:
        try:
            typer.echo(f"{name} {version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name} not installed")
    raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(
        False,
        "--version",
        metavar="",  # a flag: typer would show <bool> as if it took a value
        is_eager=True,
        callback=_print_versions,
        help="Print driftd's version and those of the libraries it runs on, and exit.",
    ),
) -> None:
    """Watch LLM deployments for drift, export it to Prometheus, re-tune and roll back."""
    warnings.formatwarning = _warning_line


@app.command("version", hidden=True)
def version_command() -> None:
    """Deprecated: ``driftd --version`` (``driftd versions`` lists a deployment's versions)."""
    typer.echo("driftd version is deprecated: use driftd --version", err=True)
    _print_versions(True)


# `driftd --help` lists commands in the order they are added here, then the command groups.
app.add_typer(config.config_app, name="config")
app.add_typer(config.db_app, name="db")
app.command("ingest")(ingest.ingest)
app.command("check")(check.check)
app.command("report")(check.report)
app.command("serve")(serve.serve)
app.command("demo")(serve.demo)
admin.register(app)


def main() -> None:
    app(prog_name="driftd")
