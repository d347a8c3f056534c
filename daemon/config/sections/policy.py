"""``policy``: what drift leads to, and the caps on it."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import Field

from daemon.config.sections import Section
from daemon.config.types import (
    Duration,
)
from monitors.spec import SignalGroup


class Action(StrEnum):
    """What drift leads to; ``retune`` re-tunes by the deployment's ``retune.method``."""

    none = "none"
    alert = "alert"
    retune = "retune"


# Values of ``policy.on_drift`` before 0.2, still read (with a warning) as the action they became.
RETIRED_ACTIONS = {"retrain": Action.retune, "revise_prompt": Action.retune}


class Approval(StrEnum):
    auto = "auto"
    manual = "manual"


class Budget(Section):
    max_usd_per_day: float | None = Field(
        None, ge=0.0, description="Spend cap on paid APIs per day; unset means no cap."
    )
    max_usd_per_job: float | None = Field(None, ge=0.0, description="Spend cap of one job.")


class Policy(Section):
    on_drift: Action = Field(
        Action.alert,
        description="What drift leads to; `retune` re-tunes as `retune.method` says (the values "
        "`retrain` and `revise_prompt` of 0.1 are read as `retune`, with a warning).",
    )
    act_on: tuple[SignalGroup, ...] = Field(
        (SignalGroup.quality, SignalGroup.output),
        description="Signal groups whose drift may trigger `on_drift`; drift in the others "
        "only alerts.",
    )
    consecutive: int = Field(
        2, ge=1, le=100, description="Drifted checks in a row before acting (hysteresis)."
    )
    cooldown: Duration = Field(timedelta(hours=6), description="Quiet time after an action.")
    max_jobs_per_day: int = Field(2, ge=0, description="Cap on jobs started per day.")
    budget: Budget = Field(default_factory=Budget, description="Spend caps on paid APIs.")
    approval: Approval = Field(
        Approval.auto, description="`manual` holds jobs in `awaiting_approval`."
    )
    dry_run: bool = Field(False, description="Decide and record, but start no job.")
