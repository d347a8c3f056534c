"""What ``benchmarks/retune.py`` runs: Banking77 questions chosen and split for a run, and the
child processes it times (a driftd job, the plain Trainer script), with their progress lines."""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "banking77" / "data"
MIN_TRAIN_ROWS = 100  # intents with fewer training questions are left out of the choice
GOLDEN_PER_INTENT = 10
VALIDATION_SHARE = 0.1  # the finetune job's default (retune.data.validation_share)
CHILD_TIMEOUT_S = 1800.0


# --- data --------------------------------------------------------------------------------------


def by_intent(split: str) -> dict[str, list[str]]:
    """Banking77's questions of one split, per intent, in file order."""
    rows: dict[str, list[str]] = defaultdict(list)
    with (DATA / f"{split}.csv").open(encoding="utf-8", newline="") as source:
        for row in csv.DictReader(source):
            rows[row["category"]].append(row["text"])
    return dict(rows)


def shuffled(rows: dict[str, list[str]], seed: int) -> dict[str, list[str]]:
    """Each intent's questions in a seeded order of their own."""
    out = {}
    for intent in sorted(rows):
        texts = list(rows[intent])
        random.Random(f"{seed}:{intent}").shuffle(texts)
        out[intent] = texts
    return out


def choose_intents(train: dict[str, list[str]], count: int, seed: int) -> list[str]:
    """``count`` intents with at least ``MIN_TRAIN_ROWS`` training questions, seeded."""
    candidates = sorted(intent for intent, texts in train.items() if len(texts) >= MIN_TRAIN_ROWS)
    if count > len(candidates):
        raise SystemExit(
            f"{count} intents asked for; Banking77 has {len(candidates)} with "
            f"{MIN_TRAIN_ROWS}+ training questions"
        )
    random.Random(seed).shuffle(candidates)
    return candidates[:count]


def round_robin(
    texts: dict[str, list[str]], intents: Sequence[str], count: int, skip: int = 0
) -> list[dict[str, str]]:
    """``count`` labelled examples taken in turn from each intent, after its first ``skip``."""
    taken: list[dict[str, str]] = []
    depth = skip
    while len(taken) < count:
        if all(depth >= len(texts[intent]) for intent in intents):
            raise SystemExit(f"the intents have too few questions for {count} examples")
        for intent in intents:
            if depth < len(texts[intent]) and len(taken) < count:
                taken.append({"input": texts[intent][depth], "label": intent})
        depth += 1
    return taken


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def split_validation(
    rows: list[dict[str, str]], seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A seeded tenth of ``rows`` for validation, the rest for training."""
    ordered = list(rows)
    random.Random(f"{seed}:validation").shuffle(ordered)
    cut = round(len(ordered) * VALIDATION_SHARE)
    return ordered[cut:], ordered[:cut]


# --- child processes ---------------------------------------------------------------------------


@dataclass
class Process:
    """One child process as the parent saw it."""

    wall_s: float
    cpu_s: float
    load: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    """Each stdout line with its arrival, seconds after the start."""


def run_process(command: list[str], log: Path, label: str) -> Process:
    """Run ``command`` from the repository's root, timing it; stderr goes to ``log``.

    Children run one at a time, so the CPU time of waited-for children that the parent gains
    meanwhile is this child's. A child past ``CHILD_TIMEOUT_S`` is killed by its pid.
    """
    print(f"  {label} ...", file=sys.stderr, flush=True)
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with (
        log.open("w", encoding="utf-8") as errors,
        subprocess.Popen(
            command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=errors, text=True
        ) as child,
    ):
        watchdog = threading.Timer(CHILD_TIMEOUT_S, child.kill)
        watchdog.start()
        try:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append((time.perf_counter() - started, line.rstrip("\n")))
            child.wait()
        finally:
            watchdog.cancel()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("a", encoding="utf-8") as errors:
        errors.write("\n--- stdout ---\n" + "".join(f"{t:8.2f} {text}\n" for t, text in lines))
    if child.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise RuntimeError(f"{label} failed (exit {child.returncode}); log {log}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"  {label}: {wall:.0f} s", file=sys.stderr, flush=True)
    return Process(wall_s=wall, cpu_s=cpu, load=load, lines=lines)


def run_job(
    kind: str, spec: dict[str, Any], folder: Path, label: str
) -> tuple[dict[str, Any], Process]:
    """Run a driftd job as the daemon does, ``python -m retrain KIND --spec``; its result."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "job.json"
    spec_path.write_text(json.dumps({**spec, "output_dir": str(folder / "out")}), encoding="utf-8")
    process = run_process(
        [sys.executable, "-m", "retrain", kind, "--spec", str(spec_path)], folder / "job.log", label
    )
    result: dict[str, Any] = json.loads((folder / "out" / "result.json").read_text())
    return result, process


def plain_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning script one writes from transformers' documentation, and nothing more.

    Same base, data, labels and settings as the job gets; no validation, no checkpoints
    (``save_strategy="no"``), transformers' defaults elsewhere. The model is saved at the end,
    as any script that is meant to be used does.
    """
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(spec["seed"])
    lines = Path(spec["train_file"]).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    labels: list[str] = spec["labels"]
    index = {label: i for i, label in enumerate(labels)}
    tokenizer: Any = AutoTokenizer.from_pretrained(spec["base_model"])
    model: Any = AutoModelForSequenceClassification.from_pretrained(
        spec["base_model"],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=index,
    )
    encoded = tokenizer(
        [row["input"] for row in rows], truncation=True, max_length=spec["max_length"]
    )
    dataset = [
        {**{key: values[i] for key, values in encoded.items()}, "labels": index[row["label"]]}
        for i, row in enumerate(rows)
    ]
    arguments = TrainingArguments(
        output_dir=str(Path(spec["output_dir"]) / "checkpoints"),
        num_train_epochs=spec["epochs"],
        max_steps=spec.get("max_steps") or -1,
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        seed=spec["seed"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=arguments, train_dataset=dataset, processing_class=tokenizer
    )
    outcome = trainer.train()
    trainer.save_model(str(Path(spec["output_dir"]) / "model"))
    return {
        "train_samples_per_second": float(outcome.metrics["train_samples_per_second"]),
        "train_runtime_s": float(outcome.metrics["train_runtime"]),
        "global_step": int(trainer.state.global_step),
        "train_loss": float(outcome.metrics["train_loss"]),
    }


def checkpoint_seconds(lines: Sequence[tuple[float, str]]) -> float:
    """Time the job spent saving checkpoints, from its progress lines.

    The trainer saves right after the evaluation that ends an epoch, and the job prints a line
    at the end of each; the gap between them is the save.
    """
    total = 0.0
    for (before, _), (after, text) in itertools.pairwise(lines):
        if text.startswith("train: checkpoint saved"):
            total += after - before
    return total
