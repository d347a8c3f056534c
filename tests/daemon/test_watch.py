"""Watching a promoted version on live traffic, on SQLite and PostgreSQL: a version that serves
worse than the one it replaced is rolled back; one that serves as well stays."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from daemon.config import Config, parse_config
from daemon.domain import VersionKind
from daemon.retune.watch import watch
from daemon.store import NewSample, Store, versions
from tests.helpers.configs import finetuned_config

CONFIG = finetuned_config(more="    retune: {watch: {checks: 3, max_drop: 0.05, period: 1d}}\n")


def config() -> Config:
    return parse_config(CONFIG, environ={})


def served(version: str, start: datetime, count: int, right: int) -> list[NewSample]:
    """``count`` labelled samples served by ``version`` from ``start``, ``right`` of them right."""
    return [
        NewSample(
            f"{version}-{i}",
            start + timedelta(seconds=30 * i),
            input=f"q {i}",
            prediction="a",
            label="a" if i < right else "b",
            model_version=version,
        )
        for i in range(count)
    ]


def promoted_pair(store: Store) -> versions.VersionChange:
    store.ensure_deployment("intents", "finetuned", "classification")
    versions.add_version(store, "intents", kind=VersionKind.model, name="v1", artifact="m1")
    versions.promote(store, "intents", "v1", actor="test")
    versions.add_version(
        store, "intents", kind=VersionKind.model, name="v2", artifact="m2", parent="v1"
    )
    return versions.promote(store, "intents", "v2", actor="test")


@pytest.mark.parametrize(("right_after", "rolled_back"), [(60, True), (90, False)])
def test_a_promoted_version_is_kept_or_rolled_back_by_its_live_accuracy(
    store: Store, right_after: int, rolled_back: bool
) -> None:
    change = promoted_pair(store)
    promoted_at = change.active.promoted_at
    assert promoted_at is not None
    store.insert_samples("intents", served("v1", promoted_at - timedelta(hours=2), 100, 90))
    store.insert_samples(
        "intents", served("v2", promoted_at + timedelta(minutes=1), 100, right_after)
    )
    calls: list[str] = []

    def rollback(name: str) -> None:
        calls.append(name)
        versions.rollback(store, name, actor="watch")

    verdict = watch(
        store, config().deployments[0], rollback, min_rows=50, now=promoted_at + timedelta(hours=2)
    )
    assert verdict is not None
    assert verdict.before.value == pytest.approx(0.90)
    assert verdict.after.value == pytest.approx(right_after / 100)
    assert verdict.regressed is rolled_back
    assert calls == (["intents"] if rolled_back else [])
    active = store.active_version("intents")
    assert active is not None
    assert active.name == ("v1" if rolled_back else "v2")
    kinds = [e.kind for e in store.recent_events("intents")]
    assert ("watch.regressed" in kinds) is rolled_back
    assert ("watch.ok" in kinds) is not rolled_back


def test_too_few_samples_or_an_ended_watch_decide_nothing(store: Store) -> None:
    change = promoted_pair(store)
    promoted_at = change.active.promoted_at
    assert promoted_at is not None
    store.insert_samples("intents", served("v1", promoted_at - timedelta(hours=2), 100, 90))
    store.insert_samples("intents", served("v2", promoted_at + timedelta(minutes=1), 10, 0))
    deployment = config().deployments[0]

    def never(name: str) -> None:
        pytest.fail(f"no rollback of {name} expected")

    assert (
        watch(store, deployment, never, min_rows=50, now=promoted_at + timedelta(hours=1)) is None
    )
    assert watch(store, deployment, never, min_rows=5, now=promoted_at + timedelta(days=2)) is None
