"""A local causal language model answering inputs: what a generation gate compares.

The model folder is one ``retrain.train`` saves (``AutoModelForCausalLM`` with its tokenizer), or
any causal LM saved with ``save_pretrained``. Each input is put to the model exactly as training
showed it (``retrain.train``'s generation task: the input and a newline, tokenised with the
tokenizer's special tokens), and the answer is what follows, up to the end token training taught
it to stop at (end-of-text, or ``[SEP]`` for tokenizers without one) or ``max_new_tokens``.

Decoding is greedy: the gate compares what each model answers, not sampling noise, and the
same model answers the same golden set the same way every run. Inputs go in batches, padded on
the left so that every row's next token follows its own last one. CPU, no gradients.

torch and transformers are imported when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from retrain.errors import EvaluationError

Progress = Callable[[str], None]

MAX_NEW_TOKENS = 64
"""The cap on one answer: a golden set's answers are short, and a model that does not stop
must not hold the gate for minutes."""
BATCH_SIZE = 16


def prompt_text(text: str) -> str:
    """What the model is shown of an input: the text ``retrain.train`` trains it on."""
    return text + "\n"


def answer(
    model_dir: str | Path,
    inputs: Sequence[str],
    *,
    max_length: int = 128,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = BATCH_SIZE,
) -> list[str]:
    """The model's greedy answer to each input, in order. ``max_length`` caps the tokens of
    an input (its start kept); ``EvaluationError`` when the folder holds no causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    except (OSError, ValueError) as error:
        raise EvaluationError(
            f"cannot load {model_dir} as a causal language model with its tokenizer: {error}"
        ) from error
    model.train(False)  # inference: no dropout
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = next(
        (i for i in (tokenizer.pad_token_id, end) if isinstance(i, int)),
        0,  # padded positions are masked out, so any id will do
    )
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            rows = [
                list(tokenizer(prompt_text(text))["input_ids"])[:max_length]
                for text in inputs[start : start + batch_size]
            ]
            width = max(len(row) for row in rows)
            ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
            mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
            generated = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=end,
                pad_token_id=pad,
            )
            for row in generated[:, width:].tolist():
                if end is not None and end in row:
                    row = row[: row.index(end)]
                answers.append(str(tokenizer.decode(row, skip_special_tokens=True)).strip())
    return answers
