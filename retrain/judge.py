"""An LLM judge: an OpenAI-compatible chat model scores outputs against a rubric.

Each sample (an input and the output the deployment gave) is sent as one chat request; the
judge is asked to answer with JSON ``{"score": x, "reason": "..."}``, ``x`` in [0, 1]. Models
do not always obey, so the answer is read leniently (a JSON object inside prose or a code
fence will do) and a sample whose answers stay unreadable after ``max_attempts`` is recorded
as failed, with what came back, rather than asked again and again.

Tokens are counted from each answer's ``usage`` and held against a budget: before each request
the run estimates what it will cost (its prompt's characters / 4 plus ``max_tokens``) and stops
when that would pass the budget, returning what it scored so far and saying why it stopped.
So a daily cap is kept to within the estimate's error, never overrun by a whole batch.

The HTTP retries of one request (408, 409, 429, 5xx, lost connections, with backoff) are the
openai client's own (``ClientSettings.max_retries``); an answer that still fails counts as one
failed attempt of its sample. An error that every request would meet (a wrong key, an unknown
model, a wrong URL) ends the run at once instead of failing each sample in turn.

Never imports ``daemon``: the daemon reads samples from its store and hands plain values in.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openai import OpenAI, OpenAIError

CHARS_PER_TOKEN = 4
MAX_REASON_CHARS = 500
MAX_ANSWER_CHARS = 200
# Statuses that say the request itself is wrong for every sample, not this one.
_FATAL_STATUS = frozenset({400, 401, 403, 404})
_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)

SYSTEM_PROMPT = """You are a strict evaluator of an AI assistant's answers.
Score the ASSISTANT OUTPUT for the USER INPUT against this rubric:

{rubric}

Reply with one JSON object and nothing else: {{"score": <a number from 0 to 1>, "reason": \
"<one short sentence>"}}. 1 means the output fully meets the rubric, 0 that it fails it."""

USER_PROMPT = """USER INPUT:
<<<
{input}
>>>

ASSISTANT OUTPUT:
<<<
{output}
>>>"""

REFERENCE_PROMPT = """

REFERENCE ANSWER (a good answer to compare with; the assistant did not see it):
<<<
{reference}
>>>"""


@dataclass(frozen=True, slots=True)
class JudgeSample:
    """One output to score; ``id`` is the caller's (a sample id) and comes back in its Score.

    ``reference``, when known (a golden set's wanted answer), is shown to the judge as a good
    answer to compare with."""

    id: int | str
    input: str
    output: str
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Score:
    """The judge's verdict on one sample: ``score`` in [0, 1], or None and ``error`` saying why.

    ``tokens_in`` / ``tokens_out`` add up every attempt's usage for this sample."""

    sample_id: int | str
    score: float | None
    reason: str = ""
    error: str | None = None
    attempts: int = 1
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def ok(self) -> bool:
        return self.score is not None


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where the judge model is served, and how patient to be with it."""

    api_key: str = field(repr=False)
    base_url: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """``limit`` tokens may be spent in all (None: no cap), of which ``spent`` already are."""

    limit: int | None
    spent: int = 0

    def allows(self, tokens: int) -> bool:
        return self.limit is None or self.spent + tokens <= self.limit


class Stop(StrEnum):
    """Why a run ended before it scored every sample."""

    budget = "budget"
    error = "error"


@dataclass(frozen=True, slots=True)
class Judgement:
    """What one run did: a Score per sample it reached, in order, and whether it stopped early.

    ``stopped`` is None when every sample was reached; ``detail`` says why it stopped;
    ``needed`` is the estimated cost of the request a budget stop did not send."""

    scores: list[Score]
    stopped: Stop | None = None
    detail: str | None = None
    needed: int | None = None

    @property
    def tokens_in(self) -> int:
        return sum(score.tokens_in for score in self.scores)

    @property
    def tokens_out(self) -> int:
        return sum(score.tokens_out for score in self.scores)

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


class JudgeRefused(Exception):
    """The judge's API refused in a way that every request would meet; the run cannot go on."""


def judge(
    samples: Iterable[JudgeSample],
    *,
    rubric: str,
    model: str,
    client: ClientSettings,
    budget: TokenBudget,
    max_attempts: int = 3,
    max_tokens: int = 200,
) -> Judgement:
    """Score each sample against ``rubric`` with chat model ``model``, within ``budget``.

    ``max_attempts`` bounds the requests per sample (unreadable answers, failed requests);
    ``max_tokens`` bounds each answer and is part of each request's estimate.
    """
    if not rubric.strip():
        raise ValueError("the judge needs a rubric: what a good output is")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    import openai

    api = openai.OpenAI(
        api_key=client.api_key,
        base_url=client.base_url,
        timeout=client.timeout_s,
        max_retries=client.max_retries,
    )
    system = SYSTEM_PROMPT.format(rubric=rubric.strip())
    spent = budget.spent
    scores: list[Score] = []
    try:
        for sample in samples:
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": _user_prompt(sample)},
            ]
            estimate = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN + max_tokens
            if not TokenBudget(budget.limit, spent).allows(estimate):
                detail = (
                    f"token budget reached: {spent} of {budget.limit} spent, the next request "
                    f"needs about {estimate}; {len(scores)} samples scored this run"
                )
                return Judgement(scores, Stop.budget, detail, needed=estimate)
            score = _score_one(api, sample, messages, model, max_attempts, max_tokens)
            spent += score.tokens_in + score.tokens_out
            scores.append(score)
    except JudgeRefused as refused:
        return Judgement(scores, Stop.error, str(refused))
    finally:
        api.close()
    return Judgement(scores)


