"""One check's cost beside a naive Evidently run, and detection quality on Banking77.

    python benchmarks/check.py [--sizes 10000,100000,1000000] [--windows 50]
                               [--skip-naive-above 100000] [--naive-limit 10]
                               [--naive-memory 8] [--agree-at 100000] [--workdir DIR]

Part 1, cost of one full check. A SQLite store is filled with Banking77 questions (stored form:
redacted and described by the ingest pipeline), one deployment per size with a reference window
and a current window of N samples each; the current window is shifted (20% of its traffic from
10 intents the reference never saw). driftd's check is the real path, ``Checker.run`` with the
default monitor settings (capped draws of 5,000, text drift on 1,000): the first check embeds
the drawn samples, a second check of the same window reads them from the cache. The naive run
reads every sample of both windows and hands them all to Evidently: descriptors computed by
Evidently from the raw text, ``DataDriftPreset`` on the text and the descriptors, and
``EmbeddingsDrift``, no cap. Its embeddings are looked up from a table computed once for the
run, so the naive time leaves out the cost of embedding 2N texts (shown beside it at the rate
measured here). At the ``--agree-at`` size a stable window is checked too, and both tools'
verdicts are compared on both windows. Every measurement runs in its own child process, which
reports its wall time and peak RSS (VmHWM); imports are done before the clock starts. A naive
run is stopped past ``--naive-limit`` minutes or ``--naive-memory`` GiB of resident memory (the
machine is shared; at 1M samples per window it needs more than 8 GiB).

Part 2, detection quality: ``--windows`` times, a reference of 1,000 samples over 40 intents
(a new seeded choice of intents each time) is compared with a shifted current window (800 from
the 40, 200 from 10 unseen intents) and with a stable one (1,000 from the 40, rows disjoint
from the reference), by driftd's ``run_check`` (text and embedding signals) and by Evidently's
default ``DataDriftPreset`` on the raw text. Power and false-alarm rates come with Wilson 95%
intervals.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config import Config, load_config
from daemon.ingest.describe import DEFAULT_REFUSAL_PHRASES
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.schema import SampleIn
from daemon.store import NewSample, Store, upgrade
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


def child_embed(spec: dict[str, Any]) -> dict[str, Any]:
    """Embed every distinct corpus text once, with driftd's default embedder."""
    import numpy as np

    from monitors.embed import Embedder

    folder = Path(spec["folder"])
    texts: list[str] = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
    started = time.perf_counter()
    embedder = Embedder()
    loaded = time.perf_counter()
    vectors = embedder.encode(texts)
    done = time.perf_counter()
    np.save(folder / "embeddings.npy", vectors)
    return {
        "texts": len(texts),
        "load_s": loaded - started,
        "encode_s": done - loaded,
        "texts_per_s": len(texts) / (done - loaded),
        "model": embedder.name,
    }


class TimedEncoder:
    """driftd's embedder, loaded on first use as a check loads it, with its seconds counted."""

    def __init__(self, model: str, seconds: dict[str, float]) -> None:
        from monitors.encoders import LazyEmbedder

        self._inner = LazyEmbedder(model)
        self._seconds = seconds

    @property
    def name(self) -> str:
        return self._inner.name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not self._inner.loaded:
            started = time.perf_counter()
            self._inner.encode([])  # loads the model; an empty batch encodes nothing
            self._seconds["load"] = self._seconds.get("load", 0.0) + time.perf_counter() - started
        started = time.perf_counter()
        try:
            return self._inner.encode(texts)
        finally:
            self._seconds["encode"] = self._seconds.get("encode", 0.0) + (
                time.perf_counter() - started
            )
            self._seconds["texts"] = self._seconds.get("texts", 0.0) + len(set(texts))


