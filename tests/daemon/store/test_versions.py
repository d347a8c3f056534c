"""Versions on SQLite and PostgreSQL: one active at a time, promotion, rollback, fencing, audit."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.errors import DriftdError, LeaseLost, NotFound, StoreError
from daemon.store import Event, Store, Version, acquire, epoch_is_current
from daemon.store.queries import list_events
from daemon.store.versions import Fence, add_version, list_versions, promote, rollback

LEADER = "leader"


def states(store: Store, deployment: str) -> dict[str, str]:
    return {v.name: v.state for v in list_versions(store, deployment)}


def events(store: Store, kind: str = "version.") -> list[Event]:
    return [event for _, event in list_events(store, kind=kind)]


def add(store: Store, deployment: str, name: str, **extra: Any) -> Version:
    return add_version(
        store, deployment, kind="prompt", name=name, artifact=f"prompts/{name}.txt", **extra
    )


def test_a_new_version_is_a_candidate_with_its_evidence(store: Store, deployment: str) -> None:
    first = add(store, deployment, "v1")
    second = add(
        store,
        deployment,
        "v2",
        parent="v1",
        eval_scores={"accuracy": 0.91},
        meta={"trigger": "drift"},
    )

    listed = list_versions(store, deployment)

    assert [v.name for v in listed] == ["v2", "v1"]
    assert listed[0].state == "candidate"
    assert listed[0].parent_id == first.id == listed[1].id
    assert listed[0].eval_scores == {"accuracy": 0.91}
    assert listed[0].meta == {"trigger": "drift"}
    assert listed[0].artifact == "prompts/v2.txt"
    assert listed[0].promoted_at is None
    assert second.id == listed[0].id


def test_adding_a_version_refuses_what_would_break_the_rules(store: Store, deployment: str) -> None:
    add(store, deployment, "v1")

    with pytest.raises(DriftdError, match="already has a version named 'v1'"):
        add(store, deployment, "v1")
    with pytest.raises(NotFound, match="has no version 'v0'; its latest versions: v1"):
        add(store, deployment, "v2", parent="v0")
    with pytest.raises(StoreError, match="no job 404"):
        add(store, deployment, "v2", job_id=404)
    with pytest.raises(ValueError, match="promote it to activate it"):
        add(store, deployment, "v2", state="active")
    with pytest.raises(StoreError, match="unknown deployment 'nowhere'"):
        add(store, "nowhere", "v2")
    assert states(store, deployment) == {"v1": "candidate"}


def test_promotion_keeps_exactly_one_active_version(store: Store, deployment: str) -> None:
    for name in ("v1", "v2", "v3"):
        add(store, deployment, name)
    before = datetime.now(UTC)

    first = promote(store, deployment, "v1", actor="test")
    second = promote(store, deployment, "v2", actor="test")

    assert first.previous is None
    assert first.active.name == "v1"
    assert second.previous is not None
    assert second.previous.name == "v1"
    assert second.active.name == "v2"
    assert states(store, deployment) == {"v1": "retired", "v2": "active", "v3": "candidate"}
    active = store.active_version(deployment)
    assert active is not None
    assert active.name == "v2"
    assert active.promoted_at is not None
    assert active.promoted_at >= before


def test_promotion_writes_an_audit_event_with_old_and_new(store: Store, deployment: str) -> None:
    add(store, deployment, "v1")
    add(store, deployment, "v2", eval_scores={"accuracy": 0.93})
    promote(store, deployment, "v1", actor="leader:a")

    change = promote(store, deployment, "v2", actor="operator")

    latest = events(store)[0]
    assert latest.id == change.event_id
    assert latest.kind == "version.promoted"
    assert latest.message == "support-bot: version v2 promoted by operator (was v1)"
    assert latest.evidence["old"]["name"] == "v1"
    assert latest.evidence["new"]["name"] == "v2"
    assert latest.evidence["actor"] == "operator"
    assert latest.evidence["eval_scores"] == {"accuracy": 0.93}
    assert [e.kind for e in events(store)] == ["version.promoted", "version.promoted"]


def test_a_rejected_version_is_promoted_only_with_force(store: Store, deployment: str) -> None:
    add(store, deployment, "v1")
    promote(store, deployment, "v1", actor="test")
    add(store, deployment, "v2", state="rejected", eval_scores={"accuracy": 0.5})

    with pytest.raises(DriftdError, match=r"rejected by its gate .*accuracy.*force"):
        promote(store, deployment, "v2", actor="test")
    assert states(store, deployment) == {"v1": "active", "v2": "rejected"}

    change = promote(store, deployment, "v2", actor="test", force=True)

    assert change.active.name == "v2"
    assert states(store, deployment) == {"v1": "retired", "v2": "active"}
    assert events(store)[0].evidence["force"] is True


def test_promoting_the_active_or_an_unknown_version_fails(store: Store, deployment: str) -> None:
    add(store, deployment, "v1")
    promote(store, deployment, "v1", actor="test")

    with pytest.raises(DriftdError, match="'v1' of 'support-bot' is already active"):
        promote(store, deployment, "v1", actor="test")
    with pytest.raises(StoreError, match="has no version 'v9'; its latest versions: v1"):
        promote(store, deployment, "v9", actor="test")
    with pytest.raises(StoreError, match="unknown deployment 'nowhere'"):
        promote(store, "nowhere", "v1", actor="test")
    assert len(events(store)) == 1


def test_rollback_reactivates_the_previous_version(store: Store, deployment: str) -> None:
    for name in ("v1", "v2"):
        add(store, deployment, name)
        promote(store, deployment, name, actor="test")

    change = rollback(store, deployment, actor="watch")

    assert change.active.name == "v1"
    assert change.previous is not None
    assert change.previous.name == "v2"
    assert states(store, deployment) == {"v1": "active", "v2": "retired"}
    by_name = {v.name: v for v in list_versions(store, deployment)}
    assert by_name["v2"].meta is not None
    assert by_name["v2"].meta["rolled_back"] is True
    assert by_name["v2"].meta["rolled_back_to"] == "v1"
    assert by_name["v2"].meta["rolled_back_by"] == "watch"
    promoted_at = by_name["v1"].promoted_at
    assert promoted_at is not None
    assert by_name["v2"].promoted_at is not None
    assert promoted_at > by_name["v2"].promoted_at
    event = events(store)[0]
    assert event.id == change.event_id
    assert event.kind == "version.rolled_back"
    assert (event.evidence["old"]["name"], event.evidence["new"]["name"]) == ("v2", "v1")
    assert event.message == "support-bot: rolled back from version v2 to v1 by watch"


def test_rollbacks_step_back_and_never_return_to_an_abandoned_version(
    store: Store, deployment: str
) -> None:
    for name in ("v0", "v1", "v2"):
        add(store, deployment, name)
        promote(store, deployment, name, actor="test")
    add(store, deployment, "v3")  # a candidate that was never active is no rollback target

    assert rollback(store, deployment, actor="test").active.name == "v1"
    assert rollback(store, deployment, actor="test").active.name == "v0"
    with pytest.raises(DriftdError, match="no earlier version to roll back to: 'v0'"):
        rollback(store, deployment, actor="test")

    assert states(store, deployment) == {
        "v0": "active",
        "v1": "retired",
        "v2": "retired",
        "v3": "candidate",
    }


def test_a_rolled_back_version_can_be_promoted_again(store: Store, deployment: str) -> None:
    for name in ("v1", "v2"):
        add(store, deployment, name, meta={"note": name})
        promote(store, deployment, name, actor="test")
    rollback(store, deployment, actor="test")

    promote(store, deployment, "v2", actor="test")
    add(store, deployment, "v3")
    promote(store, deployment, "v3", actor="test")

    by_name = {v.name: v for v in list_versions(store, deployment)}
    assert by_name["v2"].meta == {"note": "v2"}  # the rollback marks went with the promotion
    assert rollback(store, deployment, actor="test").active.name == "v2"


def test_rollback_without_history_fails_and_changes_nothing(store: Store, deployment: str) -> None:
    add(store, deployment, "v1")
    with pytest.raises(DriftdError, match="has no active version"):
        rollback(store, deployment, actor="test")

    promote(store, deployment, "v1", actor="test")
    with pytest.raises(DriftdError, match="no earlier version"):
        rollback(store, deployment, actor="test")

    assert states(store, deployment) == {"v1": "active"}
    assert [e.kind for e in events(store)] == ["version.promoted"]


def test_a_deposed_leader_changes_nothing(store: Store, deployment: str) -> None:
    for name in ("v1", "v2", "v3"):
        add(store, deployment, name)
    old = acquire(store, LEADER, "replica-a", ttl=0.2)
    assert old is not None

    def fence_of(epoch: int) -> Fence:
        return lambda connection: epoch_is_current(connection, LEADER, epoch)

    promote(store, deployment, "v1", actor="replica-a", fence=fence_of(old.epoch))
    promote(store, deployment, "v2", actor="replica-a", fence=fence_of(old.epoch))
    time.sleep(0.4)
    new = acquire(store, LEADER, "replica-b", ttl=30.0)
    assert new is not None
    assert new.epoch == old.epoch + 1
    before = [(v.name, v.state, v.promoted_at, v.meta) for v in list_versions(store, deployment)]

    with pytest.raises(LeaseLost, match=r"promote version 'v3' .*nothing was changed"):
        promote(store, deployment, "v3", actor="replica-a", fence=fence_of(old.epoch))
    with pytest.raises(LeaseLost, match="roll back 'support-bot'"):
        rollback(store, deployment, actor="replica-a", fence=fence_of(old.epoch))

    after = [(v.name, v.state, v.promoted_at, v.meta) for v in list_versions(store, deployment)]
    assert after == before
    assert len(events(store)) == 2
    change = rollback(store, deployment, actor="replica-b", fence=fence_of(new.epoch))
    assert change.active.name == "v1"


def test_concurrent_promotions_leave_one_active_version(store: Store, deployment: str) -> None:
    names = [f"v{i}" for i in range(6)]
    for name in names:
        add(store, deployment, name)
    start = threading.Barrier(len(names))
    failures: list[BaseException] = []

    def run(name: str) -> None:
        start.wait()
        try:
            promote(store, deployment, name, actor=name)
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    final = states(store, deployment)
    assert sorted(final.values()) == ["active"] + ["retired"] * (len(names) - 1)
    promoted = events(store)
    assert len(promoted) == len(names)
    # Each promotion retired the version the one before it activated: an unbroken chain.
    olds = [e.evidence["old"] for e in reversed(promoted)]
    news = [e.evidence["new"]["name"] for e in reversed(promoted)]
    assert olds[0] is None
    assert [o["name"] for o in olds[1:]] == news[:-1]
    assert final[news[-1]] == "active"
