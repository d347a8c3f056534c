"""The operator's commands: ``driftd checks``, ``jobs``, ``versions`` and ``events``.

They read and steer the store named by the configuration, as the admin API does over HTTP, and
print rich tables, or with ``--json`` the very records the API serves. Exit status: 0 success,
1 a failure the store reported (an unknown id, a change not possible in the current state, an
unreachable store) or a promotion hook that failed (the change stands all the same: hooks run
after the store commits, see ``daemon.retune.promotion``), 2 bad usage. They import only what
``driftd --help`` needs; the store is imported when a command runs.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from daemon.cli.common import EXIT_FAILURE, EXIT_USAGE, ConfigOption, fail, load
from daemon.domain import CheckStatus, JobState
from daemon.errors import DriftdError

if TYPE_CHECKING:
    from rich.table import Table

    from daemon.config import Config
    from daemon.config.models import Hooks
    from daemon.retune.promotion import HookedChange
    from daemon.store import Store
    from daemon.store.versions import VersionChange

T = TypeVar("T")

JsonOption = Annotated[
    bool, typer.Option("--json", metavar="", help="Print JSON instead of a table.")
]
LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="At most this many rows.")]
SinceOption = Annotated[
    str | None, typer.Option(help="From this moment on: a duration ago (2h, 7d) or ISO 8601.")
]


class _ListByDefault(TyperGroup):
    """A command group that lists when no subcommand is named: ``driftd jobs --state failed``
    lists, ``driftd jobs approve 7`` approves. ``list`` can also be named, e.g. for a
    deployment called ``promote``: ``driftd versions list promote``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)


checks_app = typer.Typer(
    cls=_ListByDefault, help="Drift checks: list them (the default), or show one's signals."
)
jobs_app = typer.Typer(
    cls=_ListByDefault, help="Re-tuning and evaluation jobs: list (the default) and steer them."
)
versions_app = typer.Typer(
    cls=_ListByDefault,
    help="Model and prompt versions: list a deployment's (the default), promote, roll back.",
)


def register(app: typer.Typer) -> None:
    """Add the operator's commands to the ``driftd`` command ``app``."""
    app.add_typer(checks_app, name="checks")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(versions_app, name="versions")
    app.command("events")(events)


@checks_app.command("list")
def checks(
    deployment: Annotated[str | None, typer.Argument(help="Only this deployment's.")] = None,
    config: ConfigOption = Path("driftd.yaml"),
    status: Annotated[CheckStatus | None, typer.Option(help="Only this verdict.")] = None,
    since: SinceOption = None,
    limit: LimitOption = 20,
    as_json: JsonOption = False,
) -> None:
    """List the latest checks, newest first."""
    from daemon.store.queries import check_record, list_checks

    start = _moment("--since", since)
    rows = _with_store(
        config,
        "checks",
        lambda store: list_checks(
            store, deployment=deployment, status=status, since=start, limit=limit
        ),
    )
    records = [check_record(name, check) for name, check in rows]
    if as_json:
        _print_json(records)
        return
    table = _table(
        f"checks{f' of {deployment}' if deployment else ''}, newest first",
        "id",
        "deployment",
        "started (UTC)",
        "status",
        "current rows",
        "reference rows",
        "drifted signals",
        "error",
    )
    for record in records:
        table.add_row(
            *_cells(
                record["id"],
                record["deployment"],
                _when(record["started_at"]),
                record["status"],
                f"{record['current_rows']} of {record['current_total']}",
                f"{record['reference_rows']} of {record['reference_total']} "
                f"({record['reference_kind']})",
                ", ".join(record["drifted"]),
                record["error"],
            )
        )
    _show(table, records, "no checks match")


@checks_app.command("show")
def check_show(
    check_id: Annotated[int, typer.Argument(help="The check's id, as `driftd checks` lists.")],
    config: ConfigOption = Path("driftd.yaml"),
    as_json: JsonOption = False,
) -> None:
    """Show one check with every signal's result."""
    from rich.console import Console

    from daemon.cli.check_table import render
    from daemon.store.queries import check_record

    deployment, check = _with_store(config, "checks show", lambda store: store.get_check(check_id))
    record = check_record(deployment, check, signals=True)
    if as_json:
        _print_json(record)
        return
    title = (
        f"check {check_id} of {deployment}: {record['status']}, started "
        f"{_when(record['started_at'])} UTC; current {record['current_rows']} of "
        f"{record['current_total']} rows, reference ({record['reference_kind']}) "
        f"{record['reference_rows']} of {record['reference_total']}"
    )
    signals = record["signals"].get("signals") if isinstance(record["signals"], dict) else None
    rows = [signal for signal in signals or [] if isinstance(signal, dict)]
    Console().print(render(title, rows))
    if record["error"]:
        typer.echo(f"the check failed: {record['error']}")


