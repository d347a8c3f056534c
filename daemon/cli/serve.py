"""``driftd serve`` (the daemon) and ``driftd demo`` (the whole loop, offline, on a laptop)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from daemon.cli.common import EXIT_FAILURE, ConfigOption, fail, load
from daemon.config.models import Server
from daemon.errors import DriftdError


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

    settings = load(config)
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
        fail(f"driftd serve: {exc}", EXIT_FAILURE)
    try:
        daemon.serve()
    except SystemExit:
        # uvicorn exits this way when it cannot bind; it has logged why.
        daemon.stop()
        fail(
            f"driftd serve: cannot listen on {settings.server.host}:{settings.server.port}",
            EXIT_FAILURE,
        )
    daemon.stop()


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
        fail(f"driftd demo: {exc}", EXIT_FAILURE)
    except KeyboardInterrupt:
        fail("driftd demo: interrupted; the daemon and its jobs were stopped", 130)
