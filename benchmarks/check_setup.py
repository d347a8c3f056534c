"""What ``benchmarks/check.py`` measures on: the Banking77 corpus in its stored form, the store
filled with one deployment per size, the child processes' memory readings and the embedding
table computed once per run."""

from __future__ import annotations

import csv
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import Config
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.store import NewSample, Store
from daemon.store.repository import RowEncoder

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples/banking77/data"
START = datetime(2026, 11, 1, tzinfo=UTC)
WINDOW = timedelta(days=1)
KNOWN_INTENTS = 40
UNSEEN_INTENTS = 10
UNSEEN_SHARE = 0.2
QUALITY_ROWS = 1000
PARTITION_SEED = 77
FILL_CHUNK = 50_000
CORPUS_DEPLOYMENT = "corpus"
DIMENSIONS_PREFIX = "e"
# Evidently's EmbeddingsDrift default: ModelDriftMethod, ROC AUC above 0.55 (no bootstrap from
# 1,000 reference rows on).
NAIVE_EMBEDDING_THRESHOLD = 0.55
DESCRIPTOR_SHARE = 0.5
# Quality windows whose Evidently run is timed as shipped, before its random-AUC percentile is
# remembered (see memoize_random_auc_percentile).
EVIDENTLY_AS_SHIPPED = 3


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Banking77 (train and test), one stored-form sample per row, and the distinct inputs."""

    categories: list[str]
    samples: list[NewSample]
    texts: list[str]  # distinct stored inputs, in the order of the embedding table
    text_of_row: list[int]  # row -> position in ``texts``

    def rows_of(self, intents: Sequence[str]) -> list[int]:
        wanted = set(intents)
        return [row for row, category in enumerate(self.categories) if category in wanted]


def config_text(sizes: Sequence[int], database: Path, snapshots: Path) -> str:
    """driftd.yaml for the run: one prompted generation deployment per size, defaults elsewhere."""
    deployments = [
        {
            "name": name,
            "kind": "prompted",
            "task": "generation",
            "prompt": {"model": "gpt-4o-mini", "system": "You help bank customers."},
        }
        for name in [CORPUS_DEPLOYMENT, *(deployment_name(size) for size in sizes)]
    ]
    config = {
        "storage": {"url": f"sqlite:///{database}", "snapshots": str(snapshots)},
        "deployments": deployments,
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def deployment_name(size: int) -> str:
    return f"size-{size}"


def corpus(config: Config) -> Corpus:
    """Every Banking77 question through the ingest pipeline (redaction, descriptors)."""
    texts: list[str] = []
    categories: list[str] = []
    for part in ("train", "test"):
        with (DATA / f"{part}.csv").open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                texts.append(row["text"])
                categories.append(row["category"])
    items = [SampleIn(request_id=f"b77-{i}", input=text) for i, text in enumerate(texts)]
    prepared = DeploymentPipeline(config.deployment(CORPUS_DEPLOYMENT)).prepare(items, START)
    assert len(prepared.samples) == len(texts), "the corpus deployment must keep every sample"
    position: dict[str, int] = {}
    text_of_row = [position.setdefault(s.input, len(position)) for s in prepared.samples]
    return Corpus(categories, prepared.samples, list(position), text_of_row)


def partition(categories: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """A seeded choice of the reference's 40 intents and 10 others it never sees."""
    intents = sorted(set(categories))
    chosen = random.Random(seed).sample(intents, KNOWN_INTENTS + UNSEEN_INTENTS)
    return chosen[:KNOWN_INTENTS], chosen[KNOWN_INTENTS:]


def window_rows(
    size: int, shifted: bool, known: Sequence[int], unseen: Sequence[int], rng: random.Random
) -> list[int]:
    """Corpus rows of one stored window: drawn with replacement, unseen intents 20% if shifted."""
    novel = round(size * UNSEEN_SHARE) if shifted else 0
    rows = rng.choices(known, k=size - novel) + rng.choices(unseen, k=novel)
    rng.shuffle(rows)
    return rows


@dataclass(frozen=True)
class Layout:
    """Where each size's windows are: a check at ``now`` compares the window ending there with
    the one before it (the default reference, ``previous_window``)."""

    size: int
    shifted_now: datetime
    stable_now: datetime | None  # only at the agreement size

    @property
    def deployment(self) -> str:
        return deployment_name(self.size)


def layouts(sizes: Sequence[int], agree_at: int | None) -> list[Layout]:
    """Windows from START: [stable, shifted], or [stable, stable, shifted] at the agreement
    size, where the stable check compares the second window with the first."""
    plans = []
    for size in sizes:
        if size == agree_at:
            plans.append(Layout(size, START + 3 * WINDOW, START + 2 * WINDOW))
        else:
            plans.append(Layout(size, START + 2 * WINDOW, None))
    return plans


def fill(store: Store, data: Corpus, plans: Sequence[Layout]) -> tuple[int, float]:
    """Store every window of every size; rows and seconds."""
    known_intents, unseen_intents = partition(data.categories, PARTITION_SEED)
    known, unseen = data.rows_of(known_intents), data.rows_of(unseen_intents)
    encoder = RowEncoder(store.engine.dialect.name)
    created = datetime.now(UTC)
    total = 0
    started = time.perf_counter()
    for plan in plans:
        deployment_id = store.ensure_deployment(plan.deployment, "prompted", "generation")
        windows = 3 if plan.stable_now is not None else 2
        rng = random.Random(plan.size)
        for k in range(windows):
            shifted = k == windows - 1
            rows = window_rows(plan.size, shifted, known, unseen, rng)
            begin = START + k * WINDOW
            step = WINDOW / plan.size
            for offset in range(0, plan.size, FILL_CHUNK):
                chunk = [
                    replace(
                        data.samples[row],
                        request_id=f"w{k}-{offset + i}",
                        ts=begin + step * (offset + i),
                    )
                    for i, row in enumerate(rows[offset : offset + FILL_CHUNK])
                ]
                store.insert_rows([encoder.encode(plan.deployment, deployment_id, chunk, created)])
                total += len(chunk)
        print(f"  filled {plan.deployment}: {windows} windows of {plan.size:,}", file=sys.stderr)
    return total, time.perf_counter() - started


# --- children: each measurement in a process of its own ----------------------------------------


def memory() -> dict[str, float]:
    """This process's current and peak resident set, MiB."""
    found: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    return found


def preload() -> None:
    """What a check worker has loaded before it runs a check."""
    import evidently
    import evidently.descriptors
    import evidently.metrics
    import evidently.presets  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import monitors.check
    import monitors.embed  # noqa: F401


def embedding_table(folder: Path) -> tuple[np.ndarray, dict[str, int]]:
    import numpy as np

    texts: list[str] = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
    return np.load(folder / "embeddings.npy"), {text: i for i, text in enumerate(texts)}
