"""The HTTP client the proxy forwards with: one pooled aiohttp session for every upstream.

aiohttp rather than httpx here, for cost per call at concurrency: httpcore's pool checks every
idle connection's socket for readability on each request it assigns and each it releases, so a
pool of n connections costs O(n) system calls per call; profiled behind the proxy that was a
quarter of the event loop's time at one client and grew with the number of clients. aiohttp's
connector hands out a pooled connection in O(1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

CONNECT_RETRY_BASE = 0.05
"""Seconds before the first retry of a connection that failed; doubled for each next one."""

UpstreamTimeout = (asyncio.TimeoutError, aiohttp.ServerTimeoutError)
"""What a call that waited too long raises."""
UpstreamError = aiohttp.ClientError
"""What a call that could not reach its upstream, or lost it, raises."""


class UpstreamClient:
    """One connection pool shared by every proxied call, opened on first use in the serving
    event loop (an aiohttp session belongs to one loop) and closed by ``aclose``.

    ``max_connections`` bounds the connections open at once (calls beyond wait for one);
    idle connections are kept ``keepalive_expiry`` seconds. Timeouts are per call (each
    deployment's ``upstream.timeout``, for connecting and for each read), so a long stream that
    keeps sending is never cut off. Like the rest of driftd, the client reads nothing from the
    environment (no proxy variables, no netrc).
    """

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 4.0) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry,
                ttl_dns_cache=300,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                auto_decompress=True,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
            )
            self._session = session
        return session

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)
            self._timeouts[seconds] = timeout
        return timeout

    async def post(
        self,
        url: str,
        content: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float,
        retries: int,
    ) -> aiohttp.ClientResponse:
        """POST ``content``; the response's body is the caller's to read and release.

        Retried: failures to connect (the upstream never saw the request), and a kept-alive
        connection the upstream closed before answering anything — the race of an idle
        connection reused just as the upstream's keep-alive timeout closes it; the upstream
        drops such a connection without reading the request, and OpenAI's own clients retry it
        the same way. Every other failure (a timeout, an answer broken off) is the caller's.
        """
        session = self._open()
        for attempt in range(retries + 1):
            try:
                return await session.post(
                    url,
                    data=content,
                    headers=headers,
                    timeout=self._timeout(timeout),
                    allow_redirects=False,
                )
            except aiohttp.ServerDisconnectedError:
                if attempt == retries:
                    raise
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                if attempt == retries:
                    raise
                await asyncio.sleep(CONNECT_RETRY_BASE * 2**attempt)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
