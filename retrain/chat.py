"""The chat models a job talks to (a prompt revision's proposer and target, a gate's two sides),
each through its OpenAI-compatible endpoint, all spending from one token cap.

Before each call the cost is estimated (prompt characters / 4 plus the answer's cap) and the call
is refused with the budget's error (``RevisionError`` unless it says otherwise), giving the
numbers, when it would pass the cap; what a call spent is read from its answer's ``usage``.
Errors name the model and the endpoint, never the key.

Never imports ``daemon``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from retrain import contract
from retrain.errors import JobError, RevisionError
from retrain.judge import CHARS_PER_TOKEN, TokenBudget

if TYPE_CHECKING:
    from openai import OpenAIError


@dataclass
class Budget:
    """The job's token cap, shared by every model it calls (a prompt revision's proposer,
    target and judge; a gate's two sides). ``error`` is what the job raises when the cap or a
    model stops it, and ``hint`` what the message tells the operator to change."""

    limit: int
    spent: int = 0
    error: type[JobError] = RevisionError
    hint: str = "Raise max_tokens, or lower 'candidates' or the size of the golden and fresh sets"

    def exhausted(self, role: str, needed: int) -> JobError:
        """The error that stops the job before a request of ``role`` would pass the cap."""
        return self.error(
            f"token cap reached: {self.spent} of max_tokens {self.limit} spent, and the next "
            f"{role} request needs about {needed}; the job stopped before a verdict. {self.hint}"
        ).for_good()


class Chat:
    """One chat model, its client, and the tokens it has spent against the job's cap."""

    def __init__(self, endpoint: contract.Endpoint, key: str, role: str, budget: Budget) -> None:
        import openai

        self.endpoint = endpoint
        self.role = role
        self.budget = budget
        self.spent = 0
        self.calls = 0
        self._key = key
        self._api = openai.OpenAI(
            api_key=key, base_url=endpoint.base_url, timeout=60.0, max_retries=2
        )

    def close(self) -> None:
        self._api.close()

    def ask(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0) -> str:
        """The model's answer; the budget's error when the cap would be passed or it fails."""
        import openai

        estimate = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN + max_tokens
        if not TokenBudget(self.budget.limit, self.budget.spent).allows(estimate):
            raise self.budget.exhausted(self.role, estimate)
        try:
            completion = self._api.chat.completions.create(
                model=self.endpoint.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=temperature,
                max_tokens=max_tokens,
            )
        except openai.OpenAIError as failure:
            raise self.budget.error(self._describe(failure)) from None
        self.calls += 1
        if completion.usage is not None:
            used = completion.usage.prompt_tokens + completion.usage.completion_tokens
            self.spent += used
            self.budget.spent += used
        content = completion.choices[0].message.content if completion.choices else None
        return content or ""

    def _describe(self, error: OpenAIError) -> str:
        """What went wrong and where, with the key masked (a server may echo it)."""
        import openai

        where = str(self._api.base_url).rstrip("/")
        what = f"the {self.role} model {self.endpoint.model} at {where}"
        if isinstance(error, openai.APIStatusError):
            hint = {
                401: f"; check the key in {self.endpoint.api_key_env}",
                403: f"; check the key in {self.endpoint.api_key_env} and its permissions",
                404: f"; check {self.role}.model and {self.role}.base_url",
            }.get(error.status_code, "")
            text = f"{what} answered HTTP {error.status_code}: {error.message}{hint}"
        elif isinstance(error, openai.APIConnectionError):
            text = f"cannot reach {what}: {error}; check {self.role}.base_url and the network"
        else:
            text = f"{what} failed: {type(error).__name__}: {error}"
        return text.replace(self._key, "***") if len(self._key) >= 4 else text
