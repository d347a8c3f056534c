"""A small OpenAI-compatible server for tests, spoken to over HTTP by the real ``openai`` client.

It serves what driftd's jobs and proxy use: files, fine-tuning jobs with their events, and a
non-streaming chat completion that echoes the last user message, or answers what the test
scripted (an LLM judge's verdicts, say), or plays a model that follows an instruction only when
its system prompt holds it (``script_rule``), or one told apart by its id (``script_model``: a
fine-tuned model and its base). Tests script it (how each fine-tuning job ends, what
the next chat completions answer, which request fails with which HTTP error) and inspect what
it received (every request, every uploaded file's bytes). It runs in a thread of the test
process, on 127.0.0.1 and a free port, and stops when the test ends.

Use it as a context manager, ``with serve_fake_openai() as fake: ...``, or as the pytest
fixture ``fake_openai`` (``tests/conftest.py`` registers it); import what else you need as
``from tests.fake_openai import …``. The files and fine-tuning jobs are served by
``tests/fake_openai_jobs.py`` (``FineTuningRoutes``, which ``FakeOpenAI`` inherits); their names
are imported from here all the same.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fake_openai_jobs import (
    CANCEL_ROUTE,
    EVENTS_ROUTE,
    FILE_ROUTE,
    FILES_ROUTE,
    JOB_ROUTE,
    JOBS_ROUTE,
    ORGANIZATION,
    Fail,
    FineTuningJob,
    FineTuningRoutes,
    Json,
    Outcome,
    RunUntilCancelled,
    Succeed,
    UploadedFile,
    parse_multipart,
)
from tests.helpers.http import serving_app
from tests.helpers.wait import wait_for

__all__ = [
    "CANCEL_ROUTE",
    "CHAT_ROUTE",
    "DEFAULT_API_KEY",
    "EVENTS_ROUTE",
    "FILES_ROUTE",
    "FILE_ROUTE",
    "JOBS_ROUTE",
    "JOB_ROUTE",
    "ORGANIZATION",
    "Fail",
    "FakeOpenAI",
    "FineTuningJob",
    "Json",
    "Outcome",
    "Received",
    "RunUntilCancelled",
    "Succeed",
    "UploadedFile",
    "fake_openai",
    "parse_multipart",
    "serve_fake_openai",
]

DEFAULT_API_KEY = "sk-fake-4c1d9e7a0b2f"

# Routes as ``Received.route`` and ``script_error`` name them (the others: fake_openai_jobs).
CHAT_ROUTE = "POST /v1/chat/completions"


@dataclass(frozen=True)
class ScriptedError:
    """An HTTP error the server answers ``times`` times on one route, with OpenAI's error JSON."""

    status: int
    message: str
    type: str
    code: str | None
    param: str | None
    times: int
    retry_after_s: float | None


@dataclass(frozen=True)
class Received:
    """One request the server answered: its route (``"POST /v1/files"``), the path it was sent
    to, the status it got, and its JSON body (form fields, for an upload)."""

    route: str
    path: str
    status: int
    body: Any


@dataclass(frozen=True)
class Rule:
    """A model that obeys one instruction: when the request's system message contains
    ``trigger`` it answers ``follow(user text)``, otherwise ``otherwise(user text)``."""

    trigger: str
    follow: Callable[[str], str]
    otherwise: Callable[[str], str]


