"""Serving the promoted version of an OpenAI fine-tuned deployment, on SQLite and PostgreSQL.

The app calls the proxy with the real ``openai`` client; the proxy's upstream is the fake
OpenAI server of ``tests/``, whose models answer by their id (``script_model``), so what the
upstream was called with shows in the answer as well as in what the fake received. Promotion,
rollback (admin API, CLI) and the watch switch the model id called, the sample's
``model_version`` and what ``GET /v1/deployments/{name}/version`` says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from daemon.api.admin import admin_router
from daemon.api.version import version_router
from daemon.auth import Tokens
from daemon.cli.admin import register
from daemon.config import Config, parse_config
from daemon.domain import VersionKind
from daemon.errors import StoreError
from daemon.proxy import ActiveModel
from daemon.retune import promotion
from daemon.retune.watch import watch
from daemon.serve import proxy_model_for
from daemon.serving import ActiveVersion, VersionCache, read_active_version, version_cache
from daemon.store import Store
from daemon.store.repository import FeedbackUpdate
from daemon.store.versions import add_version
from daemon.store.versions import promote as promote_in_store
from tests.daemon.api.conftest import guard
from tests.daemon.conftest import KEY_ENV, PROXY_TOKEN, Proxy, ProxyFactory
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI

NAME = "intents"
BASE = "gpt-4o-mini-2024-07-18"
V1_ID = f"ft:{BASE}:acme:intents-1:aaa111"
V2_ID = f"ft:{BASE}:acme:intents-2:bbb222"
ALIAS = "intents-model"  # what the app asks for; the proxy maps it to the active version
ADMIN = {"Authorization": "Bearer admin-1"}
INGEST = {"Authorization": "Bearer ingest-1"}
VERSION_URL = f"/v1/deployments/{NAME}/version"
QUESTIONS = {"I lost my card": "card_lost", "How do I top up?": "top_up"}


def right(text: str) -> str:
    """The first fine-tune: the intent of each question."""
    return QUESTIONS[text]


def yaml(fake: FakeOpenAI, *, storage: str | None = None, models_dir: Path | None = None) -> str:
    lines = [f'storage: {{url: "{storage}"}}'] if storage else []
    hooks = f"hooks: {{models_dir: '{models_dir.as_posix()}'}}, " if models_dir else ""
    lines += [
        "deployments:",
        f"  - name: {NAME}",
        "    kind: finetuned",
        "    task: classification",
        "    labels: [card_lost, top_up]",
        f"    model: {{provider: openai, name: {BASE}}}",
        f"    upstream: {{base_url: '{fake.base_url}', api_key_env: {KEY_ENV}, timeout: 5s, "
        "max_retries: 1}",
        f"    retune: {{{hooks}watch: {{checks: 3, max_drop: 0.05, period: 1d}}}}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Bench:
    """The proxy in front of the fake server, the app's openai client of it, and the API's
    version and admin routes, all over one store in this process."""

    fake: FakeOpenAI
    proxy: Proxy
    app: openai.OpenAI
    api: TestClient
    config: Config
    store: Store

    def ask(self, text: str, request_id: str) -> str:
        """The app's call through the proxy; the answer's text."""
        answer = self.app.chat.completions.create(
            model=ALIAS,
            messages=[{"role": "user", "content": text}],
            extra_headers={"X-Request-Id": request_id},
        )
        return answer.choices[0].message.content or ""

    def called(self) -> str:
        """The model id the upstream received last."""
        return str(self.fake.calls(CHAT_ROUTE)[-1].body["model"])

    def add(self, name: str, model: str, parent: str | None = None) -> None:
        add_version(
            self.store, NAME, kind=VersionKind.model, name=name, artifact=model, parent=parent
        )


@contextlib.contextmanager
def start(
    fake: FakeOpenAI,
    proxy: ProxyFactory,
    store: Store,
    cache: VersionCache,
    *,
    models_dir: Path | None = None,
) -> Iterator[Bench]:
    fake.script_model(ALIAS, right)  # a model the upstream serves under the app's alias
    fake.script_model(f"ft:{BASE}:acme:intents-1:", right)
    fake.script_model(f"ft:{BASE}:acme:intents-2:", lambda text: "top_up")
    text = yaml(fake, models_dir=models_dir)
    config = parse_config(text, environ={})
    served = proxy(
        {},
        yaml=text,
        environ={KEY_ENV: fake.api_key},
        model_for=proxy_model_for(config.deployments, cache),
    )
    api = FastAPI()
    authorize = guard(Tokens(ingest=(b"ingest-1",), admin=(b"admin-1",)))
    api.include_router(version_router(cache, authorize, deployments=[NAME], by_model_id=[NAME]))
    api.include_router(admin_router(store, authorize, hooks={NAME: config.hooks_of(NAME)}))
    client = openai.OpenAI(
        base_url=f"{served.url}/proxy/{NAME}/v1", api_key=PROXY_TOKEN, max_retries=0
    )
    with client, TestClient(api) as api_client:
        yield Bench(fake, served, client, api_client, config, store)


@pytest.fixture
def bench(
    fake_openai: FakeOpenAI, proxy: ProxyFactory, store: Store, tmp_path: Path
) -> Iterator[Bench]:
    """The bench over the process's shared version cache, as ``driftd serve`` builds it."""
    models = tmp_path / "models"
    models.mkdir()
    with start(fake_openai, proxy, store, version_cache(store), models_dir=models) as bench:
        yield bench