@jobs_app.command("list")
def jobs(
    config: ConfigOption = Path("driftd.yaml"),
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="Only this deployment's.")
    ] = None,
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: LimitOption = 20,
    as_json: JsonOption = False,
) -> None:
    """List the latest jobs, newest first."""
    from daemon.store import jobs as job_store
    from daemon.store.queries import job_record

    rows = _with_store(
        config,
        "jobs",
        lambda store: job_store.list_jobs(store, deployment=deployment, state=state, limit=limit),
    )
    records = [job_record(name, job) for name, job in rows]
    if as_json:
        _print_json(records)
        return
    table = _table(
        "jobs, newest first",
        "id",
        "deployment",
        "kind",
        "trigger",
        "state",
        "attempt",
        "created (UTC)",
        "finished (UTC)",
        "error",
    )
    for record in records:
        table.add_row(
            *_cells(
                record["id"],
                record["deployment"],
                record["kind"],
                record["trigger"],
                record["state"],
                f"{record['attempt']} of {record['max_attempts']}",
                _when(record["created_at"]),
                _when(record["finished_at"]),
                record["error"],
            )
        )
    _show(table, records, "no jobs match")


JobId = Annotated[int, typer.Argument(help="The job's id, as `driftd jobs` lists.")]


@jobs_app.command("approve")
def job_approve(
    job_id: JobId, config: ConfigOption = Path("driftd.yaml"), as_json: JsonOption = False
) -> None:
    """Let a job that awaits approval run."""
    _act_on_job(job_id, config, "approve", as_json)


@jobs_app.command("cancel")
def job_cancel(
    job_id: JobId, config: ConfigOption = Path("driftd.yaml"), as_json: JsonOption = False
) -> None:
    """Cancel a job: at once when it has not started, by the runner when it is running."""
    _act_on_job(job_id, config, "cancel", as_json)


@jobs_app.command("retry")
def job_retry(
    job_id: JobId, config: ConfigOption = Path("driftd.yaml"), as_json: JsonOption = False
) -> None:
    """Queue a failed or cancelled job again."""
    _act_on_job(job_id, config, "retry", as_json)


def _act_on_job(job_id: int, config: Path, action: str, as_json: bool) -> None:
    from daemon.store import jobs as job_store
    from daemon.store.queries import job_record

    change: Callable[..., object] = {
        "approve": job_store.approve_job,
        "cancel": job_store.cancel_job,
        "retry": job_store.retry_job,
    }[action]

    def work(store: Store) -> tuple[str, str, Any]:
        _, before = job_store.get_job(store, job_id)
        change(store, job_id, by=_actor())
        deployment, after = job_store.get_job(store, job_id)
        return deployment, before.state, after

    deployment, before, after = _with_store(config, f"jobs {action}", work)
    if as_json:
        _print_json(job_record(deployment, after))
        return
    note = "; cancel requested, its runner stops it" if after.cancel_requested else ""
    typer.echo(f"job {job_id} ({after.kind}) of {deployment}: {before} → {after.state}{note}")


@versions_app.command("list")
def versions(
    deployment: Annotated[str, typer.Argument(help="The deployment.")],
    config: ConfigOption = Path("driftd.yaml"),
    as_json: JsonOption = False,
) -> None:
    """List a deployment's versions, newest first."""
    from daemon.store.queries import version_record
    from daemon.store.versions import list_versions

    rows = _with_store(config, "versions", lambda store: list_versions(store, deployment))
    records = [version_record(deployment, version) for version in rows]
    if as_json:
        _print_json(records)
        return
    names = {record["id"]: record["name"] for record in records}
    table = _table(
        f"versions of {deployment}, newest first",
        "name",
        "kind",
        "state",
        "promoted (UTC)",
        "created (UTC)",
        "parent",
        "eval scores",
        "artifact",
        "note",
    )
    for record in records:
        meta = record["meta"] or {}
        note = f"rolled back to {meta.get('rolled_back_to')}" if meta.get("rolled_back") else ""
        scores = record["eval_scores"]
        table.add_row(
            *_cells(
                record["name"],
                record["kind"],
                record["state"],
                _when(record["promoted_at"]),
                _when(record["created_at"]),
                names.get(record["parent_id"], record["parent_id"]),
                json.dumps(scores, separators=(", ", ": ")) if scores else None,
                record["artifact"],
                note,
            )
        )
    _show(table, records, f"{deployment} has no versions yet")


