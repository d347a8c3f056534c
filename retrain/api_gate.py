"""The golden-set gate for models served behind an OpenAI-compatible API (an OpenAI fine-tune
and the model it must beat): classifiers and generation models.

Both models answer the same golden examples: the deployment's system prompt, then the example's
input as the user's message, at temperature 0. A classifier's answer (a short one) is read into
the label set: the label it is (case, surrounding whitespace, quotes and final punctuation
aside), or else the one label it names as a whole word. An answer that is no label, or names
several, counts as wrong, and the verdict says how many there were and shows a few: a model that
answers around the label set must not look as good as one that answers in it. The paired
bootstrap of ``retrain.gate.compare`` then decides, as it does for a local classifier. A
generation model's answers are scored as ``retrain.scoring`` says (the judge's rubric, else the
golden set's reference answers) and ``retrain.gate.compare_scores`` decides.

Every call's tokens, the judge's included, count against the gate's cap (one ``Budget``); a call
that would pass it, or a model the API cannot reach or refuses after the client's retries (429
and 5xx are retried with backoff), fails the job with the reason: a gate that could not finish
is no verdict. The verdict records what was spent (``tokens``, ``judge_tokens``) and the cap.

Never imports ``daemon``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from retrain import contract
from retrain.chat import Budget, Chat
from retrain.contract import GENERATION_ANSWER_MAX_TOKENS, Verdict
from retrain.errors import EvaluationError
from retrain.evaluate import Example
from retrain.gate import compare
from retrain.scoring import JudgeModel, Query, compare_answers, finish_verdict, normal

Progress = Callable[[str], None]

ANSWER_MAX_TOKENS = 16
"""A label is a few words; a longer answer is cut, and read as what it starts with."""
UNPARSED_SHOWN = 3


def label_of(answer: str, labels: Sequence[str]) -> str | None:
    """The label ``answer`` gives, or None when it is none of them or names several."""
    said = normal(answer)
    by_normal = {normal(label): label for label in labels}
    if said in by_normal:
        return by_normal[said]
    named = [
        label
        for key, label in by_normal.items()
        if key and re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", said)
    ]
    return named[0] if len(named) == 1 else None


def answers(chat: Chat, system: str | None, inputs: Sequence[str], max_tokens: int) -> list[str]:
    """``chat``'s answer to each input, under the system prompt, at temperature 0."""
    prefix = [{"role": "system", "content": system}] if system else []
    return [chat.ask([*prefix, {"role": "user", "content": text}], max_tokens) for text in inputs]


def classify(
    chat: Chat, system: str | None, examples: Sequence[Example], labels: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Each example's label as ``chat`` answers it (an unreadable answer as an empty string,
    which no golden label is), and a description of each unreadable answer."""
    predicted: list[str] = []
    unreadable: list[str] = []
    said = answers(chat, system, [example.input for example in examples], ANSWER_MAX_TOKENS)
    for number, answer in enumerate(said, start=1):
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
    spending: Budget,
    progress: Progress,
) -> Verdict:
    """The candidate classifier judged against the active one on ``examples``; the verdict,
    with the unreadable answers of each side among its reasons. ``endpoint`` holds
    ``base_url`` and ``api_key_env`` (named in errors); ``key`` is the key itself."""
    if not examples:
        raise EvaluationError("the golden set has no examples to gate on")
    truth = [example.label for example in examples]
    known = list(dict.fromkeys([*labels, *truth]))
    predicted: dict[str, list[str]] = {}
    reasons: list[str] = []
    for role, model in (("active", active), ("candidate", candidate)):
        chat = _chat(role, model, endpoint, key, spending)
        try:
            progress(f"gate: the {role} ({model}) answers {len(examples)} examples")
            predicted[role], unreadable = classify(chat, system, examples, known)
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
        predicted["active"],
        predicted["candidate"],
        truth,
        metric=settings.metric,
        margin=settings.margin,
        guard_metrics=settings.guard_metrics,
        bootstrap_samples=settings.bootstrap_samples,
        seed=seed,
    )
    found = result.verdict()
    found.reasons = [*found.reasons, *reasons]
    return finish_verdict(found, active, candidate, spending, None, progress)


def gate_generation(
    queries: Sequence[Query],
    *,
    active: str,
    candidate: str,
    endpoint: Mapping[str, str | None],
    key: str,
    system: str | None,
    judged: JudgeModel | None,
    settings: contract.GateSettings,
    seed: int,
    spending: Budget,
    progress: Progress,
) -> Verdict:
    """The candidate generation model judged against the active one on ``queries``: both
    answer through the API, ``retrain.scoring`` scores (``judged`` when set, sharing
    ``spending``), the paired bootstrap decides."""
    if not queries:
        raise EvaluationError("the golden set has no examples to gate on")
    said: dict[str, list[str]] = {}
    for role, model in (("active", active), ("candidate", candidate)):
        chat = _chat(role, model, endpoint, key, spending)
        try:
            progress(f"gate: the {role} ({model}) answers {len(queries)} examples")
            inputs = [query.input for query in queries]
            said[role] = answers(chat, system, inputs, GENERATION_ANSWER_MAX_TOKENS)
        finally:
            chat.close()
    found = compare_answers(
        queries, said["active"], said["candidate"], judged=judged, settings=settings, seed=seed
    )
    return finish_verdict(found, active, candidate, spending, judged, progress)


def _chat(
    role: str, model: str, endpoint: Mapping[str, str | None], key: str, spending: Budget
) -> Chat:
    return Chat(
        contract.Endpoint(
            model=model,
            base_url=endpoint.get("base_url"),
            api_key_env=endpoint.get("api_key_env") or contract.OPENAI_KEY_ENV,
        ),
        key,
        role,
        spending,
    )
