"""Drift of tabular columns, with Evidently's per-column tests.

Two shapes:

- ``descriptors``: many columns at once (the text descriptors computed at ingest), tested the
  way Evidently's DataDriftPreset does (p-values up to 1,000 reference rows, distances above) and
  scored by the share of drifted columns, ``DriftedColumnsCount``; drift at half of them,
  Evidently's default. The descriptors move together (a longer text has more characters, words
  and sentences), so one real change in length already drifts half of the six. Numeric columns
  always get the numeric test (K-S, or normed Wasserstein above 1,000 rows): Evidently's own
  choice treats a count with at most five values as categories and runs a chi-square
  goodness-of-fit against the reference's shares, where a value the reference never had gives
  p = 0 (three five-sentence questions in a Banking77 window of 1,000 did).
- one column (``prediction``, ``confidence``, ``latency``, the judge's score): a distance with a
  stable unit, so that a configured threshold means the same at 80 rows and at 5,000 — normed
  Wasserstein for numbers, Jensen-Shannon for labels, Evidently's default threshold 0.1. A
  distance between two finite samples is never zero, though, and with few rows or many labels its
  sampling noise alone can pass 0.1 (77 intents at 1,000 rows per side: about 0.14). So the
  default threshold is raised to the distance's 95th percentile under no change, estimated by
  permuting the pooled rows (a seeded draw): drift must be both large and more than noise.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from monitors import report
from monitors.report import ColumnKind
from monitors.signal import Outcome, not_run, unavailable, values, verdict
from monitors.spec import (
    BOOLEAN_DESCRIPTORS,
    OUTPUT_DESCRIPTORS,
    REGEX_DESCRIPTOR_PREFIX,
    TEXT_DESCRIPTORS,
    MonitorSpec,
)

DESCRIPTOR_SHARE = 0.5
SMALL_REFERENCE = 1000  # Evidently's switch from p-values to distances
DISTANCE_THRESHOLD = 0.1
DISTANCE_METHODS: dict[str, str] = {"num": "wasserstein", "cat": "jensenshannon"}
PERMUTATIONS = 200
NOISE_QUANTILE = 0.95


def descriptor_columns(frame: pd.DataFrame, prefix: str) -> dict[str, ColumnKind]:
    """The descriptor columns of ``frame`` with ``prefix`` (``input_``/``output_``), typed."""
    found: dict[str, ColumnKind] = {}
    for column in frame.columns:
        if not isinstance(column, str) or not column.startswith(prefix):
            continue
        base = column[len(prefix) :]
        if base in TEXT_DESCRIPTORS:
            found[column] = "cat" if base in BOOLEAN_DESCRIPTORS else "num"
        elif base.startswith(REGEX_DESCRIPTOR_PREFIX):
            found[column] = "cat"
    return found


def descriptor_drift(
    name: str, reference: pd.DataFrame, current: pd.DataFrame, spec: MonitorSpec
) -> Outcome:
    """Share of drifted descriptor columns: inputs for ``descriptors``, outputs for the other."""
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    method = "evidently:drifted_columns_share"
    prefix = "output_" if name == OUTPUT_DESCRIPTORS else "input_"
    if name == OUTPUT_DESCRIPTORS:
        # A missing output is described as zeros; those rows say nothing about outputs.
        reference, current = (
            frame[frame["output"].notna()] if "output" in frame.columns else frame
            for frame in (reference, current)
        )
    ref_columns, cur_columns = (descriptor_columns(f, prefix) for f in (reference, current))
    columns: dict[str, ColumnKind] = {}
    dropped: dict[str, str] = {}
    for column, kind in ref_columns.items():
        if column not in cur_columns:
            dropped[column] = "not in the current window"
        elif reference[column].isna().all() or current[column].isna().all():
            dropped[column] = "no values on one side"
        else:
            columns[column] = kind
    rows = (len(reference), len(current))
    if not columns:
        return not_run(
            name,
            "skipped",
            f"no {prefix}* descriptor columns on both sides",
            method=method,
            reference_rows=rows[0],
            current_rows=rows[1],
        ), None
    if min(rows) < spec.min_rows:
        return not_run(
            name,
            "insufficient_data",
            f"{rows[0]} reference and {rows[1]} current rows with {prefix}* descriptors; "
            f"at least {spec.min_rows} are needed on each side",
            method=method,
            reference_rows=rows[0],
            current_rows=rows[1],
        ), None
    share = spec.threshold(name, DESCRIPTOR_SHARE)
    names = list(columns)
    numeric = "ks" if rows[0] <= SMALL_REFERENCE else "wasserstein"
    methods = {column: numeric for column, kind in columns.items() if kind == "num"}
    snapshot = report.run(
        [DriftedColumnsCount(columns=names, drift_share=share, per_column_method=methods)]
        + [ValueDrift(column=column, method=methods.get(column)) for column in names],
        _typed(reference[names], columns),
        _typed(current[names], columns),
        columns,
    )
    tests = report.value_drifts(snapshot)
    score = float(report.metric_value(snapshot, "DriftedColumnsCount")["share"])
    details: dict[str, Any] = {
        "columns": {
            column: {
                "method": test.method,
                "score": test.score,
                "threshold": test.threshold,
                "drifted": test.drifted,
            }
            for column, test in tests.items()
        },
        "drifted_columns": [column for column, test in tests.items() if test.drifted],
    }
    if dropped:
        details["dropped_columns"] = dropped
    return verdict(
        name,
        method,
        score=score,
        threshold=share,
        drifted=score >= share,
        reference_rows=rows[0],
        current_rows=rows[1],
        details=details,
    ), snapshot


def _typed(frame: pd.DataFrame, columns: dict[str, ColumnKind]) -> pd.DataFrame:
    # Columns may arrive as objects with None mixed in; Evidently wants one dtype per column.
    out = frame.copy()
    for column, kind in columns.items():
        if kind == "num":
            out[column] = pd.to_numeric(out[column], errors="coerce")
        else:
            out[column] = out[column].map(lambda value: None if pd.isna(value) else str(value))
    return out


def distance_drift(
    name: str,
    column: str,
    kind: Literal["num", "cat"],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: MonitorSpec,
) -> Outcome:
    """Drift of one column as an Evidently distance held to a noise-aware threshold."""
    method = f"evidently:{DISTANCE_METHODS[kind]}"
    missing = unavailable(name, column, reference, current, spec.min_rows, method=method)
    if missing is not None:
        return missing, None
    ref, cur = column_values(reference, current, column, kind)
    configured = spec.thresholds.get(name)
    test, noise, snapshot = distance_test(
        column, kind, ref, cur, seed=spec.seed, threshold=configured
    )
    details: dict[str, Any] = {
        "column": column,
        "noise_threshold": noise,
        "threshold_kind": "configured" if configured is not None else "max(0.1, noise)",
        "reference": summary(ref, kind),
        "current": summary(cur, kind),
    }
    return verdict(
        name,
        method,
        score=test.score,
        threshold=test.threshold,
        drifted=test.drifted,
        reference_rows=len(ref),
        current_rows=len(cur),
        details=details,
    ), snapshot


def column_values(
    reference: pd.DataFrame, current: pd.DataFrame, column: str, kind: Literal["num", "cat"]
) -> tuple[pd.Series, pd.Series]:
    """The non-missing values of ``column`` on each side, as floats or as label strings."""
    ref, cur = values(reference, column), values(current, column)
    if kind == "num":
        return ref.astype(float), cur.astype(float)
    return ref.astype(str), cur.astype(str)


def distance_test(
    column: str,
    kind: Literal["num", "cat"],
    ref: pd.Series,
    cur: pd.Series,
    *,
    seed: int,
    threshold: float | None = None,
) -> tuple[report.ColumnTest, float, Any]:
    """Evidently's distance of ``column``, its noise level, and the report's snapshot.

    Held to ``threshold`` when given, else to the larger of Evidently's default and the noise.
    """
    from evidently.metrics import ValueDrift

    noise = noise_threshold(kind, ref, cur, seed=seed)
    limit = threshold if threshold is not None else max(DISTANCE_THRESHOLD, noise)
    snapshot = report.run(
        [ValueDrift(column=column, method=DISTANCE_METHODS[kind], threshold=limit)],
        ref.to_frame(column),
        cur.to_frame(column),
        {column: kind},
    )
    return report.value_drifts(snapshot)[column], noise, snapshot


def noise_threshold(
    kind: Literal["num", "cat"],
    ref: pd.Series,
    cur: pd.Series,
    *,
    seed: int,
    permutations: int = PERMUTATIONS,
) -> float:
    """The distance's ``NOISE_QUANTILE`` under no change: both sides drawn from the pooled rows.

    The same distances Evidently computes (Wasserstein normed by the reference's standard
    deviation; Jensen-Shannon between label shares), on seeded permutations of the pooled rows.
    """
    rng = np.random.default_rng(seed)
    n_ref = len(ref)
    if kind == "num":
        from scipy.stats import wasserstein_distance

        pooled = np.concatenate([ref.to_numpy(float), cur.to_numpy(float)])
        draws = np.empty(permutations)
        for i in range(permutations):
            shuffled = rng.permutation(pooled)
            left, right = shuffled[:n_ref], shuffled[n_ref:]
            draws[i] = wasserstein_distance(left, right) / max(float(np.std(left)), 0.001)
    else:
        from scipy.spatial.distance import jensenshannon

        codes, _ = pd.factorize(pd.concat([ref, cur], ignore_index=True))
        labels = int(codes.max()) + 1
        left_counts = np.empty((permutations, labels))
        right_counts = np.empty((permutations, labels))
        for i in range(permutations):
            shuffled = rng.permutation(codes)
            left_counts[i] = np.bincount(shuffled[:n_ref], minlength=labels)
            right_counts[i] = np.bincount(shuffled[n_ref:], minlength=labels)
        draws = jensenshannon(left_counts, right_counts, axis=1)
    return float(np.quantile(draws, NOISE_QUANTILE))


def summary(series: pd.Series, kind: Literal["num", "cat"]) -> dict[str, Any]:
    if kind == "num":
        return {
            "mean": float(series.mean()),
            "p50": float(series.quantile(0.5)),
            "p95": float(series.quantile(0.95)),
        }
    shares = series.value_counts(normalize=True).head(10)
    return {"labels": int(series.nunique()), "top": {str(k): float(v) for k, v in shares.items()}}
