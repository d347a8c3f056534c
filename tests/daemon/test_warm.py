"""Warm checks: the background embedder fills the embedding cache with what the next check
draws, behind ingest, without ever making ingest wait; the check then embeds nothing and comes
to the same verdict as a cold one. On SQLite and PostgreSQL, with a real (tiny, int8) model."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.checks import Checker, CheckOutcome
from daemon.config import Config, parse_config
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics
from daemon.store import Store, upgrade
from daemon.store.repository import RowEncoder
from daemon.store.warm import count_embedded, unembedded_draw
from daemon.warm import CHUNK_ROWS, WarmChannel, Warmer, WarmFeed, warm_plans
from tests.daemon.test_checks import INTENTS, KNOWN, NOW, UNSEEN
from tests.helpers.configs import finetuned_config
from tests.helpers.models import save_tiny

MAX_ROWS = 300


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer BERT encoder with MiniLM's tokenizer: a real model, embedded in ms."""
    from transformers import BertConfig, BertModel

    def encoder(tokenizer: Any) -> Any:
        return BertModel(
            BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
            )
        )

    return save_tiny(tmp_path_factory.mktemp("encoder") / "tiny-encoder", encoder)


def warm_config(tmp_path: Path, model: Path, *, warm: bool = True) -> Config:
    text = finetuned_config(
        labels=KNOWN,
        more="    monitor:\n"
        "      window: 6h\n"
        "      min_rows: 50\n"
        f"      max_rows: {MAX_ROWS}\n"
        f"      embedding_model: {model}\n"
        f"      warm: {'true' if warm else 'false'}\n"
        "      signals: [descriptors, embedding, prediction]\n",
    )
    return parse_config(text + f"storage: {{snapshots: {tmp_path / 'snapshots'}}}\n", environ={})


