"""Promotion and rollback with their hooks: the store's change, then what the outside world needs
to learn of it (a ``current`` symlink, a webhook, a command).

Hooks run AFTER the store has committed the change, never inside its transaction: they reach
other systems that cannot be rolled back with it, and a slow webhook must not hold the
deployment's row lock. So a failed hook does not undo the promotion or rollback: the version
stays active, the hook's failure is recorded as a ``hook.failed`` audit event (a ``hook.ok``
one when it worked) with the outcome as evidence, and the caller gets the outcomes to show.
An operator reads the audit trail to see that the change happened and which hook did not follow.

Each configured hook runs once, in this order: ``models_dir`` first, so that a reload command
already sees the new artifact (skipped, with an outcome saying why, for an OpenAI model id, which
is no folder to link to); then ``command``; then ``webhook``, last, so that it announces a
change that is complete. One hook failing does not stop the next. Two changes of one deployment
made at the same moment (two replicas, an operator and the leader) run their hooks in whatever
order they finish; the store's audit trail orders the changes themselves.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from daemon.config.models import Hooks
from daemon.serving import forget, is_openai_model_id
from daemon.store.models import Version
from daemon.store.repository import Store
from daemon.store.versions import Fence, VersionChange
from daemon.store.versions import promote as promote_version
from daemon.store.versions import rollback as rollback_version

Action = Literal["promoted", "rolled_back"]
ACTIONS: tuple[Action, ...] = ("promoted", "rolled_back")

CURRENT_LINK = "current"
WEBHOOK_RETRIES = 2
"""Retries after a first webhook attempt that met a connection error or a 5xx answer."""
STDERR_TAIL = 500
"""Characters of a failed command's stderr kept in its outcome."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What a hook learns of a version."""

    name: str
    artifact: str
    kind: str

    @classmethod
    def of(cls, version: Version) -> VersionInfo:
        return cls(name=version.name, artifact=version.artifact, kind=version.kind)


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """How one hook went: ``hook`` is ``models_dir``, ``command`` or ``webhook``."""

    hook: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class HookedChange:
    """A promotion or rollback the store committed, and how each of its hooks went."""

    change: VersionChange
    hooks: tuple[HookOutcome, ...]

    @property
    def failed(self) -> tuple[HookOutcome, ...]:
        return tuple(outcome for outcome in self.hooks if not outcome.ok)


def run_hooks(
    hooks: Hooks,
    *,
    deployment: str,
    action: Action,
    old: VersionInfo | None,
    new: VersionInfo,
    environ: Mapping[str, str] | None = None,
    retry_backoff: float = 0.5,
) -> list[HookOutcome]:
    """Run each hook ``hooks`` configures for a change of ``deployment`` from ``old`` to ``new``.

    Never raises for a hook that fails: its outcome says why. ``environ`` is the environment
    the command inherits (None: this process's); ``retry_backoff`` is the first pause between
    webhook attempts, doubled after each.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    outcomes = []
    if hooks.models_dir is not None:
        models_dir = hooks.models_dir
        outcomes.append(_guarded("models_dir", lambda: _link(models_dir, new)))
    if hooks.command is not None:
        command = hooks.command
        env = dict(os.environ if environ is None else environ) | _command_env(
            deployment, action, old, new
        )
        outcomes.append(
            _guarded("command", lambda: _command(command, env, hooks.timeout.total_seconds()))
        )
    if hooks.webhook is not None:
        url = hooks.webhook
        body = {
            "deployment": deployment,
            "action": action,
            "old": None if old is None else asdict(old),
            "new": asdict(new),
            "at": datetime.now(UTC).isoformat(),
        }
        timeout = hooks.timeout.total_seconds()
        outcomes.append(_guarded("webhook", lambda: _webhook(url, body, timeout, retry_backoff)))
    return outcomes


def promote(
    store: Store,
    hooks: Hooks,
    deployment: str,
    name: str,
    *,
    actor: str,
    fence: Fence | None = None,
    force: bool = False,
    environ: Mapping[str, str] | None = None,
) -> HookedChange:
    """Make version ``name`` active (``daemon.store.versions.promote``), then run the hooks.

    Raises what the store raises, with nothing changed and no hook run. Once the store has
    committed, the promotion stands whatever the hooks do; each hook's outcome is an audit
    event and part of the answer.
    """
    change = promote_version(store, deployment, name, actor=actor, fence=fence, force=force)
    forget(store, deployment)  # this process serves the new version at once
    return HookedChange(change, _after(store, hooks, change, "promoted", environ))


def rollback(
    store: Store,
    hooks: Hooks,
    deployment: str,
    *,
    actor: str,
    fence: Fence | None = None,
    environ: Mapping[str, str] | None = None,
) -> HookedChange:
    """Re-activate the previous version (``daemon.store.versions.rollback``), then run the
    hooks, with the same guarantees as ``promote``: ``current`` follows the rollback too."""
    change = rollback_version(store, deployment, actor=actor, fence=fence)
    forget(store, deployment)
    return HookedChange(change, _after(store, hooks, change, "rolled_back", environ))


def outcome_record(outcome: HookOutcome) -> dict[str, Any]:
    """A hook's outcome as JSON, as the admin API and ``--json`` show it."""
    return asdict(outcome)