class FakeOpenAI(FineTuningRoutes):
    """The server's state and script; read it from the test, change it only through methods.

    ``base_url`` ends in ``/v1``, as the ``openai`` client expects; ``api_key`` is the one
    bearer token it accepts.
    """

    def __init__(self, api_key: str = DEFAULT_API_KEY, *, file_processing_polls: int = 1) -> None:
        """``file_processing_polls``: retrievals of an uploaded file before it is ``processed``
        (0: processed at once)."""
        self.api_key = api_key
        self.base_url = ""
        self.file_processing_polls = file_processing_polls
        self.files: dict[str, UploadedFile] = {}
        self.jobs: dict[str, FineTuningJob] = {}
        self.received: list[Received] = []
        self._outcomes: list[Outcome] = []
        self._answers: list[str] = []
        self._rule: Rule | None = None
        self._by_system: dict[str, Callable[[str], str]] = {}
        self._by_model: dict[str, Callable[[str], str]] = {}
        self._errors: dict[str, list[ScriptedError]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/files", self._create_file, methods=["POST"]),
                Route("/v1/files/{file_id}", self._retrieve_file, methods=["GET"]),
                Route("/v1/fine_tuning/jobs", self._create_job, methods=["POST"]),
                Route("/v1/fine_tuning/jobs/{job_id}", self._retrieve_job, methods=["GET"]),
                Route("/v1/fine_tuning/jobs/{job_id}/cancel", self._cancel_job, methods=["POST"]),
                Route("/v1/fine_tuning/jobs/{job_id}/events", self._list_events, methods=["GET"]),
                Route("/v1/chat/completions", self._chat_completion, methods=["POST"]),
            ]
        )

    # -- the script ---------------------------------------------------------------------------

    def script_job(self, *outcomes: Outcome) -> None:
        """How the next fine-tuning jobs created end, in order; later ones ``Succeed()``."""
        with self._lock:
            self._outcomes.extend(outcomes)

    def script_chat(self, *answers: str) -> None:
        """What the next chat completions answer, in order (each the assistant's content);
        once they are used up, a completion echoes the last user message again."""
        with self._lock:
            self._answers.extend(answers)

    def script_rule(
        self,
        trigger: str,
        follow: Callable[[str], str],
        otherwise: Callable[[str], str],
    ) -> None:
        """From now on, chat completions with no scripted answer left play a model that follows
        an instruction only when it is in its prompt: ``follow(user text)`` when the system
        message contains ``trigger``, ``otherwise(user text)`` when it does not (the last user
        message is the text). Replaces an earlier rule."""
        with self._lock:
            self._rule = Rule(trigger, follow, otherwise)

    def script_system(self, marker: str, answer: Callable[[str], str]) -> None:
        """From now on, chat completions with no scripted answer left whose system message
        contains ``marker`` answer ``answer(last user text)``, before any ``script_rule``: a
        second model behind the same server, told apart by its prompt (an LLM judge, whose
        system prompt holds its rubric, say). Replaces an earlier answer for the same marker."""
        with self._lock:
            self._by_system[marker] = answer

    def script_model(self, prefix: str, answer: Callable[[str], str]) -> None:
        """From now on, chat completions with no scripted answer left for a model whose id
        starts with ``prefix`` answer ``answer(last user text)``, before ``script_system`` and
        ``script_rule``: a fine-tuned model (``ft:…``) and its base told apart by their ids.
        The longest matching prefix wins. Replaces an earlier answer for the same prefix."""
        with self._lock:
            self._by_model[prefix] = answer

    def script_error(
        self,
        route: str,
        status: int,
        message: str = "scripted failure",
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        times: int = 1,
        retry_after_s: float | None = None,
    ) -> None:
        """Answer the next ``times`` requests to ``route`` (e.g. ``"POST /v1/files"``, as in
        ``Received.route``) with HTTP ``status`` and OpenAI's error JSON; ``retry_after_s``
        adds ``retry-after-ms``, which the openai client honours when it retries."""
        error = ScriptedError(status, message, type, code, param, times, retry_after_s)
        with self._lock:
            self._errors.setdefault(route, []).append(error)

    # -- what it received ---------------------------------------------------------------------

    def calls(self, route: str) -> list[Received]:
        """The requests answered on ``route``, in order."""
        with self._lock:
            return [request for request in self.received if request.route == route]

    def job(self) -> FineTuningJob:
        """The one fine-tuning job created (a test with several looks them up in ``jobs``)."""
        with self._lock:
            if len(self.jobs) != 1:
                raise AssertionError(f"expected one fine-tuning job, the fake has {len(self.jobs)}")
            return next(iter(self.jobs.values()))

    def wait_for(self, what: str, condition: Callable[[], object], timeout: float = 20.0) -> None:
        """Wait until ``condition()`` is true; ``AssertionError`` naming ``what`` if it is not
        within ``timeout`` seconds."""
        wait_for(condition, timeout, f"the fake OpenAI server to see {what}", interval=0.02)

    # -- plumbing -----------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):04d}{secrets.token_hex(4)}"

    def _gate(self, request: Request, route: str, body: Any) -> Response | None:
        """Authentication and scripted errors, in that order, as OpenAI checks the key first.

        Called with the lock held; records the request when it is refused."""
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return self._refuse(
                request,
                route,
                body,
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        key = header.removeprefix("Bearer ")
        if key != self.api_key:
            # Real OpenAI masks most of the key here; an OpenAI-compatible server may not, so
            # the fake echoes it whole: a job must keep it out of its result and log all the same.
            return self._refuse(
                request,
                route,
                body,
                401,
                f"Incorrect API key provided: {key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        queue = self._errors.get(route)
        if not queue:
            return None
        scripted = queue[0]
        if scripted.times <= 1:
            queue.pop(0)
        else:
            queue[0] = replace(scripted, times=scripted.times - 1)
        headers = {}
        if scripted.retry_after_s is not None:
            headers["retry-after-ms"] = str(int(scripted.retry_after_s * 1000))
        return self._refuse(
            request,
            route,
            body,
            scripted.status,
            scripted.message,
            type=scripted.type,
            code=scripted.code,
            param=scripted.param,
            headers=headers,
        )

    def _refuse(
        self,
        request: Request,
        route: str,
        body: Any,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        self.received.append(Received(route, request.url.path, status, body))
        error = {"message": message, "type": type, "param": param, "code": code}
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    def _answer(self, request: Request, route: str, body: Any, payload: Json) -> Response:
        self.received.append(Received(route, request.url.path, 200, body))
        return JSONResponse(payload)

    # -- chat ---------------------------------------------------------------------------------

    async def _chat_completion(self, request: Request) -> Response:
        route = CHAT_ROUTE
        body = await request.json()
        with self._lock:
            refused = self._gate(request, route, body)
            if refused is not None:
                return refused
            if body.get("stream"):
                return self._refuse(
                    request,
                    route,
                    body,
                    400,
                    "the fake OpenAI server does not stream",
                    param="stream",
                )
            messages = body.get("messages") or []
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if not users:
                return self._refuse(
                    request, route, body, 400, "messages must hold a user message", param="messages"
                )
            model = str(body.get("model", ""))
            answer = (
                self._answers.pop(0) if self._answers else self._reply(model, messages, users[-1])
            )
            prompt_tokens = sum(len(_text(m.get("content"))) for m in messages) // 4 + 1
            completion_tokens = len(answer) // 4 + 1
            payload = {
                "id": self._new_id("chatcmpl"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "unknown"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer, "refusal": None},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
            return self._answer(request, route, body, payload)

    def _reply(self, model: str, messages: list[Any], user: Json) -> str:
        """The unscripted answer: a ``script_model`` model's whose prefix the model id has,
        else a ``script_system`` model's whose marker the system message holds, else the
        rule's, when there is one, else the echo."""
        text = _text(user.get("content"))
        prefixes = [prefix for prefix in self._by_model if model.startswith(prefix)]
        if prefixes:
            return self._by_model[max(prefixes, key=len)](text)
        system = "".join(
            _text(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "system"
        )
        for marker, answer in self._by_system.items():
            if marker in system:
                return answer(text)
        if self._rule is None:
            return text
        rule = self._rule
        return rule.follow(text) if rule.trigger in system else rule.otherwise(text)


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


@contextmanager
def serve_fake_openai(api_key: str = DEFAULT_API_KEY, **options: Any) -> Iterator[FakeOpenAI]:
    """A running ``FakeOpenAI`` on 127.0.0.1 and a free port, stopped on exit."""
    fake = FakeOpenAI(api_key, **options)
    with serving_app(fake.app, "fake-openai", lifespan="off") as url:
        fake.base_url = f"{url}/v1"
        yield fake


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server for this test; ``.base_url`` and ``.api_key`` to reach it."""
    with serve_fake_openai() as fake:
        yield fake
