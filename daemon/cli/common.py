"""What the commands share: their exit statuses, the ``--config`` option, and failing with a
message.

Exit status: 0 success, 1 a runtime failure (e.g. the store is unreachable), 2 bad usage or a bad
configuration file. ``driftd check`` adds its own verdicts (see ``daemon.cli.check``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from daemon.config import Config, load_config
from daemon.errors import ConfigError

if TYPE_CHECKING:
    from daemon.config import Deployment

EXIT_FAILURE = 1
EXIT_USAGE = 2

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


def fail(message: str, status: int) -> NoReturn:
    """Print ``message`` on stderr and exit with ``status``."""
    typer.echo(message, err=True)
    raise typer.Exit(status)


def load(path: Path) -> Config:
    """The configuration in ``path`` (and the environment); exit 2 naming every problem."""
    try:
        return load_config(path, environ=os.environ)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def deployment_of(settings: Config, name: str, config: Path) -> Deployment:
    """The configured deployment ``name``; exit 2 naming those there are."""
    try:
        return settings.deployment(name)
    except KeyError:
        names = ", ".join(d.name for d in settings.deployments) or "none"
        fail(f"{config}: no deployment {name!r} (configured: {names})", EXIT_USAGE)
