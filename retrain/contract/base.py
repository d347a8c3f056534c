"""What every spec and result is made of: versioned JSON, and field rules whose problems read
as sentences naming the field (``describe``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

SPEC_VERSION = 2
"""The version of the specs and results this release writes, and the newest it reads."""
RENAMED_IN_2 = {
    "champion": "active",
    "challenger": "candidate",
    "champion_version": "active_version",
}
"""Keys of version 1 read under their version-2 names (the words of ``docs/concepts.md``)."""

Json = dict[str, JsonValue]
Metrics = dict[str, JsonValue]
"""Scores by name: numbers, and nested detail such as ``per_class``."""
Task = Literal["classification", "generation"]
LABEL_METRICS = ("accuracy", "macro_f1")
SCORE_METRIC = "judge_score"
"""The metric of per-example scores (an LLM judge's): what generation prompts are gated on."""
REFERENCE_KEYS = ("reference", "expected")
"""Where a golden example's reference answer is read when its label column holds none."""
REFERENCE_METRIC = "reference_match"
"""The metric of per-example matches with a golden set's reference answers: what a generation
model is gated on when no judge is configured."""
OPENAI_KEY_ENV = "OPENAI_API_KEY"


# How a problem is told: after the field's name (``'batch_size' must be ...``), or whole when
# it concerns several fields and names them itself.


def problem(text: str) -> PydanticCustomError:
    return PydanticCustomError("spec", text)


def stated(text: str) -> PydanticCustomError:
    return PydanticCustomError("spec_stated", text)


def describe(error: ValidationError) -> list[str]:
    """Each problem of ``error`` as a sentence that names the field and what was wrong."""
    found: list[str] = []
    for detail in error.errors(include_url=False):
        kind, message, got = detail["type"], detail["msg"], detail.get("input")
        if kind == "spec_stated":
            found.append(message)
            continue
        if kind == "spec":
            text = message
        elif kind == "missing":
            text = "is required"
        elif kind == "literal_error":
            text = f"must be {detail.get('ctx', {}).get('expected')}, got {got!r}"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            text = f"must be a JSON object, got {got!r}"
        elif kind in ("list_type", "tuple_type"):
            text = f"must be a list, got {got!r}"
        elif kind.startswith("bool"):
            text = f"must be true or false, got {got!r}"
        elif kind.startswith("string"):
            text = f"must be a string, got {got!r}"
        else:
            text = f"is invalid ({message}), got {got!r}"
        where = _where(detail["loc"])
        found.append(text if not where else f"{where}{'' if text[0] == ':' else ' '}{text}")
    return found


def _where(loc: tuple[int | str, ...]) -> str:
    if len(loc) == 1:
        return repr(loc[0])
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else f"{'.' if where else ''}{part}"
    return where


# Field validators, one per kind of value, so that a rule reads the same in every job.


def whole(low: int, high: int | None = None, *, says: str | None = None) -> BeforeValidator:
    """A whole number from ``low`` to ``high`` (or of at least ``low``); never a bool."""
    bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
    wanted = says or f"a whole number {bound}"

    def check(value: Any) -> Any:
        if value is None:
            return value  # allowed or not by the field's type
        if isinstance(value, bool) or not isinstance(value, int):
            raise problem(f"must be {wanted}, got {value!r}")
        if value < low or (high is not None and value > high):
            raise problem(f"must be {wanted}, got {value!r}")
        return value

    return BeforeValidator(check)


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    says: str | None = None,
    nullable: bool = False,
    open_low: bool = False,
    open_high: bool = False,
) -> BeforeValidator:
    """A number in a range (ends included unless open); never a bool."""
    if says is None:
        says = "a number"
        if not math.isinf(low):
            says += f" from {low:g}" if math.isinf(high) else f" from {low:g} to {high:g}"

    def check(value: Any) -> Any:
        if value is None and nullable:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise problem(f"must be {says}, got {value!r}")
        below = value <= low if open_low else value < low
        above = value >= high if open_high else value > high
        if below or above:
            raise problem(f"must be {says}, got {value!r}")
        return value

    return BeforeValidator(check)


