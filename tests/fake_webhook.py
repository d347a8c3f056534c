"""A webhook receiver for tests: an HTTP server that keeps every POST's path and JSON body and
answers 200, or the statuses it was told to answer next, in a thread of the test process on
127.0.0.1 and a free port. Use it as a context manager, ``with Receiver() as receiver: ...``;
import it as ``from tests.fake_webhook import Receiver``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Self

from tests.helpers.http import serving


@dataclass(frozen=True)
class Received:
    path: str
    body: Any


class Receiver:
    """Keeps each POST's path and JSON body and answers 200, or the statuses of ``answer_next``
    (``fail_next``) first; while ``hang`` is on it keeps each request waiting (until
    ``release``) before it answers. ``url`` carries a token in its query string, as Slack's
    webhook URLs do: it must never be logged."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._statuses: list[int] = []
        self._lock = threading.Lock()
        self._hanging = threading.Event()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver._arrived(Received(self.path, json.loads(self.rfile.read(length))))
                if receiver._hanging.is_set():
                    receiver._released.wait(30)
                status = receiver._next_status()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"answered {status}".encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._serving = contextlib.ExitStack()
        server = self._serving.enter_context(serving(Handler, "webhook-receiver"))
        self.base = f"http://127.0.0.1:{server.server_port}"
        self.url = f"{self.base}/hooks/driftd?token=s3cret-token"

    def _arrived(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def _next_status(self) -> int:
        with self._lock:
            return self._statuses.pop(0) if self._statuses else 200

    def answer_next(self, *statuses: int) -> None:
        """Answer the next requests with ``statuses``, in order (then 200 again)."""
        with self._lock:
            self._statuses.extend(statuses)

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status``."""
        self.answer_next(*[status] * count)

    def hang(self) -> None:
        self._hanging.set()

    def release(self) -> None:
        self._hanging.clear()
        self._released.set()

    def bodies(self, path_prefix: str = "/") -> list[Any]:
        """The JSON bodies received on paths that start with ``path_prefix``, in order."""
        with self._lock:
            return [r.body for r in self.received if r.path.startswith(path_prefix)]

    def close(self) -> None:
        self.release()
        self._serving.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
