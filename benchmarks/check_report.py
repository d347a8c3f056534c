"""The tables ``benchmarks/check.py`` prints: one check's cost beside naive Evidently, the two
tools' verdicts on the same windows, and detection quality with Wilson intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from check_setup import QUALITY_ROWS, Layout

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
