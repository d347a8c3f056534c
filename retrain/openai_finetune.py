"""The ``openai_finetune`` job: fine-tune a model through the OpenAI fine-tuning API.

It checks the chat data, refuses a job over budget before anything is uploaded, uploads the
files, creates the fine-tuning job, follows it to its end and records the fine-tuned model's id.
Any OpenAI-compatible server that implements the files and fine-tuning endpoints will do.

The spec (``job.json``) names:

``training_file``, ``validation_file`` (optional)
    Chat JSONL, one example per line: ``{"messages": [{"role": ..., "content": ...}, ...]}``
    with at least one assistant message. Every line is checked before anything is uploaded,
    and the first bad one is named.
``base_model``
    The model to fine-tune, e.g. ``gpt-4o-mini-2024-07-18``.
``output_dir``
    Where ``result.json`` goes; the daemon sets it.
``suffix`` (optional)
    Up to 64 characters that OpenAI adds to the fine-tuned model's name.
``hyperparameters`` (optional)
    ``n_epochs``, ``batch_size``, ``learning_rate_multiplier``: a number or ``"auto"``; sent
    as the ``supervised`` method's hyperparameters. ``seed`` (optional) is passed on too.
``base_url`` (optional), ``api_key_env`` (``OPENAI_API_KEY``)
    The API to use (the openai client's default when absent) and the name of the environment
    variable that holds its key. The key itself never appears in the spec (an ``api_key``
    key is refused), the result or the log: any text that contains it is redacted.
``poll_interval_s`` (10), ``poll_max_interval_s`` (120), ``timeout_s`` (86400)
    The job is polled every ``poll_interval_s``, backing off by doubling up to
    ``poll_max_interval_s`` while nothing changes, back to ``poll_interval_s`` when its status
    does. After ``timeout_s`` from the start the fine-tuning job is cancelled on the server.
``request_timeout_s`` (300), ``max_retries`` (3)
    Per HTTP request, as the openai client takes them (it retries 408, 409, 429 and 5xx
    answers and lost connections with backoff, honouring ``Retry-After``). While polling, a
    request that still fails for one of those reasons is tried again at the next poll.
``max_cost_usd``, ``price_per_million_training_tokens`` (optional)
    The estimate is the training file's tokens x ``n_epochs`` x the price (OpenAI bills
    training tokens only; validation tokens are free). A job whose estimate is over
    ``max_cost_usd`` is refused before anything is uploaded. A budget needs both the price
    and a whole ``n_epochs``: with ``auto`` OpenAI picks the epochs, and no bound is known.
``cancel_file`` (optional)
    A path the daemon creates to cancel the job: once it exists, the fine-tuning job is
    cancelled on the server and this job ends as cancelled. SIGTERM and SIGINT do the same.

Tokens are counted with tiktoken when it is installed and has its encoding at hand; otherwise
(the default install) as characters / 4 of each message's text, plus 4 tokens per message and
3 per example for the chat format's framing: OpenAI's rule of thumb for English, which can be
off by a third either way for other languages or code. The result says which count was used.

The spec is ``retrain.contract.OpenAIFineTuneSpec``; relative paths are read from the spec's
directory. The result (``OpenAIFineTuneResult``) holds ``openai_job_id``,
``training_file_id``, ``validation_file_id``, ``fine_tuned_model``, ``status``,
``trained_tokens``, ``estimated_training_tokens``, ``estimated_cost_usd``, ``cost_usd`` (the
trained tokens at the given price) and what was counted and run.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, cast

from retrain.contract import OpenAIFineTuneResult, OpenAIFineTuneSpec
from retrain.errors import FineTuneCancelled, FineTuneError

if TYPE_CHECKING:
    from openai import OpenAI, OpenAIError
    from openai.types.fine_tuning import FineTuningJob
    from openai.types.fine_tuning.job_create_params import Method

Progress = Callable[[str], None]

KIND = "openai_finetune"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_EXAMPLE = 3
CANCEL_TIMEOUT_S = 5.0  # the daemon's grace between SIGTERM and SIGKILL is 10 s by default
_WAKE_S = 0.1  # how often a wait looks at the cancel file and the signal flag
_TRANSIENT_STATUS = frozenset({408, 409, 429})


def read_chat_jsonl(path: Path) -> list[list[dict[str, Any]]]:
    """The examples (lists of messages) of a chat fine-tuning file; ``FineTuneError`` names
    the first bad line and what a line must hold."""
    examples: list[list[dict[str, Any]]] = []
    blank: int | None = None
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                blank = blank or number
                continue
            if blank is not None:
                raise FineTuneError(
                    f"{path} line {blank} is empty: OpenAI reads every line as an example; "
                    "remove the empty lines"
                )
            examples.append(_chat_example(line, f"{path} line {number}"))
    if not examples:
        raise FineTuneError(f"{path} has no examples")
    return examples


def _chat_example(line: str, where: str) -> list[dict[str, Any]]:
    try:
        row = json.loads(line)
    except ValueError as error:
        raise FineTuneError(f"{where} is not JSON: {error}") from None
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise FineTuneError(
            f'{where} has no "messages" list; every line of a chat fine-tuning file is '
            '{"messages": [{"role": "user", "content": "..."}, '
            '{"role": "assistant", "content": "..."}]}'
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise FineTuneError(f"{where}: message {index} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise FineTuneError(
                f"{where}: message {index} has role {role!r}; roles are {', '.join(sorted(ROLES))}"
            )
        content = message.get("content")
        calls = role == "assistant" and (message.get("tool_calls") or message.get("function_call"))
        if not (isinstance(content, str | list) or calls):
            raise FineTuneError(f"{where}: message {index} ({role}) has no text content")
    if not any(message["role"] == "assistant" for message in messages):
        raise FineTuneError(
            f"{where} has no assistant message: an example teaches the model its assistant turns"
        )
    return messages


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    else:
        text = ""
    for key in ("tool_calls", "function_call"):
        if message.get(key):
            text += json.dumps(message[key])
    return text


def count_tokens(examples: list[list[dict[str, Any]]], model: str) -> tuple[int, str]:
    """The tokens of ``examples`` as fine-tuning bills them, approximately, and how they
    were counted: tiktoken's encoding for ``model`` when available, else characters / 4."""
    length, method = _tiktoken_encoder(model) or (
        _approximate_tokens,
        f"characters/{CHARS_PER_TOKEN}",
    )
    total = 0
    for messages in examples:
        total += TOKENS_PER_EXAMPLE
        total += sum(TOKENS_PER_MESSAGE + length(_message_text(m)) for m in messages)
    return total, method


