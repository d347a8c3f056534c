"""The golden-set gate for classifiers served behind an OpenAI-compatible API (an OpenAI
fine-tune and the model it must beat).

Both models answer the same golden examples: the deployment's system prompt, then the example's
input as the user's message, at temperature 0 with a short answer cap. Each answer is read into
the label set: the label it is (case, surrounding whitespace, quotes and a final full stop
aside), or else the one label it names as a whole word. An answer that is no label, or names
several, counts as wrong, and the verdict says how many there were and shows a few: a model that
answers around the label set must not look as good as one that answers in it. The paired
bootstrap of ``retrain.gate.compare`` then decides, as it does for a local classifier.

Every call's tokens count against the gate's cap (``max_tokens``); a call that would pass it,
or a model the API cannot reach or refuses after the client's retries (429 and 5xx are retried
with backoff), fails the job with the reason: a gate that could not finish is no verdict.

Never imports ``daemon``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from retrain import contract
from retrain.chat import Budget, Chat
from retrain.contract import Side, Verdict
from retrain.errors import EvaluationError
from retrain.evaluate import Example
from retrain.gate import compare

Progress = Callable[[str], None]

ANSWER_MAX_TOKENS = 16
"""A label is a few words; a longer answer is cut, and read as what it starts with."""
UNPARSED_SHOWN = 3
_QUOTES = "\"'`.!"


def label_of(answer: str, labels: Sequence[str]) -> str | None:
    """The label ``answer`` gives, or None when it is none of them or names several."""
    normal = _normal(answer)
    by_normal = {_normal(label): label for label in labels}
    if normal in by_normal:
        return by_normal[normal]
    named = [
        label
        for key, label in by_normal.items()
        if key and re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", normal)
    ]
    return named[0] if len(named) == 1 else None


def _normal(text: str) -> str:
    return " ".join(text.strip().strip(_QUOTES).split()).casefold()


def classify(
    chat: Chat, system: str | None, examples: Sequence[Example], labels: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Each example's label as ``chat`` answers it (an unreadable answer as an empty string,
    which no golden label is), and a description of each unreadable answer."""
    predicted: list[str] = []
    unreadable: list[str] = []
    prefix = [{"role": "system", "content": system}] if system else []
    for number, example in enumerate(examples, start=1):
        answer = chat.ask([*prefix, {"role": "user", "content": example.input}], ANSWER_MAX_TOKENS)
        label = label_of(answer, labels)
        if label is None:
            unreadable.append(f"example {number}: {answer.strip()[:80]!r}")
        predicted.append(label or "")
    return predicted, unreadable


def gate(
    examples: Sequence[Example],
    labels: Sequence[str],
    *,
    active: str,
    candidate: str,
    endpoint: Mapping[str, str | None],
    key: str,
    system: str | None,
    settings: contract.GateSettings,
    seed: int,
    max_tokens: int,
    progress: Progress,
) -> Verdict:
    """The candidate model judged against the active one on ``examples``; the verdict, with
    the unreadable answers of each side among its reasons. ``endpoint`` holds ``base_url``
    and ``api_key_env`` (named in errors); ``key`` is the key itself."""
    if not examples:
        raise EvaluationError("the golden set has no examples to gate on")
    truth = [example.label for example in examples]
    known = list(dict.fromkeys([*labels, *truth]))
    budget = Budget(
        max_tokens,
        error=EvaluationError,
        hint="Raise the gate's max_tokens, or use a smaller golden set",
    )
    answers: dict[str, list[str]] = {}
    reasons: list[str] = []
    for role, model in (("active", active), ("candidate", candidate)):
        chat = Chat(
            contract.Endpoint(
                model=model,
                base_url=endpoint.get("base_url"),
                api_key_env=endpoint.get("api_key_env") or contract.OPENAI_KEY_ENV,
            ),
            key,
            role,
            budget,
        )
        try:
            progress(f"gate: the {role} ({model}) answers {len(examples)} examples")
            answers[role], unreadable = classify(chat, system, examples, known)
        finally:
            chat.close()
        if unreadable:
            shown = "; ".join(unreadable[:UNPARSED_SHOWN])
            more = len(unreadable) - UNPARSED_SHOWN
            reasons.append(
                f"{len(unreadable)} of the {role}'s {len(examples)} answers are no label "
                f"and count as wrong ({shown}{f'; {more} more' if more > 0 else ''})"
            )
    result = compare(
        answers["active"],
        answers["candidate"],
        truth,
        metric=settings.metric,
        margin=settings.margin,
        guard_metrics=settings.guard_metrics,
        bootstrap_samples=settings.bootstrap_samples,
        seed=seed,
    )
    found = result.verdict()
    found.reasons = [*found.reasons, *reasons, f"the gate's calls spent {budget.spent} tokens"]
    found.active = Side(metrics=result.active or {}, model_dir=active)
    found.candidate = Side(metrics=result.candidate, model_dir=candidate)
    for reason in found.reasons:
        progress(f"gate: {reason}")
    progress(f"gate: the candidate {'passes' if found.passed else 'is rejected'}")
    return found
