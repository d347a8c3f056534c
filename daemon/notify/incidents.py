"""Audit events in, incidents and outbox rows out: the leader's notification chore.

The notifier reads the audit log (``events``) after a cursor, instead of being called from every
place that changes something: the log already records every change, and reading it in order
gives one place that decides what is news. For each event:

- ``check.completed`` with status ``drift`` opens the incident ``drift`` of its deployment (one
  firing message); more drift while it is open sends nothing; the first later ``ok`` check
  resolves it (one resolved message). ``insufficient_data`` and ``failed`` change nothing.
- ``job.failed`` opens ``job_failed:<job kind>``; the next ``job.succeeded`` of that kind
  resolves it.
- ``version.promoted`` and ``version.rolled_back`` send one info message each.

Reading events, changing incidents, writing the outbox and moving the cursor happen in ONE
transaction that first locks the cursor row, so two leaders (the old one not yet aware it lost
the lease) serialise on it, and a crash either keeps all of it or none: a restart neither sends
a message twice nor loses one. The outbox's unique (channel, event) key guards the same promise.

PostgreSQL hands out event ids before commit, so an event may become visible after a higher id:
the chore never reads past a gap in the ids until it has seen the gap for ``GAP_SETTLE`` (by then
the gap is a rolled-back insert, not one in flight). The wait is timed on this process's own
clock, not the events' timestamps, which other replicas' clocks wrote and which may be set in the
past. SQLite writes one at a time, so its ids have no such gaps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.config.models import NotifyOn
from daemon.domain import CheckStatus
from daemon.notify.channels import Channel, Message, render
from daemon.store import Event, Store
from daemon.store.models import NotificationState, utcnow
from daemon.store.notifications import EventPass, caught_up, event_pass

CURSOR = "events"
GAP_SETTLE = timedelta(seconds=30)
BATCH = 500
DRIFT = "drift"
_JOB_FAILED = "job_failed:"
_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class Processed:
    """What one pass did: events read, messages written (one per channel), cursor position."""

    events: int
    messages: int
    cursor: int


class Gaps:
    """When each gap in the event ids was first seen, keyed by the id before it."""

    def __init__(
        self, settle: timedelta = GAP_SETTLE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settle = settle.total_seconds()
        self._clock = clock
        self._seen: dict[int, float] = {}

    def settled(self, after: int) -> bool:
        """Whether the gap after event ``after`` has been seen for ``settle`` already."""
        first = self._seen.setdefault(after, self._clock())
        return self._clock() - first >= self.settle

    def passed(self, position: int) -> None:
        """Forget the gaps before ``position``: the cursor is past them."""
        self._seen = {after: t for after, t in self._seen.items() if after >= position}


def process_events(
    store: Store,
    channels: Mapping[str, Channel],
    send: Collection[NotifyOn],
    *,
    driftd_url: str | None = None,
    gaps: Gaps | None = None,
    batch: int = BATCH,
    now: Callable[[], datetime] = utcnow,
) -> Processed:
    """Process the events after the cursor (at most ``batch``) in one transaction.

    Incidents are tracked whatever is sent, so turning a channel or an event class on later
    starts from the right state; messages go only to ``channels``, for the classes in ``send``.
    Pass the same ``gaps`` to every call, or a gap in the ids stops every pass.
    """
    gaps = gaps if gaps is not None else Gaps()
    # Most passes find nothing new: find that out without taking SQLite's write lock, which
    # ingest's writer waits for.
    seen = caught_up(store, CURSOR)
    if seen is not None:
        return Processed(0, 0, seen)
    with event_pass(store, CURSOR, batch) as work:
        position = work.cursor
        messages = 0
        read = 0
        for event, deployment in work.events:
            if event.id != position + 1 and not gaps.settled(position):
                break  # an earlier id may still commit: wait for it, or for the gap to settle
            position = event.id
            read += 1
            if deployment is None:
                continue
            message = _message(work, event, deployment)
            if message is None or _class_of(message) not in send:
                continue
            for name, channel in channels.items():
                work.queue(
                    name,
                    event,
                    incident=message.incident,
                    state=message.state.value,
                    payload=render(channel.kind, message, driftd_url),
                    at=now(),
                )
                messages += 1
        work.move_cursor(position)
    gaps.passed(position)
    return Processed(read, messages, position)


def _class_of(message: Message) -> NotifyOn:
    if message.event == "version.promoted":
        return NotifyOn.promotion
    if message.event == "version.rolled_back":
        return NotifyOn.rollback
    if message.incident == DRIFT:
        return NotifyOn.drift
    return NotifyOn.job_failed


def _message(work: EventPass, event: Event, deployment: str) -> Message | None:
    """The message ``event`` causes, if any, with the incident opened or closed on the way."""
    evidence = event.evidence or {}
    if event.kind == "check.completed":
        status = evidence.get("status")
        check = evidence.get("check_id")
        if status == CheckStatus.drift:
            drifted = ", ".join(sorted(evidence.get("drifted") or {})) or "no signal named"
            summary = f"{deployment}: drift detected by check {check} ({drifted})"
            return _open(work, event, deployment, DRIFT, summary, "DriftdDriftDetected", {})
        if status == CheckStatus.ok:
            summary = f"{deployment}: drift resolved, check {check} found none"
            return _close(work, event, deployment, DRIFT, summary, "DriftdDriftDetected", {})
        return None
    if event.kind in ("job.failed", "job.succeeded"):
        kind = str(evidence.get("kind", "job"))
        job = evidence.get("job_id")
        labels = {"job_kind": kind}
        if event.kind == "job.failed":
            error = str(evidence.get("error") or "no error recorded")[:_ERROR_CHARS]
            summary = f"{deployment}: {kind} job {job} failed: {error}"
            return _open(
                work, event, deployment, _JOB_FAILED + kind, summary, "DriftdJobFailed", labels
            )
        summary = f"{deployment}: {kind} job {job} succeeded; the earlier failure is resolved"
        return _close(
            work, event, deployment, _JOB_FAILED + kind, summary, "DriftdJobFailed", labels
        )
    if event.kind in ("version.promoted", "version.rolled_back"):
        new = evidence.get("new") or {}
        alertname = "DriftdPromotion" if event.kind == "version.promoted" else "DriftdRollback"
        return _info(event, deployment, alertname, {"version": str(new.get("name", ""))})
    return None


def _open(
    work: EventPass,
    event: Event,
    deployment: str,
    incident: str,
    summary: str,
    alertname: str,
    labels: dict[str, str],
) -> Message | None:
    if not work.open_incident(event, incident):
        return None  # already firing: said once
    state = NotificationState.firing
    return _make(event, deployment, state, incident, summary, alertname, event.ts, labels)


def _close(
    work: EventPass,
    event: Event,
    deployment: str,
    incident: str,
    summary: str,
    alertname: str,
    labels: dict[str, str],
) -> Message | None:
    opened_at = work.close_incident(event, incident)
    if opened_at is None:
        return None  # nothing was firing
    state = NotificationState.resolved
    return _make(event, deployment, state, incident, summary, alertname, opened_at, labels)


def _info(event: Event, deployment: str, alertname: str, labels: dict[str, str]) -> Message:
    state = NotificationState.info
    return _make(event, deployment, state, None, event.message, alertname, event.ts, labels)


def _make(
    event: Event,
    deployment: str,
    state: NotificationState,
    incident: str | None,
    summary: str,
    alertname: str,
    started_at: datetime,
    labels: dict[str, str],
) -> Message:
    return Message(
        event_id=event.id,
        event=event.kind,
        deployment=deployment,
        state=state,
        incident=incident,
        alertname=alertname,
        # Info is news; an incident wants someone to look, but no one need be woken.
        severity="info" if state is NotificationState.info else "warning",
        summary=summary,
        details=dict(event.evidence or {}),
        ts=event.ts,
        started_at=started_at,
        labels=labels,
    )
