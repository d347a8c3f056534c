"""What an app sends: samples and feedback, as the ingest API and the backfill accept them.

The whole batch is validated before anything is stored, and every problem is reported by the
item's index and field, so a client can fix all of them in one go. What is accepted is what the
store can hold and a reader can trust: text without NUL characters (PostgreSQL cannot store
them), finite numbers (NaN and Infinity are not JSON to anyone else), integers that fit their
column, and times that exist in UTC.

Redaction (``daemon.ingest.redact``) replaces PII in free text: input, messages, output, error,
comment, metadata values, and the label of a generation deployment. Identifiers are stored in
clear, so that the same id always means the same sample: ``request_id`` (the idempotency and
feedback key), ``model_version``, ``prompt_version`` and metadata keys are held to an alphabet
without spaces or ``@``, so that no e-mail address or prose fits (a bare number still does). A
classification deployment's labels are checked against its label set instead.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

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

# Short fields are checked by patterns, which pydantic runs in Rust, so they cost next to
# nothing; ``problems_of`` says in words what a mismatch means. Long texts are searched for NUL
# in Python instead, where ``in`` is a memchr far faster than a regular expression.
NO_NUL = r"^[^\x00]*$"
_NUL_MESSAGE = "contains a NUL character (\\u0000), which the store cannot hold; remove it"
_PATTERN_MESSAGES = {
    SAFE_ID: f"may hold only {SAFE_ID_CHARACTERS} (no spaces, no @): it is stored in clear, "
    "never redacted",
    SAFE_KEY: f"a metadata key may hold only {SAFE_KEY_CHARACTERS}: keys are stored in clear, "
    "never redacted",
    NO_NUL: _NUL_MESSAGE,
}


def _without_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError(_NUL_MESSAGE)
    return text


def _metadata_value(value: Any) -> str | int | float | bool:
    # One check per value rather than a union, so that a bad value gets one message, not one
    # per type it failed to be.
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_METADATA_INTEGER - 1 <= value <= MAX_METADATA_INTEGER:
            raise ValueError("a metadata integer must fit in 64 bits (signed)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a metadata number must be finite (not NaN or Infinity)")
        return value
    if isinstance(value, str):
        if len(value) > MAX_METADATA_TEXT:
            raise ValueError(f"a metadata string has at most {MAX_METADATA_TEXT} characters")
        return _without_nul(value)
    raise ValueError(
        f"a metadata value must be a string, a number or a flag, not {type(value).__name__}"
    )


Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=SAFE_ID)]
ShortText = Annotated[str, StringConstraints(max_length=MAX_SHORT_TEXT, pattern=NO_NUL)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_without_nul)]
Comment = Annotated[str, StringConstraints(max_length=MAX_COMMENT), AfterValidator(_without_nul)]


def _not_a_flag(value: Any) -> Any:
    # pydantic takes true/false for 1/0 in lax mode; a flag where a number belongs is a bug in
    # the sender (a thumb sent as a score), not a score of 1.
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not true or false")
    return value


Unit = Annotated[float, BeforeValidator(_not_a_flag), Field(ge=0.0, le=1.0)]
Count = Annotated[int, BeforeValidator(_not_a_flag), Field(ge=0, le=MAX_INTEGER)]
Milliseconds = Annotated[float, BeforeValidator(_not_a_flag), Field(ge=0.0)]
Moment = Annotated[AwareDatetime, Field(ge=EARLIEST, lt=LATEST)]
MetadataKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY, pattern=SAFE_KEY)
]
MetadataValue = Annotated[
    str | int | float | bool,
    PlainValidator(
        _metadata_value,
        json_schema_input_type=Annotated[str, StringConstraints(max_length=MAX_METADATA_TEXT)]
        | int
        | float
        | bool,
    ),
]


class Item(BaseModel):
    # allow_inf_nan: pydantic's JSON parser reads NaN, Infinity and 1e400 (as inf) as floats;
    # stored, they make JSON no other reader parses, and averages that are NaN.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Message(Item):
    """One chat message, as in the OpenAI chat API."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text = Field(description="Redacted before it is stored; no NUL characters.")


class InlineFeedback(Item):
    """Feedback known when the sample is sent (a thumbs-down keeps it whatever the rate)."""

    thumb: Literal["up", "down"] | None = None
    score: Unit | None = Field(None, description="0 (bad) to 1 (good); finite.")

    @property
    def negative(self) -> bool:
        return self.thumb == "down" or (self.score is not None and self.score < 0.5)


def _input_kind(value: Any) -> str:
    # The tags are the names pydantic gives union arms, which ``problems_of`` leaves out.
    return "str" if isinstance(value, str) else "list[Message]"


Messages = Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]

_ID = f"{SAFE_ID_CHARACTERS}, 1-{MAX_ID_LENGTH} of them; stored in clear, never redacted"
_TEXT = "redacted before it is stored; no NUL characters"


