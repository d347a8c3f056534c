"""Sentence embeddings: texts in, L2-normalised mean-pooled vectors out, fast on a few CPU cores.

Text drift is measured on embeddings, so the encoder runs over every window of production traffic
and has to keep up with it on a small machine. ``Embedder`` gets its speed from tokenising once,
then sorting the texts by token length so that each batch holds texts of about the same length
and is barely padded; from running the Linear layers as dynamic int8; and from
``torch.inference_mode``. Duplicate texts, common in production traffic, are encoded once.
``benchmarks/embed.py`` measures each against a plain loop.

Importing this module loads torch and transformers (seconds): import it where texts are
embedded, not on the command line's or the API's start-up path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.ao.quantization import (
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    QConfig,
    quantize_dynamic,
)
from transformers import AutoModel, AutoTokenizer

from monitors.encoders import DEFAULT_MAX_LENGTH, DEFAULT_MODEL, embedder_name, resolve


class Embedder:
    """Encodes texts into L2-normalised mean-pooled embeddings with a Hugging Face encoder.

    ``model`` is ``"default"``, a local directory written by ``save_pretrained``, or a hub id
    (which must already be in the local Hugging Face cache when ``HF_HUB_OFFLINE`` is set).
    ``quantize`` runs the Linear layers as dynamic int8: 1.5 times as fast on two CPU cores, with
    a cosine similarity to the fp32 embeddings above 0.99. ``threads`` is the number of torch
    intra-op threads while ``encode`` runs; ``None`` leaves one core to the rest of the daemon
    (one thread on two cores), because a thread of a parallel region that loses its core stalls
    the others: on two busy cores, two threads ran at less than half the speed of one.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        batch_size: int = 64,
        max_length: int = DEFAULT_MAX_LENGTH,
        quantize: bool = True,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (room for the special tokens), got {max_length}"
            )
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1 or None, got {threads}")
        source, model_name = resolve(model)
        self._tokenizer, self._model = _load(model, source)
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_length > limit:
            raise ValueError(
                f"max_length {max_length} is longer than model {model!r} takes ({limit} tokens)"
            )
        if quantize:
            self._model = _quantize(self._model)
        self._dim = int(self._model.config.hidden_size)
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self._batch_size = batch_size
        self._max_length = max_length
        self._threads = threads if threads is not None else max(1, _usable_cores() - 1)
        self._name = embedder_name(model_name, quantize=quantize, max_length=max_length)

    @property
    def name(self) -> str:
        """A stable id of the model and of the settings that change its output.

        ``MODEL/int8/128``: MODEL is all-MiniLM-L6-v2 for the default, a directory's own name
        for a local path, the id for a hub model. Store it beside cached embeddings, and
        recompute them when it differs.
        """
        return self._name

    @property
    def dim(self) -> int:
        """The length of each embedding."""
        return self._dim

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit-length float32 row per text, in the order given.

        A missing text (None, NaN, pandas.NA) is encoded as ``""``: the model's embedding of its
        special tokens alone.
        """
        strings = [_as_text(text, index) for index, text in enumerate(texts)]
        unique = list(dict.fromkeys(strings))
        if not unique:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = self._encode_unique(unique)
        if len(unique) == len(strings):
            return vectors
        row = {text: index for index, text in enumerate(unique)}
        return vectors[[row[text] for text in strings]]

    def _encode_unique(self, texts: list[str]) -> npt.NDArray[np.float32]:
        ids: list[list[int]] = self._tokenizer(
            texts,
            truncation=True,
            max_length=self._max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        # Sorted by the token ids themselves, not only by their number, the batches depend on the
        # set of texts alone: int8 activations are scaled per batch, so the same texts given in
        # another order must meet the same neighbours to get the very same vectors.
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), ids[i]))
        out = np.empty((len(ids), self._dim), dtype=np.float32)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self._batch_size):
                    batch = order[start : start + self._batch_size]
                    out[batch] = self._forward([ids[i] for i in batch])
        finally:
            torch.set_num_threads(previous_threads)
        return out

    def _forward(self, ids: list[list[int]]) -> npt.NDArray[np.float32]:
        width = max(len(row) for row in ids)
        padded = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for r, row in enumerate(ids):
            padded[r, : len(row)] = row
            mask[r, : len(row)] = 1
        attention = torch.from_numpy(mask)
        hidden: torch.Tensor = self._model(
            input_ids=torch.from_numpy(padded), attention_mask=attention
        ).last_hidden_state
        weights = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        unit: npt.NDArray[np.float32] = torch.nn.functional.normalize(pooled, dim=1).numpy()
        return unit


class FullRangeInt8Linear(DynamicInt8Linear):
    """A dynamic int8 Linear whose activations use all 8 bits, and its weights 7.

    torch quantises activations to 7 bits because, on x86 CPUs without VNNI, the int16 sums of
    8-bit activation times 8-bit weight pairs can overflow. Taking the bit from the weights
    instead avoids the overflow just as well, and weights quantised per output channel lose far
    less from it than activations quantised per batch: on Banking77 the mean cosine similarity
    to fp32 goes from 0.978 to 0.993 (benchmarks/RESULTS.md).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(
            x, self._packed_params._packed_params, reduce_range=False
        )
        return y.to(x.dtype)


_INT8 = QConfig(  # type: ignore[no-untyped-call]
    activation=PlaceholderObserver.with_args(
        dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True
    ),
    weight=PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63
    ),
)


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _as_text(value: object, index: int) -> str:
    if isinstance(value, str):
        return value
    # Missing values come as None from JSON and as NaN or pandas.NA from data frames.
    if value is None or _is_nan(value):
        return ""
    raise TypeError(f"texts[{index}] is a {type(value).__name__}, expected a str")


def _is_nan(value: object) -> bool:
    try:
        return bool(value != value)
    except TypeError:  # pandas.NA refuses to be a bool
        return True


def _load(model: str, source: str) -> tuple[Any, Any]:
    import huggingface_hub

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source, dtype=torch.float32)
    except OSError as error:
        if huggingface_hub.is_offline_mode():
            raise ValueError(
                f"embedding model {model!r} is not available offline: it is neither a local "
                f"directory nor in the Hugging Face cache, and HF_HUB_OFFLINE is set; download it "
                f"where the hub is reachable, or give a local directory or {DEFAULT_MODEL!r}"
            ) from error
        raise ValueError(f"embedding model {model!r} could not be loaded: {error}") from error
    encoder.eval()
    encoder.requires_grad_(False)
    return tokenizer, encoder


def _quantize(encoder: Any) -> Any:
    # torch.ao.quantization warns that it is moving to torchao; in torch 2.13 it is still the
    # dynamic int8 path that needs no other package, and its output is tested against fp32.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message=r".*quantized tensor creation", category=UserWarning
        )
        return quantize_dynamic(  # type: ignore[no-untyped-call]
            encoder,
            {torch.nn.Linear: _INT8},
            dtype=torch.qint8,
            mapping={torch.nn.Linear: FullRangeInt8Linear},
        )
