"""PII redaction, case by case: counts on a mixed text, values next to one another, what a
detector must not swallow or split, extra patterns, the configuration section, and text that is
not plain ASCII. The seeded corpus of every kind is in ``test_redact_corpus.py``."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest

from daemon.config.models import Redaction, RedactionKind
from daemon.ingest.redact import ALL_KINDS, Redactor
from tests.daemon.ingest.conftest import (
    ALNUM,
    REDACTOR,
    grouped,
    iban_of,
    luhn_complete,
    random_text,
)


def test_counts_are_per_kind_on_a_mixed_text() -> None:
    key = "sk-" + random_text(ALNUM, 40, random.Random(1))
    text = (
        "Hi, I'm john.doe@example.com (backup jane@example.org), call +44 20 7946 0958 or "
        "(202) 555-0143. Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, "
        f"from 192.168.1.1 and 2001:db8::1, key {key}, order #4421 on 2024-03-15."
    )
    counts: Counter[str] = Counter()
    assert REDACTOR.redact(text, counts) == (
        "Hi, I'm <EMAIL> (backup <EMAIL>), call <PHONE> or <PHONE>. Card <CARD>, IBAN <IBAN>, "
        "from <IP> and <IP>, key <API_KEY>, order #4421 on 2024-03-15."
    )
    assert counts == Counter(email=2, phone=2, card=1, iban=1, ip=2, api_key=1)
    REDACTOR.redact("write to anna@example.com", counts)
    assert counts["email"] == 3


def test_many_values_in_one_text_are_each_replaced() -> None:
    text = " ".join(f"user{index}@example.com 4111 1111 1111 1111" for index in range(2000))
    counts: Counter[str] = Counter()
    assert REDACTOR.redact(text, counts) == " ".join(["<EMAIL> <CARD>"] * 2000)
    assert counts == Counter(email=2000, card=2000)


def test_bearer_stays_and_only_the_token_goes() -> None:
    token = random_text(ALNUM, 32, random.Random(2))
    assert REDACTOR.redact(f"Authorization: Bearer {token}") == "Authorization: Bearer <API_KEY>"


def test_a_card_printed_with_its_cvv_is_still_found() -> None:
    assert REDACTOR.redact("4111 1111 1111 1111 123 exp 12/27") == "<CARD> 123 exp 12/27"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +1 202 555 0143 24/7", "call <PHONE> 24/7"),
        ("020 7946 0958 24/7", "<PHONE> 24/7"),
        ("+49 30 901820/123", "<PHONE>/123"),
        ("+44 20 7946 0958 1234 5678 9999", "<PHONE> 1234 5678 9999"),
        ("020 7946 0958 1234", "<PHONE> 1234"),
    ],
)
def test_a_phone_number_does_not_swallow_the_numbers_after_it(text: str, expected: str) -> None:
    assert REDACTOR.redact(text) == expected


def test_an_iban_holding_a_valid_card_number_is_one_iban() -> None:
    # 16 digits of a valid card, then 2 more that make the 18 digits fail Luhn.
    card_digits = luhn_complete("3" + random_text(string.digits, 14, random.Random(3)))
    iban = grouped(iban_of("DE", card_digits + "07"))
    assert Redactor(kinds=("card",)).redact(f"IBAN {iban}") == f"IBAN {iban[:5]}<CARD> 07"
    counts: Counter[str] = Counter()
    assert REDACTOR.redact(f"IBAN {iban}", counts) == "IBAN <IBAN>"
    assert counts == Counter(iban=1)


def test_an_ipv4_suffix_of_an_ipv6_address_is_one_address() -> None:
    counts: Counter[str] = Counter()
    assert REDACTOR.redact("from ::ffff:192.0.2.128 today", counts) == "from <IP> today"
    assert counts == Counter(ip=1)


def test_a_weaker_match_overlapping_a_stronger_one_is_folded_into_it() -> None:
    redactor = Redactor(extra=[("CUSTOMER", r"cust:\S+")])
    counts: Counter[str] = Counter()
    assert redactor.redact("ticket for cust:anna@example.com today", counts) == (
        "ticket for <EMAIL> today"
    )
    assert counts == Counter(email=1)


def test_extra_patterns_are_replaced_and_counted_under_their_name() -> None:
    redactor = Redactor(extra=[("ACCOUNT_NUMBER", r"\b\d{8}\b"), ("TICKET", r"TCK-\d+")])
    counts: Counter[str] = Counter()
    text = "account 12345678 locked, see TCK-991 and TCK-992, mail anna@example.com"
    assert redactor.redact(text, counts) == (
        "account <ACCOUNT_NUMBER> locked, see <TICKET> and <TICKET>, mail <EMAIL>"
    )
    assert counts == Counter(ACCOUNT_NUMBER=1, TICKET=2, email=1)


def test_an_extra_pattern_that_can_match_nothing_does_not_loop() -> None:
    redactor = Redactor(kinds=(), extra=[("DIGITS", r"\d*")])
    assert redactor.redact("room 101 and 7") == "room <DIGITS> and <DIGITS>"


def test_the_configuration_section_builds_a_redactor() -> None:
    section = Redaction.model_validate(
        {"extra": [{"name": "ACCOUNT_NUMBER", "pattern": r"\b\d{8}\b"}]}
    )
    redactor = Redactor(section.kinds, [(p.name, p.pattern) for p in section.extra])
    counts: Counter[str] = Counter()
    assert redactor.redact("acc 12345678, phone 020 7946 0958", counts) == (
        "acc <ACCOUNT_NUMBER>, phone <PHONE>"
    )
    assert counts == Counter(ACCOUNT_NUMBER=1, phone=1)
    assert tuple(RedactionKind) == ALL_KINDS


def test_only_the_chosen_kinds_run() -> None:
    text = "mail anna@example.com or call +44 20 7946 0958"
    assert Redactor(kinds=("email",)).redact(text) == "mail <EMAIL> or call +44 20 7946 0958"
    assert Redactor(kinds=("phone",)).redact(text) == "mail anna@example.com or call <PHONE>"
    assert Redactor(kinds=()).redact(text) == text


def test_an_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown redaction kind 'passport'"):
        Redactor(kinds=("email", "passport"))


def test_kinds_given_as_one_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"not the string 'email'"):
        Redactor(kinds="email")


def test_an_invalid_extra_pattern_is_named() -> None:
    with pytest.raises(ValueError, match=r"redaction pattern ORDER: invalid regular expression"):
        Redactor(extra=[("ORDER", "(x")])


def test_an_extra_name_must_be_upper_case() -> None:
    with pytest.raises(ValueError, match=r"redaction pattern name 'order'"):
        Redactor(extra=[("order", r"\d+")])


def test_text_that_is_not_valid_unicode_is_still_redacted() -> None:
    text = "bad \ud800 byte, card 4111 1111 1111 1111"
    assert REDACTOR.redact(text) == "bad \ud800 byte, card <CARD>"


def test_text_in_other_scripts_is_kept_exactly() -> None:
    text = "Где моя карта? 我的卡 📦 — écrivez à josé@exemple.fr, merci"
    assert REDACTOR.redact(text) == "Где моя карта? 我的卡 📦 — écrivez à <EMAIL>, merci"