def _approximate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _tiktoken_encoder(model: str) -> tuple[Callable[[str], int], str] | None:
    """tiktoken's token count for ``model`` (o200k_base for models it does not know), or None
    when tiktoken is not installed or cannot load its encoding (it downloads it on first use)."""
    try:
        tiktoken: Any = importlib.import_module("tiktoken")
    except ImportError:
        return None
    try:
        try:
            encoding = tiktoken.encoding_for_model(model)
        except KeyError:
            encoding = tiktoken.get_encoding("o200k_base")
    except Exception:  # offline, no cached encoding: the approximation has to do
        return None
    return (lambda text: len(encoding.encode(text))), f"tiktoken {encoding.name}"


class _Interrupted(Exception):
    """Internal: the job must stop now (cancelled, or out of time)."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class _StopRequests:
    """Whether the job was asked to stop: SIGTERM or SIGINT received, or the cancel file there.

    The signal handlers only set a flag: an HTTP request in flight finishes (within its
    timeout), then the job cancels the fine-tuning job on the server and ends."""

    def __init__(self, cancel_file: Path | None) -> None:
        self.cancel_file = cancel_file
        self.signal_name: str | None = None

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; the cancel file still works
            return
        previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        for number in previous:
            signal.signal(number, self._received)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _received(self, number: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(number).name

    def reason(self) -> str | None:
        if self.signal_name is not None:
            return f"{self.signal_name} received"
        if self.cancel_file is not None and self.cancel_file.exists():
            return f"cancel file {self.cancel_file} appeared"
        return None


def run(
    spec: OpenAIFineTuneSpec, progress: Progress, *, environ: Mapping[str, str] | None = None
) -> OpenAIFineTuneResult:
    """Fine-tune ``spec.base_model`` on the spec's data; the job's result.

    The key is read from ``environ`` (the process environment by default) under
    ``spec.api_key_env``; every progress line and error message is redacted of it.
    """
    key = (os.environ if environ is None else environ).get(spec.api_key_env, "").strip()
    if not key:
        raise FineTuneError(
            f"no API key: set the environment variable {spec.api_key_env} for the job "
            "('api_key_env' in the spec names the variable)"
        )
    redact = _redactor(key)
    stop = _StopRequests(spec.cancel_file)
    with stop.installed():
        try:
            return _FineTune(spec, key, lambda line: progress(redact(line)), redact, stop).run()
        except FineTuneError as error:
            safe = redact(str(error))
            if safe == str(error):
                raise
            raise type(error)(safe) from None


def _redactor(key: str) -> Callable[[str], str]:
    if len(key) < 4:  # too short to find without garbling every message
        return lambda text: text
    return lambda text: text.replace(key, "***")


class _FineTune:
    """One run of the job: the openai client, the clock, and what has been created so far."""

    def __init__(
        self,
        spec: OpenAIFineTuneSpec,
        key: str,
        say: Progress,
        redact: Callable[[str], str],
        stop: _StopRequests,
    ) -> None:
        self.spec = spec
        self.key = key
        self.say = say
        self.redact = redact
        self.stop = stop
        self.started = time.monotonic()
        self.deadline = self.started + spec.timeout_s
        self.base_url = spec.base_url or "the openai client's default"
        self._events_seen: set[str] = set()
        self._events_problem: str | None = None
        self._events_on = True

    def run(self) -> OpenAIFineTuneResult:
        spec = self.spec
        training = read_chat_jsonl(spec.training_file)
        validation = read_chat_jsonl(spec.validation_file) if spec.validation_file else []
        self.say(
            f"{KIND}: {len(training)} training examples in {spec.training_file}"
            + (f", {len(validation)} validation examples" if spec.validation_file else "")
        )
        tokens, counted = count_tokens(training, spec.base_model)
        estimate = self._estimate(tokens, counted)
        job_id: str | None = None
        try:
            self._checkpoint()
            client = self._client()
            training_id = self._upload(client, spec.training_file)
            validation_id = (
                self._upload(client, spec.validation_file) if spec.validation_file else None
            )
            job = self._create(client, training_id, validation_id)
            job_id = job.id
            job = self._follow(client, job)
        except _Interrupted as interrupted:
            raise self._interrupted(interrupted, job_id) from None
        except Exception as error:
            if job_id is None:
                raise
            # Left running, the remote job would go on costing money, unseen, and a retry of
            # this job would start a second one.
            remote = self._cancel_remote(job_id)
            if not isinstance(error, FineTuneError):
                raise
            raise FineTuneError(f"{error}; {remote}") from None
        self._check_outcome(job)
        price = spec.price_per_million_training_tokens
        cost = None if job.trained_tokens is None or price is None else job.trained_tokens * price
        epochs = job.hyperparameters.n_epochs if job.hyperparameters else None
        # The job's status on the server is ``succeeded`` here, as the result's status says.
        return OpenAIFineTuneResult(
            openai_job_id=job.id,
            training_file_id=training_id,
            validation_file_id=validation_id,
            base_model=spec.base_model,
            base_url=self.base_url,
            fine_tuned_model=job.fine_tuned_model,
            trained_tokens=job.trained_tokens,
            n_epochs=epochs if isinstance(epochs, int) else spec.n_epochs,
            training_examples=len(training),
            validation_examples=len(validation),
            estimated_training_tokens=tokens,
            token_count=counted,
            estimated_cost_usd=None if estimate is None else round(estimate, 6),
            cost_usd=None if cost is None else round(cost / 1e6, 6),
            duration_s=round(time.monotonic() - self.started, 3),
        )

    def _estimate(self, tokens: int, counted: str) -> float | None:
        """The cost estimate, refused before anything is uploaded when over the budget."""
        spec = self.spec
        epochs, price = spec.n_epochs, spec.price_per_million_training_tokens
        per_epoch = f"about {tokens} training tokens ({counted})"
        if epochs is None or price is None:
            self.say(f"{KIND}: {per_epoch} per epoch; no cost estimate without n_epochs and price")
            return None
        estimate = tokens * epochs * price / 1e6
        basis = f"{per_epoch} x {epochs} epochs x ${price:g} per million tokens"
        if spec.max_cost_usd is not None and estimate > spec.max_cost_usd:
            raise FineTuneError(
                f"over budget: the estimated cost ${estimate:.4f} ({basis}) is above "
                f"max_cost_usd ${spec.max_cost_usd:.4f}; nothing was uploaded. Raise "
                "max_cost_usd, or train for fewer epochs or on fewer examples"
            ).for_good()
        self.say(f"{KIND}: estimated cost ${estimate:.4f} ({basis})")
        return estimate

    def _client(self) -> OpenAI:
        import openai

        spec = self.spec
        client = openai.OpenAI(
            api_key=self.key,
            base_url=spec.base_url,
            max_retries=spec.max_retries,
            timeout=spec.request_timeout_s,
        )
        self.base_url = str(client.base_url).rstrip("/")
        self.say(f"{KIND}: OpenAI API at {self.base_url}")
        return client

    def _upload(self, client: OpenAI, path: Path) -> str:
        with self._api(f"uploading {path}"), path.open("rb") as content:
            uploaded = client.files.create(file=(path.name, content), purpose="fine-tune")
        self.say(f"{KIND}: uploaded {path} as {uploaded.id} ({uploaded.bytes} bytes)")
        interval = self.spec.poll_interval_s
        status = uploaded.status
        while status not in (None, "processed"):
            if status == "error":
                raise FineTuneError(
                    f"OpenAI could not process {path} (file {uploaded.id}): "
                    f"{self.redact(str(uploaded.status_details or 'no details given'))}"
                )
            self._wait(interval)
            interval = min(interval * 2, self.spec.max_interval_s)
            with self._api(f"checking upload {uploaded.id}"):
                uploaded = client.files.retrieve(uploaded.id)
            status = uploaded.status
        self._checkpoint()
        return uploaded.id

    def _create(self, client: OpenAI, training_id: str, validation_id: str | None) -> FineTuningJob:
        spec = self.spec
        options: dict[str, Any] = {"model": spec.base_model, "training_file": training_id}
        if validation_id is not None:
            options["validation_file"] = validation_id
        if spec.suffix is not None:
            options["suffix"] = spec.suffix
        if spec.seed is not None:
            options["seed"] = spec.seed
        if spec.hyperparameters:
            options["method"] = cast(
                "Method",
                {
                    "type": "supervised",
                    "supervised": {"hyperparameters": dict(spec.hyperparameters)},
                },
            )
        with self._api(f"creating the fine-tuning job of {spec.base_model}"):
            job = client.fine_tuning.jobs.create(**options)
        self.say(
            f"{KIND}: created fine-tuning job {job.id} of {spec.base_model}: status {job.status}"
        )
        return job

    def _follow(self, client: OpenAI, job: FineTuningJob) -> FineTuningJob:
        """Poll ``job`` until it ends, printing its status changes, tokens and events."""
        spec = self.spec
        interval = spec.poll_interval_s
        status, tokens = job.status, job.trained_tokens
        self._print_events(client, job.id)
        while job.status not in TERMINAL:
            self._wait(interval)
            interval = min(interval * 2, spec.max_interval_s)
            polled = self._poll(client, job.id, interval)
            if polled is None:
                continue
            job = polled
            if job.status != status:
                status, interval = job.status, spec.poll_interval_s
                self.say(f"{KIND}: fine-tuning job {job.id}: status {status}")
            if job.trained_tokens is not None and job.trained_tokens != tokens:
                tokens = job.trained_tokens
                self.say(f"{KIND}: fine-tuning job {job.id} trained {tokens} tokens")
            self._print_events(client, job.id)
        return job

    def _poll(self, client: OpenAI, job_id: str, next_s: float) -> FineTuningJob | None:
        """The job now, or None after a failure worth trying again at the next poll: a lost
        connection, or a 408/409/429/5xx the client's own retries did not get past."""
        import openai

        try:
            return client.fine_tuning.jobs.retrieve(job_id)
        except (openai.APIConnectionError, openai.APIStatusError) as error:
            transient = not isinstance(error, openai.APIStatusError) or (
                error.status_code in _TRANSIENT_STATUS or error.status_code >= 500
            )
            if not transient:
                self._raise_api_error(f"polling fine-tuning job {job_id}", error)
            self.say(
                f"{KIND}: polling fine-tuning job {job_id} failed ({self._describe(error)}); "
                f"trying again in {next_s:g} s"
            )
            return None
        except openai.OpenAIError as error:
            self._raise_api_error(f"polling fine-tuning job {job_id}", error)

    def _print_events(self, client: OpenAI, job_id: str) -> None:
        """The job's events not printed yet, oldest first; a server without events is told
        once and not asked again, and a failure to read them never fails the job."""
        import openai

        if not self._events_on:
            return
        try:
            page = client.fine_tuning.jobs.list_events(job_id, limit=100)
        except openai.OpenAIError as error:
            if isinstance(error, openai.APIStatusError) and error.status_code in (404, 405, 501):
                self._events_on = False
                self.say(f"{KIND}: the server has no fine-tuning events; following status only")
                return
            problem = self._describe(error)
            if problem != self._events_problem:
                self._events_problem = problem
                self.say(f"{KIND}: cannot read the job's events ({problem}); trying again later")
            return
        for event in reversed(page.data):
            if event.id not in self._events_seen:
                self._events_seen.add(event.id)
                self.say(f"{KIND}: event [{event.level}] {self.redact(event.message)}")

    def _check_outcome(self, job: FineTuningJob) -> None:
        if job.status == "failed":
            error = job.error
            if error is None:
                raise FineTuneError(f"fine-tuning job {job.id} failed; OpenAI gave no error")
            param = f" (param: {error.param})" if error.param else ""
            raise FineTuneError(
                f"fine-tuning job {job.id} failed: {error.code}: {error.message}{param}"
            )
        if job.status == "cancelled":
            raise FineTuneCancelled(
                f"cancelled: fine-tuning job {job.id} was cancelled on the server, not by this job"
            )
        if not job.fine_tuned_model:
            raise FineTuneError(
                f"fine-tuning job {job.id} succeeded but the server named no fine_tuned_model"
            )
        self.say(f"{KIND}: fine-tuning job {job.id} succeeded: {job.fine_tuned_model}")

    # -- stopping -------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        reason = self.stop.reason()
        if reason is not None:
            raise _Interrupted(reason)
        if time.monotonic() >= self.deadline:
            raise _Interrupted(
                f"not done within timeout_s={self.spec.timeout_s:g} s", timed_out=True
            )

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, ending early with ``_Interrupted`` when the job must stop."""
        end = time.monotonic() + seconds
        while True:
            self._checkpoint()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_WAKE_S, left))

    def _interrupted(self, interrupted: _Interrupted, job_id: str | None) -> FineTuneError:
        """The error that ends an interrupted job, after cancelling its remote job if any."""
        if job_id is None:
            remote = "no fine-tuning job had been created"
        else:
            remote = self._cancel_remote(job_id)
        if interrupted.timed_out:
            return FineTuneError(f"timed out: {interrupted.reason}; {remote}")
        return FineTuneCancelled(f"cancelled ({interrupted.reason}); {remote}")

    def _cancel_remote(self, job_id: str) -> str:
        import openai

        client = openai.OpenAI(
            api_key=self.key,
            base_url=self.spec.base_url,
            max_retries=1,
            timeout=CANCEL_TIMEOUT_S,
        )
        try:
            job = client.fine_tuning.jobs.cancel(job_id)
        except openai.OpenAIError as error:
            remote = (
                f"cancelling fine-tuning job {job_id} on the server failed "
                f"({self._describe(error)}): cancel it by hand"
            )
        else:
            remote = f"fine-tuning job {job_id} was cancelled on the server ({job.status})"
        self.say(f"{KIND}: {remote}")
        return remote

    # -- errors ---------------------------------------------------------------------------------

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        """Turns the openai client's errors into a ``FineTuneError`` saying what failed."""
        import openai

        try:
            yield
        except openai.OpenAIError as error:
            self._raise_api_error(what, error)

    def _raise_api_error(self, what: str, error: OpenAIError) -> NoReturn:
        # ``from None``: the openai error's own text may hold what the server echoed of the
        # key, and a chained traceback would print it unredacted.
        raise FineTuneError(f"{what} failed: {self._describe(error)}") from None

    def _describe(self, error: OpenAIError) -> str:
        """The server's answer (status, code, message, param) or the connection problem,
        with a hint for the usual causes, redacted of the key."""
        import openai

        if isinstance(error, openai.APIStatusError):
            body = error.body if isinstance(error.body, dict) else {}
            message = body.get("message") or error.message
            code = f" ({error.code})" if error.code else ""
            param = f" (param: {error.param})" if error.param else ""
            status = f"HTTP {error.status_code}{code}"
            text = f"the API at {self.base_url} answered {status}: {message}{param}"
            hint = {
                401: f"; check the key in the environment variable {self.spec.api_key_env}",
                404: "; check base_url and base_model",
                429: f"; rate limited or out of quota after {self.spec.max_retries} retries",
            }.get(error.status_code, "")
            return self.redact(text + hint)
        if isinstance(error, openai.APIConnectionError):
            return self.redact(
                f"cannot reach the API at {self.base_url}: {error}; check base_url and the network"
            )
        return self.redact(f"{type(error).__name__}: {error}")
