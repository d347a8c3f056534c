"""Drift of the content itself, found by a domain classifier: input texts and their embeddings.

Both signals train a model to tell reference rows from current rows and score it on rows it did
not learn from. The score is its ROC AUC: 0.5 when the windows cannot be told apart, more when
they can.

- ``text``: Evidently's text content drift on ``input`` (TF-IDF and a linear classifier, trained
  on a random half, scored on the other), ``abs_text_content_drift``, on a seeded draw of at most
  ``text_max_rows`` per side.
- ``embedding``, method ``classifier_cv`` (the default): a logistic regression on the embeddings,
  cross-fitted over 5 folds so that every row is scored by a model that did not see it; the AUC is
  taken over all rows. Method ``evidently_model``: Evidently's ``ModelDriftMethod`` (an
  SGD classifier trained on half, scored on the other half), called directly: the
  ``EmbeddingsDrift`` metric always adds a t-SNE picture, which cost 21 s at 2,000 x 384.

Method ``novelty`` asks another question: how many current rows are unlike anything in the
reference. Each row's nearest reference row (cosine similarity) is found, and the score is the
share of current rows less similar to their nearest neighbour than ``NOVELTY_QUANTILE`` (5%) of
reference rows are to theirs (leave-one-out); the threshold is the share a window from the
reference's own distribution exceeds only 1% of the time (a binomial quantile). A linear domain
classifier needs the new rows to lie in one direction; questions from many new intents do not.
On the Banking77 example (``benchmarks/novelty.py``: reference the 2,511 training questions of its
20 intents, 30 windows of 400 test questions each), ``classifier_cv`` found 12 of 30 windows with
a fifth from the 57 unseen intents and ``novelty`` all 30, neither raising an alarm on 30
healthy windows; with a fifth from 3 unseen intents both found all 30. It does not see a shift
in the mix of familiar content; the classifier does.

The threshold is the AUC a classifier that learnt nothing exceeds only 1% of the time, for the
rows scored: what Evidently's ``bootstrap=True`` options estimate from random predictions, here in
closed form (the AUC's null distribution is the Mann-Whitney U's; 0.542 for 1,000 rows per side
scored half, 0.530 scored whole). 1% and not 5%, because a check's verdict is drift when any of
its signals drifts: at 5% each, two content signals alone raised false alarms on 6% of stable
windows.

Why cross-fitting: on 50 Banking77 windows of 1,000 questions a side, a fifth of the current ones
from 10 intents the reference never saw (``benchmarks/check.py``), Evidently's single split found
47 of the 50 shifted windows at the 5% level and about 46 at 1%; scoring every row out of fold
found all 50 at 1%, with no more false alarms on 50 stable windows. A team that wants a floor on
the effect size instead sets ``thresholds: {embedding: 0.55}``.
"""

from __future__ import annotations

from math import sqrt
from statistics import NormalDist

import numpy as np
import pandas as pd

from monitors import report
from monitors.signal import Outcome, not_run, unavailable, values, verdict
from monitors.spec import MonitorSpec, Side

NULL_QUANTILE = 0.99
TEXT_METHOD = "abs_text_content_drift"
EMBEDDING_METHODS = ("classifier_cv", "evidently_model", "novelty")
NOVELTY_QUANTILE = 0.05
# Rows of the similarity matrix computed at once: 1,000 x 5,000 float32 is 20 MB.
_SIMILARITY_BLOCK = 1000
FOLDS = 5
# Below this, a random half may hold one side only and the classifier cannot be trained at all.
CLASSIFIER_MIN_ROWS = 10

# What TfidfVectorizer raises when no word survives its pruning (tiny or repetitive windows).
_NO_VOCABULARY = ("no terms remain", "empty vocabulary", "max_df corresponds to < documents")


