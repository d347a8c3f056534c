"""What ``Client.log`` and ``Client.feedback`` send: a sample's or a feedback's JSON body, built
from the app's arguments and held to the ingest API's rules.

An argument the server would refuse raises ``TypeError`` or ``ValueError`` here, saying which and
why, so that the client drops that one item instead of sending a batch the server refuses whole.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from daemon.ingest import rules
from daemon.ingest.rules import (
    EARLIEST,
    LATEST,
    MAX_COMMENT,
    MAX_ID_LENGTH,
    MAX_INTEGER,
    MAX_MESSAGES,
    MAX_METADATA_INTEGER,
    MAX_METADATA_KEY,
    MAX_METADATA_KEYS,
    MAX_METADATA_TEXT,
    MAX_SHORT_TEXT,
    MAX_TEXT,
    SAFE_ID,
    SAFE_ID_CHARACTERS,
    SAFE_KEY,
    SAFE_KEY_CHARACTERS,
)

# An item that breaks one of the ingest API's limits (daemon.ingest.rules) is dropped by
# ``log``/``feedback``: sent, it would have the server refuse the whole batch it is in.
ROLES: Final = frozenset(rules.ROLES)

Scalar = str | int | float | bool

_SHORT_FIELDS: Final = ("prediction", "label")
_VERSION_FIELDS: Final = ("model_version", "prompt_version")


def sample_body(
    request_id: object,
    input: object,
    output: object,
    ts: object,
    optional: dict[str, object],
) -> dict[str, Any]:
    if not isinstance(ts, datetime):
        raise TypeError(f"ts must be a datetime, got {type(ts).__name__}")
    aware = ts if ts.tzinfo is not None else ts.astimezone()
    if not EARLIEST <= aware < LATEST:
        raise ValueError(f"ts must lie from {EARLIEST:%Y-%m-%d} up to {LATEST:%Y-%m-%d} in UTC")
    body: dict[str, Any] = {
        "request_id": _request_id(request_id),
        "ts": aware.isoformat(),
        "input": _input(input),
    }
    if output is not None:
        body["output"] = _text("output", output, MAX_TEXT)
    for name, value in optional.items():
        if value is None:
            continue
        if name in _SHORT_FIELDS:
            body[name] = _text(name, value, MAX_SHORT_TEXT)
        elif name in _VERSION_FIELDS:
            body[name] = _identifier(name, value)
        elif name == "error":
            body[name] = _text(name, value, MAX_TEXT)
        elif name == "confidence":
            body[name] = _fraction(name, value)
        elif name == "latency_ms":
            body[name] = _number(name, value)
        elif name in ("tokens_in", "tokens_out"):
            body[name] = _count(name, value)
        elif name == "probabilities":
            body[name] = _probabilities(value)
        elif name == "metadata":
            body[name] = _metadata(value)
        else:
            raise AssertionError(f"no rule for the sample field {name!r}")
    return body


def feedback_body(
    request_id: object,
    label: object,
    thumb: object,
    score: object,
    judge_score: object,
    comment: object,
) -> dict[str, Any]:
    if (label, thumb, score, judge_score) == (None, None, None, None):
        raise ValueError("feedback needs a label, a thumb, a score or a judge_score")
    if thumb is not None and score is not None:
        raise ValueError("feedback takes a thumb or a score, not both")
    if thumb not in (None, "up", "down"):
        raise ValueError(f"thumb must be 'up' or 'down', got {thumb!r:.40}")
    body: dict[str, Any] = {"request_id": _request_id(request_id)}
    if label is not None:
        body["label"] = _text("label", label, MAX_SHORT_TEXT)
    if thumb is not None:
        body["thumb"] = thumb
    if score is not None:
        body["score"] = _fraction("score", score)
    if judge_score is not None:
        body["judge_score"] = _fraction("judge_score", judge_score)
    if comment is not None:
        body["comment"] = _text("comment", comment, MAX_COMMENT)
    return body


def _request_id(value: object) -> str:
    return _identifier("request_id", value)


def _identifier(name: str, value: object) -> str:
    """An id stored in clear (never redacted), so held to the server's safe alphabet."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH:
        raise ValueError(f"{name} must be a string of 1 to {MAX_ID_LENGTH} characters")
    if not re.fullmatch(SAFE_ID, value):
        raise ValueError(f"{name} may hold only {SAFE_ID_CHARACTERS}, got {value!r:.40}")
    return value


def _text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} has {len(value)} characters, at most {limit} are accepted")
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character, which the store cannot hold")
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _fraction(name: str, value: object) -> float:
    number = _number(name, value)
    if number > 1:
        raise ValueError(f"{name} must be between 0 and 1, got {number!r}")
    return number


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INTEGER:
        raise ValueError(f"{name} must be an integer from 0 to {MAX_INTEGER}, got {value!r:.40}")
    return value


def _input(value: object) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        return _text("input", value, MAX_TEXT)
    if not isinstance(value, Sequence) or not 1 <= len(value) <= MAX_MESSAGES:
        raise ValueError(f"input must be a string or a list of 1 to {MAX_MESSAGES} messages")
    messages = []
    for message in value:
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            raise ValueError("each input message must have a role and a content, and nothing else")
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"a message's role must be one of {sorted(ROLES)}, got {role!r:.40}")
        # A copy, since the app may reuse its messages before the worker sends them.
        messages.append({"role": role, "content": _text("content", message["content"], MAX_TEXT)})
    return messages


def _probabilities(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise TypeError(f"probabilities must map labels to numbers, got {type(value).__name__}")
    return {
        _text("a probability's label", label, MAX_SHORT_TEXT): _fraction("a probability", p)
        for label, p in value.items()
    }


def _metadata(value: object) -> dict[str, Scalar]:
    if not isinstance(value, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(value).__name__}")
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(
            f"metadata has {len(value)} keys, at most {MAX_METADATA_KEYS} are accepted"
        )
    flat: dict[str, Scalar] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
            raise ValueError(f"metadata keys must be strings of 1 to {MAX_METADATA_KEY} characters")
        if not re.fullmatch(SAFE_KEY, key):
            raise ValueError(f"metadata keys may hold only {SAFE_KEY_CHARACTERS}, got {key!r:.40}")
        where = f"metadata[{key!r}]"
        if isinstance(item, str):
            flat[key] = _text(where, item, MAX_METADATA_TEXT)
        elif (
            isinstance(item, int) and -MAX_METADATA_INTEGER - 1 <= item <= MAX_METADATA_INTEGER
        ) or (isinstance(item, float) and math.isfinite(item)):
            flat[key] = item  # bool is an int
        else:
            raise ValueError(
                f"{where} must be a string, a finite number or a bool, got {item!r:.40}"
            )
    return flat