def _after(
    store: Store,
    hooks: Hooks,
    change: VersionChange,
    action: Action,
    environ: Mapping[str, str] | None,
) -> tuple[HookOutcome, ...]:
    old = None if change.previous is None else VersionInfo.of(change.previous)
    new = VersionInfo.of(change.active)
    outcomes = run_hooks(
        hooks, deployment=change.deployment, action=action, old=old, new=new, environ=environ
    )
    after = (
        f"the promotion of version {new.name}"
        if action == "promoted"
        else f"the rollback to version {new.name}"
    )
    for outcome in outcomes:
        store.add_event(
            change.deployment,
            "hook.ok" if outcome.ok else "hook.failed",
            f"{change.deployment}: {outcome.hook} hook after {after}: "
            f"{'ok' if outcome.ok else 'FAILED'}: {outcome.detail}",
            {
                **outcome_record(outcome),
                "action": action,
                "old": None if old is None else asdict(old),
                "new": asdict(new),
                "change_event_id": change.event_id,
            },
        )
    return tuple(outcomes)


def _guarded(hook: str, work: Callable[[], tuple[bool, str]]) -> HookOutcome:
    """Run one hook; whatever it raises becomes a failed outcome, since the change it follows
    is committed and must be reported, hook failure or not."""
    try:
        ok, detail = work()
    except Exception as error:
        return HookOutcome(hook, False, f"{type(error).__name__}: {error}")
    return HookOutcome(hook, ok, detail)


def _link(models_dir: Path, new: VersionInfo) -> tuple[bool, str]:
    """Point ``models_dir/current`` at the new artifact by renaming a fresh link over it, so
    that a reader sees the old target or the new one, never no link at all.

    Skipped (an ok outcome that says so) for an OpenAI fine-tuned model id: it is no folder, a
    link to it would dangle, and the proxy serves it by id (``daemon.serving``)."""
    # A relative artifact names an entry of models_dir, as a relative link does.
    target = Path(new.artifact)
    if is_openai_model_id(new.artifact) and not (models_dir / target).exists():
        return True, (
            f"skipped: version {new.name} is the OpenAI model {new.artifact!r}, not a folder; "
            f"{models_dir / CURRENT_LINK} was left as it was (the proxy calls the model by its "
            "id, and apps off the proxy read it at GET /v1/deployments/<name>/version)"
        )
    if not models_dir.is_dir():
        return False, (
            f"models_dir {models_dir} is not a directory; create it or fix "
            "retune.hooks.models_dir in the configuration"
        )
    if not (models_dir / target).exists():
        return False, (
            f"artifact {new.artifact!r} of version {new.name} does not exist (seen from "
            f"{models_dir}); {models_dir / CURRENT_LINK} was left as it was"
        )
    current = models_dir / CURRENT_LINK
    if current.exists() and not current.is_symlink():
        return False, (
            f"{current} is a real file or folder, not a symlink; move it away so that driftd "
            "can manage the link"
        )
    partial = models_dir / f".{CURRENT_LINK}.{secrets.token_hex(4)}.partial"
    try:
        partial.symlink_to(target)
        os.replace(partial, current)
    except OSError as error:
        partial.unlink(missing_ok=True)
        return False, f"cannot point {current} at {target}: {error}"
    return True, f"{current} -> {target}"


def _command_env(
    deployment: str, action: Action, old: VersionInfo | None, new: VersionInfo
) -> dict[str, str]:
    return {
        "DRIFTD_DEPLOYMENT": deployment,
        "DRIFTD_ACTION": action,
        "DRIFTD_OLD_VERSION": "" if old is None else old.name,
        "DRIFTD_OLD_ARTIFACT": "" if old is None else old.artifact,
        "DRIFTD_NEW_VERSION": new.name,
        "DRIFTD_NEW_ARTIFACT": new.artifact,
    }


def _command(command: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[bool, str]:
    shown = " ".join(command)
    try:
        done = subprocess.run(
            list(command),
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False, f"`{shown}` did not finish within {timeout:g} s and was killed"
    except OSError as error:
        return False, f"cannot run `{shown}`: {error}"
    if done.returncode != 0:
        tail = done.stderr.strip()[-STDERR_TAIL:] or "(no stderr)"
        return False, f"`{shown}` exited with {done.returncode}: {tail}"
    return True, f"`{shown}` exited with 0"


def _webhook(url: str, body: dict[str, Any], timeout: float, backoff: float) -> tuple[bool, str]:
    """POST ``body``; retry connection errors and 5xx answers (the receiver may be restarting),
    never a 4xx (the receiver refused this request, and would refuse it again)."""
    shown = _without_secrets(url)
    problem = ""
    with httpx.Client(timeout=timeout) as client:
        for attempt in range(1, WEBHOOK_RETRIES + 2):
            if attempt > 1:
                time.sleep(backoff * 2 ** (attempt - 2))
            tries = f"attempt {attempt} of {WEBHOOK_RETRIES + 1}"
            try:
                response = client.post(url, json=body)
            except httpx.TransportError as error:
                problem = f"{shown} unreachable ({tries}): {type(error).__name__}: {error}"
                continue
            if response.is_success:
                return True, f"{shown} answered {response.status_code} ({tries})"
            problem = f"{shown} answered {response.status_code} ({tries}): {response.text[:200]}"
            if response.status_code < 500:
                break
    return False, problem


def _without_secrets(url: str) -> str:
    """The URL for messages and the audit trail: a token in its user info or query stays out."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
