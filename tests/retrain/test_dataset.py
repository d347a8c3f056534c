"""Training data sets: the golden set stays out, duplicates go, the mix and split follow their
rules, the lineage says where every row came from, and the files are what their readers expect.

Banking77 (``examples/banking77/data``, CC BY 4.0) provides real questions where it matters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from retrain.dataset import (
    DataSet,
    Example,
    build_dataset,
    normalise,
    read_examples,
    write_chat_jsonl,
    write_jsonl,
)
from retrain.errors import DataSetError

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77" / "data"


def production(n: int, *, start: int = 0, first_id: int = 1) -> list[Example]:
    return [
        Example(f"production question {i}", "card_arrival", None, "production", first_id + i)
        for i in range(start, start + n)
    ]


def original(n: int, *, start: int = 0) -> list[Example]:
    return [Example(f"original question {i}", "exchange_rate") for i in range(start, start + n)]


def build(
    production_examples: Iterable[Example],
    original_examples: Iterable[Example],
    golden: Iterable[str] = (),
    *,
    production_ratio: float = 0.5,
    max_rows: int = 20_000,
    validation_share: float = 0.2,
    seed: int = 0,
) -> DataSet:
    return build_dataset(
        production_examples,
        original_examples,
        golden,
        production_ratio=production_ratio,
        max_rows=max_rows,
        validation_share=validation_share,
        seed=seed,
        lineage={},
    )


def inputs(examples: Iterable[Example]) -> set[str]:
    return {example.input for example in examples}


def counts(data: DataSet) -> tuple[int, int]:
    rows = [*data.train, *data.validation]
    return (
        sum(1 for e in rows if e.source == "production"),
        sum(1 for e in rows if e.source == "original"),
    )


def test_the_golden_set_never_enters_training_however_it_is_written() -> None:
    golden = ["Where is my card?", "What is the exchange rate today?"]
    data = build(
        [Example("  where IS my\tcard? ", "card_arrival", None, "production", 1), *production(5)],
        [Example("WHAT is the exchange   rate today?", "exchange_rate"), *original(5)],
        golden,
    )

    used = {normalise(text) for text in inputs([*data.train, *data.validation])}
    assert not used & {normalise(text) for text in golden}
    assert len(used) == 10
    assert data.lineage["dropped"]["golden"] == {"production": 1, "original": 1}


def test_one_example_per_input_and_the_production_label_wins() -> None:
    data = build(
        [
            Example("How do I change my PIN?", "change_pin", None, "production", 7),
            Example("how do i change my pin?", "card_arrival", None, "production", 8),
        ],
        [Example("How do I  change my PIN?", "exchange_rate"), *original(1)],
    )

    rows = [*data.train, *data.validation]
    pin = [e for e in rows if normalise(e.input) == "how do i change my pin?"]
    assert pin == [Example("How do I change my PIN?", "change_pin", None, "production", 7)]
    assert data.lineage["dropped"]["duplicate"] == {"production": 1, "original": 1}


def test_examples_without_a_label_or_an_output_are_dropped_and_counted() -> None:
    data = build(
        [Example("no label yet", None, None, "production", 3), *production(4)], original(4)
    )

    assert "no label yet" not in inputs([*data.train, *data.validation])
    assert data.lineage["dropped"]["unlabelled"] == {"production": 1, "original": 0}


@pytest.mark.parametrize(
    ("n_production", "n_original", "ratio", "max_rows", "expected"),
    [
        # Production is scarce: all 30 of it, and 90 originals make it a quarter.
        (30, 1000, 0.25, 20_000, (30, 90)),
        # Originals are scarce: all 50 of them, and 150 production rows make it three quarters.
        (300, 50, 0.75, 20_000, (150, 50)),
        # Enough of both, then the cap: 100 rows, 30 % production.
        (1000, 1000, 0.3, 100, (30, 70)),
        # One side empty: the other alone (the ratio cannot be met), capped.
        (80, 0, 0.5, 60, (60, 0)),
        (0, 40, 0.5, 20_000, (0, 40)),
        # Ratios 0 and 1 mean one side only.
        (50, 50, 0.0, 20_000, (0, 50)),
        (50, 50, 1.0, 20_000, (50, 0)),
        # Even when that side is empty: production never stands in for a ratio of 0.
        (50, 0, 0.0, 20_000, (0, 0)),
    ],
)
def test_the_mix_takes_the_scarce_side_whole_and_the_ratio_of_the_other(
    n_production: int,
    n_original: int,
    ratio: float,
    max_rows: int,
    expected: tuple[int, int],
) -> None:
    data = build(
        production(n_production), original(n_original), production_ratio=ratio, max_rows=max_rows
    )

    assert counts(data) == expected
    sources = data.lineage["sources"]
    assert (sources["production"]["used"], sources["original"]["used"]) == expected
    assert sources["production"]["available"] == n_production
    reached = data.lineage["production_ratio"]["reached"]
    assert reached == (
        pytest.approx(expected[0] / sum(expected), abs=1e-4) if any(expected) else None
    )


def test_the_split_is_deterministic_and_stable_when_rows_are_added() -> None:
    first = build(production(400), original(400), validation_share=0.2, seed=3)
    again = build(production(400), original(400), validation_share=0.2, seed=3)
    grown = build(
        production(600), original(600), validation_share=0.2, seed=3, production_ratio=0.5
    )
    other_seed = build(production(400), original(400), validation_share=0.2, seed=4)

    assert again == first
    assert 120 <= len(first.validation) <= 200  # 20 % of 800, give or take the hash
    assert inputs(first.validation) <= inputs(grown.validation)
    assert inputs(first.train) <= inputs(grown.train)
    assert inputs(other_seed.validation) != inputs(first.validation)
    assert not inputs(first.train) & inputs(first.validation)


def test_a_small_set_still_gets_a_validation_row() -> None:
    data = build(production(2), original(2), validation_share=0.01)

    assert len(data.validation) == 1
    assert len(data.train) == 3


def test_the_lineage_counts_sources_and_hashes_the_production_sample_ids() -> None:
    shuffled = production(10, first_id=500)[::-1]
    data = build_dataset(
        shuffled,
        original(10),
        ["production question 0"],
        production_ratio=0.5,
        max_rows=1000,
        validation_share=0.2,
        seed=0,
        lineage={"check_id": 41, "decision_id": 9, "base_version": "v3"},
    )

    used_ids = sorted(
        e.sample_id for e in [*data.train, *data.validation] if e.sample_id is not None
    )
    assert used_ids == list(range(501, 510))  # question 0 (id 500) is a golden input
    expected = hashlib.sha256("".join(f"{i}\n" for i in used_ids).encode()).hexdigest()
    lineage = data.lineage
    assert lineage["production_sample_ids"] == {"count": 9, "sha256": expected}
    assert lineage["check_id"] == 41
    assert lineage["decision_id"] == 9
    assert lineage["base_version"] == "v3"
    assert lineage["rows"] == {"train": len(data.train), "validation": len(data.validation)}
    assert (
        lineage["sources"]["production"]["train"] + lineage["sources"]["production"]["validation"]
        == 9
    )
    assert lineage["settings"] == {"max_rows": 1000, "validation_share": 0.2, "seed": 0}
    json.dumps(lineage)  # it goes into job specs and version files as it is


def test_the_caller_cannot_overwrite_what_the_lineage_counts() -> None:
    with pytest.raises(ValueError, match="may not use the keys build_dataset fills in: rows"):
        build_dataset(
            production(2),
            original(2),
            [],
            production_ratio=0.5,
            max_rows=10,
            validation_share=0.2,
            seed=0,
            lineage={"rows": 3},
        )


def test_write_jsonl_writes_what_read_examples_reads_back(tmp_path: Path) -> None:
    labelled = [Example("Where is my card?", "card_arrival"), Example("New PIN?", "change_pin")]
    answered = [Example("Where is my card?", None, "It is on its way.")]

    assert write_jsonl(tmp_path / "labels.jsonl", labelled) == 2
    assert write_jsonl(tmp_path / "outputs.jsonl", answered) == 1

    assert json.loads((tmp_path / "outputs.jsonl").read_text()) == {
        "input": "Where is my card?",
        "output": "It is on its way.",
    }
    assert read_examples(tmp_path / "labels.jsonl") == labelled
    assert (
        read_examples(tmp_path / "outputs.jsonl", label_field=None, output_field="output")
        == answered
    )


def test_chat_jsonl_is_openais_fine_tuning_format(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    examples = [
        Example("Where is my card?", "card_arrival"),
        Example("Is my card coming?", None, "Yes, it left on Monday."),
    ]

    assert write_chat_jsonl(path, examples, system_prompt="Answer with the intent.") == 2
    write_chat_jsonl(tmp_path / "bare.jsonl", examples[:1], system_prompt=None)

    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {
        "messages": [
            {"role": "system", "content": "Answer with the intent."},
            {"role": "user", "content": "Where is my card?"},
            {"role": "assistant", "content": "card_arrival"},
        ]
    }
    assert second["messages"][-1] == {"role": "assistant", "content": "Yes, it left on Monday."}
    bare = json.loads((tmp_path / "bare.jsonl").read_text())
    assert [m["role"] for m in bare["messages"]] == ["user", "assistant"]


def test_read_examples_reads_banking77_csv_by_its_column_names() -> None:
    examples = read_examples(BANKING77 / "train.csv", input_field="text", label_field="category")

    assert len(examples) == 10_003
    assert examples[0] == Example("I am still waiting on my card?", "card_arrival")
    assert {e.source for e in examples} == {"original"}


def test_read_examples_names_the_row_without_the_field(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("text,category\nWhere is my card?,card_arrival\nAnd my PIN?,\n")

    with pytest.raises(DataSetError) as raised:
        read_examples(path, input_field="text", label_field="category")

    assert str(raised.value) == (
        f"{path} line 3 has no text under 'category' (its fields: 'text', 'category'); "
        "every row needs 'text' and 'category'"
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("data.jsonl", '{"input": "a", "label": "b"}\n{"input": \n', "line 2 is not JSON"),
        ("data.jsonl", "[1, 2]\n", "line 1 is not a JSON object"),
        ("data.jsonl", "\n\n", "has no examples"),
        ("data.txt", "", "cannot tell the format of training data from the suffix '.txt'"),
        ("data.parquet", "not parquet", r"cannot read training data .*data\.parquet: "),
        ("data.csv", "input,label\nhi\n", "line 2 has no text under 'label'"),
    ],
)
def test_unreadable_training_data_says_what_is_wrong(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(DataSetError, match=message):
        read_examples(path)
