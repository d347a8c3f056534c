"""What the store can hold, as plain values: the limits the ingest schema enforces, kept free of
pydantic so that the app-side client (``daemon.client``) checks the same rules without loading a
server library."""

from __future__ import annotations

from datetime import UTC, datetime

MAX_TEXT = 200_000
MAX_ID_LENGTH = 255
MAX_SHORT_TEXT = 255
"""prediction, label, versions, probability labels"""
MAX_MESSAGES = 1000
MAX_METADATA_KEY = 64
MAX_COMMENT = 2000
ROLES = ("system", "developer", "user", "assistant", "tool")
"""The roles a chat message may have, as the OpenAI chat API names them."""
MAX_METADATA_KEYS = 16
MAX_METADATA_TEXT = 256
MAX_INTEGER = 2**31 - 1
"""The largest count the store's INTEGER columns hold (``tokens_in``, ``tokens_out``)."""
MAX_METADATA_INTEGER = 2**63 - 1
"""The largest metadata integer: a signed 64-bit one, as databases and numpy hold it."""
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
"""A sample's ``ts`` lies in ``[EARLIEST, LATEST)`` in UTC: nothing was served before the Unix
epoch, and ending a year before ``datetime``'s last leaves room for arithmetic on times."""

SAFE_ID_CHARACTERS = "ASCII letters, digits and _ . : / + = -"
SAFE_KEY_CHARACTERS = "ASCII letters, digits and _ . -"

# Identifiers are stored in clear (never redacted), so they are held to an alphabet in which no
# e-mail address or prose fits.
SAFE_ID = r"^[A-Za-z0-9_.:/+=-]+$"
SAFE_KEY = r"^[A-Za-z0-9_.-]+$"
