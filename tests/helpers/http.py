"""HTTP servers in a thread of the test process, on 127.0.0.1 and a free port: a request handler
class (``serving``), or an ASGI application under uvicorn (``serving_app``)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any, Literal

import uvicorn

from tests.helpers.wait import wait_for


@contextmanager
def serving(
    handler: type[socketserver.BaseRequestHandler], name: str
) -> Iterator[ThreadingHTTPServer]:
    """``handler`` (an ``http.server`` request handler, or any ``socketserver`` one) answering
    in a thread called ``name``, a thread a connection: the server, its port in
    ``server_port``; shut down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def serving_app(app: Any, name: str, *, lifespan: Literal["on", "off"] = "on") -> Iterator[str]:
    """``app`` under uvicorn in a thread called ``name``, once it has started: its base URL
    (``http://127.0.0.1:PORT``); stopped on exit (open connections get two seconds)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan=lifespan,
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name=name, daemon=True
    )
    thread.start()
    try:

        def started() -> bool:
            assert thread.is_alive(), f"{name} died at start"
            return bool(server.started)

        wait_for(started, 10, f"{name} to start", interval=0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
