"""Prompt versions on SQLite and PostgreSQL: the configured prompt registered once, the active
prompt following promotion and rollback, and the cache the proxy reads it through."""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.config.models import Deployment
from daemon.errors import DriftdError, StoreError
from daemon.prompts import (
    INITIAL_VERSION,
    ActivePrompt,
    Example,
    PromptCache,
    PromptSpec,
    active_prompt,
    add_prompt_version,
    ensure_initial,
    initial_prompt,
    prompt_cache,
    read_active_prompt,
)
from daemon.store import Store
from daemon.store.queries import list_events
from daemon.store.versions import add_version, list_versions, promote, rollback

NAME = "support-bot"
REVISED = PromptSpec(
    system="You are a concise support agent. Answer in one sentence.",
    few_shot=(Example("Where is my card?", "It ships within 3 working days."),),
    model="gpt-4o-mini",
)


def prompted(name: str = NAME, **prompt: Any) -> Deployment:
    return Deployment.model_validate(
        {
            "name": name,
            "kind": "prompted",
            "task": "generation",
            "prompt": {
                "model": "gpt-4o-mini",
                "system": "You are a helpful bank support agent.",
                "examples": [
                    {
                        "input": "I lost my card",
                        "output": "I have frozen it; a new one is on its way.",
                    }
                ],
                **prompt,
            },
        }
    )


@pytest.fixture
def registered(store: Store) -> Deployment:
    store.ensure_deployment(NAME, "prompted", "generation")
    return prompted()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_configured_prompt_becomes_version_one_once(
    store: Store, registered: Deployment
) -> None:
    activated = ensure_initial(store, registered)

    assert activated is not None
    assert activated.name == INITIAL_VERSION
    [version] = list_versions(store, NAME)
    assert (version.name, version.kind, version.state) == (INITIAL_VERSION, "prompt", "active")
    assert json.loads(version.artifact) == {
        "system": "You are a helpful bank support agent.",
        "few_shot": [
            {"input": "I lost my card", "output": "I have frozen it; a new one is on its way."}
        ],
        "model": "gpt-4o-mini",
    }
    assert version.artifact == initial_prompt(registered).artifact()

    # A restart, even with an edited file, changes nothing: the store says what is live.
    assert ensure_initial(store, registered) is None
    assert ensure_initial(store, prompted(system="Something else entirely.")) is None
    assert [(v.name, v.state) for v in list_versions(store, NAME)] == [(INITIAL_VERSION, "active")]
    assert len(list_events(store, deployment=NAME, kind="version.promoted")) == 1


def test_a_registered_but_inactive_version_one_is_activated(
    store: Store, registered: Deployment
) -> None:
    # A replica that died between registering and promoting leaves this behind.
    add_version(store, NAME, kind="prompt", name=INITIAL_VERSION, artifact=REVISED.artifact())

    activated = ensure_initial(store, registered)

    assert activated is not None
    assert [(v.name, v.state) for v in list_versions(store, NAME)] == [(INITIAL_VERSION, "active")]


def test_a_finetuned_deployment_gets_no_prompt(store: Store) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    finetuned = Deployment.model_validate(
        {
            "name": "intents",
            "kind": "finetuned",
            "task": "classification",
            "labels": ["a", "b"],
            "model": {"name": "some/model"},
        }
    )

    assert ensure_initial(store, finetuned) is None
    assert list_versions(store, "intents") == []
    assert read_active_prompt(store, "intents") is None
    with pytest.raises(ValueError, match="finetuned"):
        initial_prompt(finetuned)