def version(bench: Bench, **headers: str) -> Any:
    return bench.api.get(VERSION_URL, headers={**INGEST, **headers})


def test_the_proxy_calls_the_active_version_and_the_api_rollback_restores_the_previous(
    bench: Bench, tmp_path: Path
) -> None:
    # Before any version: the configured model serves, the call goes as the app sent it.
    assert bench.ask("I lost my card", "before") == "card_lost"
    assert bench.called() == ALIAS
    sample = bench.proxy.sample(NAME, "before")
    assert sample.model_version is None
    missing = version(bench)
    assert missing.status_code == 404
    assert f"deployment {NAME!r} has no version registered yet" in missing.json()["detail"]

    bench.add("intents-1", V1_ID)
    promoted = bench.api.post(f"/v1/deployments/{NAME}/versions/intents-1/promote", headers=ADMIN)
    assert promoted.status_code == 200, promoted.text
    [link] = promoted.json()["hooks"]
    assert (link["hook"], link["ok"]) == ("models_dir", True)
    assert link["detail"].startswith(f"skipped: version intents-1 is the OpenAI model {V1_ID!r}")
    assert not (tmp_path / "models" / "current").exists()

    assert bench.ask("I lost my card", "first") == "card_lost"
    assert bench.called() == V1_ID
    sample = bench.proxy.sample(NAME, "first")
    assert (sample.model_version, sample.prediction) == ("intents-1", "card_lost")
    assert sample.meta is not None
    assert sample.meta["model"] == V1_ID
    first = version(bench)
    assert first.status_code == 200
    assert first.json() == {
        "deployment": NAME,
        "version": "intents-1",
        "kind": "model",
        "artifact": V1_ID,
        "model": V1_ID,
        "prompt": None,
    }
    assert first.headers["cache-control"] == "max-age=5"
    first_etag = first.headers["etag"]
    unchanged = version(bench, **{"If-None-Match": first_etag})
    assert (unchanged.status_code, unchanged.content) == (304, b"")

    bench.add("intents-2", V2_ID, parent="intents-1")
    promoted = bench.api.post(f"/v1/deployments/{NAME}/versions/intents-2/promote", headers=ADMIN)
    assert promoted.status_code == 200, promoted.text
    assert bench.ask("I lost my card", "second") == "top_up"  # the very next call
    assert bench.called() == V2_ID
    assert bench.proxy.sample(NAME, "second").model_version == "intents-2"
    second = version(bench, **{"If-None-Match": first_etag})
    assert second.status_code == 200
    assert (second.json()["version"], second.json()["model"]) == ("intents-2", V2_ID)
    assert second.headers["etag"] != first_etag

    rolled = bench.api.post(f"/v1/deployments/{NAME}/rollback", headers=ADMIN)
    assert rolled.status_code == 200, rolled.text
    assert bench.ask("I lost my card", "third") == "card_lost"  # the very next call
    assert bench.called() == V1_ID
    assert bench.proxy.sample(NAME, "third").model_version == "intents-1"
    back = version(bench, **{"If-None-Match": second.headers["etag"]})
    assert back.status_code == 200
    assert (back.json()["version"], back.json()["model"]) == ("intents-1", V1_ID)
    assert back.headers["etag"] == first_etag


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cli_rollback_reaches_the_proxy_and_the_route_within_the_cache_ttl(
    fake_openai: FakeOpenAI, proxy: ProxyFactory, store: Store, db_url: str, tmp_path: Path
) -> None:
    # `driftd versions rollback` is a process of its own: the daemon's cache learns of it when
    # its entry is older than the TTL (the clock stands in for those seconds).
    clock = Clock()
    cache = VersionCache(store, ttl_s=5.0, clock=clock)
    with start(fake_openai, proxy, store, cache) as bench:
        rolled_back_by_the_cli(bench, clock, db_url, tmp_path)


