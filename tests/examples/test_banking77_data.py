"""The Banking77 example's ``served-*`` files are exactly the rows of the unchanged copies of
Banking77 in the 20 intents its configuration lists, as examples/banking77/README.md says."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "banking77"


def rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_served_rows_are_the_data_sets_rows_in_the_configured_intents(split: str) -> None:
    config = yaml.safe_load((EXAMPLE / "driftd.yaml").read_text(encoding="utf-8"))
    labels = set(config["deployments"][0]["labels"])
    assert len(labels) == 20
    header, *everything = rows(EXAMPLE / "data" / f"{split}.csv")
    served_header, *served = rows(EXAMPLE / "data" / f"served-{split}.csv")
    assert header == served_header == ["text", "category"]
    assert served == [row for row in everything if row[1] in labels]
    assert {row[1] for row in served} == labels