def ingest(writer: Writer, store: Store, cfg: Config, *, batch: int = 100) -> None:
    """A reference window of known intents and a shifted current window, 6 h each before NOW,
    through the ingest pipeline and the writer, as `driftd serve` stores them."""
    pipeline = DeploymentPipeline(cfg.deployments[0])
    encoder = RowEncoder(store.engine.dialect.name)
    deployment_id = store.deployment_ids()["intents"]
    items = []
    for tag, start, intents, count in (
        ("ref", NOW - timedelta(hours=12), KNOWN, 700),
        ("cur", NOW - timedelta(hours=6), KNOWN[:5] + UNSEEN, 700),
    ):
        for i in range(count):
            intent = intents[i % len(intents)]
            texts = INTENTS[intent]
            items.append(
                SampleIn(
                    request_id=f"{tag}-{i}",
                    ts=start + timedelta(seconds=i * 6 * 3600 / count),
                    input=texts[(i // len(intents)) % len(texts)],
                    prediction=intent if intent in KNOWN else KNOWN[0],
                    confidence=0.9,
                )
            )
    futures = []
    for first in range(0, len(items), batch):
        prepared = pipeline.prepare(items[first : first + batch], NOW)
        rows = encoder.encode("intents", deployment_id, prepared.samples)
        futures.append(writer.submit(rows))
    for future in futures:
        future.result(timeout=30)


def filled_store(url: str, cfg: Config, feed: WarmFeed | None) -> Store:
    store = Store.open(url)
    upgrade(store.engine)
    store.ensure_deployment("intents", "finetuned", "classification")
    writer = Writer(store, on_commit=None if feed is None else feed.offer)
    writer.start()
    try:
        ingest(writer, store, cfg)
    finally:
        writer.stop()
    return store


def warm_until_idle(warmer: Warmer, limit: float = 60.0) -> int:
    """Drive the background embedder by hand until a round finds nothing to do."""
    deadline = time.monotonic() + limit
    total = 0
    while time.monotonic() < deadline:
        done = warmer.step()
        if done == 0:
            return total
        total += done
    raise AssertionError("the background embedder did not finish")


def verdict(outcome: CheckOutcome) -> tuple[str, dict[str, bool]]:
    return outcome.result.status, {s.name: s.drifted for s in outcome.result.signals}


def scores(outcome: CheckOutcome) -> dict[str, float | None]:
    return {s.name: s.score for s in outcome.result.signals}


def test_the_background_embedder_fills_the_cache_the_check_then_draws(
    store: Store, db_url: str, tmp_path: Path, tiny_encoder: Path
) -> None:
    cfg = warm_config(tmp_path, tiny_encoder)
    store.ensure_deployment("intents", "finetuned", "classification")
    (plan,) = warm_plans(cfg, store.deployment_ids())
    channel = WarmChannel([plan], capacity=10_000)
    registry = CollectorRegistry()
    metrics = ReplicaMetrics(registry)
    metrics.bind_warmed(channel.warmed_counts)
    try:
        warm = filled_store(db_url, cfg, WarmFeed(channel, metrics))
        checker = Checker(cfg, warm)
        warmer = Warmer(channel, warm, checker.encoder, threading.Lock(), clock=lambda: NOW)
        warmed = warm_until_idle(warmer)
        # Both windows hold more than the cap: ingest's bound is the draw's largest position.
        assert channel.bounds[plan.slot] < 2**31
        model = checker.encoder(plan.model).name
        for start in (NOW - timedelta(hours=12), NOW - timedelta(hours=6)):
            draw = unembedded_draw(
                warm,
                "intents",
                start,
                start + timedelta(hours=6),
                max_rows=MAX_ROWS,
                seed=plan.seed,
                model=model,
            )
            assert draw.missing == []
        # Everything queued before the first sweep is embedded: up to all 1,400 samples for
        # 2 x 300 drawn. Nothing else is.
        assert 2 * MAX_ROWS <= warmed <= 1400
        assert count_embedded(warm, "intents", model) == channel.warmed[plan.slot] == warmed
        assert registry.get_sample_value(
            "driftd_embeddings_warmed_total", {"deployment": "intents"}
        ) == float(warmed)
        assert registry.get_sample_value(
            "driftd_embeddings_skipped_total", {"deployment": "intents", "reason": "queue_full"}
        ) in (None, 0.0)

        outcome = checker.run("intents", now=NOW)
        assert outcome.embedded == 0  # the check found its whole draw embedded
        assert len(outcome.current.samples) == len(outcome.reference.samples) == MAX_ROWS
        assert outcome.result.status == "drift"
        warm.close()
    finally:
        channel.close()


def test_the_verdict_is_the_same_warm_and_cold(tmp_path: Path, tiny_encoder: Path) -> None:
    cfg = warm_config(tmp_path, tiny_encoder)
    cold_cfg = warm_config(tmp_path, tiny_encoder, warm=False)
    assert warm_plans(cold_cfg, {"intents": 1}) == []  # warm: false has no background embedder

    cold = filled_store(f"sqlite:///{tmp_path / 'cold.db'}", cold_cfg, None)
    cold_outcome = Checker(cold_cfg, cold).run("intents", now=NOW)
    assert cold_outcome.embedded == 2 * MAX_ROWS

    probe = Store.open(f"sqlite:///{tmp_path / 'probe.db'}")
    upgrade(probe.engine)
    probe.ensure_deployment("intents", "finetuned", "classification")
    channel = WarmChannel(warm_plans(cfg, probe.deployment_ids()), capacity=10_000)
    probe.close()
    try:
        warm = filled_store(f"sqlite:///{tmp_path / 'probe.db'}", cfg, WarmFeed(channel))
        checker = Checker(cfg, warm)
        warm_until_idle(Warmer(channel, warm, checker.encoder, threading.Lock(), clock=lambda: NOW))
        warm_outcome = checker.run("intents", now=NOW)
    finally:
        channel.close()
    assert warm_outcome.embedded == 0
    assert [s.request_id for s in warm_outcome.current.samples] == [
        s.request_id for s in cold_outcome.current.samples
    ]
    assert verdict(warm_outcome) == verdict(cold_outcome)
    # int8 activations are scaled per batch, and the background embedder's batches are not the
    # cold check's: the vectors differ in their last digits, and so may the embedding score.
    # Every other signal is the very same.
    warm_scores, cold_scores = scores(warm_outcome), scores(cold_outcome)
    assert warm_scores.keys() == cold_scores.keys()
    for name, score in cold_scores.items():
        assert warm_scores[name] == pytest.approx(score, abs=2e-3 if name == "embedding" else 0)


def test_a_full_queue_drops_without_making_ingest_wait_and_the_sweep_catches_up(
    tmp_path: Path, tiny_encoder: Path
) -> None:
    cfg = warm_config(tmp_path, tiny_encoder)
    url = f"sqlite:///{tmp_path / 'driftd.db'}"
    probe = Store.open(url)
    upgrade(probe.engine)
    probe.ensure_deployment("intents", "finetuned", "classification")
    (plan,) = warm_plans(cfg, probe.deployment_ids())
    probe.close()
    # Room for one chunk, and nobody takes it off the queue while ingest runs.
    channel = WarmChannel([plan], capacity=CHUNK_ROWS)
    registry = CollectorRegistry()
    metrics = ReplicaMetrics(registry)
    try:
        started = time.monotonic()
        store = filled_store(url, cfg, WarmFeed(channel, metrics))
        assert time.monotonic() - started < 20  # ingest did not wait on the full queue
        skipped = registry.get_sample_value(
            "driftd_embeddings_skipped_total", {"deployment": "intents", "reason": "queue_full"}
        )
        # Every sample passes the bound before the first sweep; one batch of 100 fit.
        assert skipped == 1400 - 100
        assert channel.dropped[plan.slot] == 1

        checker = Checker(cfg, store)
        warmer = Warmer(channel, store, checker.encoder, threading.Lock(), clock=lambda: NOW)
        warm_until_idle(warmer)
        assert channel.dropped[plan.slot] == 0
        # The queued chunk, then the draws' missing samples found by the sweep.
        assert checker.run("intents", now=NOW).embedded == 0
        store.close()
    finally:
        channel.close()


def test_a_check_waits_for_the_batch_being_embedded_not_for_the_queue(
    tmp_path: Path, tiny_encoder: Path
) -> None:
    """The check and the background embedder share one encoder; the lock the check holds
    stops the embedder between batches, so a check never embeds alongside it."""
    cfg = warm_config(tmp_path, tiny_encoder)
    url = f"sqlite:///{tmp_path / 'driftd.db'}"
    probe = Store.open(url)
    upgrade(probe.engine)
    probe.ensure_deployment("intents", "finetuned", "classification")
    channel = WarmChannel(warm_plans(cfg, probe.deployment_ids()), capacity=10_000)
    probe.close()
    try:
        store = filled_store(url, cfg, WarmFeed(channel))
        checker = Checker(cfg, store)
        lock = threading.Lock()
        warmer = Warmer(channel, store, checker.encoder, lock, batch=32, clock=lambda: NOW)
        with lock:  # a check is running
            runner = threading.Thread(target=warmer.step)
            runner.start()
            runner.join(timeout=2)
            assert runner.is_alive()  # it waits to encode its batch
            assert sum(channel.warmed) == 0
        runner.join(timeout=30)
        assert sum(channel.warmed) == 32
        store.close()
    finally:
        channel.close()


def test_driftd_serve_warms_the_draws_of_what_it_ingests(
    tmp_path: Path, tiny_encoder: Path
) -> None:
    """The whole path in the daemon: ingest's feed, the check worker's embedder, the metric."""
    import httpx

    from tests.helpers.serve import start_driftd
    from tests.helpers.wait import wait_for

    text = finetuned_config(
        labels=KNOWN,
        more="    monitor:\n"
        "      window: 6h\n"
        "      max_rows: 100\n"
        f"      embedding_model: {tiny_encoder}\n"
        "      signals: [embedding]\n",
        storage=f"url: 'sqlite:///{tmp_path / 'driftd.db'}'",
    )
    config = tmp_path / "driftd.yaml"
    config.write_text(text)
    (tmp_path / "model").mkdir()
    server = start_driftd(config, tmp_path, env={"DRIFTD_INGEST_TOKENS": "t"})
    try:
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        questions = [q for intent in KNOWN for q in INTENTS[intent][:30]]
        samples = [
            {"request_id": f"s-{i}", "input": q, "prediction": KNOWN[0]}
            for i, q in enumerate(questions)
        ]
        response = httpx.post(
            f"{base}/v1/deployments/intents/samples",
            json={"samples": samples},
            headers={"Authorization": "Bearer t"},
            timeout=30,
        )
        assert response.status_code == 200, response.text

        def warmed() -> float | None:
            for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
                if line.startswith('driftd_embeddings_warmed_total{deployment="intents"}'):
                    value = float(line.rsplit(" ", 1)[1])
                    return value if value >= 100 else None
            return None

        # The draw of the current window (100 of 300), and no more than what was queued.
        assert 100 <= wait_for(warmed, 120, "the draw embedded", interval=0.5) <= len(samples)
    finally:
        server.stop()
