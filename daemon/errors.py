"""Every error a driftd user can meet, in one hierarchy.

Programming errors stay built-in exceptions (``ValueError``, ``TypeError``); these classes are for
what an operator has to act on, and each message says what was wrong, where, and what to do.
"""

from __future__ import annotations


class DriftdError(Exception):
    """Base class of every error driftd reports to its user."""


class ConfigError(DriftdError):
    """The configuration file is missing, unreadable or invalid."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        body = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid configuration ({count}):\n{body}")


class StoreError(DriftdError):
    """The store cannot be reached, or its schema is not what this version of driftd expects."""


class LeaseLost(DriftdError):
    """This replica no longer holds the leader lease, so it must stop scheduled work at once."""


class JobFailed(DriftdError):
    """A job (re-tune, prompt revision, evaluation) ended in failure."""


class DemoError(DriftdError):
    """A step of ``driftd demo`` failed; the message names the step, what went wrong, and where
    the logs are."""
