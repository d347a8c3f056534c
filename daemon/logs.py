"""Log output: readable lines on a terminal, one JSON object per line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from daemon.config.models import LogFormat

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is a field.
# uvicorn adds "color_message" (its message with terminal colours) to its records.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``driftd.serve  message  key=value``; rich adds the time and a coloured level."""

    def __init__(self) -> None:
        super().__init__("%(name)s  %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
        if fields:
            line += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def _terminal_handler(stream: TextIO) -> logging.Handler:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(
        console=Console(file=stream, soft_wrap=True),
        show_path=False,
        markup=False,
        rich_tracebacks=False,
        log_time_format="%H:%M:%S",
    )
    handler.setFormatter(TextFormatter())
    return handler


def setup_logging(level: str, fmt: LogFormat, stream: TextIO | None = None) -> None:
    """Route driftd's loggers (and the libraries') to ``stream`` in the chosen format."""
    stream = stream or sys.stderr
    if fmt is LogFormat.auto:
        fmt = LogFormat.text if stream.isatty() else LogFormat.json
    handler: logging.Handler
    if fmt is LogFormat.text:
        handler = _terminal_handler(stream)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Alembic logs every migration step at INFO; driftd reports the outcome itself.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
    # APScheduler logs every run at info; driftd logs what a run did instead.
    logging.getLogger("apscheduler").setLevel(max(root.level, logging.WARNING))
