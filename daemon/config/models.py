"""The pydantic models of ``driftd.yaml``.

Every section is modelled and validated, including those that later parts of driftd act on, so
that a file accepted today keeps its meaning. Each field's description is the configuration
reference (``driftd config reference`` renders it into docs/configuration.md). The sections live
in ``daemon.config.sections``, a module per group; this module puts them together as ``Config``,
and the rest of driftd imports every section from here.
"""

from __future__ import annotations

from pydantic import Field

from daemon.config.sections import Section
from daemon.config.sections.deployment import (
    AlwaysKeep,
    Deployment,
    DescriptorPattern,
    Descriptors,
    FewShot,
    Model,
    Prompt,
    Provider,
    Redaction,
    RedactionKind,
    RedactionPattern,
    Sampling,
    Upstream,
    UpstreamAuth,
)
from daemon.config.sections.judge import Judge
from daemon.config.sections.monitor import AfterPromotion, Monitor, Reference
from daemon.config.sections.notifications import (
    AlertmanagerChannel,
    Notifications,
    NotifyOn,
    SlackChannel,
    WebhookChannel,
)
from daemon.config.sections.policy import Action, Approval, Budget, Policy
from daemon.config.sections.retune import (
    Gate,
    GoldenColumns,
    GoldenSet,
    Hooks,
    Method,
    Metric,
    Retune,
    Trainer,
    TrainingData,
    Watch,
)
from daemon.config.sections.scheduling import (
    ExecutorKind,
    Kubernetes,
    KubernetesResources,
    Scheduling,
)
from daemon.config.sections.service import (
    Ingest,
    LogFormat,
    Logging,
    Metrics,
    Proxy,
    Server,
    Storage,
)
from daemon.config.types import TimeZone
from daemon.domain import ReferenceKind
from monitors.spec import CLASSIFICATION_ONLY, DEFAULT_SIGNALS, GENERATION_ONLY, Signal, SignalGroup

__all__ = [
    "CLASSIFICATION_ONLY",
    "DEFAULT_SIGNALS",
    "GENERATION_ONLY",
    "Action",
    "AfterPromotion",
    "AlertmanagerChannel",
    "AlwaysKeep",
    "Approval",
    "Budget",
    "Config",
    "Deployment",
    "DescriptorPattern",
    "Descriptors",
    "ExecutorKind",
    "FewShot",
    "Gate",
    "GoldenColumns",
    "GoldenSet",
    "Hooks",
    "Ingest",
    "Judge",
    "Kubernetes",
    "KubernetesResources",
    "LogFormat",
    "Logging",
    "Method",
    "Metric",
    "Metrics",
    "Model",
    "Monitor",
    "Notifications",
    "NotifyOn",
    "Policy",
    "Prompt",
    "Provider",
    "Proxy",
    "Redaction",
    "RedactionKind",
    "RedactionPattern",
    "Reference",
    "ReferenceKind",
    "Retune",
    "Sampling",
    "Scheduling",
    "Section",
    "Server",
    "Signal",
    "SignalGroup",
    "SlackChannel",
    "Storage",
    "Trainer",
    "TrainingData",
    "Upstream",
    "UpstreamAuth",
    "Watch",
    "WebhookChannel",
]


class Config(Section):
    """The whole of ``driftd.yaml``."""

    server: Server = Field(default_factory=Server, description="The HTTP API.")
    storage: Storage = Field(default_factory=Storage, description="The store.")
    ingest: Ingest = Field(default_factory=Ingest, description="The ingest API's limits.")
    proxy: Proxy = Field(default_factory=Proxy, description="The OpenAI-compatible proxy.")
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Leader lease, check workers and jobs."
    )
    logging: Logging = Field(default_factory=Logging, description="Log output.")
    notifications: Notifications = Field(
        default_factory=Notifications, description="Messages sent by the daemon itself."
    )
    metrics: Metrics = Field(default_factory=Metrics, description="The `/metrics` endpoint.")
    timezone: TimeZone = Field("UTC", description="Time zone of cron schedules (IANA name).")
    deployments: tuple[Deployment, ...] = Field((), description="The deployments driftd watches.")

    def deployment(self, name: str) -> Deployment:
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        raise KeyError(name)

    def hooks_of(self, name: str) -> Hooks:
        """The promotion hooks of deployment ``name``; none for a deployment that the store
        still has but this configuration no longer names."""
        try:
            return self.deployment(name).retune.hooks
        except KeyError:
            return Hooks()
