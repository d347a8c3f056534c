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
import json
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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config import load_config
from daemon.ingest.describe import DEFAULT_REFUSAL_PHRASES
from daemon.store import Store, upgrade

if TYPE_CHECKING:
    import numpy as np

from check_report import print_agreement, print_cost, print_quality
from check_setup import (
    DESCRIPTOR_SHARE,
    DIMENSIONS_PREFIX,
    EVIDENTLY_AS_SHIPPED,
    NAIVE_EMBEDDING_THRESHOLD,
    QUALITY_ROWS,
    ROOT,
    UNSEEN_SHARE,
    WINDOW,
    Corpus,
    config_text,
    corpus,
    embedding_table,
    fill,
    layouts,
    memory,
    partition,
    preload,
)


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
