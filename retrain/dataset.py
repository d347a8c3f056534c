"""Training data sets: production and original examples mixed into train and validation, with
the lineage that says where every row came from.

Pure Python, no torch: the daemon builds a data set in its own process from samples it read from
the store, writes it with ``write_jsonl`` (for the ``train`` job) or ``write_chat_jsonl`` (for
OpenAI fine-tuning), and keeps the lineage with the candidate version it produces.

The rules, in the order ``build_dataset`` applies them:

1. Examples with neither a label nor an output teach nothing and are dropped.
2. The golden set never enters training: an example whose normalised input (case-folded,
   whitespace collapsed) is a golden input is dropped, so the gate that compares a candidate with
   its active version never scores the candidate on what it was trained on.
3. One example per normalised input: the first production example wins over later ones and over
   every original example with that input (production labels are the fresher truth).
4. The mix: production examples make up ``production_ratio`` of the set. The side that is scarce
   for that ratio is taken whole and the other is sampled down to match; then, when the set is
   longer than ``max_rows``, both sides are cut in the same ratio. A ratio of 0 or 1 takes one
   side only (originals or production), even if it is empty; otherwise, when one side is empty,
   the set is the other side alone (capped), and the lineage shows the ratio that was reached.
   Sampling is by a seeded hash of the normalised input, so the same rows are chosen for the
   same data and seed.
5. The split: an example goes to validation when a seeded hash of its normalised input falls
   below ``validation_share``. That depends on the example alone, so adding rows never moves an
   existing row between train and validation (the validation scores of two runs stay comparable).
   If the hash puts no row in validation, the row with the lowest hash goes there: a validation
   set is never empty while there are two rows or more.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retrain.errors import DataSetError
from retrain.jsonl import json_objects

Source = Literal["production", "original"]
SOURCES: tuple[Source, ...] = ("production", "original")

_MIX_SALT = "mix"
_SPLIT_SALT = "split"


FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
"""The data files jobs read (training data, golden sets): format by suffix."""


@dataclass(frozen=True, slots=True)
class Example:
    """One training example: an input and what the model should answer to it."""

    input: str
    label: str | None = None
    """The true label (classification)."""
    output: str | None = None
    """The wanted text (generation)."""
    source: Source = "original"
    sample_id: int | None = None
    """The store's id of the production sample this example was made from."""

    @property
    def target(self) -> str | None:
        """What the model should answer: the label when there is one, else the output."""
        return self.label if self.label is not None else self.output


@dataclass(frozen=True, slots=True)
class DataSet:
    """A training set, its validation set, and the lineage of both."""

    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    lineage: dict[str, Any]


def normalise(text: str) -> str:
    """The form two inputs are compared in: case-folded, with whitespace runs as one space."""
    return " ".join(text.casefold().split())


