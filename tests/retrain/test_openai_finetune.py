"""``python -m retrain openai_finetune``: fine-tuning through the real ``openai`` client against
the fake OpenAI server of ``tests/fake_openai.py``, over HTTP.

The training data is twelve Banking77 questions (CC BY 4.0, see examples/banking77) as chat
examples that answer each question with its intent. The API key is handed to the job in an
environment variable, as the daemon does; the fake echoes a wrong key back in its 401 answer,
as some OpenAI-compatible servers do, so the tests can prove it never reaches a log or a result.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from retrain.__main__ import main
from retrain.errors import EXIT_FINAL
from retrain.openai_finetune import count_tokens
from tests.fake_openai import (
    CANCEL_ROUTE,
    CHAT_ROUTE,
    EVENTS_ROUTE,
    FILE_ROUTE,
    JOB_ROUTE,
    JOBS_ROUTE,
    Fail,
    FakeOpenAI,
    RunUntilCancelled,
    Succeed,
)
from tests.helpers import jobs
from tests.helpers.jobs import start_retrain

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77" / "data" / "test.csv"
KIND = "openai_finetune"
KEY_ENV = "DRIFTD_TEST_OPENAI_KEY"
WRONG_KEY = "sk-wrong-8f3a61c0d2e94b17"
BASE_MODEL = "gpt-4o-mini-2024-07-18"
SYSTEM = "Answer with the intent of the customer's banking question."
FAST_POLLING = {"poll_interval_s": 0.05, "poll_max_interval_s": 0.2, "max_retries": 0}


@pytest.fixture
def training(tmp_path: Path) -> Path:
    """Twelve Banking77 questions as chat examples, the assistant answering with the intent."""
    with BANKING77.open(newline="") as source:
        rows = [row for row, _ in zip(csv.DictReader(source), range(12), strict=False)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(_example(r["text"], r["category"])) + "\n" for r in rows))
    return path


def _example(question: str, intent: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": intent},
        ]
    }


def write_spec(directory: Path, fake: FakeOpenAI, **spec: Any) -> Path:
    defaults = {
        "base_model": BASE_MODEL,
        "base_url": fake.base_url,
        "api_key_env": KEY_ENV,
        "output_dir": "out",
        **FAST_POLLING,
    }
    return jobs.write_spec(directory, **{**defaults, **spec})


def result_of(directory: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((directory / "out" / "result.json").read_text())
    return result


def start(spec: Path, key: str) -> subprocess.Popen[str]:
    """``python -m retrain openai_finetune --spec ...`` with the key in its environment only."""
    env = {name: value for name, value in os.environ.items() if name != "OPENAI_API_KEY"}
    return start_retrain(KIND, "--spec", str(spec), env={**env, KEY_ENV: key})


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Jobs a test starts; any still running at its end is killed by its pid."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def wait_until_polled(fake: FakeOpenAI, process: subprocess.Popen[str], polls: int = 1) -> None:
    """Wait until the job has polled its fine-tuning job ``polls`` times; fail at once, with
    its output, if it ended before."""

    def polled() -> bool:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the job ended with {process.returncode} first:\n{out}{err}")
        return bool(fake.jobs) and fake.job().polls >= polls

    fake.wait_for(f"{polls} polls of the fine-tuning job", polled)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_a_fine_tune_runs_end_to_end_and_records_the_fine_tuned_model(
    fake_openai: FakeOpenAI,
    training: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    validation = tmp_path / "valid.jsonl"
    validation.write_text(json.dumps(_example("Where is my new card?", "card_arrival")) + "\n")
    fake_openai.script_job(Succeed(after_polls=3))
    spec = write_spec(
        tmp_path,
        fake_openai,
        training_file="train.jsonl",
        validation_file="valid.jsonl",
        suffix="support-bot",
        hyperparameters={"n_epochs": 2},
        seed=7,
        price_per_million_training_tokens=3.0,
        max_cost_usd=1.0,
    )
    processes.append(job := start(spec, fake_openai.api_key))

    code, out, err = finish(job)

    assert code == 0, err
    assert (tmp_path / "exit").read_text().strip() == "0"
    remote = fake_openai.job()
    result = result_of(tmp_path)
    assert result["status"] == "succeeded"
    assert result["openai_job_id"] == remote.id
    assert result["fine_tuned_model"] == remote.fine_tuned_model
    assert remote.fine_tuned_model is not None
    assert remote.fine_tuned_model.startswith(f"ft:{BASE_MODEL}:org-fake:support-bot:")
    # The server got the very bytes of both files, for fine-tuning.
    uploaded = fake_openai.files[result["training_file_id"]]
    assert uploaded.content == training.read_bytes()
    assert (uploaded.filename, uploaded.purpose) == ("train.jsonl", "fine-tune")
    assert fake_openai.files[result["validation_file_id"]].content == validation.read_bytes()
    # The job waited for each upload to be processed before creating the fine-tuning job.
    assert len(fake_openai.calls(FILE_ROUTE)) == 2
    assert remote.request["model"] == BASE_MODEL
    assert remote.request["suffix"] == "support-bot"
    assert remote.request["seed"] == 7
    assert remote.request["validation_file"] == result["validation_file_id"]
    assert remote.request["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 2}},
    }
    # Twelve examples; the estimate is the counted tokens x 2 epochs x $3 per million, the
    # cost the tokens the server says it trained at the same price.
    assert result["training_examples"] == 12
    assert result["validation_examples"] == 1
    assert result["token_count"] == "characters/4"
    assert result["n_epochs"] == 2
    tokens = result["estimated_training_tokens"]
    assert result["estimated_cost_usd"] == pytest.approx(tokens * 2 * 3.0 / 1e6)
    assert remote.trained_tokens is not None
    assert result["trained_tokens"] == remote.trained_tokens
    assert result["cost_usd"] == pytest.approx(remote.trained_tokens * 3.0 / 1e6)
    # Progress: status changes, trained tokens and the server's events, in order.
    assert f"fine-tuning job {remote.id}: status running" in out
    assert f"fine-tuning job {remote.id} trained {remote.trained_tokens} tokens" in out
    assert "event [info] Fine-tuning job started" in out
    assert out.index("status running") < out.index(f"succeeded: {remote.fine_tuned_model}")
    assert f"event [info] New fine-tuned model created: {remote.fine_tuned_model}" in out
    everything = out + err + (tmp_path / "out" / "result.json").read_text()
    assert fake_openai.api_key not in everything


def test_a_failed_fine_tuning_job_fails_the_job_with_openais_error(
    fake_openai: FakeOpenAI, training: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    fake_openai.script_job(
        Fail(
            after_polls=2,
            code="invalid_training_file",
            message="Training file has 12 examples, but must have at least 10 with an assistant "
            "message of at most 4096 tokens.",
            param="training_file",
        )
    )
    spec = write_spec(tmp_path, fake_openai, training_file=str(training))

    assert main([KIND, "--spec", str(spec)]) == 1

    result = result_of(tmp_path)
    assert result["status"] == "failed"
    assert result["error"] == (
        f"fine-tuning job {fake_openai.job().id} failed: invalid_training_file: Training file "
        "has 12 examples, but must have at least 10 with an assistant message of at most 4096 "
        "tokens. (param: training_file)"
    )
    assert (tmp_path / "exit").read_text().strip() == "1"


def test_the_cancel_file_cancels_the_fine_tuning_job_on_the_server(
    fake_openai: FakeOpenAI,
    training: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    fake_openai.script_job(RunUntilCancelled())
    cancel = tmp_path / "cancel"
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl", cancel_file="cancel")
    processes.append(job := start(spec, fake_openai.api_key))
    wait_until_polled(fake_openai, job, polls=2)

    cancel.touch()
    code, out, err = finish(job)

    assert code == 1, err
    remote = fake_openai.job()
    assert remote.status == "cancelled"
    assert [call.status for call in fake_openai.calls(CANCEL_ROUTE)] == [200]
    result = result_of(tmp_path)
    assert result["status"] == "cancelled"
    error = result["error"]
    assert error == (
        f"cancelled (cancel file {cancel} appeared); fine-tuning job {remote.id} was "
        "cancelled on the server (cancelled)"
    )
    assert "event [info] Fine-tuning job started" in out


def test_sigterm_cancels_the_fine_tuning_job_on_the_server_then_exits(
    fake_openai: FakeOpenAI,
    training: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    fake_openai.script_job(RunUntilCancelled())
    spec = write_spec(
        tmp_path,
        fake_openai,
        training_file="train.jsonl",
        poll_interval_s=0.5,
        poll_max_interval_s=0.5,
    )
    processes.append(job := start(spec, fake_openai.api_key))
    wait_until_polled(fake_openai, job)

    job.send_signal(signal.SIGTERM)
    # Well within the daemon's 10 s between SIGTERM and SIGKILL.
    out, err = job.communicate(timeout=8)

    assert job.returncode == 1, err
    assert f"fine-tuning job {fake_openai.job().id} was cancelled on the server" in out
    assert fake_openai.job().status == "cancelled"
    assert len(fake_openai.calls(CANCEL_ROUTE)) == 1
    assert result_of(tmp_path)["error"].startswith("cancelled (SIGTERM received); ")


def test_a_job_cancelled_on_the_server_by_someone_else_ends_cancelled(
    fake_openai: FakeOpenAI,
    training: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    fake_openai.script_job(RunUntilCancelled())
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl")
    processes.append(job := start(spec, fake_openai.api_key))
    wait_until_polled(fake_openai, job)

    operator = openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key)
    operator.fine_tuning.jobs.cancel(fake_openai.job().id)
    code, out, err = finish(job)

    assert code == 1, err
    assert f"fine-tuning job {fake_openai.job().id}: status cancelled" in out
    assert result_of(tmp_path)["error"] == (
        f"cancelled: fine-tuning job {fake_openai.job().id} was cancelled on the server, "
        "not by this job"
    )


def test_a_wrong_key_is_surfaced_as_http_401_and_the_key_is_never_shown(
    fake_openai: FakeOpenAI,
    training: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl")
    processes.append(job := start(spec, WRONG_KEY))

    code, out, err = finish(job)

    assert code == 1
    assert [call.status for call in fake_openai.received] == [401]
    assert not fake_openai.files
    result_text = (tmp_path / "out" / "result.json").read_text()
    for text in (out, err, result_text, spec.read_text()):
        assert WRONG_KEY not in text
    assert json.loads(result_text)["error"] == (
        f"uploading {training} failed: the API at {fake_openai.base_url} answered HTTP 401 "
        "(invalid_api_key): Incorrect API key provided: ***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.; check the key in the environment "
        f"variable {KEY_ENV}"
    )
    assert "Incorrect API key provided: ***" in err
    # The server did echo the key in full, so the job's redaction is what kept it out.
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key=WRONG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError, match=WRONG_KEY):
        client.files.retrieve("file-any")


def test_a_missing_key_fails_the_job_naming_the_variable(
    fake_openai: FakeOpenAI, training: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl")

    assert main([KIND, "--spec", str(spec)]) == 1

    assert result_of(tmp_path)["error"].startswith(
        f"no API key: set the environment variable {KEY_ENV} for the job"
    )
    assert not fake_openai.received


def test_a_job_over_budget_is_refused_before_anything_is_uploaded(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    # One example: 3 tokens of framing, then 4 + 8/4 for the question, 4 + 4/4 for the answer.
    example = {
        "messages": [
            {"role": "user", "content": "12345678"},
            {"role": "assistant", "content": "abcd"},
        ]
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(example) + "\n")
    spec = write_spec(
        tmp_path,
        fake_openai,
        training_file="train.jsonl",
        hyperparameters={"n_epochs": 3},
        price_per_million_training_tokens=1000,
        max_cost_usd=0.04,
    )

    # Exit 3: failed, and a retry would fail the same way, so the daemon does not retry it.
    assert main([KIND, "--spec", str(spec)]) == EXIT_FINAL

    assert result_of(tmp_path)["error"] == (
        "over budget: the estimated cost $0.0420 (about 14 training tokens (characters/4) x 3 "
        "epochs x $1000 per million tokens) is above max_cost_usd $0.0400; nothing was "
        "uploaded. Raise max_cost_usd, or train for fewer epochs or on fewer examples"
    )
    assert fake_openai.received == []


GOOD = json.dumps(_example("Where is my card?", "card_arrival"))


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([GOOD, '{"messages": [{"role": "user"'], "line 2 is not JSON"),
        ([GOOD, GOOD, '{"prompt": "a", "completion": "b"}'], 'line 3 has no "messages" list'),
        (
            ['{"messages": [{"role": "customer", "content": "hi"}]}'],
            "line 1: message 0 has role 'customer'; roles are assistant, developer, function",
        ),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], "line 1 has no assistant message"),
        (
            [GOOD, '{"messages": [{"role": "user", "content": 3}, {"role": "assistant"}]}'],
            "line 2: message 0 (user) has no text content",
        ),
        ([GOOD, "", GOOD], "line 2 is empty: OpenAI reads every line as an example"),
    ],
)
def test_a_bad_chat_line_is_named_and_nothing_is_uploaded(
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    problem: str,
) -> None:
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl")

    assert main([KIND, "--spec", str(spec)]) == 1

    assert result_of(tmp_path)["error"].startswith(f"{data} {problem}")
    assert fake_openai.received == []


def test_a_rate_limited_request_is_retried_by_the_client(
    fake_openai: FakeOpenAI, training: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    fake_openai.script_error(
        JOBS_ROUTE,
        429,
        "Rate limit reached",
        code="rate_limit_exceeded",
        retry_after_s=0.01,
    )
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl", max_retries=2)

    assert main([KIND, "--spec", str(spec)]) == 0

    assert [call.status for call in fake_openai.calls(JOBS_ROUTE)] == [429, 200]
    assert result_of(tmp_path)["fine_tuned_model"] == fake_openai.job().fine_tuned_model


def test_polling_rides_out_server_errors_and_a_server_without_events(
    fake_openai: FakeOpenAI,
    training: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    fake_openai.script_error(JOB_ROUTE, 503, "The server is overloaded", type="server_error")
    fake_openai.script_error(EVENTS_ROUTE, 404, "Not found", times=100)
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl")

    assert main([KIND, "--spec", str(spec)]) == 0

    out = capsys.readouterr().out
    assert "answered HTTP 503: The server is overloaded); trying again in 0.1 s" in out
    assert "the server has no fine-tuning events; following status only" in out
    assert len(fake_openai.calls(EVENTS_ROUTE)) == 1
    assert result_of(tmp_path)["status"] == "succeeded"


def test_a_job_out_of_time_cancels_the_fine_tuning_job_on_the_server(
    fake_openai: FakeOpenAI, training: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, fake_openai.api_key)
    fake_openai.script_job(RunUntilCancelled())
    spec = write_spec(tmp_path, fake_openai, training_file="train.jsonl", timeout_s=1)

    assert main([KIND, "--spec", str(spec)]) == 1

    remote = fake_openai.job()
    assert remote.status == "cancelled"
    assert result_of(tmp_path)["error"] == (
        f"timed out: not done within timeout_s=1 s; fine-tuning job {remote.id} was cancelled "
        "on the server (cancelled)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"api_key": WRONG_KEY},
            "'api_key' must not be in the spec: put the key in the job's environment",
        ),
        ({"base_model": ""}, "'base_model' must be a model name"),
        ({"max_cost_usd": 5}, "'max_cost_usd' needs 'price_per_million_training_tokens'"),
        (
            {"max_cost_usd": 5, "price_per_million_training_tokens": 3},
            "'max_cost_usd' needs hyperparameters.n_epochs as a whole number",
        ),
        ({"hyperparameters": {"epochs": 3}}, "hyperparameters.epochs is not one OpenAI takes"),
        ({"api_key_env": "OPENAI KEY"}, "'api_key_env' must name an environment variable"),
        ({"suffix": "x" * 65}, "'suffix' must be 1 to 64 characters"),
        ({"timeout_s": None}, "'timeout_s' must be a number from 0.1 to 2.592e+06, got None"),
        (
            {"poll_interval_s": 5, "poll_max_interval_s": 1},
            "'poll_max_interval_s' (1) must not be below 'poll_interval_s' (5)",
        ),
    ],
)
def test_a_bad_spec_exits_2_and_says_what_is_wrong(
    fake_openai: FakeOpenAI,
    training: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec: dict[str, Any],
    message: str,
) -> None:
    path = write_spec(tmp_path, fake_openai, training_file="train.jsonl", **spec)

    assert main([KIND, "--spec", str(path)]) == 2

    err = capsys.readouterr().err
    assert message in err
    assert WRONG_KEY not in err
    assert fake_openai.received == []


def test_tokens_are_counted_with_tiktoken_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Encoding:
        name = "words"

        def encode(self, text: str) -> list[str]:
            return text.split()

    tiktoken = types.ModuleType("tiktoken")
    tiktoken.encoding_for_model = lambda model: Encoding()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", tiktoken)
    examples = [
        [{"role": "user", "content": "one two three"}, {"role": "assistant", "content": "x"}]
    ]

    assert count_tokens(examples, BASE_MODEL) == (3 + 4 + 3 + 4 + 1, "tiktoken words")


def test_the_fake_server_echoes_the_last_user_message_as_a_chat_completion(
    fake_openai: FakeOpenAI,
) -> None:
    """The chat endpoint other tests use (the proxy's upstream, prompt revision): the real
    client parses its answer."""
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key)

    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "How do I locate my card?"},
        ],
    )

    assert answer.choices[0].message.content == "How do I locate my card?"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    (call,) = fake_openai.calls(CHAT_ROUTE)
    assert call.body["model"] == "gpt-4o-mini"
