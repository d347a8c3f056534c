from datetime import timedelta

import pytest

from daemon.auth import ADMIN_ENV, INGEST_ENV, PROXY_ENV
from daemon.config import ENV_STORAGE_URL
from daemon.config.types import (
    DRIFTD_CREDENTIALS,
    Schedule,
    check_name,
    check_secret_env,
    format_duration,
    parse_duration,
    parse_schedule,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("6h", 21600), ("7d", 604800), ("1w", 604800), ("1h30m", 5400)],
)
def test_durations_parse_in_every_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["soon", "6", "6 hours", "-1h", "0s", "", 6, None, "1.5h"])
def test_bad_durations_say_what_form_is_expected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"expected a duration like '6h'"):
        parse_duration(bad)


@pytest.mark.parametrize("text", ["30d", "90m", "1w", "6h", "45s"])
def test_durations_format_back_to_what_parses(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_schedules_are_intervals_or_cron() -> None:
    assert parse_schedule("every 15m") == Schedule(every=timedelta(minutes=15))
    assert parse_schedule("0  3 * * 0") == Schedule(cron="0 3 * * 0")
    assert str(parse_schedule("every 1h")) == "every 1h"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("every soon", "expected 'every <duration>'"),
        ("0 3 * *", "a cron expression has 5 fields, got 4"),
        ("0 25 * * *", "invalid cron expression"),
        ("", "expected 'every <duration>'"),
    ],
)
def test_bad_schedules_are_explained(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(bad)


@pytest.mark.parametrize("name", ["a", "banking77-intents", "support_bot", "x1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Bot", "-bot", "bot-", "bot bot", "a" * 64, "bot/1"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="expected a name"):
        check_name(name)


def test_secrets_come_only_from_driftd_or_openai_variables() -> None:
    assert check_secret_env("OPENAI_API_KEY") == "OPENAI_API_KEY"
    assert check_secret_env("DRIFTD_JUDGE_KEY") == "DRIFTD_JUDGE_KEY"
    with pytest.raises(ValueError, match="DRIFTD_<NAME> or OPENAI_API_KEY"):
        check_secret_env("AWS_SECRET_ACCESS_KEY")


@pytest.mark.parametrize("name", sorted(DRIFTD_CREDENTIALS))
def test_secrets_never_come_from_driftds_own_credentials(name: str) -> None:
    with pytest.raises(
        ValueError, match=f"^{name} holds driftd's own credentials, which must never"
    ):
        check_secret_env(name)


def test_driftds_own_credentials_are_the_variables_driftd_reads_them_from() -> None:
    # types.py repeats the names of daemon.auth, which daemon.config may not import.
    assert {ADMIN_ENV, INGEST_ENV, PROXY_ENV, ENV_STORAGE_URL} == DRIFTD_CREDENTIALS
