"""Push what a deployment saw and said to driftd, without slowing down or breaking the app.

An app embeds one :class:`Client` per deployment. ``log`` and ``feedback`` only validate their
arguments and append to a bounded in-memory queue; a daemon thread batches the queue and posts it
to driftd's ingest API over one pooled ``httpx.Client``. Neither call ever raises: whatever cannot
be queued is counted in :attr:`Client.stats` and reported through the ``driftd.client`` logger.

What happens to a batch, by the server's answer:

* 200: sent.
* 422, 401, 404 and any other 4xx (besides 408, 413 and 429): refused, counted rejected, not
  retried. A 422 is logged with the server's detail; a 401 or 404 is logged once per client.
* 413: split in half and each half sent on its own; a single item still too large is rejected.
* 429: retried after its ``Retry-After`` (capped at :data:`RETRY_AFTER_CAP` seconds).
* 408, 5xx, connection errors and timeouts: retried after an exponential, jittered, capped backoff.
* Every retry counts toward ``max_attempts``; a batch that runs out of them is counted failed.

Arguments the server would refuse (a bad ``request_id``, a confidence of 2, metadata nested in
metadata...) are dropped by ``log``/``feedback`` with a warning instead of being sent: the server
refuses a batch as a whole, so one bad sample would otherwise take 499 good ones down with it.

The server recognises a ``request_id`` it already has, so sending a sample twice is harmless and
every retry re-sends its whole batch.

The parts: the client and its sending thread (``client``), the bodies it sends and the rules they
are held to (``body``), and the reading of the server's answers (``answers``).
"""

from daemon.client.answers import RETRY_AFTER_CAP
from daemon.client.body import ROLES, Scalar
from daemon.client.client import WARNING_INTERVAL, Client, ClientStats, Route
from daemon.ingest.rules import (
    MAX_COMMENT,
    MAX_ID_LENGTH,
    MAX_MESSAGES,
    MAX_METADATA_KEY,
    MAX_METADATA_KEYS,
    MAX_METADATA_TEXT,
    MAX_SHORT_TEXT,
    MAX_TEXT,
)

__all__ = [
    "MAX_COMMENT",
    "MAX_ID_LENGTH",
    "MAX_MESSAGES",
    "MAX_METADATA_KEY",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_TEXT",
    "MAX_SHORT_TEXT",
    "MAX_TEXT",
    "RETRY_AFTER_CAP",
    "ROLES",
    "WARNING_INTERVAL",
    "Client",
    "ClientStats",
    "Route",
    "Scalar",
]
