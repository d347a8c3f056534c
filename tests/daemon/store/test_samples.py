from __future__ import annotations

import threading
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, event, func, select

from daemon.errors import StoreError
from daemon.store import NewSample, Sample, Store
from daemon.store.repository import DRAW_MODULUS, draw_for

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def evenly_spread(count: int, prefix: str = "r") -> list[NewSample]:
    """One sample a second from START on."""
    return [
        NewSample(f"{prefix}{i}", START + timedelta(seconds=i), input=f"question {i}")
        for i in range(count)
    ]


def stored_rows(store: Store) -> int:
    with store.session(readonly=True) as session:
        return session.execute(select(func.count()).select_from(Sample)).scalar_one()


def test_capped_window_is_a_reproducible_uniform_draw(store: Store, deployment: str) -> None:
    result = store.insert_samples(deployment, evenly_spread(10_000))
    assert len(result.new) == 10_000
    assert result.duplicate == []
    end = START + timedelta(seconds=10_000)

    window = store.read_window(deployment, START, end, max_rows=500, seed=7)

    assert window.total == 10_000
    assert len(window.samples) == 500
    assert all(START <= s.ts < end for s in window.samples)
    assert [s.ts for s in window.samples] == sorted(s.ts for s in window.samples)
    ids = [s.id for s in window.samples]
    again = store.read_window(deployment, START, end, max_rows=500, seed=7)
    assert [s.id for s in again.samples] == ids
    other = store.read_window(deployment, START, end, max_rows=500, seed=8)
    assert {s.id for s in other.samples} != set(ids)
    midpoint = START + timedelta(seconds=5_000)
    first_half = sum(s.ts < midpoint for s in window.samples) / len(window.samples)
    assert 0.4 <= first_half <= 0.6


def test_window_counts_start_inclusive_end_exclusive(store: Store, deployment: str) -> None:
    store.insert_samples(deployment, evenly_spread(100))
    start, end = START + timedelta(seconds=25), START + timedelta(seconds=75)

    window = store.read_window(deployment, start, end, max_rows=1_000, seed=1)

    assert window.total == 50
    assert [s.request_id for s in window.samples] == [f"r{i}" for i in range(25, 75)]


def test_window_holds_only_its_deployment(store: Store, deployment: str) -> None:
    store.ensure_deployment("classifier", "finetuned", "classification")
    store.insert_samples(deployment, evenly_spread(10))
    store.insert_samples("classifier", evenly_spread(30))

    window = store.read_window(deployment, START, START + timedelta(hours=1), max_rows=100, seed=0)

    assert window.total == 10
    assert len(window.samples) == 10


def test_window_draw_uses_the_deployment_ts_index(store: Store, deployment: str) -> None:
    store.insert_samples(deployment, evenly_spread(5_000))
    statements: list[tuple[str, Any]] = []

    def record(
        _conn: Connection, _cursor: Any, statement: str, parameters: Any, *_rest: Any
    ) -> None:
        if "FROM samples" in statement:
            statements.append((statement, parameters))

    with store.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("ANALYZE samples")
            connection.commit()
    event.listen(store.engine, "before_cursor_execute", record)
    try:
        store.read_window(deployment, START, START + timedelta(seconds=50), max_rows=10, seed=3)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)

    assert len(statements) == 2  # the count and the draw
    explain = "EXPLAIN QUERY PLAN " if store.engine.dialect.name == "sqlite" else "EXPLAIN "
    with store.engine.connect() as connection:
        for statement, parameters in statements:
            plan = " ".join(
                str(row[-1]) for row in connection.exec_driver_sql(explain + statement, parameters)
            )
            assert "ix_samples_deployment_id_ts" in plan, plan


def test_resent_batch_is_all_duplicates(store: Store, deployment: str) -> None:
    batch = evenly_spread(50)
    store.insert_samples(deployment, batch)

    result = store.insert_samples(deployment, batch)

    assert result.new == []
    assert result.duplicate == [s.request_id for s in batch]
    assert stored_rows(store) == 50


