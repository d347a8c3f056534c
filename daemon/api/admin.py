"""The admin routes: what the daemon did (checks, jobs, versions, audit events), and the steering
an operator does by hand (approve, cancel or retry a job; promote or roll back a version).

A promotion or rollback runs the deployment's hooks (``daemon.retune.promotion``) once the store has
committed it, and answers 200 with each hook's outcome under ``hooks``: a failed hook does not
undo the change, so the answer is the change, with the failure in it and in the audit trail.

Every route needs an admin token. The guard is the application's own ``authorize``, passed in
and run as a dependency of the whole router, so these routes answer exactly as the others do
without a second copy of the token check. Store calls block, so each runs in a worker thread.

Errors: 404 when a deployment, check, job or version does not exist (the store's ``NotFound``);
409 when the change is not possible from the state things are in (e.g. approving a job that is
not awaiting approval); 422 for a bad filter or path parameter (an id out of range, a NUL
character, a moment outside the years 1-9999); 503 when the store cannot answer (unreachable,
a schema this version does not expect: any other ``StoreError``). Each has a ``detail`` that
says what was wrong. A refused version change is any other ``DriftdError``, and a refused job
action is told from a missing job by looking the job up first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import AfterValidator, BeforeValidator

from daemon.api.cached import Authorize
from daemon.auth import Scope
from daemon.config.models import Hooks
from daemon.domain import CheckStatus, JobState
from daemon.errors import DriftdError, NotFound, StoreError
from daemon.retune.promotion import HookedChange, outcome_record, promote, rollback
from daemon.store import Store
from daemon.store import jobs as job_store
from daemon.store.queries import (
    MAX_LIMIT,
    change_record,
    check_record,
    event_record,
    job_record,
    list_checks,
    list_events,
    parse_time,
    version_record,
)
from daemon.store.versions import list_versions

NO_HOOKS = Hooks()
"""What a deployment missing from ``hooks`` runs: nothing (it is in the store, not the config)."""


JobAction = Callable[..., object]
RunCheck = Callable[[str], datetime]
"""``approve_job``, ``cancel_job`` or ``retry_job``: ``(store, job_id, *, by)``."""

P = ParamSpec("P")
T = TypeVar("T")


def _moment(value: object) -> object:
    # Operators write "2h" as often as a timestamp; both mean a moment.
    if isinstance(value, str):
        return parse_time(value, now=datetime.now(UTC))
    return value


def _without_nul(value: str) -> str:
    # PostgreSQL refuses NUL in text, so the query would fail rather than find nothing.
    if "\x00" in value:
        raise ValueError("contains a NUL character (%00), which no name holds")
    return value


MAX_ROW_ID = 2**31 - 1
"""The largest id of a check or job: their ids are INTEGER columns (PostgreSQL's int4)."""

Moment = Annotated[datetime, BeforeValidator(_moment)]
Text = Annotated[str, AfterValidator(_without_nul)]
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="The id, as lists show it.")]
DeploymentName = Annotated[Text, Path(description="The deployment's name.", max_length=255)]
VersionName = Annotated[Text, Path(description="The version's name.", max_length=255)]

DeploymentFilter = Annotated[
    Text | None, Query(description="Only this deployment's rows.", max_length=255)
]
Since = Annotated[
    Moment | None,
    Query(description="From this moment on: ISO 8601 with an offset, or a duration ago (2h)."),
]
Until = Annotated[
    Moment | None,
    Query(description="Before this moment: ISO 8601 with an offset, or a duration ago (30m)."),
]


