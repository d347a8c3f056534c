"""What the redaction tests share: card numbers and IBANs with their own check digits (the
Luhn and mod-97 rules written independently of the module), random text from the corpus's
seeded generator, and the redactor with every kind."""

from __future__ import annotations

import random
import string

from daemon.ingest.redact import Redactor

# --- check digits, computed the way issuers compute them ---------------------------------------


def luhn_complete(payload: str) -> str:
    """``payload`` followed by the Luhn check digit that makes it a valid card number."""
    total = 0
    for position, digit in enumerate(int(ch) for ch in reversed(payload)):
        if position % 2 == 0:  # doubled once the check digit is appended on the right
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return payload + str(-total % 10)


def luhn_broken(number: str) -> str:
    """``number`` with its last digit changed, so it fails the Luhn check."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def iban_of(country: str, bban: str) -> str:
    """The IBAN with check digits chosen so the mod-97 remainder is 1 (ISO 13616)."""
    numeric = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    return f"{country}{98 - numeric % 97:02d}{bban}"


def grouped(value: str, sizes: tuple[int, ...] = (4,), separator: str = " ") -> str:
    """``value`` cut into groups of the given sizes, the last size repeating."""
    groups: list[str] = []
    while value:
        size = sizes[min(len(groups), len(sizes) - 1)]
        groups.append(value[:size])
        value = value[size:]
    return separator.join(groups)


rng = random.Random(20240315)
ALNUM = string.ascii_letters + string.digits


def random_text(alphabet: str, length: int, source: random.Random = rng) -> str:
    return "".join(source.choice(alphabet) for _ in range(length))


REDACTOR = Redactor()