def null_auc_threshold(reference_rows: int, current_rows: int, *, scored: float = 0.5) -> float:
    """The ``NULL_QUANTILE`` of the ROC AUC of random scores on a share ``scored`` of each side's
    rows (a half for a train/test split, all of them when cross-fitted)."""
    left = max(reference_rows * scored, 1.0)
    right = max(current_rows * scored, 1.0)
    spread = sqrt((left + right + 1) / (12 * left * right))
    return 0.5 + NormalDist().inv_cdf(NULL_QUANTILE) * spread


def text_drift(reference: Side, current: Side, spec: MonitorSpec) -> Outcome:
    from evidently.metrics import ValueDrift

    method = f"evidently:{TEXT_METHOD}"
    needed = max(spec.min_rows, CLASSIFIER_MIN_ROWS)
    missing = unavailable("text", "input", reference.frame, current.frame, needed, method=method)
    if missing is not None:
        return missing, None
    ref = _draw(values(reference.frame, "input").astype(str), spec.text_max_rows, spec.seed)
    cur = _draw(values(current.frame, "input").astype(str), spec.text_max_rows, spec.seed + 1)
    threshold = spec.threshold("text", null_auc_threshold(len(ref), len(cur)))
    try:
        snapshot = report.run(
            [ValueDrift(column="input", method=TEXT_METHOD, threshold=threshold)],
            ref.to_frame("input"),
            cur.to_frame("input"),
            {"input": "text"},
        )
    except ValueError as exc:
        if not any(phrase in str(exc) for phrase in _NO_VOCABULARY):
            raise
        return not_run(
            "text",
            "insufficient_data",
            f"the texts have too small a vocabulary for a domain classifier (Evidently: {exc})",
            method=method,
            reference_rows=len(ref),
            current_rows=len(cur),
        ), None
    test = report.value_drifts(snapshot)["input"]
    return verdict(
        "text",
        method,
        score=test.score,
        threshold=test.threshold,
        drifted=test.drifted,
        reference_rows=len(ref),
        current_rows=len(cur),
        details=_details(reference, current, len(ref), len(cur), spec.overrides("text")),
    ), snapshot


def embedding_drift(reference: Side, current: Side, spec: MonitorSpec) -> Outcome:
    from evidently.metrics.embeddings import ModelDriftMethod

    method = {
        "evidently_model": "evidently:embeddings:model",
        "novelty": "driftd:embeddings:novelty",
    }.get(spec.embedding_method, "driftd:embeddings:classifier_cv")
    if reference.embeddings is None or current.embeddings is None:
        side = "reference" if reference.embeddings is None else "current"
        return not_run(
            "embedding", "skipped", f"no embeddings for the {side} window", method=method
        ), None
    ref, cur = _finite_rows(reference.embeddings), _finite_rows(current.embeddings)
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(
            f"reference embeddings have {ref.shape[1]} dimensions and current ones "
            f"{cur.shape[1]}: both windows must be embedded by the same model"
        )
    needed = max(spec.min_rows, CLASSIFIER_MIN_ROWS)
    if min(len(ref), len(cur)) < needed:
        return not_run(
            "embedding",
            "insufficient_data",
            f"{len(ref)} reference and {len(cur)} current rows have embeddings; "
            f"at least {needed} are needed on each side",
            method=method,
            reference_rows=len(ref),
            current_rows=len(cur),
        ), None
    if spec.embedding_method == "evidently_model":
        threshold = spec.threshold("embedding", null_auc_threshold(len(ref), len(cur)))
        names = [f"e{i}" for i in range(ref.shape[1])]
        score, drifted, _ = ModelDriftMethod(threshold=threshold)(
            pd.DataFrame(cur, columns=names), pd.DataFrame(ref, columns=names)
        )
    elif spec.embedding_method == "novelty":
        threshold = spec.threshold("embedding", null_novelty_threshold(len(cur)))
        score, cutoff = novelty_share(ref, cur)
        drifted = score > threshold
    else:
        threshold = spec.threshold("embedding", null_auc_threshold(len(ref), len(cur), scored=1))
        score = crossfit_auc(ref, cur, spec.seed)
        drifted = score > threshold
    details = _details(reference, current, len(ref), len(cur), spec.overrides("embedding"))
    details["dimensions"] = int(ref.shape[1])
    if spec.embedding_method == "novelty":
        details["score"] = (
            "share of current rows less like their nearest reference row than "
            f"{NOVELTY_QUANTILE:.0%} of reference rows are like theirs"
        )
        details["threshold_kind"] = (
            "configured"
            if spec.overrides("embedding")
            else "99th percentile of that share for rows like the reference"
        )
        details["similarity_cutoff"] = round(cutoff, 4)
    return verdict(
        "embedding",
        method,
        score=float(score),
        threshold=threshold,
        drifted=bool(drifted),
        reference_rows=len(ref),
        current_rows=len(cur),
        details=details,
    ), None


