"""Every error a driftd user can meet, in one hierarchy.

Programming errors stay built-in exceptions (``ValueError``, ``TypeError``); these classes are for
what an operator has to act on, and each message says what was wrong, where, and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping


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


class ConfigDeprecation(FutureWarning):
    """The configuration uses a key or value that still works but was renamed; the message
    says where, and what to write instead."""


class StoreError(DriftdError):
    """The store cannot be reached, or its schema is not what this version of driftd expects."""


class LeaseLost(DriftdError):
    """This replica no longer holds the leader lease, so it must stop scheduled work at once."""


class DemoError(DriftdError):
    """A step of ``driftd demo`` failed; the message names the step, what went wrong, and where
    the logs are."""


class NotFound(StoreError):
    """A deployment, check, job or version the caller named is not in the store."""


class CheckTimeout(DriftdError):
    """A check ran longer than its deployment's ``monitor.timeout`` and was stopped."""


class NotLeading(DriftdError):
    """Work only the leader runs was asked of a replica that does not lead."""


class QueueFull(DriftdError):
    """The writer's queue is full; the caller should retry after a short while."""


class BackfillError(DriftdError):
    """The file cannot be read, or holds rows that are invalid (and were not to be skipped)."""

    def __init__(
        self,
        message: str,
        problems: list[tuple[str, str]] | None = None,
        missing: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.missing = dict(missing or {})


class KubernetesError(DriftdError):
    """The Kubernetes API refused a request or could not be reached; ``status`` is the HTTP
    status it answered with, if it answered.

    The job runner treats it like a local process that cannot be started: it retries or fails
    the attempt with this message instead of stopping.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotEnoughLabels(DriftdError):
    """Too few labelled production samples to re-tune on; the job is not created."""


class NothingFailed(DriftdError):
    """No failing production sample to learn from; the prompt revision job is not created."""
