"""The HTTP API served by ``driftd serve``: health, ingest, and (as they land) admin routes."""

from daemon.api.app import create_app
from daemon.auth import Tokens

__all__ = ["Tokens", "create_app"]