def child_driftd(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``Checker.run``, as the scheduler's worker runs it."""
    from daemon.checks import Checker

    preload()
    config = load_config(spec["config"])
    before = memory()
    seconds: dict[str, float] = {}
    with Store.open(config.storage.url) as store:
        checker = Checker(config, store, lambda model: TimedEncoder(model, seconds))
        started = time.perf_counter()
        outcome = checker.run(
            spec["deployment"], now=datetime.fromisoformat(spec["now"]), window=WINDOW
        )
        wall = time.perf_counter() - started
    result = outcome.result
    return {
        "wall_s": wall,
        "status": result.status,
        "signals": {
            s.name: {"status": s.status, "score": s.score, "threshold": s.threshold}
            for s in result.signals
        },
        "signal_s": sum(result.timings.values()),
        "timings": result.timings,
        "load_s": seconds.get("load", 0.0),
        "encode_s": seconds.get("encode", 0.0),
        "texts_embedded": int(seconds.get("texts", 0.0)),
        "drawn": [len(outcome.reference.samples), len(outcome.current.samples)],
        "totals": [outcome.reference.total, outcome.current.total],
        "rss_before_mib": before["VmRSS"],
        "peak_rss_mib": memory()["VmHWM"],
        "load": os.getloadavg()[0],
    }


def naive_descriptors() -> list[Any]:
    """Evidently's own descriptors for the six driftd computes at ingest."""
    from evidently.descriptors import (
        Contains,
        IsValidJSON,
        NonLetterCharacterPercentage,
        SentenceCount,
        TextLength,
        WordCount,
    )

    return [
        TextLength("input", alias="chars"),
        WordCount("input", alias="words"),
        SentenceCount("input", alias="sentences"),
        NonLetterCharacterPercentage("input", alias="non_letter_pct"),
        IsValidJSON("input", alias="is_json"),
        Contains(
            "input", items=list(DEFAULT_REFUSAL_PHRASES), case_sensitive=False, alias="refusal"
        ),
    ]


NAIVE_DESCRIPTORS = ("chars", "words", "sentences", "non_letter_pct", "is_json", "refusal")


def test_failures(snapshot: Any) -> dict[str, bool]:
    """Evidently's verdict per ``ValueDrift`` column: its test failed (drift) or passed."""
    failed: dict[str, bool] = {}
    for test in snapshot.dict()["tests"]:
        params = test["metric_config"]["params"]
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            status = str(getattr(test["status"], "value", test["status"])).upper()
            failed[params["column"]] = status == "FAIL"
    return failed


def metric_values(snapshot: Any) -> dict[str, Any]:
    """Each metric's value, by its type and column (``ValueDrift:input``, ``EmbeddingsDrift``)."""
    found: dict[str, Any] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        column = config.get("column")
        found[f"{kind}:{column}" if column else kind] = metric["value"]
    return found


def child_naive(spec: dict[str, Any]) -> dict[str, Any]:
    """Every sample of both windows, straight to Evidently: no cap, no cache."""
    import numpy as np
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset
    from sqlalchemy import select

    from daemon.store.models import Sample

    preload()
    config = load_config(spec["config"])
    table, position = embedding_table(Path(spec["folder"]))
    before = memory()
    now = datetime.fromisoformat(spec["now"])
    names = [f"{DIMENSIONS_PREFIX}{i}" for i in range(table.shape[1])]
    definition = DataDefinition(text_columns=["input"], embeddings={"input": names})
    marks: dict[str, float] = {}
    started = time.perf_counter()
    with Store.open(config.storage.url) as store:
        deployment_id = store.deployment_ids()[spec["deployment"]]
        texts = []
        with store.engine.connect() as connection:
            for begin in (now - 2 * WINDOW, now - WINDOW):
                query = select(Sample.input).where(
                    Sample.deployment_id == deployment_id,
                    Sample.ts >= begin,
                    Sample.ts < begin + WINDOW,
                )
                texts.append([str(text) for text in connection.execute(query).scalars()])
    marks["read"] = time.perf_counter()
    datasets = []
    for side in texts:
        vectors = table[np.fromiter((position[text] for text in side), dtype=np.int64)]
        frame = pd.DataFrame(vectors, columns=names)
        frame.insert(0, "input", side)
        datasets.append(
            Dataset.from_pandas(frame, data_definition=definition, descriptors=naive_descriptors())
        )
        del frame, vectors
    marks["descriptors"] = time.perf_counter()
    report = Report(
        [
            DataDriftPreset(columns=["input", *NAIVE_DESCRIPTORS]),
            EmbeddingsDrift(embeddings_name="input"),
        ],
        include_tests=True,
    )
    with warnings_quiet():
        snapshot = report.run(datasets[1], datasets[0])
    marks["report"] = time.perf_counter()
    failed = test_failures(snapshot)
    values = metric_values(snapshot)
    embedding_score = float(values["EmbeddingsDrift"])
    descriptor_share = sum(failed[name] for name in NAIVE_DESCRIPTORS) / len(NAIVE_DESCRIPTORS)
    verdicts = {
        "text": failed["input"],
        "descriptors": descriptor_share >= DESCRIPTOR_SHARE,
        "embedding": embedding_score > NAIVE_EMBEDDING_THRESHOLD,
    }
    return {
        "wall_s": marks["report"] - started,
        "read_s": marks["read"] - started,
        "descriptors_s": marks["descriptors"] - marks["read"],
        "report_s": marks["report"] - marks["descriptors"],
        "rows": [len(side) for side in texts],
        "verdicts": verdicts,
        "drift": any(verdicts.values()),
        "text_score": float(values["ValueDrift:input"]),
        "embedding_score": embedding_score,
        "descriptor_share": descriptor_share,
        "rss_before_mib": before["VmRSS"],
        "peak_rss_mib": memory()["VmHWM"],
        "load": os.getloadavg()[0],
    }


@contextmanager
def warnings_quiet() -> Iterator[None]:
    """Evidently's and scikit-learn's convergence warnings, on every run, say nothing here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quality_windows(
    data: Corpus, windows: int
) -> list[tuple[int, list[int], list[int], list[int]]]:
    """Per window: its seed, reference rows, shifted current rows, stable current rows."""
    out = []
    for w in range(windows):
        seed = 1000 + w
        known_intents, unseen_intents = partition(data.categories, seed)
        rng = random.Random(seed)
        known = data.rows_of(known_intents)
        rng.shuffle(known)
        unseen = rng.sample(data.rows_of(unseen_intents), round(QUALITY_ROWS * UNSEEN_SHARE))
        reference = known[:QUALITY_ROWS]
        rest = known[QUALITY_ROWS:]  # disjoint from the reference
        stable = rest[:QUALITY_ROWS]
        shifted = rest[QUALITY_ROWS : 2 * QUALITY_ROWS - len(unseen)] + unseen
        out.append((seed, reference, shifted, stable))
    return out


def memoize_random_auc_percentile() -> None:
    """Make Evidently's default text drift test affordable over many windows, unchanged.

    At up to 1,000 reference rows the preset's text test compares the domain classifier's AUC
    with the 95th percentile of 1,000 AUCs of random scores, recomputed three times per report
    (seconds each). That percentile is a pure function of the test split's labels, which
    Evidently draws with a fixed seed, so every window of the same size gets the same value.
    Remembering it changes no verdict; the time per window is measured before this is done.
    """
    import numpy as np
    from evidently.legacy.utils import data_drift_utils

    original = data_drift_utils.roc_auc_random_classifier_percentile
    memo: dict[tuple[bytes, str, float, int, int], float] = {}

    def remembered(y_test: Any, p_value: float = 0.05, iter_num: int = 1000, seed: int = 42) -> Any:
        labels = np.asarray(y_test)
        key = (labels.tobytes(), labels.dtype.str, p_value, iter_num, seed)
        if key not in memo:
            memo[key] = original(y_test, p_value=p_value, iter_num=iter_num, seed=seed)
        return memo[key]

    data_drift_utils.roc_auc_random_classifier_percentile = remembered


def child_quality(spec: dict[str, Any]) -> dict[str, Any]:
    """Power and false alarms of driftd's signals and of Evidently's default preset."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from daemon.checks import frame
    from monitors import MonitorSpec, Side, run_check

    preload()
    config = load_config(spec["config"])
    data = corpus(config)
    table, position = embedding_table(Path(spec["folder"]))
    definition = DataDefinition(text_columns=["input"])

    def side(rows: list[int]) -> tuple[Any, np.ndarray]:
        samples = [data.samples[row] for row in rows]
        return frame(samples), table[[position[s.input] for s in samples]]

    outcomes: list[dict[str, Any]] = []
    windows = quality_windows(data, spec["windows"])
    for number, (seed, reference_rows, shifted_rows, stable_rows) in enumerate(windows):
        if number == EVIDENTLY_AS_SHIPPED:
            memoize_random_auc_percentile()
        ref_frame, ref_vectors = side(reference_rows)
        reference = Side(ref_frame, ref_vectors)
        for kind, rows in (("shifted", shifted_rows), ("stable", stable_rows)):
            cur_frame, cur_vectors = side(rows)
            started = time.perf_counter()
            result = run_check(
                reference,
                Side(cur_frame, cur_vectors),
                MonitorSpec(task="generation", signals=("text", "embedding"), seed=seed),
            )
            driftd_s = time.perf_counter() - started
            started = time.perf_counter()
            with warnings_quiet():
                snapshot = Report([DataDriftPreset()], include_tests=True).run(
                    Dataset.from_pandas(cur_frame[["input"]], data_definition=definition),
                    Dataset.from_pandas(ref_frame[["input"]], data_definition=definition),
                )
            evidently_s = time.perf_counter() - started
            share = float(metric_values(snapshot)["DriftedColumnsCount"]["share"])
            outcomes.append(
                {
                    "kind": kind,
                    "driftd": result.status == "drift",
                    "text": result.signal("text").drifted,
                    "embedding": result.signal("embedding").drifted,
                    "failed": [s.name for s in result.signals if s.status == "failed"],
                    "evidently": share >= DESCRIPTOR_SHARE,
                    "driftd_s": driftd_s,
                    "evidently_s": evidently_s,
                    "as_shipped": number < EVIDENTLY_AS_SHIPPED,
                }
            )
        print(f"  quality window {len(outcomes) // 2}/{spec['windows']}", file=sys.stderr)
    return {"outcomes": outcomes}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "embed": child_embed,
    "driftd": child_driftd,
    "naive": child_naive,
    "quality": child_quality,
}