def _user_prompt(sample: JudgeSample) -> str:
    text = USER_PROMPT.format(input=sample.input, output=sample.output)
    if sample.reference:
        text += REFERENCE_PROMPT.format(reference=sample.reference)
    return text


def _score_one(
    api: OpenAI,
    sample: JudgeSample,
    messages: list[dict[str, str]],
    model: str,
    max_attempts: int,
    max_tokens: int,
) -> Score:
    import openai

    tokens_in = tokens_out = 0
    error = ""
    for attempt in range(1, max_attempts + 1):
        try:
            completion = api.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=max_tokens,
            )
        except openai.APIStatusError as failure:
            if failure.status_code in _FATAL_STATUS:
                raise JudgeRefused(_describe(failure, api)) from None
            error = _describe(failure, api)
            continue
        except openai.OpenAIError as failure:
            error = _describe(failure, api)
            continue
        if completion.usage is not None:
            tokens_in += completion.usage.prompt_tokens
            tokens_out += completion.usage.completion_tokens
        answer = completion.choices[0].message.content if completion.choices else None
        try:
            score, reason = parse_answer(answer or "")
        except ValueError as unreadable:
            error = str(unreadable)
            continue
        return Score(sample.id, score, reason, None, attempt, tokens_in, tokens_out)
    return Score(
        sample.id,
        None,
        "",
        f"no usable score after {max_attempts} attempts; last: {error}",
        max_attempts,
        tokens_in,
        tokens_out,
    )


def parse_answer(text: str) -> tuple[float, str]:
    """The score and reason in a judge's answer; ``ValueError`` saying what was wrong.

    The answer should be a JSON object; the first object found in the text is taken, so
    prose or a code fence around it does no harm. The score must lie in [0, 1]."""
    shown = text.strip()[:MAX_ANSWER_CHARS]
    found = _first_object(text)
    if found is None:
        raise ValueError(f'the answer holds no JSON object with a "score": {shown!r}')
    raw = found.get("score")
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            raw = float(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f'"score" is not a number in the answer {shown!r}')
    score = float(raw)
    if not 0.0 <= score <= 1.0:
        raise ValueError(f'"score" {score} is outside [0, 1] in the answer {shown!r}')
    reason = found.get("reason")
    return score, str(reason)[:MAX_REASON_CHARS] if reason is not None else ""


def _first_object(text: str) -> dict[str, Any] | None:
    candidates = [text.strip()]
    candidates += [match.group(0) for match in _JSON_OBJECT.finditer(text)]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) and "score" in value:
            return value
    return None


def _describe(error: OpenAIError, api: OpenAI) -> str:
    """The server's answer or the connection problem, with where it came from; the key is
    masked, since an OpenAI-compatible server may echo it in its error message."""
    import openai

    where = str(api.base_url).rstrip("/")
    if isinstance(error, openai.APIStatusError):
        code = f" ({error.code})" if error.code else ""
        hint = {
            401: "; check the judge's API key",
            403: "; check the judge's API key and its permissions",
            404: "; check the judge model's name and the base URL",
        }.get(error.status_code, "")
        status = f"HTTP {error.status_code}{code}"
        text = f"the judge's API at {where} answered {status}: {error.message}{hint}"
    elif isinstance(error, openai.APIConnectionError):
        text = f"cannot reach the judge's API at {where}: {error}; check the base URL and network"
    else:
        text = f"{type(error).__name__}: {error}"
    key = api.api_key
    return text.replace(key, "***") if len(key) >= 4 else text