class SampleIn(Item):
    """One request a deployment served."""

    request_id: Id = Field(
        description=f"Idempotency key, unique per deployment, and the key feedback joins on: {_ID}."
    )
    ts: Moment | None = Field(
        None,
        description="When it was served, with its UTC offset; default: now. From "
        f"{EARLIEST:%Y-%m-%dT%H:%M:%SZ} up to (not including) {LATEST:%Y-%m-%dT%H:%M:%SZ} in UTC.",
    )
    input: Annotated[
        Annotated[Text, Tag("str")] | Annotated[Messages, Tag("list[Message]")],
        Discriminator(_input_kind),
    ] = Field(description=f"The input text, or the chat messages; {_TEXT}.")
    output: Text | None = Field(None, description=f"The answer; {_TEXT}.")
    prediction: ShortText | None = Field(
        None, description="Classification: the label given, one of the deployment's labels."
    )
    confidence: Unit | None = Field(
        None, description="Classification: its probability, 0 to 1, finite."
    )
    probabilities: Annotated[dict[ShortText, Unit], Field(max_length=10_000)] | None = Field(
        None, description="Classification: a probability (0 to 1, finite) per label."
    )
    label: ShortText | None = Field(
        None,
        description="Ground truth, when known. Classification: one of the deployment's labels. "
        f"Generation: free text, {_TEXT}.",
    )
    latency_ms: Milliseconds | None = Field(None, description="Milliseconds, finite, at least 0.")
    tokens_in: Count | None = Field(None, description=f"0 to {MAX_INTEGER}.")
    tokens_out: Count | None = Field(None, description=f"0 to {MAX_INTEGER}.")
    model_version: Id | None = Field(None, description=f"The model that served it: {_ID}.")
    prompt_version: Id | None = Field(None, description=f"The prompt it was served with: {_ID}.")
    error: Text | None = Field(None, description=f"Why there is no answer; {_TEXT}.")
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_KEYS)] = (
        Field(
            default_factory=dict,
            description=f"A small flat map (at most {MAX_METADATA_KEYS} keys) of strings (at "
            f"most {MAX_METADATA_TEXT} characters, redacted before they are stored, no NUL), "
            "finite numbers, 64-bit integers and flags. Keys: 1-64 of "
            f"{SAFE_KEY_CHARACTERS}; stored in clear, never redacted.",
        )
    )
    feedback: InlineFeedback | None = None


class FeedbackIn(Item):
    """Late knowledge about a stored sample: its true label, a user's verdict, a judge's."""

    request_id: Id = Field(description=f"The request_id of the sample: {_ID}.")
    label: ShortText | None = Field(
        None,
        description="Its true label. Classification: one of the deployment's labels. "
        f"Generation: free text, {_TEXT}.",
    )
    thumb: Literal["up", "down"] | None = None
    score: Unit | None = Field(None, description="A user's score, 0 (bad) to 1 (good), finite.")
    judge_score: Unit | None = Field(None, description="A judge's score, 0 to 1, finite.")
    comment: Comment | None = Field(None, description=f"What the user said; {_TEXT}.")

    @model_validator(mode="after")
    def _says_something(self) -> Self:
        if self.thumb is not None and self.score is not None:
            raise ValueError("give either 'thumb' or 'score', not both")
        if (self.label, self.thumb, self.score, self.judge_score) == (None,) * 4:
            raise ValueError("needs at least one of 'label', 'thumb', 'score', 'judge_score'")
        return self


class SampleBatch(Item):
    samples: list[SampleIn]


class FeedbackBatch(Item):
    feedback: list[FeedbackIn]


SAMPLE_BATCH = TypeAdapter(SampleBatch)
FEEDBACK_BATCH = TypeAdapter(FeedbackBatch)


class BodyError(ValueError):
    """The body is not JSON, or not UTF-8: the client sent something other than it meant to."""


class Problem(BaseModel):
    """One invalid item: where it is and what is wrong with it."""

    index: int | None
    field: str
    message: str


def problems_of(error: ValidationError, items: str) -> list[Problem]:
    """Turn pydantic's errors into (item index, field path, message), one per problem."""
    out = []
    for detail in error.errors(include_url=False):
        loc: tuple[Any, ...] = tuple(detail["loc"])
        index = None
        if len(loc) >= 2 and loc[0] == items and isinstance(loc[1], int):
            index, loc = loc[1], loc[2:]
        field = ".".join(str(part) for part in loc if not _is_union_tag(part)) or items
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "string_pattern_mismatch":
            message = _PATTERN_MESSAGES.get(detail["ctx"]["pattern"], message)
        out.append(Problem(index=index, field=field, message=message))
    return out


def _is_union_tag(part: Any) -> bool:
    # pydantic names the arm of a union it tried ("str", "list[Message]"); users never wrote it.
    return isinstance(part, str) and ("[" in part or part in ("str", "float", "int", "bool"))


def parse_body(body: bytes, adapter: TypeAdapter[Any]) -> Any:
    """Decode and validate a request body; ``BodyError`` if it is not UTF-8 JSON at all."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return adapter.validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise BodyError(f"the body is not valid JSON: {first['msg']}") from None
        raise


def sample_time(sample: SampleIn, now: datetime) -> datetime:
    return sample.ts if sample.ts is not None else now