def rolled_back_by_the_cli(bench: Bench, clock: Clock, db_url: str, tmp_path: Path) -> None:
    store, fake_openai = bench.store, bench.fake
    bench.add("intents-1", V1_ID)
    promote_in_store(store, NAME, "intents-1", actor="test")
    bench.add("intents-2", V2_ID, parent="intents-1")
    promote_in_store(store, NAME, "intents-2", actor="test")
    assert bench.ask("How do I top up?", "tuned") == "top_up"
    assert bench.called() == V2_ID
    etag = version(bench).headers["etag"]

    config = tmp_path / "driftd.yaml"
    config.write_text(yaml(fake_openai, storage=db_url))
    cli = typer.Typer(name="driftd", add_completion=False)
    register(cli)
    env = {"DRIFTD_STORAGE_URL": None, "DRIFTD_CONFIG": None, "COLUMNS": "250"}
    done = CliRunner().invoke(cli, ["versions", "rollback", NAME, "-c", str(config)], env=env)
    assert done.exit_code == 0, done.output
    assert f"{NAME}: rolled back from version intents-2 to intents-1" in done.output

    clock.now += 5.0
    assert bench.ask("I lost my card", "rolled") == "card_lost"
    assert bench.called() == V1_ID
    assert bench.proxy.sample(NAME, "rolled").model_version == "intents-1"
    back = version(bench, **{"If-None-Match": etag})
    assert back.status_code == 200
    assert (back.json()["version"], back.json()["model"]) == ("intents-1", V1_ID)


def test_the_watch_compares_the_two_model_ids_live_and_rolls_the_worse_back(
    bench: Bench,
) -> None:
    store = bench.store
    bench.add("intents-1", V1_ID)
    first = promotion.promote(store, bench.config.hooks_of(NAME), NAME, "intents-1", actor="test")
    questions = list(QUESTIONS.items()) * 4
    for i, (text, _) in enumerate(questions):
        bench.ask(text, f"old-{i}")
    bench.add("intents-2", V2_ID, parent="intents-1")
    second = promotion.promote(store, bench.config.hooks_of(NAME), NAME, "intents-2", actor="test")
    for i, (text, _) in enumerate(questions):
        bench.ask(text, f"new-{i}")
    assert {call.body["model"] for call in bench.fake.calls(CHAT_ROUTE)} == {V1_ID, V2_ID}

    # The labels arrive later, as an app's feedback does.
    for prefix, model_version in (("old", "intents-1"), ("new", "intents-2")):
        for i in range(len(questions)):
            assert bench.proxy.sample(NAME, f"{prefix}-{i}").model_version == model_version
        found = store.apply_feedback(
            NAME,
            [
                FeedbackUpdate(f"{prefix}-{i}", label=label)
                for i, (_, label) in enumerate(questions)
            ],
        )
        assert len(found) == len(questions)

    promoted_at, before_at = second.change.active.promoted_at, first.change.active.promoted_at
    assert promoted_at is not None
    assert before_at is not None
    now = max(datetime.now(UTC), promoted_at + (promoted_at - before_at)) + timedelta(seconds=1)
    rolled: list[str] = []

    def rollback(name: str) -> None:
        rolled.append(name)
        promotion.rollback(store, bench.config.hooks_of(name), name, actor="watch")

    deployment = bench.config.deployment(NAME)
    verdict = watch(store, deployment, rollback, min_rows=len(questions), now=now)

    assert verdict is not None
    assert (verdict.before.value, verdict.before.rows) == (1.0, len(questions))
    assert (verdict.after.value, verdict.after.rows) == (0.5, len(questions))
    assert verdict.regressed
    assert rolled == [NAME]
    assert bench.ask("I lost my card", "after-watch") == "card_lost"
    assert bench.called() == V1_ID
    assert bench.proxy.sample(NAME, "after-watch").model_version == "intents-1"


def test_a_store_that_cannot_be_read_lets_the_call_go_as_the_app_sent_it(
    fake_openai: FakeOpenAI, store: Store
) -> None:
    config = parse_config(yaml(fake_openai), environ={})
    store.ensure_deployment(NAME, "finetuned", "classification")
    add_version(store, NAME, kind=VersionKind.model, name="intents-1", artifact=V1_ID)
    promote_in_store(store, NAME, "intents-1", actor="test")
    clock = Clock()
    down = False

    def flaky(store: Store, name: str) -> ActiveVersion | None:
        if down:
            raise StoreError("cannot reach the store: connection refused")
        return read_active_version(store, name)

    down = True
    model_for = proxy_model_for(config.deployments, VersionCache(store, clock=clock, read=flaky))
    assert model_for(NAME) is None  # nothing known yet: forwarded unchanged, not failed
    assert model_for("some-prompted-bot") is None  # not served by model id: never read

    down = False
    clock.now += 10
    assert model_for(NAME) == ActiveModel("intents-1", V1_ID)
    down = True
    clock.now += 10
    assert model_for(NAME) == ActiveModel("intents-1", V1_ID)  # the last one known
