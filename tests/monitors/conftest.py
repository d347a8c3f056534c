"""Windows of real traffic for the monitors tests: Banking77 questions, described and embedded.

Descriptors come from the daemon's ``Describer`` (what ingest stores) and embeddings from
``monitors.embed.Embedder`` (what checks use). Encoding is the slow part, so the texts of every
window are embedded once per session and shared.

The intent-shift scenario: 40 intents the reference knows, 10 it never saw. The reference is
1,000 questions over the 40; the stable window 1,000 other questions over the same 40; the
shifted window 800 of those plus 200 questions from the 10 unseen intents (20% of its traffic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daemon.ingest.describe import Describer
from monitors import Side
from monitors.embed import Embedder

DATA = Path(__file__).resolve().parents[2] / "examples" / "banking77" / "data"
SCENARIO_SEED = 4
SEEN_INTENTS = 40
UNSEEN_INTENTS = 10
WINDOW = 1000
UNSEEN_SHARE = 0.2

Describe = Callable[[Sequence[str | None], str], pd.DataFrame]


@pytest.fixture(scope="session")
def banking77() -> pd.DataFrame:
    """Banking77's training questions: columns ``text`` and ``category``."""
    return pd.read_csv(DATA / "train.csv")


@pytest.fixture(scope="session")
def describe() -> Describe:
    """Descriptor columns of texts, as ingest stores them, prefixed ``input_`` or ``output_``."""
    describer = Describer()

    def columns(texts: Sequence[str | None], prefix: str) -> pd.DataFrame:
        rows = [describer.describe(text) for text in texts]
        return pd.DataFrame(rows, columns=list(describer.columns)).add_prefix(prefix)

    return columns


def question_frame(rows: pd.DataFrame, describe: Describe) -> pd.DataFrame:
    """A classification window of Banking77 ``rows``: questions, descriptors, true intents."""
    texts = rows["text"].tolist()
    frame = pd.DataFrame({"input": texts, "output": [None] * len(texts)})
    frame["label"] = rows["category"].to_numpy()
    return pd.concat([frame, describe(texts, "input_")], axis=1)


@pytest.fixture(scope="session")
def intent_windows(banking77: pd.DataFrame, describe: Describe) -> dict[str, Side]:
    """The intent-shift scenario: sides ``reference``, ``stable`` and ``shifted``."""
    rng = np.random.default_rng(SCENARIO_SEED)
    intents = rng.permutation(sorted(banking77["category"].unique()))
    seen, unseen = intents[:SEEN_INTENTS], intents[SEEN_INTENTS : SEEN_INTENTS + UNSEEN_INTENTS]
    known = rng.permutation(np.flatnonzero(banking77["category"].isin(seen).to_numpy()))
    novel = rng.choice(
        np.flatnonzero(banking77["category"].isin(unseen).to_numpy()),
        size=int(WINDOW * UNSEEN_SHARE),
        replace=False,
    )
    reference = known[:WINDOW]
    stable = known[WINDOW : 2 * WINDOW]
    shifted = np.concatenate([stable[: WINDOW - len(novel)], novel])

    everything = np.concatenate([reference, stable, novel])
    vectors = Embedder().encode(banking77["text"].iloc[everything].tolist())
    position = {int(row): i for i, row in enumerate(everything)}

    def side(rows: np.ndarray) -> Side:
        frame = question_frame(banking77.iloc[rows].reset_index(drop=True), describe)
        return Side(frame, vectors[[position[int(row)] for row in rows]], total=len(rows))

    return {"reference": side(reference), "stable": side(stable), "shifted": side(shifted)}


Simulate = Callable[[pd.DataFrame, float, int], pd.DataFrame]


@pytest.fixture(scope="session")
def questions(banking77: pd.DataFrame, describe: Describe) -> dict[str, pd.DataFrame]:
    """Two disjoint windows of 1,000 questions over the same 40 intents, with true intents."""
    rng = np.random.default_rng(SCENARIO_SEED + 1)
    intents = rng.permutation(sorted(banking77["category"].unique()))[:SEEN_INTENTS]
    rows = rng.permutation(np.flatnonzero(banking77["category"].isin(intents).to_numpy()))
    return {
        name: question_frame(banking77.iloc[part].reset_index(drop=True), describe)
        for name, part in (("reference", rows[:WINDOW]), ("current", rows[WINDOW : 2 * WINDOW]))
    }


def simulate_predictions(frame: pd.DataFrame, degraded: float, seed: int) -> pd.DataFrame:
    """``frame`` with a calibrated classifier's ``prediction`` and ``confidence``.

    Nine predictions in ten are confident (Beta(18, 2), mean 0.9), one in ten unsure (0.01 to
    0.1), and each is right with probability equal to its confidence: calibrated by
    construction. A ``degraded`` share of rows, chosen at random, is made unsure — so almost
    always wrong — which is how a model meets traffic it handles badly. Marks them ``degraded``.
    """
    rng = np.random.default_rng(seed)
    n = len(frame)
    confidence = np.where(rng.random(n) < 0.9, rng.beta(18, 2, n), rng.uniform(0.01, 0.1, n))
    hit = rng.permutation(n)[: round(n * degraded)]
    confidence[hit] = rng.uniform(0.01, 0.1, len(hit))
    labels = frame["label"].to_numpy(dtype=object)
    intents = np.array(sorted(set(labels)), dtype=object)
    wrong = np.array([rng.choice(intents[intents != label]) for label in labels], dtype=object)
    right = rng.random(n) < confidence
    marked = np.zeros(n, dtype=bool)
    marked[hit] = True
    return frame.assign(
        prediction=np.where(right, labels, wrong), confidence=confidence, degraded=marked
    )


@pytest.fixture(scope="session")
def simulate() -> Simulate:
    """``simulate_predictions`` as a fixture: ``simulate(frame, degraded_share, seed)``."""
    return simulate_predictions
