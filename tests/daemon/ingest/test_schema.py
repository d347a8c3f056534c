"""The ingest schema on its own: what it refuses that the store could not hold or a reader
could not trust, and how each problem is named."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from daemon.ingest.schema import (
    FEEDBACK_BATCH,
    SAMPLE_BATCH,
    FeedbackIn,
    SampleIn,
    parse_body,
    problems_of,
)

NUL_MESSAGE = "contains a NUL character (\\u0000), which the store cannot hold; remove it"


def problems(body: bytes, items: str = "samples") -> list[tuple[int | None, str, str]]:
    adapter = SAMPLE_BATCH if items == "samples" else FEEDBACK_BATCH
    with pytest.raises(ValidationError) as caught:
        parse_body(body, adapter)
    return [(p.index, p.field, p.message) for p in problems_of(caught.value, items)]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_pydantic_reads_non_finite_tokens_so_the_schema_refuses_them(token: str) -> None:
    # The premise: pydantic's JSON parser takes these tokens as floats...
    assert not math.isfinite(TypeAdapter(float).validate_json(token))
    # ...so a plain float field would hold them; the schema's do not.
    body = f'{{"samples": [{{"request_id": "a", "input": "q", "latency_ms": {token}}}]}}'
    assert problems(body.encode()) == [(0, "latency_ms", "Input should be a finite number")]


def test_a_bad_input_is_named_once_whichever_form_it_takes() -> None:
    """``input`` is text or messages: a problem with one form is not also reported as 'not the
    other form'."""
    text = '{"samples": [{"request_id": "a", "input": "a\\u0000b"}]}'
    [(index, field, message)] = problems(text.encode())
    assert (index, field) == (0, "input")
    assert message.startswith("contains a NUL character")
    chat = '{"samples": [{"request_id": "a", "input": [{"role": "user", "content": 5}]}]}'
    assert [(i, f) for i, f, _ in problems(chat.encode())] == [(0, "input.0.content")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NaN", "a metadata number must be finite (not NaN or Infinity)"),
        ("9223372036854775808", "a metadata integer must fit in 64 bits (signed)"),
        ('"' + "x" * 257 + '"', "a metadata string has at most 256 characters"),
        ('"a\\u0000"', NUL_MESSAGE),
        ('{"nested": 1}', "a metadata value must be a string, a number or a flag, not dict"),
        ("null", "a metadata value must be a string, a number or a flag, not NoneType"),
    ],
)
def test_a_bad_metadata_value_gets_one_message(value: str, message: str) -> None:
    body = f'{{"samples": [{{"request_id": "a", "input": "q", "metadata": {{"k": {value}}}}}]}}'
    assert problems(body.encode()) == [(0, "metadata.k", message)]


def test_metadata_keeps_each_kind_of_value() -> None:
    metadata: dict[str, Any] = {"s": "x", "i": -(2**63), "f": 0.5, "b": True, "one": 1}
    sample = SampleIn(request_id="a", input="q", metadata=metadata)
    assert sample.metadata == metadata
    assert [type(v) for v in sample.metadata.values()] == [str, int, float, bool, int]


@pytest.mark.parametrize(
    ("ts", "accepted"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), True),
        (datetime(9998, 12, 31, 23, 59, 59, tzinfo=UTC), True),
        ("1970-01-01T01:00:00+01:00", True),  # the epoch, written with an offset
        ("1970-01-01T00:59:59+01:00", False),
        ("9999-12-31T23:59:59-01:00", False),
        ("0001-01-01T00:00:00+01:00", False),
    ],
)
def test_ts_must_exist_in_utc_within_the_accepted_range(ts: Any, accepted: bool) -> None:
    if accepted:
        assert SampleIn(request_id="a", input="q", ts=ts).ts is not None
        return
    with pytest.raises(ValidationError, match=r"1970-01-01T00:00:00Z|9999-01-01T00:00:00Z"):
        SampleIn(request_id="a", input="q", ts=ts)


def test_the_python_form_refuses_what_the_json_form_does() -> None:
    """The backfill and the proxy validate Python values, not JSON."""
    for fields in (
        {"latency_ms": math.inf},
        {"confidence": math.nan},
        {"tokens_in": 2**31},
        {"request_id": "jane@example.com"},
        {"metadata": {"k": math.nan}},
        {"error": "\x00"},
    ):
        with pytest.raises(ValidationError):
            SampleIn.model_validate({"request_id": "a", "input": "q"} | fields)
    with pytest.raises(ValidationError) as caught:
        FeedbackIn(request_id="a", label="x\x00y")
    [problem] = problems_of(caught.value, "feedback")
    assert (problem.field, problem.message) == ("label", NUL_MESSAGE)


def test_pattern_mismatches_are_told_in_words() -> None:
    body = b'{"samples": [{"request_id": "a b", "input": "q", "metadata": {"a@b": 1}}]}'
    assert problems(body) == [
        (
            0,
            "request_id",
            "may hold only ASCII letters, digits and _ . : / + = - (no spaces, no @): it is "
            "stored in clear, never redacted",
        ),
        (
            0,
            "metadata.a@b",
            "a metadata key may hold only ASCII letters, digits and _ . -: keys are stored in "
            "clear, never redacted",
        ),
    ]


def test_the_openapi_schema_documents_the_alphabets() -> None:
    schema = SAMPLE_BATCH.json_schema()["$defs"]["SampleIn"]["properties"]
    assert schema["request_id"]["pattern"] == "^[A-Za-z0-9_.:/+=-]+$"
    assert "never redacted" in schema["request_id"]["description"]
    assert "redacted before it is stored" in schema["label"]["description"]
    assert "1970-01-01T00:00:00Z" in schema["ts"]["description"]
    assert "^[A-Za-z0-9_.-]+$" in schema["metadata"]["patternProperties"]


def test_a_flag_where_a_number_belongs_is_refused_not_read_as_one() -> None:
    # pydantic's lax mode would store `false` as a score of 0 and `true` as 1 ms.
    flag = "Input should be a number, not true or false"
    sample = b'{"request_id": "a", "input": "q", "latency_ms": true, "tokens_in": false, '
    sample += b'"feedback": {"score": false}}'
    assert problems(b'{"samples": [' + sample + b"]}") == [
        (0, "latency_ms", flag),
        (0, "tokens_in", flag),
        (0, "feedback.score", flag),
    ]
    feedback = b'{"feedback": [{"request_id": "a", "judge_score": false}]}'
    assert problems(feedback, "feedback") == [(0, "judge_score", flag)]
    # Numbers are numbers still: an integer where a float belongs is fine.
    body = b'{"samples": [{"request_id": "a", "input": "q", "latency_ms": 3, "confidence": 1}]}'
    assert parse_body(body, SAMPLE_BATCH).samples[0].latency_ms == 3.0


def test_the_schema_and_the_client_hold_samples_to_the_same_limits() -> None:
    """The client drops what the server would refuse: both read their limits from
    ``daemon.ingest.rules``, and the schema's roles are the rules' roles."""
    from typing import get_args

    from daemon import client
    from daemon.ingest import rules
    from daemon.ingest.schema import Message

    assert get_args(Message.model_fields["role"].annotation) == rules.ROLES
    assert frozenset(rules.ROLES) == client.ROLES
    for name in ("MAX_ID_LENGTH", "MAX_SHORT_TEXT", "MAX_MESSAGES", "MAX_COMMENT", "MAX_TEXT"):
        assert getattr(client, name) == getattr(rules, name)
