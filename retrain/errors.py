"""The two ways a job goes wrong, shared by every job kind."""


class SpecError(Exception):
    """The spec is invalid, so the job cannot run; the message lists every problem."""


class JobError(Exception):
    """The job ran but could not do its work with what the spec names; the message says why."""


class JobCancelled(JobError):
    """The job was cancelled before it finished."""
