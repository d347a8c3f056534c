"""Embedding drift on the Banking77 example: ``classifier_cv`` beside ``novelty``.

    python benchmarks/novelty.py [--windows 30] [--rows 400]

The example's reference is its configuration's: the 2,511 training questions of the 20 intents
its model serves (``examples/banking77/data/served-train.csv``). Each window is ``--rows``
questions of Banking77's test split, drawn without replacement, a new seed each time:

- healthy: the 20 intents, in the proportions of the training data;
- unseen-57: a fifth of the rows instead from the 57 intents the model never learnt (all of
  them, a question or two each: new kinds of question spread over many topics);
- unseen-3: a fifth from 3 unseen intents picked at random (one new topic, concentrated).

Both methods run as a check runs them (``monitors.domain.embedding_drift``, default thresholds);
the texts are embedded once, by the default embedder. Detection rates come with Wilson 95%
intervals.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import random
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitors.domain import embedding_drift  # noqa: E402
from monitors.embed import Embedder  # noqa: E402
from monitors.spec import MonitorSpec, Side  # noqa: E402

EXAMPLE = ROOT / "examples" / "banking77"
SCENARIOS = {"healthy": (0.0, 0), "unseen-57": (0.2, 57), "unseen-3": (0.2, 3)}
METHODS = ("classifier_cv", "novelty")


def rows(name: str) -> list[dict[str, str]]:
    with (EXAMPLE / "data" / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def wilson(hits: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z, p = 1.96, hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - spread), min(1.0, centre + spread)


def window(
    pick: random.Random,
    labels: list[str],
    mix: Counter[str],
    questions: dict[str, list[int]],
    share: float,
    unseen_intents: int,
    size: int,
) -> list[int]:
    """Row numbers (into the test split) of one window."""
    new = round(size * share)
    known = [row for label in labels for row in questions[label]]
    weights = [mix[label] / len(questions[label]) for label in labels for _ in questions[label]]
    chosen: set[int] = set()
    while len(chosen) < size - new:
        chosen.add(pick.choices(known, weights=weights)[0])
    unseen = sorted(set(questions) - set(labels))
    pool = [row for label in pick.sample(unseen, unseen_intents) for row in questions[label]]
    return sorted(chosen) + pick.sample(pool, new) if new else sorted(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=30)
    parser.add_argument("--rows", type=int, default=400)
    args = parser.parse_args()

    config = yaml.safe_load((EXAMPLE / "driftd.yaml").read_text(encoding="utf-8"))
    labels = list(config["deployments"][0]["labels"])
    reference_rows = rows("served-train.csv")
    test_rows = rows("test.csv")
    mix = Counter(row["category"] for row in reference_rows)
    questions: dict[str, list[int]] = {}
    for index, row in enumerate(test_rows):
        questions.setdefault(row["category"], []).append(index)

    embedder = Embedder()
    started = time.perf_counter()
    reference = embedder.encode([row["text"] for row in reference_rows])
    test = embedder.encode([row["text"] for row in test_rows])
    embedded = time.perf_counter() - started
    ref_side = Side(pd.DataFrame(index=range(len(reference))), reference, total=len(reference))
    spec = MonitorSpec(task="classification", signals=("embedding",), seed=0)

    found: dict[tuple[str, str], list[float]] = {}
    drifted: dict[tuple[str, str], int] = Counter()
    seconds: dict[str, float] = dict.fromkeys(METHODS, 0.0)
    thresholds: dict[str, float] = {}
    for seed in range(args.windows):
        for scenario, (share, unseen) in SCENARIOS.items():
            pick = random.Random(f"{scenario}-{seed}")
            picked = window(pick, labels, mix, questions, share, unseen, args.rows)
            current = Side(pd.DataFrame(index=range(len(picked))), test[picked], total=len(picked))
            for method in METHODS:
                clock = time.perf_counter()
                result, _ = embedding_drift(
                    ref_side, current, replace(spec, embedding_method=method, seed=seed)
                )
                seconds[method] += time.perf_counter() - clock
                found.setdefault((scenario, method), []).append(float(result.score or 0.0))
                drifted[(scenario, method)] += result.status == "drift"
                thresholds[method] = float(result.threshold or 0.0)

    print(
        f"# benchmarks/novelty.py, {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
        f"{args.windows} windows of {args.rows} rows; reference {len(reference)} rows; "
        f"embedding {len(reference) + len(test)} texts took {embedded:.1f} s"
    )
    print("| scenario | method | drift found | 95% CI | score median (min-max) |")
    print("|---|---|---|---|---|")
    for scenario in SCENARIOS:
        for method in METHODS:
            hits, scores = drifted[(scenario, method)], found[(scenario, method)]
            low, high = wilson(hits, args.windows)
            print(
                f"| {scenario} | {method} | {hits}/{args.windows} | {low:.2f}-{high:.2f} | "
                f"{np.median(scores):.3f} ({min(scores):.3f}-{max(scores):.3f}) |"
            )
    per = args.windows * len(SCENARIOS)
    print(
        "seconds per check of the signal: "
        + ", ".join(f"{method} {seconds[method] / per:.2f}" for method in METHODS)
        + "; thresholds: "
        + ", ".join(f"{method} {thresholds[method]:.3f}" for method in METHODS)
    )


if __name__ == "__main__":
    main()
