from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import StoreError
from daemon.store import Store, make_engine, mask_url, normalize_url, upgrade


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/driftd", "postgresql+psycopg://u:p@db:5432/driftd"),
        ("postgres://u@db/driftd", "postgresql+psycopg://u@db/driftd"),
        ("postgresql+psycopg://u@db/driftd", "postgresql+psycopg://u@db/driftd"),
        ("sqlite:///driftd.db", "sqlite:///driftd.db"),
    ],
)
def test_normalize_url_picks_psycopg_for_postgres(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql+psycopg://driftd:s3cret@db:5432/x",
            "postgresql+psycopg://driftd:***@db:5432/x",
        ),
        ("postgres://driftd:s3cret@db/x", "postgres://driftd:***@db/x"),
        ("sqlite:///driftd.db", "sqlite:///driftd.db"),
        ("not a url://driftd:s3cret@db", "not a url://driftd:***@db"),
        ("driftd:s3cret@db/driftd", "driftd:***@db/driftd"),
    ],
)
def test_mask_url_hides_the_password(given: str, expected: str) -> None:
    assert mask_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://driftd:s3cret@db/driftd", "driftd:s3cret@db/driftd"])
def test_urls_of_other_databases_are_refused(url: str) -> None:
    with pytest.raises(StoreError, match="sqlite:///") as raised:
        make_engine(url)

    assert "s3cret" not in str(raised.value)


def test_sqlite_connections_get_the_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'driftd.db'}", busy_timeout=2.5)
    try:
        with engine.connect() as connection:

            def pragma(name: str) -> object:
                return connection.exec_driver_sql(f"PRAGMA {name}").scalar()

            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == 2500
            assert pragma("foreign_keys") == 1
            assert pragma("synchronous") == 1  # NORMAL
    finally:
        engine.dispose()


def test_sqlite_can_sync_every_commit(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'driftd.db'}", synchronous="full")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.dispose()


def test_relative_sqlite_path_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///driftd.db")
    try:
        upgrade(engine)
    finally:
        engine.dispose()

    assert (tmp_path / "driftd.db").is_file()


def test_unreachable_postgres_names_the_masked_url_and_what_to_check() -> None:
    # Port 1 on the loopback refuses at once: nothing listens there.
    engine = make_engine("postgresql://driftd:s3cret@127.0.0.1:1/driftd")
    try:
        with pytest.raises(StoreError) as raised:
            upgrade(engine)
    finally:
        engine.dispose()

    message = str(raised.value)
    assert "postgresql+psycopg://driftd:***@127.0.0.1:1/driftd" in message
    assert "s3cret" not in message
    assert "server is running" in message


def test_ping_reports_a_missing_sqlite_directory(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'missing' / 'driftd.db'}")
    try:
        with pytest.raises(StoreError, match="directory of the database file exists"):
            store.ping()
    finally:
        store.close()


def test_ping_succeeds_on_a_reachable_store(store: Store) -> None:
    store.ping()
