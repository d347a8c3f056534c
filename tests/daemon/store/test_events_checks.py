from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from daemon.domain import CheckStatus, ReferenceKind
from daemon.errors import StoreError
from daemon.store import Store
from daemon.store.queries import list_checks, list_events, parse_time
from tests.helpers.checks import new_check

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_checks_round_trip_newest_first(store: Store, deployment: str) -> None:
    older = store.record_check(deployment, new_check(at=NOW - timedelta(hours=1)))
    recorded = new_check(
        CheckStatus.drift,
        at=NOW,
        drifted={"descriptors": 0.61},
        calm={"embedding": 0.004},
        reference_kind=ReferenceKind.fixed,
        reference_rows=2_000,
        current_total=9_876,
        reference_total=2_000,
        scheduled_for=NOW - timedelta(seconds=2),
        finished_at=NOW + timedelta(seconds=14),
        reference_start=NOW - timedelta(days=8),
        reference_end=NOW - timedelta(days=7),
        snapshot_path="snapshots/support-bot/42.json",
    )
    newer = store.record_check(deployment, recorded)

    checks = store.recent_checks(deployment)

    assert [c.id for c in checks] == [newer, older]
    latest = checks[0]
    assert latest.status == "drift"
    assert latest.signals == recorded.signals
    assert latest.started_at == NOW
    assert latest.scheduled_for == NOW - timedelta(seconds=2)
    assert latest.finished_at == NOW + timedelta(seconds=14)
    assert latest.reference_start == NOW - timedelta(days=8)
    assert (latest.current_rows, latest.current_total) == (500, 9_876)
    assert latest.snapshot_path == "snapshots/support-bot/42.json"
    assert latest.error is None


def test_recent_checks_limit(store: Store, deployment: str) -> None:
    for minutes in range(5):
        store.record_check(deployment, new_check(at=NOW + timedelta(minutes=minutes)))

    checks = store.recent_checks(deployment, limit=2)

    assert [c.started_at for c in checks] == [
        NOW + timedelta(minutes=4),
        NOW + timedelta(minutes=3),
    ]


def test_failed_check_keeps_its_error(store: Store, deployment: str) -> None:
    store.record_check(
        deployment, new_check("failed", at=NOW, error="monitor timed out after 120 s")
    )

    (check,) = store.recent_checks(deployment)

    assert (check.status, check.error) == ("failed", "monitor timed out after 120 s")


def test_unknown_check_status_is_refused(store: Store, deployment: str) -> None:
    with pytest.raises(ValueError, match="exploded"):
        store.record_check(deployment, replace(new_check(at=NOW), status="exploded"))


def test_events_round_trip_with_their_evidence(store: Store, deployment: str) -> None:
    evidence = {
        "check_id": 42,
        "signals": {"input_length": 0.31, "embedding": 0.004},
        "drifted": ["input_length"],
        "ratio": 0.5,
        "note": "dérive détectée ✓",
        "approved": None,
    }
    first = store.add_event(deployment, "check.completed", "drift in 1 of 2 signals", evidence)
    second = store.add_event(
        deployment, "policy.decision", "re-tune deferred: cooldown", {"cooldown_s": 3600}
    )

    events = store.recent_events(deployment)

    assert [e.id for e in events] == [second, first]
    assert events[1].kind == "check.completed"
    assert events[1].message == "drift in 1 of 2 signals"
    assert events[1].evidence == evidence
    assert events[1].ts.tzinfo == UTC


def test_recent_events_across_deployments(store: Store, deployment: str) -> None:
    store.ensure_deployment("classifier", "finetuned", "classification")
    store.add_event(deployment, "check.completed", "ok", {}, ts=NOW)
    store.add_event(
        "classifier", "job.started", "fine-tune 7", {"job_id": 7}, ts=NOW + timedelta(seconds=1)
    )
    store.add_event(
        None, "leader.elected", "replica-a leads", {"epoch": 3}, ts=NOW + timedelta(seconds=2)
    )

    everything = store.recent_events()
    latest_two = store.recent_events(limit=2)
    classifier = store.recent_events("classifier")

    assert [e.kind for e in everything] == ["leader.elected", "job.started", "check.completed"]
    assert everything[0].deployment_id is None
    assert [e.kind for e in latest_two] == ["leader.elected", "job.started"]
    assert [e.kind for e in classifier] == ["job.started"]


def test_events_of_an_unknown_deployment(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown deployment 'nowhere'"):
        store.add_event("nowhere", "check.completed", "ok", {})


def test_ensure_deployment_updates_kind_and_task(store: Store) -> None:
    first = store.ensure_deployment("bot", "prompted", "generation")

    again = store.ensure_deployment("bot", "finetuned", "classification")

    assert again == first
    store.record_check("bot", new_check(at=NOW))
    with pytest.raises(ValueError, match="'chatty'"):
        store.ensure_deployment("bot", "chatty", "generation")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("2026-11-01T14:00+02:00", datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_a_duration_ago_or_a_moment(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "expected a duration ago like '2h'"),
        ("2026-11-01T12:00:00", "has no timezone"),
        # Each overflowed a datetime, an OverflowError that no caller expected.
        ("99999999h", "'99999999h ago' is out of range"),
        ("99999999999999999w", "'99999999999999999w ago' is out of range"),
        ("0001-01-01T00:00:00+01:00", "'0001-01-01T00:00:00+01:00' is out of range"),
        ("9999-12-31T23:59:59-01:00", "'9999-12-31T23:59:59-01:00' is out of range"),
    ],
)
def test_parse_time_refuses_with_a_value_error(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_time(text, now=NOW)


def test_the_widest_time_filters_reach_the_store(store: Store, deployment: str) -> None:
    """The first and last moments parse_time gives are compared by both databases."""
    store.record_check(deployment, new_check(at=NOW))
    store.add_event(deployment, "job.queued", "queued", {}, ts=NOW)
    first = parse_time("0001-01-01T00:00:00Z", now=NOW)
    last = parse_time("9999-12-31T23:59:59.999999Z", now=NOW)

    assert len(list_checks(store, since=first)) == 1
    assert len(list_events(store, since=first, until=last)) == 1
    assert list_events(store, since=last) == []
