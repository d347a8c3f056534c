"""``driftd config`` (check and describe driftd.yaml) and ``driftd db`` (the store's schema)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from daemon.cli.common import EXIT_FAILURE, ConfigOption, fail, load
from daemon.config import ENV_STORAGE_URL, parse_config
from daemon.errors import DriftdError

config_app = typer.Typer(help="Check and describe driftd.yaml.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the store's schema.", no_args_is_help=True)


@config_app.command("validate")
def config_validate(file: Annotated[Path, typer.Argument(help="The file to check.")]) -> None:
    """Validate a configuration file; exit 2 and name every problem if it is invalid."""
    config = load(file)
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
        settings = load(config) if config.exists() else parse_config("", environ=os.environ)
        url = settings.storage.url
    try:
        store = Store.open(url)
        try:
            result = upgrade(store.engine)
        finally:
            store.close()
    except DriftdError as exc:
        fail(f"driftd db upgrade: {exc}", EXIT_FAILURE)
    if result.changed:
        typer.echo(
            f"{mask_url(url)}: schema upgraded from {result.before or 'empty'} to {result.after}"
        )
    else:
        typer.echo(f"{mask_url(url)}: schema already at {result.after}; nothing to do")
