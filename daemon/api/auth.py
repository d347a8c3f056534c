"""Bearer tokens from the environment, checked in constant time.

Two lists, comma-separated so that a token can be rotated by adding the new one, deploying, and
removing the old one: ``DRIFTD_INGEST_TOKENS`` may write samples and feedback,
``DRIFTD_ADMIN_TOKENS`` may do that and use the admin routes. Tokens never appear in logs.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

INGEST_ENV = "DRIFTD_INGEST_TOKENS"
ADMIN_ENV = "DRIFTD_ADMIN_TOKENS"


class Scope(StrEnum):
    ingest = "ingest"
    admin = "admin"


@dataclass(frozen=True)
class Tokens:
    ingest: tuple[bytes, ...] = ()
    admin: tuple[bytes, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Tokens:
        return cls(
            ingest=_split(environ.get(INGEST_ENV, "")), admin=_split(environ.get(ADMIN_ENV, ""))
        )

    def allows(self, authorization: str | None, scope: Scope) -> bool:
        """Whether an ``Authorization`` header grants ``scope``; an admin token grants both."""
        if not authorization:
            return False
        kind, _, presented = authorization.partition(" ")
        if kind.lower() != "bearer" or not presented:
            return False
        candidate = presented.strip().encode()
        allowed = self.admin if scope is Scope.admin else self.ingest + self.admin
        # Compare against every token, whatever matches, so timing says nothing about which.
        matched = False
        for token in allowed:
            matched |= hmac.compare_digest(candidate, token)
        return matched


def _split(value: str) -> tuple[bytes, ...]:
    return tuple(token.strip().encode() for token in value.split(",") if token.strip())
