"""What each notification channel receives: one ``Message``, rendered per channel kind.

A message is rendered once, when its audit event is processed, and the rendered body is what the
outbox stores and every retry sends: a receiver sees the same bytes however often a delivery is
tried. Channel URLs are secrets (a Slack webhook URL is its own credential), so they are read
from the environment mapping handed in, never stored, and never logged.

Generic webhook (``webhook``): ``POST <url>`` with ``Content-Type: application/json`` and this
document (schema version 1; keys may be added, never renamed)::

    {
      "version": 1,
      "id": "driftd-42",              # the audit event's id: the same for every retry and channel,
                                      # so a receiver can drop a re-delivery after a crash
      "status": "firing",             # "firing" | "resolved" | "info"
      "event": "check.completed",     # the audit event's kind
      "deployment": "support-bot",
      "incident": "drift",            # "drift" | "job_failed:<job kind>" | null for "info"
      "summary": "support-bot: drift detected by check 7 (text, embedding)",
      "details": {...},               # the audit event's evidence, as stored
      "ts": "2026-11-30T12:00:00+00:00",          # when the event happened (ISO 8601, UTC)
      "started_at": "2026-11-30T11:00:00+00:00",  # when the incident opened (= ts when firing)
      "driftd_url": "https://driftd.example"      # only when notifications.driftd_url is set
    }

Slack-compatible incoming webhook (``slack``): ``POST <url>`` with ``{"text": "..."}``, mrkdwn
with an emoji per status (`:rotating_light:` firing, `:white_check_mark:` resolved,
`:information_source:` info).

Alertmanager (``alertmanager``): ``POST <base>/api/v2/alerts`` with a list of one alert. Its
labels are ``alertname`` (``DriftdDriftDetected``, ``DriftdJobFailed``, ``DriftdPromotion``,
``DriftdRollback``), ``deployment``, ``severity`` and ``source="driftd"``, plus ``job_kind`` on
job failures (each job kind is its own alert) and ``version`` on promotions and rollbacks (each
change is its own alert). Alertmanager groups and deduplicates by these labels. ``startsAt`` is
when the incident opened. driftd posts an alert once instead of re-sending it every minute like
Prometheus, so ``endsAt`` is always set, lest Alertmanager resolve the alert after its
``resolve_timeout``: a firing alert ends ``FIRING_HORIZON`` (7 days) ahead unless its resolve
message comes first (``endsAt`` = the resolving event's time); an info alert ends one hour after
it starts, long enough to be routed and seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from daemon.config.models import Notifications
from daemon.errors import ConfigError
from daemon.store.models import NotificationState

SCHEMA_VERSION = 1
FIRING_HORIZON = timedelta(days=7)
INFO_LIFETIME = timedelta(hours=1)
ALERTS_PATH = "/api/v2/alerts"
# An annotation is for people; the full evidence goes to the webhook.
DESCRIPTION_CHARS = 2000


class ChannelKind(StrEnum):
    """The channel kinds driftd can send to; the names label ``driftd_notifications_total``."""

    webhook = "webhook"
    slack = "slack"
    alertmanager = "alertmanager"


@dataclass(frozen=True, slots=True)
class Channel:
    """An enabled channel: its kind and where messages are posted."""

    kind: ChannelKind
    url: str


@dataclass(frozen=True, slots=True)
class Message:
    """What happened, independent of any channel."""

    event_id: int
    event: str
    deployment: str
    state: NotificationState
    incident: str | None
    alertname: str
    severity: str
    summary: str
    details: dict[str, Any]
    ts: datetime
    started_at: datetime
    labels: dict[str, str]


def enabled_channels(settings: Notifications, environ: Mapping[str, str]) -> dict[str, Channel]:
    """The channels whose URL variable is set and not empty, by kind.

    A set variable that is not an http(s) URL is a ``ConfigError`` naming the variable (never
    its value, which is a secret): a typo must stop start-up, not silence the channel.
    """
    found: dict[str, Channel] = {}
    problems: list[str] = []
    for kind in ChannelKind:
        name = getattr(settings, kind.value).url_env
        url = environ.get(name, "").strip()
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            problems.append(
                f"{name} (notifications.{kind.value}.url_env) is not an http:// or https:// "
                "URL; set it to the channel's URL, or unset it to turn the channel off"
            )
            continue
        if kind is ChannelKind.alertmanager:
            url = url.rstrip("/") + ALERTS_PATH
        found[kind.value] = Channel(kind, url)
    if problems:
        raise ConfigError("environment", problems)
    return found


def render(kind: ChannelKind | str, message: Message, driftd_url: str | None) -> Any:
    """The JSON body ``message`` is posted as to a channel of ``kind``."""
    kind = ChannelKind(kind)
    if kind is ChannelKind.webhook:
        return webhook_body(message, driftd_url)
    if kind is ChannelKind.slack:
        return slack_body(message, driftd_url)
    return alertmanager_body(message, driftd_url)


def webhook_body(message: Message, driftd_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "id": f"driftd-{message.event_id}",
        "status": message.state.value,
        "event": message.event,
        "deployment": message.deployment,
        "incident": message.incident,
        "summary": message.summary,
        "details": message.details,
        "ts": message.ts.isoformat(),
        "started_at": message.started_at.isoformat(),
    }
    if driftd_url is not None:
        body["driftd_url"] = driftd_url
    return body


_EMOJI = {
    NotificationState.firing: ":rotating_light:",
    NotificationState.resolved: ":white_check_mark:",
    NotificationState.info: ":information_source:",
}


def slack_body(message: Message, driftd_url: str | None) -> dict[str, str]:
    status = message.state.value.upper()
    text = f"{_EMOJI[message.state]} *[{status}]* {_slack_escape(message.summary)}"
    text += f"\n`{message.event}` at {message.ts.strftime('%Y-%m-%d %H:%M:%S UTC')}"
    if driftd_url is not None:
        text += f" · <{_slack_escape(driftd_url)}|driftd>"
    return {"text": text}


def _slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup; everything else is literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def alertmanager_body(message: Message, driftd_url: str | None) -> list[dict[str, Any]]:
    if message.state is NotificationState.resolved:
        ends = message.ts
    elif message.state is NotificationState.info:
        ends = message.started_at + INFO_LIFETIME
    else:
        ends = message.started_at + FIRING_HORIZON
    alert: dict[str, Any] = {
        "labels": {
            "alertname": message.alertname,
            "deployment": message.deployment,
            "severity": message.severity,
            "source": "driftd",
            **message.labels,
        },
        "annotations": {"summary": message.summary, "description": _description(message)},
        "startsAt": _rfc3339(message.started_at),
        "endsAt": _rfc3339(ends),
    }
    if driftd_url is not None:
        alert["generatorURL"] = driftd_url
    return [alert]


def _description(message: Message) -> str:
    parts = [f"{key}: {value}" for key, value in message.details.items() if value is not None]
    text = f"{message.event} (audit event {message.event_id}): " + "; ".join(parts)
    return text[:DESCRIPTION_CHARS]


def _rfc3339(value: datetime) -> str:
    # Alertmanager parses RFC 3339; isoformat of an aware datetime is that.
    return value.isoformat()