def admin_router(
    store: Store,
    authorize: Authorize,
    *,
    hooks: Mapping[str, Hooks],
    run_check: RunCheck | None = None,
) -> APIRouter:
    """The admin routes over ``store``, each guarded by ``authorize`` with the admin scope;
    ``hooks`` are each deployment's promotion hooks, by name, from the configuration;
    ``run_check`` starts a check of a deployment at once on the leader (the scheduler's
    ``run_now``) and returns its tick's time, or raises ``DriftdError`` on a follower."""

    async def require_admin(request: Request) -> None:
        authorize(request, Scope.admin)

    router = APIRouter(prefix="/v1", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.get("/checks", summary="The latest checks, newest first.")
    async def checks(
        deployment: DeploymentFilter = None,
        status: Annotated[CheckStatus | None, Query(description="Only this verdict.")] = None,
        since: Since = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> list[dict[str, Any]]:
        rows = await _call(
            list_checks, store, deployment=deployment, status=status, since=since, limit=limit
        )
        return [check_record(name, check) for name, check in rows]

    @router.get("/checks/{check_id}", summary="One check with every signal's result.")
    async def check(check_id: RowId) -> dict[str, Any]:
        name, found = await _call(store.get_check, check_id)
        return check_record(name, found, signals=True)

    @router.post(
        "/deployments/{name}/checks",
        status_code=202,
        summary="Check a deployment now, on the leader, as a scheduled check runs.",
        responses={409: {"description": "This replica does not lead; ask the leader."}},
    )
    async def check_now(name: DeploymentName) -> dict[str, Any]:
        if run_check is None or name not in hooks:
            raise HTTPException(404, f"no deployment named {name!r}")
        scheduled_for = await _call(run_check, name)
        return {"deployment": name, "scheduled_for": scheduled_for.isoformat()}

    @router.get("/jobs", summary="The latest jobs, newest first.")
    async def jobs(
        deployment: DeploymentFilter = None,
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> list[dict[str, Any]]:
        rows = await _call(
            job_store.list_jobs, store, deployment=deployment, state=state, limit=limit
        )
        return [job_record(name, job) for name, job in rows]

    async def act_on_job(job_id: int, action: JobAction, request: Request) -> dict[str, Any]:
        await _call(job_store.get_job, store, job_id)
        # The job exists, so whatever the action refuses is its state: a conflict.
        try:
            await asyncio.to_thread(action, store, job_id, by=_actor(request))
        except DriftdError as exc:
            raise HTTPException(409, str(exc)) from None
        name, job = await _call(job_store.get_job, store, job_id)
        return job_record(name, job)

    @router.post("/jobs/{job_id}/approve", summary="Let a job awaiting approval run.")
    async def approve(job_id: RowId, request: Request) -> dict[str, Any]:
        return await act_on_job(job_id, job_store.approve_job, request)

    @router.post("/jobs/{job_id}/cancel", summary="Cancel a queued, waiting or running job.")
    async def cancel(job_id: RowId, request: Request) -> dict[str, Any]:
        return await act_on_job(job_id, job_store.cancel_job, request)

    @router.post("/jobs/{job_id}/retry", summary="Queue a failed or cancelled job again.")
    async def retry(job_id: RowId, request: Request) -> dict[str, Any]:
        return await act_on_job(job_id, job_store.retry_job, request)

    @router.get("/deployments/{name}/versions", summary="A deployment's versions, newest first.")
    async def versions(name: DeploymentName) -> list[dict[str, Any]]:
        rows = await _call(list_versions, store, name)
        return [version_record(name, version) for version in rows]

    @router.post(
        "/deployments/{name}/versions/{version}/promote",
        summary="Make a version the active one; the active one is retired.",
    )
    async def promote_version(
        name: DeploymentName,
        version: VersionName,
        request: Request,
        force: Annotated[
            bool, Query(description="Promote even a version its gate rejected.")
        ] = False,
    ) -> dict[str, Any]:
        done = await _call(
            promote,
            store,
            hooks.get(name, NO_HOOKS),
            name,
            version,
            actor=_actor(request),
            force=force,
        )
        return _hooked_record(done)

    @router.post(
        "/deployments/{name}/rollback",
        summary="Re-activate the version that was active before the current one.",
    )
    async def rollback_version(name: DeploymentName, request: Request) -> dict[str, Any]:
        done = await _call(rollback, store, hooks.get(name, NO_HOOKS), name, actor=_actor(request))
        return _hooked_record(done)

    @router.get("/events", summary="The audit trail, newest first.")
    async def events(
        deployment: DeploymentFilter = None,
        kind: Annotated[
            Text | None,
            Query(
                description="A prefix of the kind: job. or policy or version.promoted.",
                max_length=255,
            ),
        ] = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> list[dict[str, Any]]:
        if since is not None and until is not None and until <= since:
            raise HTTPException(
                422,
                [
                    {
                        "type": "value_error",
                        "loc": ["query", "until"],
                        "msg": f"until ({until.isoformat()}) must be after since "
                        f"({since.isoformat()})",
                    }
                ],
            )
        rows = await _call(
            list_events,
            store,
            deployment=deployment,
            kind=kind,
            since=since,
            until=until,
            limit=limit,
        )
        return [event_record(name, event) for name, event in rows]

    return router


async def _call(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking store call in a worker thread, answering its errors as HTTP errors."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except StoreError as exc:
        # Not the caller's fault and not for good: the same request may succeed later.
        raise HTTPException(503, f"{exc}; retry later") from None
    except DriftdError as exc:
        raise HTTPException(409, str(exc)) from None


def _hooked_record(done: HookedChange) -> dict[str, Any]:
    return {**change_record(done.change), "hooks": [outcome_record(o) for o in done.hooks]}


def _actor(request: Request) -> str:
    """Who made a change, for the audit trail: the admin API and the client's address."""
    return f"api:{request.client.host}" if request.client else "api"