def crossfit_auc(reference: np.ndarray, current: np.ndarray, seed: int) -> float:
    """ROC AUC of a logistic regression telling ``current`` rows from ``reference`` rows, each
    row scored by the model of the ``FOLDS``-fold split that left it out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = np.vstack([reference, current])
    side = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed % 2**32)
    scores = cross_val_predict(
        LogisticRegression(max_iter=300), rows, side, cv=folds, method="decision_function"
    )
    return float(roc_auc_score(side, scores))


def novelty_share(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """The share of ``current`` rows whose nearest ``reference`` row is less similar (cosine)
    than the ``NOVELTY_QUANTILE`` of the reference rows' similarities to their own nearest other
    reference row; and that similarity cutoff."""
    ref, cur = _unit(reference), _unit(current)
    own = _nearest(ref, ref, leave_one_out=True)
    cutoff = float(np.quantile(own, NOVELTY_QUANTILE))
    return float(np.mean(_nearest(cur, ref) < cutoff)), cutoff


def null_novelty_threshold(current_rows: int) -> float:
    """The share of ``current_rows`` rows drawn like the reference that exceeds the novelty
    cutoff only 1% of the time: the ``NULL_QUANTILE`` of Binomial(n, ``NOVELTY_QUANTILE``) / n."""
    from scipy.stats import binom

    n = max(current_rows, 1)
    return float(binom.ppf(NULL_QUANTILE, n, NOVELTY_QUANTILE)) / n


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _nearest(rows: np.ndarray, among: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
    """Each of ``rows``' highest cosine similarity to a row of ``among`` (unit rows); with
    ``leave_one_out`` (``rows`` is ``among``) a row's similarity to itself does not count."""
    best = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _SIMILARITY_BLOCK):
        block = rows[start : start + _SIMILARITY_BLOCK] @ among.T
        if leave_one_out:
            index = np.arange(len(block))
            block[index, start + index] = -np.inf
        best[start : start + len(block)] = block.max(axis=1)
    return best


def _draw(texts: pd.Series, cap: int, seed: int) -> pd.Series:
    """At most ``cap`` of ``texts``, a uniform draw reproducible from ``seed``."""
    if len(texts) <= cap:
        return texts.reset_index(drop=True)
    picked = np.random.default_rng(seed).choice(len(texts), size=cap, replace=False)
    return texts.iloc[np.sort(picked)].reset_index(drop=True)


def _finite_rows(embeddings: np.ndarray) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float32)
    return matrix[np.isfinite(matrix).all(axis=1)]


def _details(
    reference: Side, current: Side, ref_rows: int, cur_rows: int, configured: bool
) -> dict[str, object]:
    return {
        "score": "ROC AUC of a domain classifier (0.5: indistinguishable)",
        "threshold_kind": "configured" if configured else "99th percentile of a random AUC",
        "window_rows": {
            "reference": reference.total if reference.total is not None else reference.rows,
            "current": current.total if current.total is not None else current.rows,
        },
        "drawn_rows": {"reference": ref_rows, "current": cur_rows},
    }