def test_mixed_batch_counts_new_and_duplicate(store: Store, deployment: str) -> None:
    store.insert_samples(deployment, [NewSample("known", START)])
    batch = [
        NewSample("a", START),
        NewSample("known", START),
        NewSample("a", START + timedelta(seconds=1)),
        NewSample("b", START),
        NewSample("known", START),
    ]

    result = store.insert_samples(deployment, batch)

    assert result.new == ["a", "b"]
    assert result.duplicate == ["known", "a", "known"]
    assert stored_rows(store) == 3
    window = store.read_window(deployment, START, START + timedelta(hours=1), max_rows=10, seed=0)
    first_a = next(s for s in window.samples if s.request_id == "a")
    assert first_a.ts == START  # the first occurrence is the one stored


def test_unknown_deployment_is_named(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown deployment 'nowhere'"):
        store.insert_samples("nowhere", [NewSample("a", START)])
    with pytest.raises(StoreError, match="unknown deployment 'nowhere'"):
        store.read_window("nowhere", START, START + timedelta(hours=1), max_rows=10, seed=0)


def test_timezones_round_trip_as_utc(store: Store, deployment: str) -> None:
    paris = timezone(timedelta(hours=2))
    ts = datetime(2025, 3, 1, 14, 30, 15, 123456, tzinfo=paris)
    labelled = datetime(2025, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=-5)))
    store.insert_samples(deployment, [NewSample("tz", ts, label="yes", label_ts=labelled)])

    window = store.read_window(deployment, START, START + timedelta(days=2), max_rows=10, seed=0)

    (sample,) = window.samples
    assert sample.ts == ts
    assert sample.ts.tzinfo == UTC
    assert sample.ts == datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert sample.label_ts == labelled
    assert sample.label_ts is not None
    assert sample.label_ts.tzinfo == UTC
    assert sample.created_at.tzinfo == UTC


def test_naive_datetimes_are_refused(store: Store, deployment: str) -> None:
    with pytest.raises(ValueError, match="has no timezone"):
        NewSample("naive", datetime(2025, 3, 1, 12, 0))
    with pytest.raises(ValueError, match="has no timezone"):
        store.read_window(
            deployment, datetime(2025, 3, 1), datetime(2025, 3, 2), max_rows=10, seed=0
        )


def test_every_field_round_trips(store: Store, deployment: str) -> None:
    sample = NewSample(
        "full",
        START,
        input="Où est ma carte ?",
        input_messages=[{"role": "user", "content": "Où est ma carte ?"}],
        output="Elle arrive demain.",
        prediction="card_arrival",
        confidence=0.93,
        probabilities={"card_arrival": 0.93, "lost_card": 0.07},
        label="card_arrival",
        label_ts=START + timedelta(hours=1),
        feedback_score=1.0,
        feedback_kind="thumbs",
        judge_score=0.8,
        descriptors={"length": 17, "refusal": False},
        embedding=bytes(range(256)) * 6,
        embedding_model="all-MiniLM-L6-v2",
        model_version="m-3",
        prompt_version="p-7",
        latency_ms=412.5,
        tokens_in=12,
        tokens_out=7,
        error=None,
        meta={"region": "eu", "tags": ["a", "b"]},
    )
    store.insert_samples(deployment, [sample])

    window = store.read_window(deployment, START, START + timedelta(hours=2), max_rows=1, seed=0)

    (stored,) = window.samples
    for name in (f.name for f in fields(NewSample)):
        assert getattr(stored, name) == getattr(sample, name), name
    assert stored.draw == draw_for(deployment, "full")
    assert 0 <= stored.draw < DRAW_MODULUS


def test_draw_depends_on_deployment_and_request() -> None:
    assert draw_for("a", "r1") == draw_for("a", "r1")
    assert draw_for("a", "r1") != draw_for("b", "r1")
    assert draw_for("a", "r1") != draw_for("a", "r2")


def test_concurrent_ingest_and_reads_all_succeed(store: Store, deployment: str) -> None:
    writers, batches, size = 4, 5, 200
    errors: list[BaseException] = []
    start = threading.Barrier(writers + 1)

    def ingest(writer: int) -> None:
        try:
            start.wait()
            for batch in range(batches):
                samples = evenly_spread(size, prefix=f"w{writer}b{batch}-")
                assert len(store.insert_samples(deployment, samples).new) == size
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    def read() -> None:
        try:
            start.wait()
            for seed in range(20):
                store.read_window(
                    deployment, START, START + timedelta(hours=1), max_rows=50, seed=seed
                )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=ingest, args=(w,)) for w in range(writers)]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert stored_rows(store) == writers * batches * size
