"""The notifier's pass over the audit log: the events after its cursor, the incidents they open
and close, the outbox rows they queue, and the cursor moved past them, all in ONE transaction.

The pass first locks the cursor's row (PostgreSQL; SQLite's write lock is taken when the
transaction begins), so two leaders (the old one not yet aware it lost the lease) serialise on
it, and a crash either keeps all of a pass or none of it. What an event means is the notifier's
business (``daemon.notify.incidents``); this module only reads and writes the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from daemon.store.models import (
    Deployment,
    Event,
    Notification,
    NotificationCursor,
    NotificationIncident,
)
from daemon.store.repository import Store


class EventPass:
    """One pass, open until its ``event_pass`` block ends: ``events`` are the events after the
    cursor, oldest first, each with its deployment's name (None for daemon-wide ones)."""

    def __init__(
        self, session: Session, name: str, cursor: int, events: list[tuple[Event, str | None]]
    ) -> None:
        self._session = session
        self.name = name
        self.cursor = cursor
        self.events = events

    def open_incident(self, event: Event, incident: str) -> bool:
        """Open ``incident`` of the event's deployment, opened by ``event``; False if it is
        open already."""
        if self._incident(event, incident) is not None:
            return False
        self._session.add(
            NotificationIncident(
                deployment_id=event.deployment_id,
                incident=incident,
                opened_event_id=event.id,
                opened_at=event.ts,
            )
        )
        self._session.flush()
        return True

    def close_incident(self, event: Event, incident: str) -> datetime | None:
        """Close ``incident`` of the event's deployment; returns when it was opened, or None if
        it was not open."""
        found = self._incident(event, incident)
        if found is None:
            return None
        self._session.execute(
            delete(NotificationIncident).where(NotificationIncident.id == found.id)
        )
        return found.opened_at

    def queue(
        self,
        channel: str,
        event: Event,
        *,
        incident: str | None,
        state: str,
        payload: dict[str, Any],
        at: datetime,
    ) -> None:
        """Put the message ``event`` causes for ``channel`` in the outbox, due at ``at``."""
        self._session.add(
            Notification(
                channel=channel,
                event_id=event.id,
                deployment_id=event.deployment_id,
                incident=incident,
                state=state,
                payload=payload,
                attempts=0,
                next_try_at=at,
                created_at=at,
            )
        )

    def move_cursor(self, position: int) -> None:
        """Move the cursor to event ``position``, committed with the rest of the pass."""
        if position == self.cursor:
            return
        moved = self._session.connection().execute(
            update(NotificationCursor)
            .where(
                NotificationCursor.name == self.name,
                NotificationCursor.last_event_id == self.cursor,
            )
            .values(last_event_id=position)
        )
        if moved.rowcount != 1:
            # Cannot happen while the row lock holds; if it does, roll everything back.
            raise RuntimeError(f"the notification cursor moved from {self.cursor} under this pass")

    def _incident(self, event: Event, incident: str) -> NotificationIncident | None:
        return self._session.scalars(
            select(NotificationIncident).where(
                NotificationIncident.deployment_id == event.deployment_id,
                NotificationIncident.incident == incident,
            )
        ).first()


def caught_up(store: Store, name: str) -> int | None:
    """The position of cursor ``name`` if no event lies beyond it, else None (a pass has work,
    or the cursor is missing). Reads without taking SQLite's write lock, which ingest's writer
    waits for, since most passes find nothing new."""
    with store.session(readonly=True) as session:
        seen = session.execute(
            select(NotificationCursor.last_event_id).where(NotificationCursor.name == name)
        ).scalar()
        if seen is None:
            return None
        newer = session.execute(select(Event.id).where(Event.id > seen).limit(1)).scalar()
        return None if newer is not None else int(seen)


@contextmanager
def event_pass(store: Store, name: str, batch: int) -> Iterator[EventPass]:
    """A pass over at most ``batch`` events after cursor ``name``, committed when the block
    ends and rolled back if it raises."""
    with store.session() as session:
        cursor = _lock_cursor(session, name)
        rows = session.execute(
            select(Event, Deployment.name)
            .join(Deployment, Deployment.id == Event.deployment_id, isouter=True)
            .where(Event.id > cursor)
            .order_by(Event.id)
            .limit(batch)
        ).all()
        yield EventPass(
            session,
            name,
            cursor,
            [
                (event, None if deployment is None else str(deployment))
                for event, deployment in rows
            ],
        )


def _lock_cursor(session: Session, name: str) -> int:
    """The cursor's position, its row locked until commit. Created at the newest event if
    missing."""
    found = session.execute(
        select(NotificationCursor.last_event_id)
        .where(NotificationCursor.name == name)
        .with_for_update()
    ).scalar()
    if found is not None:
        return int(found)
    # The migration creates the row; a store whose row was deleted starts from now.
    newest = session.execute(select(Event.id).order_by(Event.id.desc()).limit(1)).scalar()
    session.add(NotificationCursor(name=name, last_event_id=int(newest or 0)))
    session.flush()
    return _lock_cursor(session, name)
