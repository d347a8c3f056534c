"""Bearer tokens from the environment, checked in constant time.

Three lists, comma-separated so that a token can be rotated by adding the new one, deploying, and
removing the old one: ``DRIFTD_INGEST_TOKENS`` may write samples and feedback and read prompts,
``DRIFTD_PROXY_TOKENS`` may call the proxy (driftd then adds the deployment's upstream key, like
LiteLLM's virtual keys), ``DRIFTD_ADMIN_TOKENS`` may do all of that and use the admin routes.
Tokens never appear in logs, and never travel to an upstream.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

INGEST_ENV = "DRIFTD_INGEST_TOKENS"
PROXY_ENV = "DRIFTD_PROXY_TOKENS"
ADMIN_ENV = "DRIFTD_ADMIN_TOKENS"

TOKEN_HEADER = "x-driftd-token"  # noqa: S105 (a header name, not a secret)
"""Where a proxy caller presents its driftd token when ``Authorization`` carries its own upstream
key (``upstream.auth: passthrough``); the OpenAI SDKs send it through ``default_headers``."""


class Scope(StrEnum):
    ingest = "ingest"
    proxy = "proxy"
    admin = "admin"


@dataclass(frozen=True)
class Tokens:
    ingest: tuple[bytes, ...] = ()
    admin: tuple[bytes, ...] = ()
    proxy: tuple[bytes, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Tokens:
        return cls(
            ingest=_split(environ.get(INGEST_ENV, "")),
            admin=_split(environ.get(ADMIN_ENV, "")),
            proxy=_split(environ.get(PROXY_ENV, "")),
        )

    def allows(self, authorization: str | None, scope: Scope) -> bool:
        """Whether an ``Authorization`` header grants ``scope``; an admin token grants all."""
        return self.grants(bearer(authorization), scope)

    def grants(self, presented: str | None, scope: Scope) -> bool:
        """Whether a token (the bare value) grants ``scope``; an admin token grants all."""
        if not presented:
            return False
        allowed = self.admin
        if scope is Scope.ingest:
            allowed = self.ingest + self.admin
        elif scope is Scope.proxy:
            allowed = self.proxy + self.admin
        return _matches(presented.strip().encode(), allowed)

    def owns(self, presented: str | None) -> bool:
        """Whether a value is any of driftd's own tokens, whatever its scope: such a value is
        never forwarded to an upstream."""
        if not presented:
            return False
        return _matches(presented.strip().encode(), self.ingest + self.proxy + self.admin)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header; None for any other header."""
    if not authorization:
        return None
    kind, _, presented = authorization.partition(" ")
    if kind.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip()


def _matches(candidate: bytes, allowed: tuple[bytes, ...]) -> bool:
    # Compare against every token, whatever matches, so timing says nothing about which.
    matched = False
    for token in allowed:
        matched |= hmac.compare_digest(candidate, token)
    return matched


def _split(value: str) -> tuple[bytes, ...]:
    return tuple(token.strip().encode() for token in value.split(",") if token.strip())
