"""Notifications from the daemon: drift, job failures, promotions and rollbacks, sent to a
generic webhook, a Slack-compatible webhook or Alertmanager's v2 API, each message once, with
resolve messages, retried with backoff, off the scheduler's and the API's paths.

``incidents`` turns audit events into outbox rows, ``channels`` renders each channel's body,
``sender`` delivers, ``notifier`` ties them together for the daemon.
"""

from __future__ import annotations

from daemon.notify.channels import Channel, ChannelKind, Message, enabled_channels
from daemon.notify.incidents import Processed, process_events
from daemon.notify.notifier import Notifier
from daemon.notify.sender import Sender
from daemon.notify.stats import Outcome

__all__ = [
    "Channel",
    "ChannelKind",
    "Message",
    "Notifier",
    "Outcome",
    "Processed",
    "Sender",
    "enabled_channels",
    "process_events",
]
