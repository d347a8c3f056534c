"""Every error a job reports, in one hierarchy: a bad spec, or a job that could not do its work.

``SpecError`` means nothing ran (exit 2); a ``JobError`` ends a job that ran as failed (exit 1),
or as failed for good (exit 3) when ``final`` says that running it again would fail the same way
(a cap reached, a data set that cannot be read): the daemon then does not retry it, since each
retry of a re-tune may pay for another fine-tune. ``JobCancelled`` ends it as cancelled. Each job
kind raises its own ``JobError`` subclass, whose message names the file, line or model at fault
and what to do.
"""

from __future__ import annotations

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_BAD_SPEC = 2
EXIT_FINAL = 3
"""Failed, and a retry would fail the same way: the exit codes the daemon does not retry are
``EXIT_BAD_SPEC`` and this one."""
NOT_RETRIED = frozenset({EXIT_BAD_SPEC, EXIT_FINAL})


class SpecError(Exception):
    """The spec is invalid, so the job cannot run; the message lists every problem."""


class JobError(Exception):
    """The job ran but could not do its work with what the spec names; the message says why."""

    final: bool = False
    """Whether running the job again with the same spec would fail the same way."""

    def for_good(self) -> JobError:
        """This error, marked ``final``."""
        self.final = True
        return self


class JobCancelled(JobError):
    """The job was cancelled before it finished."""


class DataSetError(JobError):
    """A data file cannot be read as examples; the message names the file and line."""

    final = True  # a retry reads the same export


class EvaluationError(JobError):
    """The evaluation could not be done with the data and model the spec names."""


class TrainingError(JobError):
    """The model could not be trained with the data and base model the spec names."""


class FineTuneError(JobError):
    """The fine-tune could not be done: bad data, over budget, or OpenAI refused or failed it."""


class FineTuneCancelled(FineTuneError, JobCancelled):
    """The fine-tune was cancelled: by the daemon (cancel file, SIGTERM) or on the server."""


class RevisionError(JobError):
    """The revision could not be done with the data and models the spec names."""
