"""The active version the proxy serves: the prompt it injects into each call of a prompted
deployment, the model id it calls for a fine-tuned one whose upstream serves it (an OpenAI
fine-tune)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class ActivePrompt:
    """The prompt version a prompted deployment serves: what the proxy injects into each call."""

    version: str
    model: str
    system: str
    examples: tuple[tuple[str, str], ...] = ()  # (user input, assistant answer), in order

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with this prompt: the caller's system (or developer) messages replaced by
        ours, the few-shot turns before the conversation, and the model alias mapped to ours."""
        messages = body.get("messages")
        conversation = [
            m
            for m in (messages if isinstance(messages, list) else [])
            if not (isinstance(m, dict) and m.get("role") in SYSTEM_ROLES)
        ]
        shots: list[dict[str, Any]] = []
        for question, answer in self.examples:
            shots.append({"role": "user", "content": question})
            shots.append({"role": "assistant", "content": answer})
        injected = [{"role": "system", "content": self.system}, *shots, *conversation]
        return {**body, "model": self.model, "messages": injected}


PromptFor = Callable[[str], ActivePrompt | None]
"""The active prompt of a deployment, or None to forward its calls unchanged."""


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """The model version a fine-tuned deployment serves upstream: the id each call goes to."""

    version: str
    model: str

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the model alias the app sent mapped to the active model id."""
        return {**body, "model": self.model}


ModelFor = Callable[[str], ActiveModel | None]
"""The active model of a deployment, or None to forward its calls unchanged."""