def run_child(
    spec: dict[str, Any],
    logs: Path,
    *,
    timeout: float | None = None,
    max_rss_mib: float | None = None,
) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return what it reports.

    A child that runs past ``timeout`` seconds, or whose resident set passes ``max_rss_mib``
    (the machine is shared), is killed; the result then says why in ``stopped``.
    """
    log = logs / f"{spec['label']}.log"
    print(f"  {spec['label']} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    with (
        log.open("w", encoding="utf-8") as errors,
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True
        ) as child,
    ):
        stopped = None
        while True:
            try:
                out, _ = child.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.perf_counter() - started
                rss = resident_mib(child.pid)
                if timeout is not None and elapsed > timeout:
                    stopped = f"did not finish in {timeout / 60:g} min"
                elif max_rss_mib is not None and rss > max_rss_mib:
                    stopped = (
                        f"stopped after {elapsed:.0f} s at the {max_rss_mib / 1024:g} GiB "
                        "memory cap"
                    )
                if stopped is not None:
                    child.kill()
                    child.communicate()
                    print(f"  {spec['label']}: {stopped}", file=sys.stderr)
                    return {"stopped": stopped}
    if child.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise RuntimeError(f"{spec['label']} failed (exit {child.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(f"  {spec['label']}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return result


def resident_mib(pid: int) -> float:
    """A running process's resident set, MiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