def build_dataset(
    production: Iterable[Example],
    original: Iterable[Example],
    golden: Iterable[str],
    *,
    production_ratio: float,
    max_rows: int,
    validation_share: float,
    seed: int,
    lineage: Mapping[str, Any],
) -> DataSet:
    """Mix ``production`` and ``original`` examples into a data set by the rules of this module.

    ``golden`` holds the golden set's inputs. ``lineage`` is the caller's record of why the set
    was built (the check that found drift, the policy decision, the base version); it is copied
    into the data set's lineage beside what this function counts, under keys of its own.
    """
    if not 0.0 <= production_ratio <= 1.0:
        raise ValueError(f"production_ratio must be from 0 to 1, got {production_ratio}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if not 0.0 <= validation_share < 1.0:
        raise ValueError(f"validation_share must be from 0 to below 1, got {validation_share}")
    golden_inputs = {normalise(text) for text in golden}
    dropped: dict[str, dict[str, int]] = {
        reason: dict.fromkeys(SOURCES, 0) for reason in ("unlabelled", "golden", "duplicate")
    }
    available: dict[Source, int] = dict.fromkeys(SOURCES, 0)
    kept: dict[Source, list[Example]] = {"production": [], "original": []}
    seen: set[str] = set()
    sides: tuple[tuple[Source, Iterable[Example]], ...] = (
        ("production", production),
        ("original", original),
    )
    for source, examples in sides:
        for example in examples:
            example = _as_source(example, source)
            available[source] += 1
            key = normalise(example.input)
            if example.target is None:
                dropped["unlabelled"][source] += 1
            elif key in golden_inputs:
                dropped["golden"][source] += 1
            elif key in seen:
                dropped["duplicate"][source] += 1
            else:
                seen.add(key)
                kept[source].append(example)

    wanted = _mix(
        len(kept["production"]), len(kept["original"]), production_ratio, max_rows=max_rows
    )
    chosen = [
        example
        for source in SOURCES
        for example in sorted(kept[source], key=lambda e: _hash(e.input, seed, _MIX_SALT))[
            : wanted[source]
        ]
    ]
    chosen.sort(key=lambda e: _hash(e.input, seed, _SPLIT_SALT))
    cut = sum(1 for e in chosen if _hash(e.input, seed, _SPLIT_SALT) < validation_share)
    if cut == 0 and validation_share > 0 and len(chosen) >= 2:
        cut = 1
    validation, train = tuple(chosen[:cut]), tuple(chosen[cut:])

    ids = [e.sample_id for e in chosen if e.source == "production" and e.sample_id is not None]
    counted = {
        "rows": {"train": len(train), "validation": len(validation)},
        "sources": {
            source: {
                "available": available[source],
                "used": wanted[source],
                "train": sum(1 for e in train if e.source == source),
                "validation": sum(1 for e in validation if e.source == source),
            }
            for source in SOURCES
        },
        "dropped": dropped,
        "production_ratio": {
            "target": production_ratio,
            "reached": round(wanted["production"] / len(chosen), 4) if chosen else None,
        },
        "settings": {
            "max_rows": max_rows,
            "validation_share": validation_share,
            "seed": seed,
        },
        "production_sample_ids": {"count": len(ids), "sha256": sample_ids_sha256(ids)},
    }
    clash = sorted(set(lineage) & set(counted))
    if clash:
        raise ValueError(
            f"the caller's lineage may not use the keys build_dataset fills in: {', '.join(clash)}"
        )
    return DataSet(train=train, validation=validation, lineage={**lineage, **counted})


def sample_ids_sha256(ids: Iterable[int]) -> str:
    """The sha256 (hex) of sample ids sorted ascending, one decimal number per line.

    Two data sets with this hash were built from the same production samples, whatever order
    the store returned them in.
    """
    text = "".join(f"{sample_id}\n" for sample_id in sorted(ids))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _as_source(example: Example, source: Source) -> Example:
    if example.source == source:
        return example
    return Example(example.input, example.label, example.output, source, example.sample_id)


def _mix(production: int, original: int, ratio: float, *, max_rows: int) -> dict[Source, int]:
    """How many examples of each side the set takes (rule 4 of this module)."""
    # A ratio of 0 or 1 is the operator's choice of one side, even when that side is empty.
    if ratio == 1.0 or (original == 0 and ratio > 0.0):
        return {"production": min(production, max_rows), "original": 0}
    if ratio == 0.0 or production == 0:
        return {"production": 0, "original": min(original, max_rows)}
    # Production is the scarce side when all of it, at this ratio, needs no more originals
    # than there are.
    if production * (1.0 - ratio) <= original * ratio:
        take_production = production
        take_original = min(original, round(production * (1.0 - ratio) / ratio))
    else:
        take_original = original
        take_production = min(production, round(original * ratio / (1.0 - ratio)))
    total = take_production + take_original
    if total > max_rows:
        take_production = min(take_production, round(max_rows * ratio))
        take_original = min(take_original, max_rows - take_production)
    return {"production": take_production, "original": take_original}


def _hash(text: str, seed: int, salt: str) -> float:
    """A number in [0, 1) fixed by the normalised ``text``, the seed and the salt."""
    digest = hashlib.sha256(f"{salt}\0{seed}\0{normalise(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def write_jsonl(path: Path, examples: Iterable[Example]) -> int:
    """Write one JSON object per example: ``input`` with ``label`` and/or ``output``.

    This is the format the ``train`` job reads; returns the number of lines written.
    """
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            row: dict[str, str] = {"input": example.input}
            if example.label is not None:
                row["label"] = example.label
            if example.output is not None:
                row["output"] = example.output
            if len(row) == 1:
                raise ValueError(f"example {example.input!r} has neither a label nor an output")
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_chat_jsonl(path: Path, examples: Iterable[Example], *, system_prompt: str | None) -> int:
    """Write examples in OpenAI's chat fine-tuning format, one conversation per line.

    Each line is ``{"messages": [system, user, assistant]}`` (no system message when
    ``system_prompt`` is None or empty): the user says the input and the assistant answers the
    example's target, its label for classification, its output for generation. Returns the
    number of lines written.
    """
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            if example.target is None:
                raise ValueError(f"example {example.input!r} has neither a label nor an output")
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages += [
                {"role": "user", "content": example.input},
                {"role": "assistant", "content": example.target},
            ]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_examples(
    path: Path,
    *,
    input_field: str = "input",
    label_field: str | None = "label",
    output_field: str | None = None,
    source: Source = "original",
    what: str = "training data",
) -> list[Example]:
    """The examples of a JSONL, CSV or Parquet file (read by ``data_rows``).

    Every row needs text under ``input_field`` and under each of ``label_field`` and
    ``output_field`` that is not None; ``DataSetError`` names the first row that has not.
    Banking77's CSV files are read with ``input_field="text", label_field="category"``.
    ``what`` names the file in messages: training data, a golden set.
    """
    fields = [field for field in (input_field, label_field, output_field) if field is not None]
    examples: list[Example] = []
    for where, row in data_rows(path, what=what):
        for field in fields:
            if not isinstance(row.get(field), str) or not row[field].strip():
                present = ", ".join(map(repr, row)) or "none"
                raise DataSetError(
                    f"{where} has no text under {field!r} (its fields: {present}); every "
                    f"row needs {' and '.join(map(repr, fields))}"
                )
        examples.append(
            Example(
                input=row[input_field],
                label=row[label_field] if label_field is not None else None,
                output=row[output_field] if output_field is not None else None,
                source=source,
            )
        )
    if not examples:
        raise DataSetError(f"{what} {path} has no examples")
    return examples


def data_rows(
    path: Path,
    *,
    what: str = "training data",
    error: Callable[[str], Exception] = DataSetError,
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The rows of a JSONL, CSV (with a header row) or Parquet file, by its suffix (``FORMATS``),
    each with where it stands: ``"<path> line <n>"``, or ``"<path> row <n>"`` in Parquet.

    A file that cannot be read raises ``error(message)``, naming ``what`` it is and where.
    """
    suffix = path.suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise error(
            f"{path}: cannot tell the format of {what} from the suffix {suffix!r}; name the "
            "file .jsonl (one JSON object per line), .csv (with a header row) or .parquet"
        )
    return _rows(path, fmt, what, error)


def _rows(
    path: Path, fmt: str, what: str, error: Callable[[str], Exception]
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    try:
        if fmt == "jsonl":
            yield from json_objects(path, error)
        elif fmt == "csv":
            yield from _csv_rows(path)
        else:
            yield from _parquet_rows(path)
    except OSError as problem:
        raise error(f"cannot read {what} {path}: {problem.strerror or problem}") from problem
    except (csv.Error, ValueError) as problem:  # bad bytes, a broken CSV, pyarrow's ArrowInvalid
        raise error(f"cannot read {what} {path}: {problem}") from problem


def _csv_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as lines:
        reader = csv.DictReader(lines)
        for row in reader:
            # The reader counts physical lines, so a quoted field with a newline is placed right.
            yield f"{path} line {reader.line_num}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=5000):
        for row in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", row
