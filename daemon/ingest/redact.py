"""PII redaction: replace personal data and secrets in a sample's text before it is stored.

A value a built-in detector finds becomes its kind's placeholder (``<EMAIL>``, ``<PHONE>``,
``<CARD>``, ``<IBAN>``, ``<IP>``, ``<API_KEY>``); a match of an operator's extra pattern becomes
``<NAME>``. What each detector takes, and what it leaves alone:

- ``email``: ``local@domain.tld`` with a letters-only top-level domain. Not ``user at example dot
  com``, not ``@handle``, not ``user@localhost``.
- ``phone``: ``+``, ``(+44)`` or ``00`` and a country code, 9-15 digits in all
  (``+44 20 7946 0958``, ``+1-202-555-0143``, ``+49 30 901820``, ``+44 (0)20 7946 0958``,
  ``0049 30 901820``); North American numbers whose area code and exchange start with 2-9
  (``(202) 555-0143``, ``202.555.0143``, ``1-800-555-0199``); national numbers with a trunk
  ``0``, grouped (``020 7946 0958``, ``030 901820``: 9-11 digits) or unbroken (``07700900123``:
  10-11 digits); an unbroken North American number right after ``phone``, ``mobile``, ``cell``,
  ``call``, ``text`` or the like (``my cell is 2025550143``). Groups after a complete number are
  not taken (``... 0958 24/7``). Not short numbers, years, amounts, dates, times, ``#4421``,
  ``ORD-20240315-0042``, versions, nor any other bare run of digits, which cannot be told from
  an order or account number (``order 2025550143``).
- ``card``: 13-19 digits starting with 2-6 (the payment networks' ranges), unbroken or in the
  printed groups (4-4-4-4 and up to 3 more, 4-6-5, 4-6-4) split by spaces, dashes or dots,
  passing the Luhn check. A CVV printed right after the number does not hide it. Not a number
  failing Luhn, not an ISBN (978...), not digits glued to letters, ``-``, ``+`` or a decimal
  point.
- ``iban``: a country code of the IBAN registry, 2 check digits and the BBAN, unbroken or with
  single spaces, in any letter case, exactly the country's length and passing the mod-97 check.
  Not an IBAN-shaped string with wrong check digits, length or country.
- ``ip``: IPv4 as four octets 0-255 without leading zeros, not inside a longer dotted number
  (``10.2.3.4.5``); IPv6 in full, ``::``-compressed or IPv4-suffixed form, as :mod:`ipaddress`
  reads it, holding at least one digit (so ``std::map`` or ``cafe::add`` stay). A port, prefix
  length or zone after the address stays. Not MAC addresses, times, three-part versions.
- ``api_key``: a token of 16+ characters that is an OpenAI-style ``sk-...``/``sk-proj-...``, an
  AWS ``AKIA``/``ASIA``, a GitHub ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``/``github_pat_``, a
  Slack ``xox[abpr]-`` or a Hugging Face ``hf_`` key, or a JWT (``eyJ...eyJ...signature``); or a
  token of 16+ characters mixing two of lower case, upper case and digits right after ``key``,
  ``token``, ``secret``, ``password``, ``pwd``, ``Bearer`` or ``Basic`` and ``:``, ``=``, ``is``
  or a space (``api_key=``, ``"token": "``, ``Authorization: Bearer``). Only the token is
  replaced, so ``Bearer <API_KEY>`` still shows that a credential was sent. Not ``sk-ill``, not
  prose after those words, not a bare hex digest with no such word before it.

Where matches overlap, the most specific detector wins, in the order email, iban, card, api_key,
ip, phone, then the extra patterns in their order. A weaker match that sticks out of a stronger
one is not dropped but merged into it, so no part of a detected value is ever stored in clear.
Text outside the replaced spans is returned unchanged.

This runs for the input and the output of every ingested sample, so a clean text must cost
almost nothing: before any pattern runs, two ``bytes.translate`` calls sort the text's bytes into
character classes, and a built-in detector runs only if they show what it needs: an ``@``; 9
digits in a row give or take separators; digits around 3 dots, or many colons; a run of 16 token
characters. Extra patterns always run.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

ALL_KINDS: tuple[str, ...] = ("email", "phone", "card", "iban", "ip", "api_key")

_Span = tuple[int, int]
_Take = Callable[[re.Match[str]], _Span | None]

# --- e-mail ----------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.%+-])[\w%+-][\w.%+'-]*@(?:[^\W_][\w-]*\.)+[^\W\d_]{2,}(?![\w-])")

# --- phone -----------------------------------------------------------------------------------

_PHONE = re.compile(
    r"""
    (?<![\w+#./-])  # not glued to a word, a code such as #4421 or ORD-..., or another number
    (?:
        (?P<intl>(?:\+[0-9]++|\(\+[0-9]{1,4}\)|00\ ?[1-9][0-9]{0,2}(?=[ .-]))
                 (?:[ .-]?\([0-9]++\)[ .-]?[0-9]++|[ .-][0-9]++){0,6})
      | (?P<nanp>(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])
                 [2-9][0-9]{2}[ .-][0-9]{4})
      | (?P<national>0[1-9][0-9]*+(?:[ .-][0-9]++){0,4})
      | (?P<bare>1?[2-9][0-9]{2}[2-9][0-9]{6})
    )
    (?![\w]|[.,-][0-9])
    """,
    re.VERBOSE,
)
_DIGIT_GROUP = re.compile(r"[0-9]+")
# A bare ten-digit number is a phone number only right after a word that says so.
_PHONE_NAMED = re.compile(
    r"(?i:\b(?:phone|mobile|cell|tel|telephone|call|text|sms|whatsapp|fax)\b)[^0-9\n]{0,20}\Z"
)
_PHONE_NAME_REACH = 32


def _phone(match: re.Match[str]) -> _Span | None:
    start, text = match.start(), match.string
    if match.group("nanp"):
        return match.span()
    if match.group("bare"):
        named = _PHONE_NAMED.search(text, max(0, start - _PHONE_NAME_REACH), start)
        return match.span() if named is not None else None
    groups = list(_DIGIT_GROUP.finditer(match.group()))
    # One or two digits right before "/" are "24/7" or a fraction after the number, not part of it.
    if text.startswith("/", match.end()) and len(groups[-1].group()) <= 2:
        groups.pop()
    # The longest run of whole groups that makes a number: the groups after it may be something
    # else ("+44 20 7946 0958 1234").
    while groups:
        sizes = [len(group.group()) for group in groups]
        digits = sum(sizes)
        if match.group("intl"):
            # "00" dials out of the country like "+"; it is not one of the number's digits.
            ok = 9 <= digits - 2 * text.startswith("00", start) <= 15
        elif len(sizes) == 1:
            ok = 10 <= digits <= 11
        else:  # an area code of 2-5 digits with its trunk 0, then groups of at least 2
            ok = 9 <= digits <= 11 and sizes[0] <= 5 and min(sizes[1:]) >= 2
        if ok:
            return start, start + groups[-1].end()
        groups.pop()
    return None


# --- payment card ----------------------------------------------------------------------------

_CARD = re.compile(
    r"""
    [2-6](?<![\w.,+-][2-6])  # the first digit, not glued to a word or another number
    (?:
        [0-9]{12,18}
      | [0-9]{3}[ .-][0-9]{6}[ .-][0-9]{4,5}
      | [0-9]{3}[ .-][0-9]{4}[ .-][0-9]{4}[ .-][0-9]{1,4}(?P<tail>[ .-][0-9]{1,3})?
    )
    (?![\w]|[.,-][0-9])
    """,
    re.VERBOSE,
)
# Luhn doubles every second digit from the right; a doubled digit over 9 counts its two digits.
_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn_valid(number: str) -> bool:
    values = [ord(ch) - 48 for ch in reversed(number) if ch.isdigit()]
    return (sum(values[0::2]) + sum(_LUHN_DOUBLED[value] for value in values[1::2])) % 10 == 0


def _card(match: re.Match[str]) -> _Span | None:
    if _luhn_valid(match.group()):
        return match.span()
    # "4111 1111 1111 1111 123" reads as one 19-digit number; the card may be the first 16.
    if match.group("tail") is not None and _luhn_valid(
        match.string[match.start() : match.start("tail")]
    ):
        return match.start(), match.start("tail")
    return None


# --- IBAN ------------------------------------------------------------------------------------

# Country code and length of the IBANs in the SWIFT IBAN registry.
_IBAN_REGISTRY = """
    AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27
    DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22
    IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19
    MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31
    SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30
"""
_IBAN_LENGTHS = {
    country: int(length) for country, length in re.findall(r"([A-Z]{2})(\d\d)", _IBAN_REGISTRY)
}
# Found from its check digits, which are much rarer in text than letters, with the country code
# read behind them. Greedy: it runs on into the words that follow; _iban cuts it to the length.
_IBAN = re.compile(r"[0-9]{2}(?<=\b[A-Za-z]{2}[0-9]{2})(?: ?[A-Za-z0-9]){11,30}")


# The country code and then the country's length of characters, single spaces allowed between.
_IBAN_BODIES = {
    length: re.compile(rf"[A-Za-z]{{2}}(?: ?[A-Za-z0-9]){{{length - 2}}}")
    for length in set(_IBAN_LENGTHS.values())
}
# For the check, letters count as 10 (A) to 35 (Z).
_IBAN_LETTERS = {ord(letter): str(value) for value, letter in enumerate(string.ascii_uppercase, 10)}


def _iban(match: re.Match[str]) -> _Span | None:
    start, text = match.start() - 2, match.string
    length = _IBAN_LENGTHS.get(text[start : start + 2].upper())
    if length is None:
        return None
    body = _IBAN_BODIES[length].match(text, start)
    if body is None or (body.end() < len(text) and text[body.end()].isalnum()):
        return None
    # Country code and check digits move to the end; the number must then be 1 modulo 97.
    iban = body.group().replace(" ", "").upper()
    if int((iban[4:] + iban[:4]).translate(_IBAN_LETTERS)) % 97 != 1:
        return None
    return body.span()


# --- IP addresses ----------------------------------------------------------------------------

# Four dotted numbers, not inside a longer dotted number; _ipv4 checks the octets.
_IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![\w]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}(?![\w])"
)


def _ipv4(match: re.Match[str]) -> _Span | None:
    octets = match.group().split(".")
    if all(int(octet) <= 255 and (octet == "0" or octet[0] != "0") for octet in octets):
        return match.span()
    return None


def _ipv6(match: re.Match[str]) -> _Span | None:
    start, end = match.span()
    address = match.group()
    if address.endswith(":") and not address.endswith("::"):  # "fe80::1: unreachable"
        address = address[:-1]
        end -= 1
    if not any(ch.isdigit() for ch in address):
        return None
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return None
    return start, end


# --- API keys and tokens ---------------------------------------------------------------------

# A whole run of the characters keys, tokens and JWTs are made of, 16 or more, ending in base64
# padding or anything but a dot (a sentence's full stop is not part of the key).
_TOKEN = re.compile(r"(?<![A-Za-z0-9_+/.~-])[A-Za-z0-9_+/.~-]{15,}[A-Za-z0-9_+/~-]={0,2}")
_PREFIXED_KEY = re.compile(
    r"""
      sk-[A-Za-z0-9_-]{20,}
    | (?P<aws>(?:AKIA|ASIA)[A-Z0-9]{16})
    | gh[pousr]_[A-Za-z0-9]{30,}
    | github_pat_[A-Za-z0-9_]{30,}
    | xox[abpr]-[A-Za-z0-9-]{10,}
    | hf_[A-Za-z0-9]{30,}
    | eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*
    """,
    re.VERBOSE,
)
# What stands right before a secret without a known prefix: the word that names it, perhaps a
# closing quote, then ":", "=", " is " or a space, perhaps an opening quote.
_SECRET_NAMED = re.compile(
    r"(?i:key|token|secret|passw(?:or)?d|pwd|bearer|basic)[\"']?(?:\s*[:=]\s*|\s+(?:is\s+)?)[\"']?\Z"
)
_SECRET_NAME_REACH = 40


def _mixed(token: str) -> bool:
    """Two of lower case, upper case and digits, as random keys have and words do not."""
    has_lower = token.upper() != token
    has_upper = token.lower() != token
    has_digit = any(ch.isdigit() for ch in token)
    return has_lower + has_upper + has_digit >= 2


def _api_key(match: re.Match[str]) -> _Span | None:
    token = match.group()
    key = _PREFIXED_KEY.fullmatch(token)
    # An AWS key id may be all letters after AKIA; any other key is random, so mixed.
    if key is not None and (key.group("aws") is not None or _mixed(token)):
        return match.span()
    start = match.start()
    named = _SECRET_NAMED.search(match.string, max(0, start - _SECRET_NAME_REACH), start)
    return match.span() if named is not None and _mixed(token) else None


# --- the redactor ----------------------------------------------------------------------------

# What a pattern needs to see in the text's character classes (by index into _hints) before it
# is worth running.
_AT, _LONG_NUMBER, _DOTTED_QUAD, _COLONS, _LONG_TOKEN = range(5)

# Character classes of the text's UTF-8 bytes. _NUMBERS turns digits into "0", keeps dots,
# deletes the separators _NUMBER_SEPARATORS and turns anything else into "x": "(202) 555-0143"
# reads "0000000000", "10.0.0.1" reads "00.0.0.0". _TOKENS turns _TOKEN's characters into "t".
_NUMBERS = bytes(
    ord("0") if chr(b) in string.digits else b if b == ord(".") else ord("x") for b in range(256)
)
_NUMBER_SEPARATORS = b" ()+-"
_QUAD = re.compile(rb"0\.0{1,3}\.0{1,3}\.0")
_TOKENS = bytes(
    ord("t") if b < 128 and (chr(b).isalnum() or chr(b) in "_+/.~-") else ord(" ")
    for b in range(256)
)


def _hints(text: str) -> tuple[bool, bool, bool, bool, bool]:
    """Whether ``text`` can hold an ``@``, 9 digits in a row give or take separators, 4 dotted
    numbers, an IPv6 address's colons, and a token of 16 characters, by index.

    Counts of single bytes come first, as they are the cheapest test; a sequence is searched for
    only when the count allows it."""
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # lone surrogates
        raw = text.encode("utf-8", "surrogatepass")
    numbers = raw.translate(_NUMBERS, _NUMBER_SEPARATORS)
    digits = numbers.count(b"0")
    colons = text.count(":")
    return (
        "@" in text,
        digits >= 9 and b"000000000" in numbers.replace(b".", b""),
        digits >= 4 and _QUAD.search(numbers) is not None,
        colons >= 2 and ("::" in text or colons >= 6),
        len(raw) >= 16 and b"t" * 16 in raw.translate(_TOKENS),
    )


@dataclass(frozen=True)
class _Scan:
    """A pattern, what it takes of a match (None to reject it), and the hint it needs to run."""

    pattern: re.Pattern[str]
    take: _Take
    needs: int | None  # None: runs on every text


@dataclass(frozen=True)
class _Detector:
    kind: str
    placeholder: str
    scans: tuple[_Scan, ...]


def _whole(match: re.Match[str]) -> _Span | None:
    return match.span() if match.end() > match.start() else None


# In order of precedence: the most specific first.
_BUILT_IN = {
    detector.kind: detector
    for detector in (
        _Detector("email", "<EMAIL>", (_Scan(_EMAIL, _whole, _AT),)),
        _Detector("iban", "<IBAN>", (_Scan(_IBAN, _iban, _LONG_NUMBER),)),
        _Detector("card", "<CARD>", (_Scan(_CARD, _card, _LONG_NUMBER),)),
        _Detector("api_key", "<API_KEY>", (_Scan(_TOKEN, _api_key, _LONG_TOKEN),)),
        _Detector("ip", "<IP>", (_Scan(_IPV4, _ipv4, _DOTTED_QUAD), _Scan(_IPV6, _ipv6, _COLONS))),
        _Detector("phone", "<PHONE>", (_Scan(_PHONE, _phone, _LONG_NUMBER),)),
    )
}
_EXTRA_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class Redactor:
    """Replaces PII in text by placeholders, with the chosen built-in detectors and extra patterns.

    ``kinds`` are names from :data:`ALL_KINDS`; ``extra`` are (NAME, regular expression) pairs
    from the configuration, whose matches become ``<NAME>``. A redactor does not change once
    built, so one instance can serve every request and thread.
    """

    def __init__(
        self, kinds: Iterable[str] = ALL_KINDS, extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        if isinstance(kinds, str):
            raise TypeError(f"kinds must be a collection of kind names, not the string {kinds!r}")
        wanted = set(kinds)
        for kind in sorted(wanted):
            if kind not in _BUILT_IN:
                raise ValueError(
                    f"unknown redaction kind {kind!r}: expected one of {', '.join(ALL_KINDS)}"
                )
        detectors = [detector for kind, detector in _BUILT_IN.items() if kind in wanted]
        for name, pattern in extra:
            if not _EXTRA_NAME.fullmatch(name):
                raise ValueError(
                    f"redaction pattern name {name!r}: expected upper case letters, digits and "
                    "underscores, like ACCOUNT_NUMBER"
                )
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"redaction pattern {name}: invalid regular expression {pattern!r}: {exc}"
                ) from None
            detectors.append(_Detector(name, f"<{name}>", (_Scan(compiled, _whole, None),)))
        self._detectors = tuple(detectors)
        self._scans = tuple(
            (rank, scan) for rank, detector in enumerate(detectors) for scan in detector.scans
        )
        self._has_extra = bool(extra)

    def redact(self, text: str, counts: Counter[str] | None = None) -> str:
        """``text`` with each value found replaced by its placeholder, counted by kind in ``counts``
        (built-in kinds by their name such as ``"email"``, extra patterns by their NAME)."""
        hints = _hints(text)
        if not (self._has_extra or any(hints)):
            return text
        found = [
            (start, end, rank)
            for rank, scan in self._scans
            if scan.needs is None or hints[scan.needs]
            for start, end in _scan(scan.pattern, scan.take, text)
        ]
        if not found:
            return text
        parts: list[str] = []
        done = 0
        for start, end, rank in _merge(found):
            detector = self._detectors[rank]
            parts += (text[done:start], detector.placeholder)
            if counts is not None:
                counts[detector.kind] += 1
            done = end
        parts.append(text[done:])
        return "".join(parts)


def _scan(pattern: re.Pattern[str], take: _Take, text: str) -> list[_Span]:
    """The spans ``take`` accepts. A rejected match is tried again one character on, since a real
    value can start inside a rejected candidate (an IBAN after an IBAN-like word)."""
    spans = []
    position = 0
    # search() reads a position past the end as the end, where "\d*" matches again and again.
    while position <= len(text) and (match := pattern.search(text, position)) is not None:
        span = take(match)
        if span is None:
            position = match.start() + 1
        else:
            spans.append(span)
            position = max(span[1], match.start() + 1)
    return spans


def _merge(found: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(start, end, rank) without overlaps, in text order. Overlapping matches become one span
    covering them all, under the best rank: the most specific detector names it, and nothing
    any detector found is left in clear."""
    merged: list[tuple[int, int, int]] = []
    for start, end, rank in sorted(found):
        if merged and start < merged[-1][1]:
            first, last, best = merged[-1]
            merged[-1] = (first, max(last, end), min(best, rank))
        else:
            merged.append((start, end, rank))
    return merged
