"""PII redaction: every value of a seeded corpus is replaced and every look-alike left alone.

Each case is a whole sentence with the exact text expected back, so a test also fails when a
detector takes too much (a full stop, a closing bracket, the word ``Bearer``) or too little. Card
numbers and IBANs are generated here with their own check digits (the Luhn and mod-97 rules
written independently of the module) beside published test numbers; keys and tokens are
generated at run time, so no string in this file looks like a live credential.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import string
from collections import Counter

import pytest

from daemon.ingest.redact import ALL_KINDS, Redactor
from tests.daemon.ingest.conftest import (
    ALNUM,
    REDACTOR,
    grouped,
    iban_of,
    luhn_broken,
    luhn_complete,
    random_text,
    rng,
)

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "card": "<CARD>",
    "iban": "<IBAN>",
    "ip": "<IP>",
    "api_key": "<API_KEY>",
}


def test_the_check_digit_helpers_agree_with_published_numbers() -> None:
    assert luhn_complete("411111111111111") == "4111111111111111"
    assert luhn_complete("37828224631000") == "378282246310005"
    assert luhn_broken("4111111111111111") == "4111111111111112"
    assert iban_of("GB", "WEST12345698765432") == "GB82WEST12345698765432"
    assert iban_of("DE", "370400440532013000") == "DE89370400440532013000"
    assert grouped("3782822463100052", (4, 6, 5)) == "3782 822463 10005 2"


# --- the corpus --------------------------------------------------------------------------------


def placed(kind: str, values: list[str], templates: list[str]) -> list[tuple[str, str, str]]:
    """Each value in a sentence, the templates taken in turn: (kind, text, expected text)."""
    return [
        (
            kind,
            templates[index % len(templates)].replace("{}", value),
            templates[index % len(templates)].replace("{}", PLACEHOLDERS[kind]),
        )
        for index, value in enumerate(values)
    ]


# E-mail addresses -----------------------------------------------------------------------------

EMAIL_TEMPLATES = [
    "please send the receipt to {} and not to my old address",
    "My email is {}.",
    "You can reach me at {}, I check it every day.",
    "Contact: {}",
    "I changed my login to {} last week but the app still shows the old one",
    '{"customer": {"email": "{}", "tier": "gold"}}',
    "Write to <{}> with the order number in the subject",
    "(reply to {})",
    "mailto:{}",
    "{} is the address on my account",
]
EMAIL_VALUES = [
    "john.doe@example.com",
    "jane_smith+billing@mail.example.co.uk",
    "o'brien@example.ie",
    "user123@sub.domain.org",
    "ANNA.MUELLER@EXAMPLE.DE",
    "first.last@company-name.io",
    "x@y.io",
    "josé.garcía@ejemplo.es",
    "support-team@my-shop.example",
    "a1b2c3@test.museum",
    "customer.care%uk@example.net",
    "kim-lee@example.travel",
] + [
    f"{rng.choice(['anna', 'ben', 'chloe', 'dev', 'emma', 'farid', 'gwen', 'hugo'])}"
    f"{rng.choice(['.', '_', '-', ''])}{rng.choice(['smith', 'jones', 'ng', 'kowalski', 'x'])}"
    f"{rng.randint(1, 999) if rng.random() < 0.5 else ''}"
    f"@{rng.choice(['example.com', 'mail.example.org', 'example.co.uk', 'corp.example.de'])}"
    for _ in range(26)
]

# Phone numbers --------------------------------------------------------------------------------

PHONE_TEMPLATES = [
    "You can call me on {} after six.",
    "My number is {}",
    "Phone: {}, thanks",
    "please ring {} tomorrow morning, I am out today",
    "tel:{}",
    "the courier tried {} twice and nobody answered",
    "Call us at {} (Mon-Fri 9:00-17:00).",
    "new mobile {} - please update my profile",
]
PHONE_VALUES = [
    "+44 20 7946 0958",
    "+1-202-555-0143",
    "(202) 555-0143",
    "020 7946 0958",
    "+49 30 901820",
    "+44 (0)20 7946 0958",
    "+1 (202) 555-0143",
    "202-555-0143",
    "202.555.0143",
    "1-800-555-0199",
    "+33 6 12 34 56 78",
    "06 12 34 56 78",
    "07700 900123",
    "07700900123",
    "0161 496 0000",
    "+442079460958",
    "+61 2 9876 5432",
    "+91 98765 43210",
    "030 901820",
    "+353 1 234 5678",
    "+81 3-1234-5678",
    "(415) 555-2671",
    "+1.415.555.2671",
    "(+44) 20 7946 0958",
    "0049 30 901820",
    "00 44 20 7946 0958",
] + [
    rng.choice(
        [
            f"+44 7700 {rng.randint(900000, 900999)}",
            f"({rng.randint(2, 9)}{rng.randint(10, 99)}) {rng.randint(200, 999)}-"
            f"{rng.randint(0, 9999):04d}",
            f"{rng.randint(2, 9)}{rng.randint(10, 99)}-{rng.randint(200, 999)}-"
            f"{rng.randint(0, 9999):04d}",
            f"+49 {rng.randint(30, 89)} {rng.randint(100000, 9999999)}",
            f"0{rng.randint(20, 29)} {rng.randint(7000, 8999)} {rng.randint(0, 9999):04d}",
            f"+33 {rng.randint(1, 9)} {' '.join(f'{rng.randint(0, 99):02d}' for _ in range(4))}",
        ]
    )
    for _ in range(17)
]

# Payment cards --------------------------------------------------------------------------------

CARD_TEMPLATES = [
    "my card {} was declined",
    "Card number: {}.",
    "I paid with {} but the money never arrived",
    "please refund to the card ending... actually the full number is {}, expiry 04/27",
    "charge {} again, the first attempt failed",
    "Visa {} (the old one, not the new one)",
    "card {} cvv on the back",
    "the number on the front is {}; the app says it is invalid",
]
CARD_VALUES = [
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111111111111111",
    "5500 0000 0000 0004",
    "5555555555554444",
    "378282246310005",
    "3782 822463 10005",
    "6011111111111117",
    "6011 0009 9013 9424",
    "3530111333300000",
    "30569309025904",
    "3056 930902 5904",
    "4012888888881881",
    "2223003122003222",
    "4222222222222",
    "5105 1051 0510 5100",
    "4000-0566-5566-5556",
    "4111 1111-1111 1111",
    "5555.5555.5555.4444",
]
for length, prefix, sizes in [
    (16, "4", (4,)),
    (16, "51", (4,)),
    (16, "2720", (4,)),
    (15, "34", (4, 6, 5)),
    (15, "37", (4, 6, 5)),
    (16, "6011", (4,)),
    (16, "65", (4,)),
    (16, "35", (4,)),
    (14, "36", (4, 6, 4)),
    (19, "62", (4,)),
    (13, "4", (4,)),
    (18, "5", (4,)),
]:
    for separator in (" ", "-", ""):
        number = luhn_complete(prefix + random_text(string.digits, length - len(prefix) - 1))
        CARD_VALUES.append(grouped(number, sizes, separator) if separator else number)

# IBANs ----------------------------------------------------------------------------------------

IBAN_TEMPLATES = [
    "the refund should go to my IBAN {} please",
    "IBAN: {}",
    "Please transfer the deposit to {}.",
    "my account is {} (Deutsche Bank)",
    "I sent it from {}, why is it not showing?",
    "Beneficiary IBAN {} / BIC DEUTDEFF",
]
IBAN_VALUES = [
    "GB82 WEST 1234 5698 7654 32",
    "GB82WEST12345698765432",
    "DE89 3704 0044 0532 0130 00",
    "DE89370400440532013000",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91 ABNA 0417 1643 00",
    "ES91 2100 0418 4502 0005 1332",
    "IT60 X054 2811 1010 0000 0123 456",
    "BE68 5390 0754 7034",
    "CH93 0076 2011 6238 5295 7",
    "NO93 8601 1117 947",
    "AT61 1904 3002 3457 3201",
    "PL61 1090 1014 0000 0712 1981 2874",
    "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
    "gb82 west 1234 5698 7654 32",
    "IE29 AIBK 9311 5212 3456 78",
    "SE45 5000 0000 0583 9825 7466",
]
# BBAN shapes: "n" a digit, "a" an upper-case letter, "c" either.
BBAN_SHAPES = {
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20,
    "IT": "a" + "n" * 10 + "c" * 12,
    "BE": "n" * 12,
    "PL": "n" * 24,
}
BBAN_ALPHABETS = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits * 3 + "ABC"}
for index in range(20):
    country = list(BBAN_SHAPES)[index % len(BBAN_SHAPES)]
    bban = "".join(rng.choice(BBAN_ALPHABETS[kind]) for kind in BBAN_SHAPES[country])
    generated = iban_of(country, bban)
    IBAN_VALUES.append(grouped(generated) if index % 3 else generated)

# IP addresses ---------------------------------------------------------------------------------

IPV4_TEMPLATES = [
    "our server at {} is getting 429 errors since this morning",
    "login from {} at 03:12, was that you?",
    "curl http://{}:8080/health returns nothing",
    "The VPN gave me {}.",
    "allowlist {}/32 please",
]
IPV6_TEMPLATES = [
    "requests from {} are being blocked",
    "my router shows [{}]:443 as the gateway",
    "IPv6: {}, IPv4 none",
    "ping {} fails",
]
IPV4_VALUES = [
    "192.168.1.1",
    "10.0.0.1",
    "172.16.254.1",
    "8.8.8.8",
    "255.255.255.255",
    "10.0.0.0",
    "203.0.113.42",
    "100.64.0.10",
] + [".".join(str(rng.randint(0, 255)) for _ in range(4)) for _ in range(12)]
IPV6_VALUES = [
    "2001:db8::1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "fe80::1ff:fe23:4567:890a",
    "::1",
    "::ffff:192.0.2.128",
    "2001:db8:85a3::8a2e:370:7334",
    "FE80::0202:B3FF:FE1E:8329",
] + [
    (address.compressed if index % 2 else address.exploded)
    for index, address in enumerate(ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(10))
]

# API keys and tokens --------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt() -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": str(rng.randint(1, 10**9)), "iat": rng.randint(1_600_000_000, 1_800_000_000)}
    return f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(rng.randbytes(32))}"


PREFIXED_KEY_TEMPLATES = [
    "here is my key {} can you check the rate limits on it",
    "I accidentally pasted {} in the chat, please delete it",
    "OPENAI_API_KEY={}",
    "export HF_TOKEN={}",
    "the docs say to use `{}` but it fails",
    "Authorization: Bearer {}",
]
PREFIXED_KEYS = [
    "sk-" + random_text(ALNUM, 48),
    "sk-proj-" + random_text(ALNUM + "_-", 100),
    "sk-svcacct-" + random_text(ALNUM + "_-", 60),
    "AKIA" + random_text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
    "ASIA" + random_text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
    "ghp_" + random_text(ALNUM, 36),
    "gho_" + random_text(ALNUM, 36),
    "github_pat_" + random_text(ALNUM, 22) + "_" + random_text(ALNUM, 59),
    "xoxb-" + random_text(string.digits, 12) + "-" + random_text(ALNUM, 24),
    "xoxp-" + random_text(string.digits, 11) + "-" + random_text(string.digits, 12),
    "hf_" + random_text(ALNUM, 34),
    jwt(),
    jwt(),
    "sk-" + random_text(ALNUM, 32),
    "hf_" + random_text(ALNUM, 34),
    "ghs_" + random_text(ALNUM, 36),
    jwt(),
    "xoxa-" + random_text(ALNUM, 30),
]
NAMED_SECRET_TEMPLATES = [
    "api_key={}",
    "Authorization: Bearer {}",
    '{"token": "{}", "user": "anna"}',
    "my api key is {} but it stopped working",
    "X-Api-Key: {}",
    "client_secret: '{}'",
    "password = {}",
    "aws_secret_access_key = {}",
    "?access_token={}&lang=en",
]
NAMED_SECRETS = [
    random_text("0123456789abcdef", 32),
    random_text("0123456789abcdef", 40),
    base64.b64encode(rng.randbytes(30)).decode(),
    random_text(ALNUM, 24),
    random_text(ALNUM + "+/", 40),
    base64.b64encode(rng.randbytes(16)).decode(),
    random_text("0123456789ABCDEF", 32),
    random_text(ALNUM, 20),
    random_text(ALNUM + "-_", 43),
]

# An unbroken North American number is a phone number only after a word that says so.
PHONE_NAMED = [
    ("my cell is 2025550143, text me", "my cell is <PHONE>, text me"),
    ("Call me at 4155552671.", "Call me at <PHONE>."),
    ("whatsapp: 12025550143", "whatsapp: <PHONE>"),
    ("phone number 3125550199 please", "phone number <PHONE> please"),
]

CORPUS: list[tuple[str, str, str]] = [
    *placed("email", EMAIL_VALUES, EMAIL_TEMPLATES),
    *placed("phone", PHONE_VALUES, PHONE_TEMPLATES),
    *(("phone", text, expected) for text, expected in PHONE_NAMED),
    *placed("card", CARD_VALUES, CARD_TEMPLATES),
    *placed("iban", IBAN_VALUES, IBAN_TEMPLATES),
    *placed("ip", IPV4_VALUES, IPV4_TEMPLATES),
    *placed("ip", IPV6_VALUES, IPV6_TEMPLATES),
    *placed("api_key", PREFIXED_KEYS, PREFIXED_KEY_TEMPLATES),
    *placed("api_key", NAMED_SECRETS * 2, NAMED_SECRET_TEMPLATES),
]

# Look-alikes: none of these may change. -------------------------------------------------------

LOOK_ALIKES = [
    # order numbers, references, codes
    "my order #4421 hasn't arrived yet",
    "order ORD-20240315-0042 was split into two parcels",
    "Invoice 2024-000123 is still unpaid",
    "tracking number 1Z999AA10123456784 shows no movement",
    "request id 123e4567-e89b-12d3-a456-426614174000 failed",
    "fixed in commit 3f2a9c1e4b7d8f6a0c5e9b2d4f7a1c3e5b6d8f0a, please redeploy",
    "ISBN 9780306406157 is out of stock",
    "the voucher code SUMMER2024SALE does not work",
    # numbers failing Luhn or not card-shaped
    "order 4111111111111112 was charged twice",
    "card 4111 1111 1111 1112 is what the form shows",
    "reference 5500-0000-0000-0005",
    "0000 0000 0000 0000 is obviously not a card",
    "serial 9876543210987654 on the back of the router",
    "1234 5678 9012 3456 7890 1234 is a test string",
    # IBAN-shaped but wrong
    "GB83 WEST 1234 5698 7654 32 is what I typed",
    "DE88370400440532013000",
    "XX82WEST12345698765432 is not a country",
    "GB82 WEST 1234 5698 7654 is too short",
    "NL91ABNA041716430012 is too long",
    # versions, dates, times, amounts
    "version 1.2.3 broke the export",
    "upgrade from v10.2.3.4 to 10.2.3.4.5 fixed it",
    "Python 3.11.7 on Chrome 122.0.6261.94",
    "it happened on 2024-03-15 at 10:30",
    "since 15/03/2024 and again on 15.03.2024",
    "between 09:00-17:00 or at 10:30:45 sharp",
    "March 15, 2024 was the last time it worked",
    "I was charged $1,250.00 instead of $125.00",
    "the fee of € 1.250,00 is too high",
    "we moved 1 250 000 EUR in 2019-2024",
    "Total: £12,345,678.90",
    # postcodes, short numbers, quantities
    "deliver to SW1A 1AA, London",
    "10115 Berlin, Germany",
    "Beverly Hills 90210",
    "75008 Paris",
    "call 911 if it is an emergency",
    "room 101, floor 3",
    "I ordered 3 items and got 2",
    "ext. 4421",
    "the PIN is 4 digits long",
    "top up £20 or £50",
    "555-0143 is only seven digits",
    "1-800-FLOWERS",
    "+5 points for the quiz",
    "order 2025550143 was cancelled",
    "reference 00123456789",
    "we are open 24/7, 365 days a year",
    # IP-shaped but not addresses
    "999.1.1.1 is not an address",
    "256.256.256.256 neither",
    "192.168.1 has only three parts",
    "01.02.03.04 has leading zeros",
    "std::vector and Foo::bar are C++",
    "cafe::add in the Rust code",
    "MAC 00:1A:2B:3C:4D:5E on the sticker",
    "Note: the time is 10:30:00",
    # not e-mail addresses
    "user at example dot com",
    "email me at john[at]example[dot]com",
    "ping @support on twitter",
    "john@localhost is our test user",
    "the @ sign is missing",
    # words that start like keys
    "I feel sk-ill today",
    "sk-learn is a Python library",
    "ask-me-anything session on Friday",
    "sk-this-is-not-a-real-key-at-all",
    "the AKIA prefix means an access key",
    "hf_model and ghp_short are too short",
    "eyJ is how base64 JSON starts",
    "a bearer of bad news",
    "Bearer token required",
    "the key to success is patience and consistency",
    "token: customer-service-escalation-path",
    "my password is incorrect",
    "https://support.example.com/articles/refunds-and-returns explains it",
    "internationalization-and-localization",
    "",
    "   ",
]
# Generated: Luhn failures and IBANs with a wrong check digit.
LOOK_ALIKES += [
    f"order {luhn_broken(luhn_complete('4' + random_text(string.digits, 14)))} is pending"
    for _ in range(6)
]
for country in ("DE", "GB", "FR", "ES"):
    valid = iban_of(
        country,
        "".join(rng.choice(BBAN_ALPHABETS[kind]) for kind in BBAN_SHAPES[country]),
    )
    wrong = valid[:2] + f"{(int(valid[2:4]) + 1) % 100:02d}" + valid[4:]
    LOOK_ALIKES.append(f"IBAN {grouped(wrong)} bounced")


CORPUS_IDS = [f"{kind}-{index}" for index, (kind, _, _) in enumerate(CORPUS)]


def test_the_corpus_is_large_enough() -> None:
    per_kind = Counter(kind for kind, _, _ in CORPUS)
    assert set(per_kind) == set(ALL_KINDS)
    assert min(per_kind.values()) >= 30
    assert sum(per_kind.values()) >= 200
    assert len(LOOK_ALIKES) >= 60


@pytest.mark.parametrize(("kind", "text", "expected"), CORPUS, ids=CORPUS_IDS)
def test_pii_is_replaced_and_nothing_else(kind: str, text: str, expected: str) -> None:
    counts: Counter[str] = Counter()
    assert REDACTOR.redact(text, counts) == expected
    assert counts == Counter({kind: 1})


@pytest.mark.parametrize(("kind", "text", "expected"), CORPUS, ids=CORPUS_IDS)
def test_each_value_is_found_by_its_own_detector_alone(kind: str, text: str, expected: str) -> None:
    assert Redactor(kinds=(kind,)).redact(text) == expected


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_left_alone(text: str) -> None:
    counts: Counter[str] = Counter()
    assert REDACTOR.redact(text, counts) == text
    assert counts == Counter()


@pytest.mark.parametrize(("kind", "text", "expected"), CORPUS, ids=CORPUS_IDS)
def test_redacted_text_has_nothing_left_to_redact(kind: str, text: str, expected: str) -> None:
    assert REDACTOR.redact(expected) == expected


@pytest.mark.parametrize(
    ("other", "kind"),
    [("phone", "card"), ("phone", "ip"), ("api_key", "email"), ("card", "phone")],
)
def test_a_value_of_one_kind_is_not_taken_by_another(other: str, kind: str) -> None:
    redactor = Redactor(kinds=(other,))
    for case_kind, text, _ in CORPUS:
        if case_kind == kind:
            assert redactor.redact(text) == text