def text(says: str = "be a non-empty string", *, strip: bool = False) -> BeforeValidator:
    """A string with something in it (``strip``: not only whitespace, which is removed)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, str) or not (value.strip() if strip else value):
            raise problem(f"must {says}, got {value!r}")
        return value.strip() if strip else value

    return BeforeValidator(check)


def _refused(value: Any) -> Any:
    raise problem(
        "must not be in the spec: put the key in the job's environment, in the variable that "
        f"api_key_env names (default {OPENAI_KEY_ENV})"
    )


def spec_folder(info: ValidationInfo) -> Path | None:
    """The spec's folder when a job reads its spec, else None (the daemon building one)."""
    context = info.context
    base = context.get("base") if isinstance(context, Mapping) else None
    return base if isinstance(base, Path) else None


def warn(info: ValidationInfo, message: str) -> None:
    """Tell the job's log about a key the job ignores."""
    context = info.context
    sink = context.get("warn") if isinstance(context, Mapping) else None
    if callable(sink):
        sink(message)


def _path(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, str | Path) or not str(value):
        raise problem(f"must be a path, got {value!r}")
    return str(value)


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    base = spec_folder(info)
    return value if value is None or base is None else base / value


def _file(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is not None and spec_folder(info) is not None and not value.is_file():
        raise problem(f": {value} is not a file")
    return value


def _folder(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is not None and spec_folder(info) is not None and not value.is_dir():
        raise problem(f": {value} is not a directory")
    return value


InputFile = Annotated[Path, BeforeValidator(_path), AfterValidator(_resolve), AfterValidator(_file)]
"""A file the job reads: resolved against the spec's folder, and there."""
InputDir = Annotated[
    Path, BeforeValidator(_path), AfterValidator(_resolve), AfterValidator(_folder)
]
"""A folder the job reads (a saved model): resolved against the spec's folder, and there."""
OutputPath = Annotated[Path, BeforeValidator(_path), AfterValidator(_resolve)]
"""A path the job writes, or one it passes on: resolved against the spec's folder."""
Seed = Annotated[int, whole(0, 2**32 - 1)]
BatchSize = Annotated[int, whole(1, 4096)]
MaxLength = Annotated[int, whole(8, 8192)]
Share = Annotated[float, number(0.0, 1.0)]
Pace = Annotated[float, number(0.0, 60.0, says="seconds from 0 to 60")]
Column = Annotated[str, text()]
RefusedKey = Annotated[JsonValue, BeforeValidator(_refused), Field(exclude=True)]


def _label_metric(value: Any) -> Any:
    if value not in LABEL_METRICS:
        raise problem(
            f"must name {' or '.join(LABEL_METRICS)}, got {value!r} (the gate compares "
            f"classifiers; {SCORE_METRIC} is for prompted deployments)"
        )
    return value


def _label_metrics(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        raise problem(f"must be a list, got {value!r}")
    for name in value:
        _label_metric(name)
    return value


LabelMetric = Annotated[str, BeforeValidator(_label_metric)]
LabelMetrics = Annotated[tuple[str, ...], BeforeValidator(_label_metrics)]


class Part(BaseModel):
    """A part of a spec or a result; keys it does not know are ignored."""

    model_config = ConfigDict(extra="ignore")


class Contract(Part):
    """A whole spec or result: versioned JSON."""

    spec_version: int = SPEC_VERSION

    @field_validator("spec_version", mode="before")
    @classmethod
    def _understood(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise problem(f"must be a whole number of at least 1, got {value!r}")
        if value > SPEC_VERSION:
            raise problem(
                f"is {value}, but this release of driftd reads versions up to {SPEC_VERSION}: "
                "it was written by a newer release; run the job (or read its result) with "
                "that release, or upgrade driftd here"
            )
        return value


def upgraded(document: Mapping[str, Any]) -> Json:
    """A spec or result as this release reads it. One without ``spec_version`` was written before
    specs carried one: version 1. Version 1's keys are read under their version-2 names."""
    version = document.get("spec_version", 1)
    if version != 1:
        return dict(document)
    renamed: Json = _renamed(document)
    return {**renamed, "spec_version": 1}


def _renamed(value: Any) -> Any:
    """A version-1 document with its keys renamed as version 2 names them, at every depth."""
    if isinstance(value, Mapping):
        return {RENAMED_IN_2.get(key, key): _renamed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item) for item in value]
    return value