# --- the run and its tables --------------------------------------------------------------------


def wilson(hits: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    z = 1.96
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits / n:.2f} ({hits}/{n}; {low:.2f}-{high:.2f})"


def seconds(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def drifted_signals(run: dict[str, Any]) -> str:
    names = [name for name, s in run["signals"].items() if s["status"] == "drift"]
    return ", ".join(names) or "none"


def embed_rate(first: dict[str, Any]) -> float:
    """Texts per second of a first check's encoding: the rate the naive run would have had."""
    return float(first["texts_embedded"]) / max(float(first["encode_s"]), 1e-9)


def print_cost(
    plans: Sequence[Layout],
    driftd: dict[int, tuple[dict[str, Any], dict[str, Any]]],
    naive: dict[int, dict[str, Any] | None],
    skip_above: int,
) -> None:
    print("### One check: driftd beside a naive Evidently run (shifted window)\n")
    print(
        "| samples per window | driftd 1st check (embeds its draws), s "
        "| driftd 2nd check (cached), s | naive Evidently (embeddings given), s "
        "| naive / driftd 2nd | naive / driftd 1st | naive + embedding 2N texts (est.), s "
        "| that / driftd 1st | peak RSS MiB: driftd 1st / 2nd / naive |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for plan in plans:
        first, second = driftd[plan.size]
        run = naive.get(plan.size)
        if run is None:
            cells = [f"not run (above --skip-naive-above {skip_above:,})", "", "", "", ""]
            rss = "-"
        elif "stopped" in run:
            cells = [str(run["stopped"]), "", "", "", ""]
            rss = "-"
        else:
            with_embedding = run["wall_s"] + 2 * plan.size / embed_rate(first)
            cells = [
                seconds(run["wall_s"]),
                f"{run['wall_s'] / second['wall_s']:.1f}x",
                f"{run['wall_s'] / first['wall_s']:.1f}x",
                seconds(with_embedding),
                f"{with_embedding / first['wall_s']:.1f}x",
            ]
            rss = f"{run['peak_rss_mib']:,.0f}"
        print(
            f"| {plan.size:,} | {seconds(first['wall_s'])} | {seconds(second['wall_s'])} | "
            f"{' | '.join(cells)} | {first['peak_rss_mib']:,.0f} / "
            f"{second['peak_rss_mib']:,.0f} / {rss} |"
        )
    print(
        "\n(est.: the naive run's time plus embedding all 2N texts of both windows at the rate "
        "driftd's first check of that size encoded at; the load average shows how busy the "
        "shared machine was.)"
    )
    print("\n### driftd's check, where the time goes\n")
    print(
        "| samples per window | check | drawn ref / cur | texts embedded (distinct) "
        "| model load, s | encode, s (texts/s) | signals, s | store, frames, rest, s | total, s "
        "| RSS before / peak, MiB | load avg | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for plan in plans:
        for label, run in zip(("1st", "2nd"), driftd[plan.size], strict=True):
            rest = run["wall_s"] - run["load_s"] - run["encode_s"] - run["signal_s"]
            encode = f"{run['encode_s']:.1f}"
            if run["texts_embedded"]:
                encode += f" ({embed_rate(run):,.0f})"
            print(
                f"| {plan.size:,} | {label} | {run['drawn'][0]:,} / {run['drawn'][1]:,} | "
                f"{run['texts_embedded']:,} | {run['load_s']:.1f} | {encode} | "
                f"{run['signal_s']:.1f} | {rest:.1f} | {seconds(run['wall_s'])} | "
                f"{run['rss_before_mib']:,.0f} / {run['peak_rss_mib']:,.0f} | "
                f"{run['load']:.1f} | {run['status']} ({drifted_signals(run)}) |"
            )
    print("\n### Naive Evidently run, where the time goes\n")
    print(
        "| samples per window | read both windows, s | Evidently descriptors, s "
        "| DataDriftPreset + EmbeddingsDrift, s | total, s | RSS before / peak, MiB | load avg |"
    )
    print("|---|---|---|---|---|---|---|")
    for plan in plans:
        run = naive.get(plan.size)
        if run is None or "stopped" in run:
            status = "not run" if run is None else str(run["stopped"])
            print(f"| {plan.size:,} | {status} | | | | | |")
            continue
        print(
            f"| {plan.size:,} | {run['read_s']:.1f} | {seconds(run['descriptors_s'])} | "
            f"{seconds(run['report_s'])} | {seconds(run['wall_s'])} | "
            f"{run['rss_before_mib']:,.0f} / {run['peak_rss_mib']:,.0f} | {run['load']:.1f} |"
        )


def print_agreement(
    size: int, driftd: dict[str, dict[str, Any]], naive: dict[str, dict[str, Any] | None]
) -> None:
    print(f"\n### Same verdicts at {size:,} samples per window\n")
    print(
        "| current window | driftd verdict (drifted signals) | naive Evidently: text AUC, "
        "embedding AUC, drifted descriptors | naive verdict | agree |"
    )
    print("|---|---|---|---|---|")
    for kind in ("shifted", "stable"):
        ours = driftd[kind]
        theirs = naive.get(kind)
        if theirs is None or "stopped" in theirs:
            missing = "not run" if theirs is None else str(theirs["stopped"])
            print(f"| {kind} | {ours['status']} ({drifted_signals(ours)}) | {missing} | | |")
            continue
        parts = [name for name, hit in theirs["verdicts"].items() if hit]
        verdict = f"{'drift' if theirs['drift'] else 'ok'} ({', '.join(parts) or 'none'})"
        agree = (ours["status"] == "drift") == theirs["drift"]
        print(
            f"| {kind} | {ours['status']} ({drifted_signals(ours)}) | "
            f"{theirs['text_score']:.3f}, {theirs['embedding_score']:.3f}, "
            f"{theirs['descriptor_share']:.0%} | {verdict} | {'yes' if agree else 'NO'} |"
        )


def print_quality(outcomes: list[dict[str, Any]], texts_per_s: float) -> None:
    shifted = [o for o in outcomes if o["kind"] == "shifted"]
    stable = [o for o in outcomes if o["kind"] == "stable"]
    failures = sum(bool(o["failed"]) for o in outcomes)
    print(
        f"\n### Detection quality on Banking77: {len(shifted)} shifted and {len(stable)} stable "
        f"windows of {QUALITY_ROWS:,} against {QUALITY_ROWS:,}\n"
    )
    print("| detector | power (shifted flagged) | false alarms (stable flagged) | s per window |")
    print("|---|---|---|---|")
    rows = (
        ("driftd: text signal", "text", "driftd_s"),
        ("driftd: embedding signal", "embedding", "driftd_s"),
        ("driftd: check verdict (either)", "driftd", "driftd_s"),
        ("Evidently DataDriftPreset, raw text", "evidently", "evidently_s"),
    )
    for label, key, clock in rows:
        power = sum(o[key] for o in shifted)
        alarms = sum(o[key] for o in stable)
        timed = [o for o in outcomes if o["as_shipped"]] if key == "evidently" else outcomes
        per_window = sum(o[clock] for o in timed) / len(timed)
        timing = f"{per_window:.2f}" if key in ("driftd", "evidently") else "(in the verdict's)"
        print(f"| {label} | {rate(power, len(shifted))} | {rate(alarms, len(stable))} | {timing} |")
    remembered = [o["evidently_s"] for o in outcomes if not o["as_shipped"]]
    if remembered:
        print(
            f"\nEvidently's time per window is over the first {len(outcomes) - len(remembered)} "
            f"comparisons, as shipped; with its random-AUC percentile remembered (same verdicts) "
            f"the others took {sum(remembered) / len(remembered):.2f} s each."
        )
    print(
        f"\ndriftd's time per window has the embeddings precomputed; embedding a new window of "
        f"{QUALITY_ROWS:,} texts costs about {QUALITY_ROWS / texts_per_s:.1f} s more at the "
        f"rate measured in this run. Signals that failed: {failures} windows."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--skip-naive-above", type=int, default=100_000)
    parser.add_argument(
        "--naive-limit", type=float, default=10.0, help="minutes a naive run may take"
    )
    parser.add_argument(
        "--naive-memory",
        type=float,
        default=8.0,
        help="GiB of resident memory a naive run may use before it is stopped (shared machine)",
    )
    parser.add_argument("--agree-at", type=int, default=100_000)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the run's files there (default: a temporary folder), and reuse the "
        "embedding table it holds from an earlier run",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s})
    agree_at = args.agree_at if args.agree_at in sizes else None
    naive_caps = {"timeout": args.naive_limit * 60, "max_rss_mib": args.naive_memory * 1024}
    began = time.perf_counter()
    with ExitStack() as stack:
        if args.workdir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftd-check-")))
        else:
            folder = args.workdir.resolve()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "bench.db").unlink(missing_ok=True)
        logs = folder / "logs"
        logs.mkdir(exist_ok=True)
        config_path = folder / "driftd.yaml"
        config_path.write_text(
            config_text(sizes, folder / "bench.db", folder / "snapshots"), encoding="utf-8"
        )
        config = load_config(config_path)
        data = corpus(config)
        texts = json.dumps(data.texts)
        common = {"config": str(config_path), "folder": str(folder)}
        earlier = folder / "embed.json"
        if earlier.exists() and (folder / "texts.json").read_text(encoding="utf-8") == texts:
            embedded = json.loads(earlier.read_text(encoding="utf-8"))
        else:
            (folder / "texts.json").write_text(texts, encoding="utf-8")
            embedded = run_child({"kind": "embed", "label": "embed-corpus", **common}, logs)
            earlier.write_text(json.dumps(embedded), encoding="utf-8")
        texts_per_s = float(embedded["texts_per_s"])

        plans = layouts(sizes, agree_at)
        driftd: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        naive: dict[int, dict[str, Any] | None] = {}
        agreement: dict[str, dict[str, Any]] = {}
        naive_agreement: dict[str, dict[str, Any] | None] = {}
        filled, fill_s = 0, 0.0
        if plans:
            with Store.open(config.storage.url) as store:
                upgrade(store.engine)
                filled, fill_s = fill(store, data, plans)
        for plan in plans:
            run = {**common, "deployment": plan.deployment, "now": plan.shifted_now.isoformat()}
            first = run_child({"kind": "driftd", "label": f"driftd-{plan.size}-1st", **run}, logs)
            second = run_child({"kind": "driftd", "label": f"driftd-{plan.size}-2nd", **run}, logs)
            driftd[plan.size] = (first, second)
            naive[plan.size] = (
                run_child(
                    {"kind": "naive", "label": f"naive-{plan.size}", **run}, logs, **naive_caps
                )
                if plan.size <= args.skip_naive_above
                else None
            )
            if plan.stable_now is not None:
                agreement["shifted"] = first
                naive_agreement["shifted"] = naive[plan.size]
                stable = {**run, "now": plan.stable_now.isoformat()}
                agreement["stable"] = run_child(
                    {"kind": "driftd", "label": f"driftd-{plan.size}-stable", **stable}, logs
                )
                naive_agreement["stable"] = (
                    run_child(
                        {"kind": "naive", "label": f"naive-{plan.size}-stable", **stable},
                        logs,
                        **naive_caps,
                    )
                    if plan.size <= args.skip_naive_above
                    else None
                )
        quality = (
            run_child(
                {"kind": "quality", "label": "quality", "windows": args.windows, **common}, logs
            )
            if args.windows > 0
            else None
        )

    print(
        f"\n{datetime.now(UTC):%Y-%m-%d}; {platform.machine()}, {_cores()} cores; "
        f"Python {platform.python_version()}; whole run {(time.perf_counter() - began) / 60:.1f} "
        f"min. Embedder {embedded['model']}: {embedded['texts']:,} distinct Banking77 texts in "
        f"{embedded['encode_s']:.0f} s ({texts_per_s:,.0f} texts/s, model load "
        f"{embedded['load_s']:.1f} s)."
    )
    if plans:
        print(
            f"Store filled with {filled:,} samples in {fill_s:.0f} s ({filled / fill_s:,.0f}/s).\n"
        )
        print_cost(plans, driftd, naive, args.skip_naive_above)
    if agree_at is not None:
        print_agreement(agree_at, agreement, naive_agreement)
    if quality is not None:
        print_quality(quality["outcomes"], texts_per_s)


def _cores() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
