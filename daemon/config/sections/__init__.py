"""The sections of ``driftd.yaml``, a module per group, and ``Section``, the base of them all.

``service`` holds the daemon's own top-level sections (server, storage, ingest, proxy, logging,
metrics); ``scheduling`` and ``notifications`` theirs. A deployment (``deployment``: its model or
prompt, upstream, sampling, redaction and descriptors) is checked as its ``monitor`` section says,
acts on drift as ``policy`` says, re-tunes as ``retune`` says and is judged as ``judge`` says.
``daemon.config.models`` puts them together as ``Config``.
"""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)
