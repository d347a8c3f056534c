"""``notifications``: the messages the daemon sends itself, and the channels they go to."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import Field, field_validator

from daemon.config.sections import Section
from daemon.config.types import (
    Duration,
    SecretEnv,
)


class NotifyOn(StrEnum):
    """What the daemon sends notifications about."""

    drift = "drift"
    job_failed = "job_failed"
    promotion = "promotion"
    rollback = "rollback"


_URL_ENV = (
    "Environment variable holding the channel's URL (a secret, so never in this file); unset "
    "or empty turns the channel off."
)


class WebhookChannel(Section):
    """The generic webhook: a POST of a JSON document per message."""

    url_env: SecretEnv = Field("DRIFTD_WEBHOOK_URL", description=_URL_ENV)


class SlackChannel(Section):
    """A Slack-compatible incoming webhook: a POST of `{"text": ...}` per message."""

    url_env: SecretEnv = Field("DRIFTD_SLACK_WEBHOOK_URL", description=_URL_ENV)


class AlertmanagerChannel(Section):
    """Alertmanager's v2 API: alerts are posted to `<url>/api/v2/alerts`."""

    url_env: SecretEnv = Field(
        "DRIFTD_ALERTMANAGER_URL", description=_URL_ENV + " The URL is Alertmanager's base URL."
    )


class Notifications(Section):
    """Messages the daemon sends itself: a generic webhook, Slack, Alertmanager's v2 API."""

    webhook: WebhookChannel = Field(
        default_factory=WebhookChannel, description="The generic JSON webhook."
    )
    slack: SlackChannel = Field(
        default_factory=SlackChannel, description="The Slack-compatible webhook."
    )
    alertmanager: AlertmanagerChannel = Field(
        default_factory=AlertmanagerChannel, description="Alertmanager."
    )
    # Not called `on`: YAML 1.1 reads a bare `on` key as the boolean true.
    events: tuple[NotifyOn, ...] = Field(
        tuple(NotifyOn),
        description="What to send: `drift` (and its resolution), `job_failed` (and the next "
        "success), `promotion`, `rollback`.",
    )
    poll: Duration = Field(
        timedelta(seconds=5),
        description="How often the leader turns new audit events into messages.",
    )
    timeout: Duration = Field(timedelta(seconds=10), description="Timeout of one delivery.")
    max_attempts: int = Field(
        8, ge=1, le=100, description="Deliveries tried per message before it is given up."
    )
    backoff: Duration = Field(
        timedelta(seconds=5),
        description="Wait before the first retry; doubled after each failure, at most 1h.",
    )
    driftd_url: str | None = Field(
        None, description="driftd's address as people reach it, linked from every message."
    )

    @field_validator("driftd_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value
