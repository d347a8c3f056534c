"""Ingest's bulk path (``RowEncoder`` and ``Store.insert_rows``: tuples for SQLite's executemany,
binary COPY through a staging table on PostgreSQL) against the ORM, and under concurrent writers."""

from __future__ import annotations

import random
import threading
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import JSON, Boolean, Text, cast, select

from daemon.store import NewSample, Sample, Store, upgrade
from daemon.store.models import utcnow
from daemon.store.pgcopy import RowFormat
from daemon.store.repository import RowEncoder, draw_for

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2025, 3, 1, 13, 14, 15, 161718, tzinfo=UTC)
AWKWARD = "tab\there, new\nline, cr\r, back\\slash \\N \\x00, quote' \" ünïcødé 🚀 漢字 \u2028"


def awkward_samples() -> list[NewSample]:
    """Every column set, every nullable column NULL, and text that COPY's formats must escape."""
    return [
        NewSample(
            "full",
            START,
            input=AWKWARD,
            input_messages=[{"role": "user", "content": AWKWARD}, {"role": "assistant", "n": 1}],
            output=AWKWARD,
            prediction="card_arrival",
            confidence=0.1 + 0.2,
            probabilities={"card_arrival": 0.93, "lost_card": 0.07, "ünï": 1e-300},
            label="label\twith\ttabs",
            label_ts=datetime(
                1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5))
            ),
            feedback_score=-0.0,
            feedback_kind="thumb",
            feedback_comment="\\\\ two backslashes",
            judge_score=1 / 3,
            descriptors={"input": {"chars": 17, "refusal": False, "x": None}, "nested": [[], {}]},
            embedding=bytes(range(256)) * 6,
            embedding_model="all-MiniLM-L6-v2",
            model_version="m-3",
            prompt_version="p-7",
            latency_ms=412.5,
            tokens_in=2**31 - 1,
            tokens_out=0,
            error="Traceback:\n\tline 1\r\n",
            meta={"region": "eu", "tags": ["a", "b"], "text": AWKWARD},
        ),
        NewSample("nulls", START + timedelta(microseconds=1)),
        NewSample("empty", START - timedelta(days=400), input="", output="", meta={}),
        NewSample(
            "ü\t\\N🚀", datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30)))
        ),
    ]


def read_back(store: Store, deployment_id: int) -> dict[str, dict[str, Any]]:
    """Each stored sample's columns as the ORM reads them, and its JSON columns' stored text."""
    json_columns = [c for c in Sample.__table__.columns if isinstance(c.type, JSON)]
    with store.session(readonly=True) as session:
        found = session.execute(
            select(Sample, *(cast(c, Text).label(f"{c.name}_text") for c in json_columns)).where(
                Sample.deployment_id == deployment_id
            )
        ).all()
    rows = {}
    for sample, *texts in found:
        values = {c.name: getattr(sample, c.key) for c in Sample.__table__.columns}
        values |= {f"{c.name} as text": text for c, text in zip(json_columns, texts, strict=True)}
        del values["id"], values["deployment_id"]
        rows[sample.request_id] = values
    return rows


def test_bulk_rows_read_back_exactly_like_rows_the_orm_wrote(store: Store) -> None:
    store.ensure_deployment("bulk", "prompted", "generation")
    store.ensure_deployment("orm", "prompted", "generation")
    ids = store.deployment_ids()
    samples = awkward_samples()
    encoder = RowEncoder(store.engine.dialect.name)

    result = store.insert_rows([encoder.encode("bulk", ids["bulk"], samples, NOW)])
    with store.session() as session:
        for sample in samples:
            values = {f.name: getattr(sample, f.name) for f in fields(sample)}
            # The ORM path with the draw the bulk path computes for the bulk deployment.
            draw = draw_for("bulk", sample.request_id)
            session.add(Sample(deployment_id=ids["orm"], draw=draw, created_at=NOW, **values))

    assert result[0].new == [s.request_id for s in samples]
    bulk, orm = read_back(store, ids["bulk"]), read_back(store, ids["orm"])
    assert bulk == orm
    full = bulk["full"]
    assert full["input"] == AWKWARD
    assert full["label_ts"] == datetime(1999, 12, 31, 18, 59, 59, 999999, tzinfo=UTC)
    assert full["label_ts"].tzinfo == UTC
    assert full["confidence"] == 0.1 + 0.2  # the double itself, not a rounded text
    assert full["meta"]["text"] == AWKWARD
    nulls = bulk["nulls"]
    assert all(nulls[name] is None for name in ("output", "meta", "embedding", "tokens_in"))
    assert nulls["meta as text"] is None  # SQL NULL, not JSON null
    assert bulk["empty"]["meta"] == {}


def test_a_column_type_without_a_copy_encoding_is_refused() -> None:
    with pytest.raises(TypeError, match="no binary COPY encoding"):
        RowFormat([Boolean()])


def test_concurrent_writers_count_overlapping_request_ids_exactly(db_url: str) -> None:
    """Two stores (as two replicas) insert heavily overlapping request ids, in different orders,
    at the same moment: every id is new for exactly one of them, nothing fails or deadlocks."""
    setup = Store.open(db_url)
    try:
        upgrade(setup.engine)
        setup.ensure_deployment("bot", "prompted", "generation")
        deployment_id = setup.deployment_ids()["bot"]
    finally:
        setup.close()
    universe = [f"r{i}" for i in range(3000)]
    rounds, writers = 6, 2
    barrier = threading.Barrier(writers)
    sent: list[list[str]] = [[] for _ in range(writers)]
    new: list[list[str]] = [[] for _ in range(writers)]
    duplicate: list[list[str]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        store = Store.open(db_url)
        encoder = RowEncoder(store.engine.dialect.name)
        rng = random.Random(writer)
        try:
            for _ in range(rounds):
                batches = []
                for _ in range(3):
                    ids = rng.sample(universe, 400)
                    sent[writer] += ids
                    samples = [NewSample(rid, START, input=rid) for rid in ids]
                    batches.append(encoder.encode("bot", deployment_id, samples, utcnow()))
                barrier.wait(timeout=60)
                for result in store.insert_rows(batches):
                    new[writer] += result.new
                    duplicate[writer] += result.duplicate
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
            barrier.abort()
        finally:
            store.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    everyone = set().union(*map(set, sent))
    assert sorted(new[0] + new[1]) == sorted(everyone)  # each id new once, for one writer
    for writer in range(writers):
        assert sorted(new[writer] + duplicate[writer]) == sorted(sent[writer])
    check = Store.open(db_url)
    try:
        with check.session(readonly=True) as session:
            stored = session.execute(select(Sample.request_id)).scalars().all()
    finally:
        check.close()
    assert sorted(stored) == sorted(everyone)
