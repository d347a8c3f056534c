"""The JSONL files jobs read (training data, golden sets, failing and fresh samples), one way.

Blank lines are skipped; a line that is not a JSON object stops the read with the job's own
error class, naming the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def json_objects(
    path: Path, error: Callable[[str], Exception]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each object of ``path`` with where it stands (``"<path> line <n>"``); a line that is not
    a JSON object raises ``error(message)``."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except ValueError as problem:
                raise error(f"{where} is not JSON: {problem}") from problem
            if not isinstance(row, dict):
                raise error(f"{where} is not a JSON object")
            yield where, row