def test_the_active_prompt_follows_promotion_and_rollback(
    store: Store, registered: Deployment
) -> None:
    ensure_initial(store, registered)
    first = read_active_prompt(store, NAME)
    assert first is not None
    assert first.version == INITIAL_VERSION
    assert first.system == "You are a helpful bank support agent."
    assert first.few_shot == (
        Example("I lost my card", "I have frozen it; a new one is on its way."),
    )
    assert first.model == "gpt-4o-mini"

    candidate = add_prompt_version(
        store, NAME, REVISED, parent=INITIAL_VERSION, meta={"job": "revision"}
    )
    assert candidate.name == "prompt-2"
    assert candidate.state == "candidate"
    assert candidate.meta == {"job": "revision"}
    assert read_active_prompt(store, NAME) == first  # a candidate serves nobody yet

    promote(store, NAME, "prompt-2", actor="test")
    second = read_active_prompt(store, NAME)
    assert second is not None
    assert (second.version, second.spec) == ("prompt-2", REVISED)
    assert second.etag != first.etag

    rollback(store, NAME, actor="test")
    assert read_active_prompt(store, NAME) == first

    rejected = add_prompt_version(store, NAME, REVISED, parent="prompt-2", rejected=True)
    assert (rejected.name, rejected.state) == ("prompt-3", "rejected")
    by_name = {v.name: v for v in list_versions(store, NAME)}
    assert by_name["prompt-3"].parent_id == by_name["prompt-2"].id


def test_a_malformed_artifact_names_the_version(store: Store, registered: Deployment) -> None:
    add_version(store, NAME, kind="prompt", name="hand-made", artifact="You are a bot.")
    promote(store, NAME, "hand-made", actor="test")

    with pytest.raises(DriftdError, match="version 'hand-made' of 'support-bot' is not a prompt"):
        read_active_prompt(store, NAME)


def test_the_cache_reads_the_store_once_per_ttl(store: Store, registered: Deployment) -> None:
    ensure_initial(store, registered)
    add_prompt_version(store, NAME, REVISED, parent=INITIAL_VERSION)
    clock = Clock()
    reads: list[str] = []

    def counting(store: Store, name: str) -> ActivePrompt | None:
        reads.append(name)
        return read_active_prompt(store, name)

    cache = PromptCache(store, ttl_s=5.0, clock=clock, read=counting)

    assert [cache(NAME).version for _ in range(100)] == [INITIAL_VERSION] * 100  # type: ignore[union-attr]
    assert reads == [NAME]

    promote(store, NAME, "prompt-2", actor="test")
    clock.now += 4.9
    assert cache(NAME).version == INITIAL_VERSION  # type: ignore[union-attr]
    clock.now += 0.2
    assert cache(NAME).version == "prompt-2"  # type: ignore[union-attr]
    assert reads == [NAME, NAME]

    rollback(store, NAME, actor="test")
    cache.invalidate(NAME)
    assert cache(NAME).version == INITIAL_VERSION  # type: ignore[union-attr]


def test_the_cache_serves_the_last_prompt_while_the_store_is_down(
    store: Store, registered: Deployment
) -> None:
    ensure_initial(store, registered)
    clock = Clock()
    down = False

    def flaky(store: Store, name: str) -> ActivePrompt | None:
        if down:
            raise StoreError("cannot reach the store at sqlite:///x: connection refused")
        return read_active_prompt(store, name)

    cache = PromptCache(store, ttl_s=5.0, clock=clock, read=flaky)
    known = cache(NAME)
    assert known is not None

    down = True
    clock.now += 10
    assert cache(NAME) == known
    with pytest.raises(StoreError, match="connection refused"):
        cache("other-bot")  # nothing known to fall back on


def test_active_prompt_is_cached_per_store(store: Store, registered: Deployment) -> None:
    ensure_initial(store, registered)
    first = active_prompt(store, NAME)
    assert first is not None
    add_prompt_version(store, NAME, REVISED, parent=INITIAL_VERSION)
    promote(store, NAME, "prompt-2", actor="test")

    assert active_prompt(store, NAME) is first  # within the TTL: no store read
    prompt_cache(store).invalidate(NAME)
    assert active_prompt(store, NAME).version == "prompt-2"  # type: ignore[union-attr]