@versions_app.command("promote")
def version_promote(
    deployment: Annotated[str, typer.Argument(help="The deployment.")],
    version: Annotated[str, typer.Argument(help="The version to make active.")],
    config: ConfigOption = Path("driftd.yaml"),
    force: Annotated[bool, typer.Option(help="Promote even a version its gate rejected.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Make a version the active one; the active one is retired. Then run the hooks."""
    from daemon.retune.promotion import promote

    def summary(change: VersionChange) -> str:
        was = change.previous.name if change.previous is not None else "none"
        return f"{deployment}: version {change.active.name} is active (was {was})"

    _change_version(
        config,
        deployment,
        "versions promote",
        lambda store, hooks: promote(
            store, hooks, deployment, version, actor=_actor(), force=force
        ),
        summary,
        as_json,
    )


@versions_app.command("rollback")
def version_rollback(
    deployment: Annotated[str, typer.Argument(help="The deployment.")],
    config: ConfigOption = Path("driftd.yaml"),
    as_json: JsonOption = False,
) -> None:
    """Re-activate the version that was active before the current one. Then run the hooks."""
    from daemon.retune.promotion import rollback

    def summary(change: VersionChange) -> str:
        assert change.previous is not None
        return (
            f"{deployment}: rolled back from version {change.previous.name} to {change.active.name}"
        )

    _change_version(
        config,
        deployment,
        "versions rollback",
        lambda store, hooks: rollback(store, hooks, deployment, actor=_actor()),
        summary,
        as_json,
    )


def _change_version(
    config: Path,
    deployment: str,
    command: str,
    change: Callable[[Store, Hooks], HookedChange],
    summary: Callable[[VersionChange], str],
    as_json: bool,
) -> None:
    """Make a promotion or rollback with the deployment's hooks, then print it and each hook's
    outcome; exit 1 when a hook failed, saying that the change itself was made."""
    from daemon.retune.promotion import outcome_record
    from daemon.store.queries import change_record

    settings = load(config)
    hooks = settings.hooks_of(deployment)
    done = _with_store(config, command, lambda store: change(store, hooks), settings=settings)
    if as_json:
        record = change_record(done.change)
        _print_json({**record, "hooks": [outcome_record(o) for o in done.hooks]})
    else:
        typer.echo(f"{summary(done.change)}; audit event {done.change.event_id}")
        for outcome in done.hooks:
            typer.echo(
                f"  hook {outcome.hook}: {'ok' if outcome.ok else 'FAILED'}: {outcome.detail}"
            )
    if done.failed:
        names = ", ".join(outcome.hook for outcome in done.failed)
        fail(
            f"driftd {command}: the change was made (audit event {done.change.event_id}), but "
            f"hook {names} failed; the hook.failed events of `driftd events -d "
            f"{done.change.deployment} --kind hook.` say why",
            EXIT_FAILURE,
        )


def events(
    config: ConfigOption = Path("driftd.yaml"),
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="Only this deployment's.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="A prefix of the kind: job. or policy or version.")
    ] = None,
    since: SinceOption = None,
    until: Annotated[
        str | None, typer.Option(help="Before this moment: a duration ago (30m) or ISO 8601.")
    ] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """List the audit trail, newest first: what changed, why, and the evidence."""
    from daemon.store.queries import event_record, list_events

    start, end = _moment("--since", since), _moment("--until", until)
    if start is not None and end is not None and end <= start:
        fail(f"--until {until} is not after --since {since}", EXIT_USAGE)
    rows = _with_store(
        config,
        "events",
        lambda store: list_events(
            store, deployment=deployment, kind=kind, since=start, until=end, limit=limit
        ),
    )
    records = [event_record(name, event) for name, event in rows]
    if as_json:
        _print_json(records)
        return
    table = _table(
        "audit events, newest first", "id", "time (UTC)", "deployment", "kind", "message"
    )
    for record in records:
        table.add_row(
            *_cells(
                record["id"],
                _when(record["ts"]),
                record["deployment"] or "(daemon)",
                record["kind"],
                record["message"],
            )
        )
    _show(table, records, "no events match")


def _with_store(
    config: Path, command: str, work: Callable[[Store], T], *, settings: Config | None = None
) -> T:
    """Run ``work`` on the configured store, failing with a message (exit 1) on what it reports.

    The schema must be current: these commands never migrate, and a store that is behind would
    fail on a missing column instead of saying what to do. ``settings`` is the configuration
    when the caller has loaded it already (from ``config``).
    """
    from daemon.store import Store, head_revision, is_current, mask_url
    from daemon.store.engine import failures_reported

    if settings is None:
        settings = load(config)
    storage = settings.storage
    try:
        timeout = storage.busy_timeout.total_seconds()
        with (
            Store.open(storage.url, busy_timeout=timeout) as store,
            failures_reported(store.engine),
        ):
            if not is_current(store.engine):
                fail(
                    f"driftd {command}: the store at {mask_url(storage.url)} is not at "
                    f"schema {head_revision()}; run `driftd db upgrade -c {config}` first",
                    EXIT_FAILURE,
                )
            return work(store)
    except DriftdError as exc:
        fail(f"driftd {command}: {exc}", EXIT_FAILURE)


def _moment(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    from daemon.store.queries import parse_time

    try:
        return parse_time(text, now=datetime.now(UTC))
    except ValueError as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def _actor() -> str:
    """Who made a change, for the audit trail: the command line and the user running it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name in this environment (some containers)
        return "cli"


def _table(title: str, *columns: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def _cells(*values: object) -> list[Any]:
    """Table cells as plain text: stored names and messages may hold [brackets] that rich
    would otherwise read as markup."""
    from rich.text import Text

    return [Text("" if value is None else str(value)) for value in values]


def _show(table: Table, records: Sequence[object], empty: str) -> None:
    from rich.console import Console

    if not records and empty:
        typer.echo(empty)
        return
    Console().print(table)


def _when(iso: str | None) -> str:
    """A stored time, shown to the second in UTC."""
    if iso is None:
        return ""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))
