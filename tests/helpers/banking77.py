"""Banking77, the example's data set (``examples/banking77/data``), as tests draw from it."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "examples" / "banking77" / "data"


def golden_set(path: Path, mix: Mapping[str, int]) -> Path:
    """A golden set at ``path`` (JSONL of ``input`` and ``label``): the first ``mix[label]``
    questions of each label in the test split, in the split's order."""
    wanted = dict(mix)
    rows = []
    with (DATA / "test.csv").open(newline="", encoding="utf-8") as source:
        for row in csv.DictReader(source):
            if wanted.get(row["category"], 0) > 0:
                wanted[row["category"]] -= 1
                rows.append({"input": row["text"], "label": row["category"]})
    assert not any(wanted.values()), f"the test split is short of {wanted}"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
