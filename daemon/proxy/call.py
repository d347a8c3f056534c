"""One proxied call as it goes, and what it becomes: the sample the ingest pipeline stores.

Everything here is plain data and parsing: the routes fill a ``Call`` in, the recorder turns
finished calls into samples.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from daemon.domain import Task
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.rules import MAX_TEXT
from daemon.ingest.schema import Id, Message, SampleIn

CHAT = "chat/completions"
EMBEDDINGS = "embeddings"

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MAX_MESSAGES = 1000
ERROR_TEXT = 2000


@dataclass(slots=True)
class Call:
    """One proxied call, filled in as it goes; becomes the sample once it is complete."""

    deployment: str
    endpoint: str
    ts: datetime
    started: float
    body: dict[str, Any] | None
    prompt_version: str | None
    stream: bool
    request_id: str
    status: int = 0
    output: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    model: str | None = None
    model_version: str | None = None
    upstream_request_id: str | None = None
    pieces: list[str] = field(default_factory=list)

    def finish(self) -> None:
        self.latency_ms = (time.monotonic() - self.started) * 1000.0

    def read_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.tokens_in = prompt if isinstance(prompt, int) else self.tokens_in
            self.tokens_out = completion if isinstance(completion, int) else self.tokens_out


class EventReader:
    """Reads chat-completion chunks out of an SSE byte stream, whatever its chunk boundaries."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        call = self.call
        if "error" in event:
            call.error = clip(f"the upstream's stream reported an error: {message_of(event)}")
        call.read_usage(event.get("usage"))
        call.model = text_or_none(event.get("model")) or call.model
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str) and content:
                    if call.ttft_ms is None:
                        call.ttft_ms = (time.monotonic() - call.started) * 1000.0
                    call.pieces.append(content)


def read_answer(call: Call, body: bytes) -> None:
    """What a complete (non-streamed) answer tells the sample: output and usage, or the error."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if call.status >= 400:
        detail = message_of(answer) if answer is not None else body.decode("utf-8", "replace")
        call.error = clip(f"the upstream answered HTTP {call.status}: {detail}")
        return
    if not isinstance(answer, dict):
        return
    call.read_usage(answer.get("usage"))
    call.model = text_or_none(answer.get("model")) or call.model
    if call.endpoint == CHAT:
        for choice in answer.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                message = choice.get("message") or {}
                call.output = content_text(message.get("content"))


def sample_of(call: Call, pipeline: DeploymentPipeline) -> SampleIn | None:
    """The sample of a finished call; None when the request was no JSON object at all.

    The input is what the caller sent, before a prompt was injected: drift is about what users
    ask, and the injected prompt is known by its version."""
    body = call.body
    if body is None:
        return None
    text_input: str | list[Message]
    if call.endpoint == CHAT:
        messages = [
            Message(role=m["role"], content=clip(content_text(m.get("content")) or "", MAX_TEXT))
            for m in body.get("messages") or ()
            if isinstance(m, dict) and m.get("role") in _ROLES
        ][-_MAX_MESSAGES:]
        text_input = messages or ""
    else:
        text_input = clip(_embedding_input(body.get("input")), MAX_TEXT)
    output = None if call.output is None else clip(call.output, MAX_TEXT)
    prediction = None
    if pipeline.task is Task.classification and output is not None:
        prediction = output.strip() if output.strip() in pipeline.labels else None
    metadata: dict[str, str | int | float | bool] = {
        "source": "proxy",
        "endpoint": call.endpoint,
        "status": call.status,
        "stream": call.stream,
    }
    if call.model is not None:
        metadata["model"] = clip(call.model, 256)
    if call.ttft_ms is not None:
        metadata["ttft_ms"] = round(call.ttft_ms, 3)
    if call.upstream_request_id is not None and valid_request_id(call.upstream_request_id):
        metadata["upstream_request_id"] = call.upstream_request_id
    return SampleIn(
        request_id=call.request_id,
        ts=call.ts,
        input=text_input,
        output=output,
        prediction=prediction,
        latency_ms=round(call.latency_ms, 3),
        tokens_in=call.tokens_in,
        tokens_out=call.tokens_out,
        model_version=call.model_version,
        prompt_version=call.prompt_version,
        error=None if call.error is None else clip(call.error, MAX_TEXT),
        metadata=metadata,
    )


def message_of(answer: Any) -> str:
    """The human part of an error body: OpenAI's ``error.message``, else the JSON itself."""
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return json.dumps(answer)


def content_text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return None


def _embedding_input(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise ValueError("embedding input given as tokens, not text; it is not sampled")


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def clip(text: str, limit: int = ERROR_TEXT) -> str:
    """``text`` cut to ``limit`` characters, and with NUL characters (which a sample cannot
    hold: PostgreSQL refuses them in text) replaced by U+FFFD, as a decoder marks bad bytes."""
    text = text.replace("\x00", "\ufffd")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Random:
    """Random bytes from the system, fetched a few kilobytes at a time: one system call per 256
    ids rather than per id (each call lets another thread take the GIL, and a call waits for
    it back)."""

    def __init__(self, block: int = 4096) -> None:
        self.block = block
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._pool):
                self._pool = os.urandom(max(self.block, n))
                self._at = 0
            start = self._at
            self._at = start + n
            return self._pool[start : start + n]


_RANDOM = _Random()


def new_id() -> str:
    """A sample id of driftd's own: 128 random bits."""
    return f"driftd-{_RANDOM.take(16).hex()}"


_REQUEST_ID: TypeAdapter[str] = TypeAdapter(Id)


def valid_request_id(value: str) -> bool:
    """Whether a caller's (or an upstream's) id is one the ingest schema accepts as a sample's
    ``request_id``; any other is replaced by driftd's own, never truncated into a collision."""
    try:
        _REQUEST_ID.validate_python(value)
    except ValidationError:
        return False
    return True


def where(call: Call) -> dict[str, Any]:
    return {"deployment": call.deployment, "endpoint": call.endpoint, "request_id": call.request_id}
