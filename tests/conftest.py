"""Fixtures shared by every test: an isolated database per test, on SQLite and on PostgreSQL.

PostgreSQL tests run against a real server named by ``DRIFTD_TEST_POSTGRES_URL``; each test gets a
database of its own, created for it and dropped afterwards. Where no server is configured or
reachable they are skipped with the reason, except under CI (``CI`` set), where that is a failure:
CI must never pass by skipping half of the store's tests.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from daemon.store import Store, normalize_url, upgrade
from tests import fake_openai as fake_openai_module
from tests.helpers.models import save_tiny

# Set before any test imports transformers or huggingface_hub: a model that is not on disk must
# fail at once with a clear error instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

POSTGRES_URL_ENV = "DRIFTD_TEST_POSTGRES_URL"
POSTGRES_URL_EXAMPLE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _fresh_postgres_database() -> Iterator[str]:
    configured = os.environ.get(POSTGRES_URL_ENV)
    if not configured:
        _unavailable(f"PostgreSQL tests need {POSTGRES_URL_ENV} (e.g. {POSTGRES_URL_EXAMPLE})")
    server = make_url(normalize_url(configured))
    admin = create_engine(
        server,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": 5},
    )
    name = f"driftd_t_{secrets.token_hex(6)}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as error:
        admin.dispose()
        reason = str(getattr(error, "orig", None) or error).strip()
        _unavailable(
            f"PostgreSQL at {server.host}:{server.port or 5432} is unreachable "
            f"({POSTGRES_URL_ENV}): {reason}"
        )
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database that belongs to this test alone."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'driftd.db'}"
    else:
        yield from _fresh_postgres_database()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated, empty store."""
    store = Store.open(db_url)
    upgrade(store.engine)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def deployment(store: Store) -> str:
    """The name of a registered deployment in ``store``."""
    store.ensure_deployment("support-bot", "prompted", "generation")
    return "support-bot"


ClassifierFactory = Callable[[Sequence[str], str], Path]


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> ClassifierFactory:
    """Builds (once per labels and answer) a tiny BERT sequence classifier with MiniLM's
    tokenizer, saved as ``save_pretrained`` does, that labels every input ``answer``: a real
    transformers model for jobs to load, built offline in a second."""
    built: dict[tuple[tuple[str, ...], str], Path] = {}

    def build(labels: Sequence[str], answer: str) -> Path:
        key = (tuple(labels), answer)
        if key in built:
            return built[key]
        import torch
        from transformers import BertConfig, BertForSequenceClassification

        def classifier(tokenizer: Any) -> Any:
            config = BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=128,
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            )
            model = BertForSequenceClassification(config)
            with torch.no_grad():
                model.classifier.weight.zero_()
                model.classifier.bias.copy_(
                    torch.tensor([5.0 if label == answer else 0.0 for label in labels])
                )
            return model

        directory = save_tiny(tmp_path_factory.mktemp("classifier"), classifier)
        built[key] = directory
        return directory

    return build


fake_openai = fake_openai_module.fake_openai  # the fake OpenAI server's fixture, for every test
