"""What a check returns: one ``SignalResult`` per signal, gathered in a ``CheckResult``.

Everything in a result is plain JSON: ``to_dict`` gives a dict ``json.dumps`` accepts with
``allow_nan=False`` and ``from_dict`` rebuilds an equal result, so the daemon can store results,
export them as metrics and serve them over HTTP without knowing how they were computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from monitors.spec import SignalGroup

SignalStatus = Literal["ok", "drift", "insufficient_data", "failed", "skipped"]
CheckStatus = Literal["ok", "drift", "insufficient_data", "failed"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars unwrapped, tuples as lists, NaN as None."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, Sequence):
        return [jsonable(item) for item in value]
    # numpy scalars and arrays: tolist() gives plain Python values
    to_list = getattr(value, "tolist", None)
    if callable(to_list):
        return jsonable(to_list())
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r}")


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class SignalResult:
    """The verdict of one signal.

    ``score`` and ``threshold`` are in the method's unit; ``drifted`` says which side of the
    threshold the score fell on (for p-values drift is below it, for distances and AUCs above).
    ``details`` holds the evidence (per-column tests, rates, reasons) as plain JSON; ``error`` is
    set only when the signal failed.
    """

    name: str
    group: SignalGroup
    method: str
    score: float | None
    threshold: float | None
    drifted: bool
    status: SignalStatus
    reference_rows: int
    current_rows: int
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in get_args(SignalStatus):
            raise ValueError(f"unknown signal status {self.status!r}")
        if self.drifted != (self.status == "drift"):
            raise ValueError(f"signal {self.name!r}: drifted={self.drifted} with {self.status!r}")
        # Normalised once here, so that from_dict(to_dict(result)) == result.
        object.__setattr__(self, "score", _number(self.score))
        object.__setattr__(self, "threshold", _number(self.threshold))
        object.__setattr__(self, "details", jsonable(self.details))

    @property
    def computed(self) -> bool:
        """Whether the signal ran to a verdict or a failure (not skipped, not short of data)."""
        return self.status in ("ok", "drift", "failed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "method": self.method,
            "score": self.score,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "status": self.status,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "details": self.details,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalResult:
        return cls(
            name=str(data["name"]),
            group=SignalGroup(data["group"]),
            method=str(data["method"]),
            score=data.get("score"),
            threshold=data.get("threshold"),
            drifted=bool(data["drifted"]),
            status=cast(SignalStatus, data["status"]),
            reference_rows=int(data["reference_rows"]),
            current_rows=int(data["current_rows"]),
            details=dict(data.get("details") or {}),
            error=data.get("error"),
        )


def overall_status(signals: Sequence[SignalResult]) -> CheckStatus:
    """A check's status from its signals' statuses.

    ``drift`` if any signal drifted; ``failed`` only if every signal that ran failed; when none
    could run at all (each skipped or short of data), ``insufficient_data``; else ``ok``.
    """
    if any(signal.drifted for signal in signals):
        return "drift"
    ran = [signal for signal in signals if signal.computed]
    if not ran:
        return "insufficient_data"
    if all(signal.status == "failed" for signal in ran):
        return "failed"
    return "ok"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of comparing a current window with a reference window.

    ``timings`` holds the seconds each signal took, by result name. ``snapshot`` is the Evidently
    snapshot of the check (one Evidently snapshot covering every signal that ran a report), as
    plain JSON; ``monitors.report.render_html`` turns it back into Evidently's HTML report.
    """

    status: CheckStatus
    signals: list[SignalResult]
    timings: dict[str, float]
    reference_rows: int
    current_rows: int
    snapshot: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in get_args(CheckStatus):
            raise ValueError(f"unknown check status {self.status!r}")

    def signal(self, name: str) -> SignalResult:
        """The result named ``name``; ``KeyError`` naming the results there are if none is."""
        for signal in self.signals:
            if signal.name == name:
                return signal
        raise KeyError(f"no signal {name!r} in this check; it has {self.names}")

    @property
    def names(self) -> list[str]:
        return [signal.name for signal in self.signals]

    @property
    def drifted(self) -> list[SignalResult]:
        return [signal for signal in self.signals if signal.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "signals": [signal.to_dict() for signal in self.signals],
            "timings": dict(self.timings),
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "snapshot": self.snapshot,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(
            status=cast(CheckStatus, data["status"]),
            signals=[SignalResult.from_dict(item) for item in data["signals"]],
            timings={str(key): float(value) for key, value in data["timings"].items()},
            reference_rows=int(data["reference_rows"]),
            current_rows=int(data["current_rows"]),
            snapshot=data.get("snapshot"),
        )
