"""The pieces the store's modules build their statements from, written once: a deployment's id
by name, a query narrowed to one deployment, a row with its deployment's name, samples in a time
window, an audit event in the caller's transaction, and an INSERT that can skip conflicts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn, TypeVar

from sqlalchemy import ColumnElement, Connection, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from daemon.errors import NotFound, StoreError
from daemon.store.models import Base, Check, Deployment, Event, Job, Sample

Row = TypeVar("Row", Check, Job)
Query = TypeVar("Query", bound=Select[*tuple[Any, ...]])


def deployment_id_of(connection: Connection, name: str) -> int:
    """The id of deployment ``name``; ``NotFound`` if it is not registered."""
    found = connection.execute(select(Deployment.id).where(Deployment.name == name)).scalar()
    if found is None:
        deployment_unknown(name)
    return int(found)


def deployment_unknown(name: str) -> NoReturn:
    """Raise the ``NotFound`` of a deployment the store does not know, saying what to do."""
    raise NotFound(
        f"unknown deployment {name!r}: it is not registered in the store; check the name, "
        "or add the deployment to the configuration and restart driftd to register it"
    )


def of_deployment(
    session: Session, query: Query, entity: type[Check | Event | Job], deployment: str | None
) -> Query:
    """``query`` narrowed to ``deployment``'s rows of ``entity``, or as it is for None;
    ``NotFound`` if the deployment is not registered."""
    if deployment is None:
        return query
    return query.where(entity.deployment_id == deployment_id_of(session.connection(), deployment))


def named_row(session: Session, entity: type[Row], row_id: int) -> tuple[str, Row] | None:
    """Row ``row_id`` of ``entity`` with the name of its deployment; None if there is none."""
    found = session.execute(
        select(Deployment.name, entity)
        .join(Deployment, Deployment.id == entity.deployment_id)
        .where(entity.id == row_id)
    ).first()
    return None if found is None else (str(found[0]), found[1])


def samples_between(
    deployment_id: int, start: datetime, end: datetime
) -> tuple[ColumnElement[bool], ...]:
    """The conditions that select the deployment's samples with ``start <= ts < end``."""
    return (Sample.deployment_id == deployment_id, Sample.ts >= start, Sample.ts < end)


def write_event(
    session: Session,
    deployment_id: int | None,
    kind: str,
    message: str,
    evidence: dict[str, Any],
    ts: datetime,
) -> int:
    """Add an audit event in ``session``'s transaction, so that it commits (or not) with the
    change it records; returns its id."""
    row = Event(deployment_id=deployment_id, ts=ts, kind=kind, message=message, evidence=evidence)
    session.add(row)
    session.flush()
    return row.id


def insert_for(connection: Connection, entity: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``entity``'s table in the connection's dialect, for ON CONFLICT clauses."""
    name = connection.dialect.name
    if name == "postgresql":
        return postgresql.insert(entity)
    if name == "sqlite":
        return sqlite.insert(entity)
    raise StoreError(f"unsupported database {name!r}: driftd's store runs on SQLite or PostgreSQL")
