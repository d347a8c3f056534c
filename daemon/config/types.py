"""Value types of the configuration file: durations, schedules, names, environment references.

Each type parses the human form an operator writes (``6h``, ``every 15m``, ``0 3 * * *``) and fails
with a message that says what form was expected, since that message is what a user reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, ValidationInfo

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(?:(\d+)([smhdw]))+")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(value: object) -> timedelta:
    """Parse ``90s``, ``15m``, ``6h``, ``7d``, ``1w`` or a compound such as ``1h30m``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if _DURATION.fullmatch(text):
            seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
            if seconds > 0:
                return timedelta(seconds=seconds)
    raise ValueError(f"expected a duration like '6h' (units s, m, h, d, w), got {value!r}")


def format_duration(value: timedelta) -> str:
    """The largest whole unit that ``parse_duration`` reads back: ``30d``, ``90m``, ``1w``."""
    seconds = int(value.total_seconds())
    for unit, size in sorted(_UNIT_SECONDS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


@dataclass(frozen=True)
class Schedule:
    """When a job runs: every fixed interval, or on a five-field cron expression."""

    every: timedelta | None = None
    cron: str | None = None

    def __str__(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return str(self.cron)


def parse_schedule(value: object) -> Schedule:
    """Parse ``every 15m`` or a cron expression such as ``0 3 * * *``."""
    if isinstance(value, Schedule):
        return value
    expected = "expected 'every <duration>' (e.g. 'every 1h') or a cron expression like '0 3 * * *'"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{expected}, got {value!r}")
    text = value.strip()
    if text.lower().startswith("every "):
        try:
            return Schedule(every=parse_duration(text[6:]))
        except ValueError:
            raise ValueError(f"{expected}, got {value!r}") from None
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"{expected}; a cron expression has 5 fields, got {len(fields)}")
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {text!r}: {exc}") from None
    return Schedule(cron=" ".join(fields))


ScheduleSpec = Annotated[
    Schedule,
    BeforeValidator(parse_schedule),
    PlainSerializer(str, return_type=str),
]


_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")


def check_name(value: str) -> str:
    # Names appear in URLs, metric labels and file names, so they are kept to a safe alphabet.
    if not _NAME.fullmatch(value):
        raise ValueError(
            "expected a name of 1-63 lowercase letters, digits, '-' or '_', starting and ending "
            f"with a letter or digit, got {value!r}"
        )
    return value


Name = Annotated[str, AfterValidator(check_name)]

# Secrets are read from the environment only, and only from variables a deployment of driftd
# owns, so that a config file can never point driftd at an unrelated credential by mistake.
_SECRET_ENV = re.compile(r"DRIFTD_[A-Z0-9_]+|OPENAI_API_KEY")

ENV_STORAGE_URL = "DRIFTD_STORAGE_URL"

# driftd's own credentials: the callers' tokens and the store's URL. A `SecretEnv` is sent
# elsewhere (an upstream's API key, a channel's URL), so naming one of these would hand driftd's
# keys to a third party. The token names are repeated from daemon.auth (INGEST_ENV, ADMIN_ENV,
# PROXY_ENV) because daemon.config sits below daemon.api and does not import it; a test keeps the
# two in step.
DRIFTD_CREDENTIALS = frozenset(
    {"DRIFTD_ADMIN_TOKENS", "DRIFTD_INGEST_TOKENS", "DRIFTD_PROXY_TOKENS", ENV_STORAGE_URL}
)


def check_secret_env(value: str) -> str:
    if not _SECRET_ENV.fullmatch(value):
        raise ValueError(
            f"expected the name of an environment variable DRIFTD_<NAME> or OPENAI_API_KEY, "
            f"got {value!r}"
        )
    if value in DRIFTD_CREDENTIALS:
        raise ValueError(
            f"{value} holds driftd's own credentials, which must never travel to an upstream or "
            "a webhook: name the variable that holds the upstream's key or the channel's URL "
            "(OPENAI_API_KEY or another DRIFTD_<NAME>)"
        )
    return value


SecretEnv = Annotated[str, AfterValidator(check_secret_env)]

_URL_ENV = re.compile(r"DRIFTD_[A-Z0-9_]+|OPENAI_BASE_URL")


def check_url_env(value: str) -> str:
    if not _URL_ENV.fullmatch(value) or value in DRIFTD_CREDENTIALS:
        raise ValueError(
            f"expected OPENAI_BASE_URL or the name of another environment variable "
            f"DRIFTD_<NAME> (not one of driftd's credentials), got {value!r}"
        )
    return value


UrlEnv = Annotated[str, AfterValidator(check_url_env)]
"""The name of an environment variable holding a URL (not a secret, so any ``DRIFTD_*``)."""


def check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(check_regex)]


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths in the file are relative to the file, not to where driftd was started."""
    base = (info.context or {}).get("base_dir")
    if base is None or value.is_absolute():
        return value
    return Path(base) / value


RelativePath = Annotated[Path, AfterValidator(resolve_path)]


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"expected an IANA time zone like 'UTC' or 'Europe/Berlin', got {value!r}"
        ) from None
    return value


TimeZone = Annotated[str, AfterValidator(check_timezone)]
