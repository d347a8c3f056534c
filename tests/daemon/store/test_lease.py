from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

from daemon.store import Store, acquire, current, epoch_is_current, release
from daemon.store.lease import Lease

LEADER = "leader"


def test_first_acquire_gets_epoch_one(store: Store) -> None:
    before = time.monotonic()

    lease = acquire(store, LEADER, "replica-a", ttl=30.0)

    assert lease is not None
    assert (lease.name, lease.owner, lease.epoch, lease.ttl) == (LEADER, "replica-a", 1, 30.0)
    assert before + 30.0 <= lease.valid_until_monotonic <= time.monotonic() + 30.0
    assert lease.is_valid()
    state = current(store, LEADER)
    assert state is not None
    assert state.owner == "replica-a"
    assert not state.expired
    assert abs(state.expires_at - lease.expires_at) < 1e-6
    assert abs(state.expires_at - state.now - 30.0) < 5.0


def test_holder_renews_with_the_same_epoch_and_a_later_expiry(store: Store) -> None:
    first = acquire(store, LEADER, "replica-a", ttl=30.0)
    time.sleep(0.05)

    renewed = acquire(store, LEADER, "replica-a", ttl=30.0)

    assert first is not None
    assert renewed is not None
    assert renewed.epoch == first.epoch == 1
    assert renewed.expires_at > first.expires_at
    state = current(store, LEADER)
    assert state is not None
    assert state.acquired_at < state.renewed_at  # acquisition time kept across renewals


def test_another_owner_is_refused_while_the_lease_is_valid(store: Store) -> None:
    assert acquire(store, LEADER, "replica-a", ttl=30.0) is not None

    assert acquire(store, LEADER, "replica-b", ttl=30.0) is None

    state = current(store, LEADER)
    assert state is not None
    assert (state.owner, state.epoch) == ("replica-a", 1)


def test_expired_lease_passes_to_another_owner_with_a_new_epoch(store: Store) -> None:
    first = acquire(store, LEADER, "replica-a", ttl=0.3)
    assert first is not None
    time.sleep(0.5)
    assert not first.is_valid()

    taken = acquire(store, LEADER, "replica-b", ttl=30.0)

    assert taken is not None
    assert (taken.owner, taken.epoch) == ("replica-b", 2)
    assert not epoch_is_current(store, LEADER, 1)
    assert epoch_is_current(store, LEADER, 2)
    assert acquire(store, LEADER, "replica-a", ttl=30.0) is None


def test_release_lets_another_owner_take_over_at_once(store: Store) -> None:
    assert acquire(store, LEADER, "replica-a", ttl=30.0) is not None

    release(store, LEADER, "replica-a")

    state = current(store, LEADER)
    assert state is not None
    assert state.expired
    assert not epoch_is_current(store, LEADER, 1)
    taken = acquire(store, LEADER, "replica-b", ttl=30.0)
    assert taken is not None
    assert taken.epoch == 2


def test_release_by_a_non_holder_changes_nothing(store: Store) -> None:
    assert acquire(store, LEADER, "replica-a", ttl=30.0) is not None

    release(store, LEADER, "replica-b")

    assert epoch_is_current(store, LEADER, 1)
    assert acquire(store, LEADER, "replica-b", ttl=30.0) is None


def test_unknown_lease(store: Store) -> None:
    assert current(store, "never-taken") is None
    assert not epoch_is_current(store, "never-taken", 1)


def race(store: Store, name: str, contenders: int) -> list[Lease]:
    """Let ``contenders`` threads acquire ``name`` at the same moment; return the winners."""
    start = threading.Barrier(contenders)
    winners: list[Lease] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def contend(owner: str) -> None:
        try:
            start.wait()
            lease = acquire(store, name, owner, ttl=30.0)
        except BaseException as error:  # reported by the assertion below
            with lock:
                errors.append(error)
            return
        if lease is not None:
            with lock:
                winners.append(lease)

    threads = [threading.Thread(target=contend, args=(f"replica-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    return winners


def test_racing_on_a_fresh_lease_has_exactly_one_winner(store: Store) -> None:
    for round_ in range(5):
        winners = race(store, f"lease-{round_}", contenders=4)

        assert len(winners) == 1
        assert winners[0].epoch == 1


def test_racing_on_an_expired_lease_has_exactly_one_winner(store: Store) -> None:
    assert acquire(store, LEADER, "old-leader", ttl=0.2) is not None
    time.sleep(0.4)

    winners = race(store, LEADER, contenders=4)

    assert len(winners) == 1
    assert winners[0].epoch == 2


def test_a_scheduled_run_is_claimed_once(store: Store, deployment: str) -> None:
    tick = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    assert store.claim_run(deployment, "check", tick, "replica-a", 1)
    assert not store.claim_run(deployment, "check", tick, "replica-b", 2)
    assert store.claim_run(deployment, "check", tick + timedelta(minutes=5), "replica-b", 2)
    assert store.claim_run(deployment, "retune", tick, "replica-b", 2)


def test_a_tick_is_the_same_instant_in_any_timezone(store: Store, deployment: str) -> None:
    tick = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    same_tick = tick.astimezone(timezone(timedelta(hours=9)))

    assert store.claim_run(deployment, "check", tick, "replica-a", 1)
    assert not store.claim_run(deployment, "check", same_tick, "replica-b", 2)
