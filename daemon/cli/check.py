"""``driftd check`` (run one check now) and ``driftd report`` (a stored check's HTML report).

``driftd check`` exits with the verdict: 0 ok, 1 drift, 3 insufficient data, 4 failed; 2 is
bad usage, as for every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from daemon.cli.common import EXIT_FAILURE, EXIT_USAGE, ConfigOption, deployment_of, fail, load
from daemon.errors import DriftdError

if TYPE_CHECKING:
    from daemon.checks import CheckOutcome

_CHECK_EXIT = {"ok": 0, "drift": 1, "insufficient_data": 3, "failed": 4}


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

    settings = load(config)
    deployment_of(settings, deployment, config)
    try:
        length = parse_duration(window) if window is not None else None
    except ValueError as exc:
        fail(f"--window: {exc}", EXIT_USAGE)
    if reference is not None and not reference.is_file():
        fail(f"--reference: no such file: {reference}", EXIT_USAGE)
    if mapping and reference is None:
        fail("--map applies to --reference FILE; pass the file too", EXIT_USAGE)
    try:
        columns = parse_mapping(mapping or [])
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    unknown = unknown_fields(columns)
    if unknown:
        fail(f"--map names fields samples do not have: {unknown}", EXIT_USAGE)
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
        fail(f"driftd check: {exc}", EXIT_FAILURE)
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


def _print_check(deployment: str, outcome: CheckOutcome) -> None:
    from rich.console import Console

    from daemon.cli.check_table import render

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


def report(
    check_id: Annotated[int, typer.Argument(help="The id `driftd check` printed.")],
    html: Annotated[Path, typer.Option(help="Where to write the HTML report.")],
    config: ConfigOption = Path("driftd.yaml"),
) -> None:
    """Render a stored check's Evidently snapshot as an HTML report."""
    import json

    from daemon.store import Store

    settings = load(config)
    try:
        with Store.open(settings.storage.url) as store:
            deployment, stored = store.get_check(check_id)
    except DriftdError as exc:
        fail(f"driftd report: {exc}", EXIT_FAILURE)
    if not stored.snapshot_path or not Path(stored.snapshot_path).is_file():
        fail(
            f"check {check_id} of {deployment} has no snapshot on disk "
            f"({stored.snapshot_path or 'none was saved'})",
            EXIT_FAILURE,
        )
    from monitors import render_html

    render_html(json.loads(Path(stored.snapshot_path).read_text(encoding="utf-8")), html)
    typer.echo(f"{html}: report of check {check_id} of {deployment} ({stored.status})")
