import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from daemon.config.models import LogFormat
from daemon.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    setup_logging("info", LogFormat.auto, stream)
    logging.getLogger("driftd.test").info("check done", extra={"deployment": "bot", "rows": 3})
    logging.getLogger("driftd.test").debug("not shown at info")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "check done"
    assert record["level"] == "info"
    assert record["logger"] == "driftd.test"
    assert (record["deployment"], record["rows"]) == ("bot", 3)
    assert record["ts"].endswith("+00:00")


def test_readable_lines_on_a_terminal() -> None:
    stream = Terminal()
    setup_logging("debug", LogFormat.auto, stream)
    logging.getLogger("driftd.test").warning("lease lost", extra={"epoch": 4})
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())
    (line,) = [text.rstrip() for text in plain.strip().splitlines()]
    assert "WARNING" in line
    assert line.endswith("driftd.test  lease lost  epoch=4")
    assert not line.startswith("{")


def test_exceptions_are_kept_in_json() -> None:
    stream = io.StringIO()
    setup_logging("info", LogFormat.json, stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("driftd.test").exception("job failed")
    record = json.loads(stream.getvalue())
    assert "RuntimeError: boom" in record["exception"]
