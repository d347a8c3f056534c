"""What an app sends: samples and feedback, as the ingest API and the backfill accept them.

The whole batch is validated before anything is stored, and every problem is reported by the
item's index and field, so a client can fix all of them in one go.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

MAX_TEXT = 200_000
MAX_METADATA_KEYS = 16

Id = Annotated[str, StringConstraints(min_length=1, max_length=255)]
ShortText = Annotated[str, StringConstraints(max_length=255)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=256)] | int | float | bool


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(Item):
    """One chat message, as in the OpenAI chat API."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text


class InlineFeedback(Item):
    """Feedback known when the sample is sent (a thumbs-down keeps it whatever the rate)."""

    thumb: Literal["up", "down"] | None = None
    score: Unit | None = None

    @property
    def negative(self) -> bool:
        return self.thumb == "down" or (self.score is not None and self.score < 0.5)


class SampleIn(Item):
    """One request a deployment served."""

    request_id: Id = Field(description="Idempotency key, unique per deployment.")
    ts: AwareDatetime | None = Field(None, description="When it was served; default: now.")
    input: Text | Annotated[list[Message], Field(min_length=1, max_length=1000)] = Field(
        description="The input text, or the chat messages."
    )
    output: Text | None = None
    prediction: ShortText | None = Field(None, description="Classification: the label given.")
    confidence: Unit | None = Field(None, description="Classification: its probability.")
    probabilities: Annotated[dict[ShortText, Unit], Field(max_length=10_000)] | None = None
    label: ShortText | None = Field(None, description="Ground truth, when known.")
    latency_ms: Annotated[float, Field(ge=0.0)] | None = None
    tokens_in: Annotated[int, Field(ge=0)] | None = None
    tokens_out: Annotated[int, Field(ge=0)] | None = None
    model_version: ShortText | None = None
    prompt_version: ShortText | None = None
    error: Text | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_KEYS)] = (
        Field(default_factory=dict, description="A small flat map of strings, numbers, flags.")
    )
    feedback: InlineFeedback | None = None


class FeedbackIn(Item):
    """Late knowledge about a stored sample: its true label, a user's verdict, a judge's."""

    request_id: Id
    label: ShortText | None = None
    thumb: Literal["up", "down"] | None = None
    score: Unit | None = None
    judge_score: Unit | None = None
    comment: Annotated[str, StringConstraints(max_length=2000)] | None = None

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
