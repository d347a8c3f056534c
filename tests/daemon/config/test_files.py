"""The data files a configuration names: they must exist, and a reference, training data or a
golden set must be readable and have the columns it is mapped to."""

import json
from pathlib import Path

import pytest

from daemon.config import load_config, parse_config
from daemon.errors import ConfigError
from tests.daemon.config.conftest import MINIMAL, problems
from tests.helpers.cli import run_driftd


def test_named_data_files_must_exist(tmp_path: Path) -> None:
    file = tmp_path / "driftd.yaml"
    file.write_text(
        MINIMAL
        + "    monitor: {reference: {kind: dataset, path: data/train.csv}}\n"
        + "    retune: {golden_set: golden.jsonl}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert caught.value.problems == [
        f"{file}:7: deployments[0].monitor.reference.path: no such file: "
        f"{tmp_path / 'data' / 'train.csv'}",
        f"{file}:8: deployments[0].retune.golden_set: no such file: {tmp_path / 'golden.jsonl'}",
    ]


REFERENCE = (
    MINIMAL
    + """\
    monitor:
      reference:
        kind: dataset
        path: %s
"""
)


def file_problems(text: str, folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="driftd.yaml", base_dir=folder, environ={})
    return caught.value.problems


def test_a_reference_whose_columns_are_not_sample_fields_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,category\nwhere is my card?,card_arrival\n")
    (problem,) = file_problems(REFERENCE % "train.csv", tmp_path)
    # No `columns` in the file: the line is the reference's.
    assert problem.startswith(
        f"driftd.yaml:8: deployments[0].monitor.reference.columns: {tmp_path / 'train.csv'} "
        "has columns that are not sample fields ('text', 'category'): map a field to each, "
        "e.g. {input: text}"
    )
    assert "(its columns: text, category; the fields: confidence, error," in problem


def test_a_reference_mapped_to_a_column_the_file_lacks_is_refused(tmp_path: Path) -> None:
    # Only the first record is read: the broken line after it is the check's to find.
    (tmp_path / "ref.jsonl").write_text('{"prediction": "card_arrival", "label": "x"}\nnot json\n')
    text = REFERENCE % "ref.jsonl" + "        columns: {input: question}\n"
    (problem,) = file_problems(text, tmp_path)
    assert problem == (
        "driftd.yaml:11: deployments[0].monitor.reference.columns.input: column 'question' is "
        f"not in {tmp_path / 'ref.jsonl'} (its columns: prediction, label)"
    )


def test_a_reference_without_an_input_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ref.csv").write_text("prediction,label\ncard_arrival,card_arrival\n")
    (problem,) = file_problems(REFERENCE % "ref.csv", tmp_path)
    assert problem.startswith(
        "driftd.yaml:8: deployments[0].monitor.reference.columns: no column of "
        f"{tmp_path / 'ref.csv'} gives the sample field 'input': map it, e.g. {{input: COLUMN}}"
    )


def test_a_reference_mapping_names_sample_fields(tmp_path: Path) -> None:
    (tmp_path / "ref.csv").write_text("text,category\n")
    text = REFERENCE % "ref.csv" + "        columns: {input: text, intent: category}\n"
    (problem,) = file_problems(text, tmp_path)
    assert problem.startswith(
        "driftd.yaml:11: deployments[0].monitor.reference.columns.intent: 'intent' is not a "
        "sample field; the fields: confidence,"
    )


def test_columns_are_only_for_a_dataset_reference() -> None:
    text = MINIMAL + "    monitor: {reference: {kind: previous_window, columns: {input: text}}}\n"
    (problem,) = problems(text)
    assert "deployments[0].monitor.reference: 'columns' is only for kind 'dataset'" in problem


@pytest.mark.parametrize("name", ["train.csv", "train.jsonl", "train.parquet"])
def test_a_reference_mapped_to_its_columns_is_accepted(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    row = {"text": "where is my card?", "category": "card_arrival", "metadata.channel": "app"}
    if name.endswith(".csv"):
        path.write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")
    elif name.endswith(".jsonl"):
        path.write_text(json.dumps(row) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([row]), path)
    text = REFERENCE % name + "        columns: {input: text, prediction: category}\n"
    config = parse_config(text, base_dir=tmp_path, environ={})
    reference = config.deployments[0].monitor.reference
    assert reference.columns == {"input": "text", "prediction": "category"}
    assert reference.path == path


TRAINING = (
    MINIMAL
    + """\
    retune:
      data:
        training_data: train.csv
"""
)


def test_training_data_without_its_input_and_label_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,category\nwhere is my card?,card_arrival\n")
    found = file_problems(TRAINING + "        label_field: intent\n", tmp_path)
    path = tmp_path / "train.csv"
    assert found == [
        f"driftd.yaml:8: deployments[0].retune.data.input_field: column 'input' is not in "
        f"{path} (its columns: text, category); set retune.data.input_field to the column "
        "that holds the input",
        f"driftd.yaml:10: deployments[0].retune.data.label_field: column 'intent' is not in "
        f"{path} (its columns: text, category); set retune.data.label_field to the column "
        "that holds the label (or wanted output)",
    ]
    accepted = TRAINING + "        input_field: text\n        label_field: category\n"
    config = parse_config(accepted, base_dir=tmp_path, environ={})
    assert config.deployments[0].retune.data.input_field == "text"


def test_training_data_in_jsonl_is_checked_on_its_first_record(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"input": "hi"}\n{"input": "x", "label": "y"}\n')
    (problem,) = file_problems(TRAINING.replace("train.csv", "train.jsonl"), tmp_path)
    assert problem.startswith("driftd.yaml:8: deployments[0].retune.data.label_field: column")
    assert "(its columns: input)" in problem


def test_config_validate_refuses_a_reference_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,category\n")
    (tmp_path / "driftd.yaml").write_text(REFERENCE % "train.csv")
    done = run_driftd("config", "validate", "driftd.yaml", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "driftd.yaml:8: deployments[0].monitor.reference.columns: train.csv has columns" in (
        done.stderr + done.stdout
    )


GOLDEN = (
    MINIMAL
    + """\
    retune:
      golden_set:
        path: %s
"""
)
BANKING77_ROW = {"text": "Where is my card?", "category": "card_arrival"}


def write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    """``rows`` as the file's suffix says: CSV with a header, JSONL, or Parquet."""
    if path.suffix == ".csv":
        lines = [",".join(rows[0])] + [",".join(row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("name", ["test.csv", "test.jsonl", "test.parquet"])
def test_a_golden_set_mapped_to_its_columns_is_accepted(tmp_path: Path, name: str) -> None:
    path = write_table(tmp_path / name, [BANKING77_ROW])
    text = GOLDEN % name + "        columns: {input: text, label: category}\n"
    golden = parse_config(text, base_dir=tmp_path, environ={}).deployments[0].retune.golden_set
    assert golden is not None
    assert golden.path == path
    assert (golden.columns.input, golden.columns.label) == ("text", "category")


def test_a_golden_set_given_as_a_path_is_read_by_columns_input_and_label(tmp_path: Path) -> None:
    write_table(tmp_path / "golden.jsonl", [{"input": "Where is my card?", "label": "x"}])
    text = MINIMAL + "    retune: {golden_set: golden.jsonl}\n"
    golden = parse_config(text, base_dir=tmp_path, environ={}).deployments[0].retune.golden_set
    assert golden is not None
    assert golden.path == tmp_path / "golden.jsonl"
    assert (golden.columns.input, golden.columns.label) == ("input", "label")


def test_a_golden_set_whose_columns_are_not_mapped_is_refused(tmp_path: Path) -> None:
    path = write_table(tmp_path / "test.csv", [BANKING77_ROW])
    # Given as a bare path: the line is the golden set's, the YAML path where the mapping goes.
    found = file_problems(MINIMAL + "    retune: {golden_set: test.csv}\n", tmp_path)
    assert found == [
        f"driftd.yaml:7: deployments[0].retune.golden_set.columns.{field}: column {field!r} "
        f"is not in {path} (its columns: text, category); set "
        f"retune.golden_set.columns.{field} to the column that holds the {field}, as in "
        "golden_set: {path: FILE, columns: {input: COLUMN, label: COLUMN}}"
        for field in ("input", "label")
    ]


def test_a_golden_set_mapped_to_a_column_the_file_lacks_is_refused(tmp_path: Path) -> None:
    write_table(tmp_path / "test.parquet", [BANKING77_ROW])
    text = GOLDEN % "test.parquet" + "        columns:\n          input: text\n"
    text += "          label: intent\n"
    (problem,) = file_problems(text, tmp_path)
    assert problem.startswith(
        "driftd.yaml:12: deployments[0].retune.golden_set.columns.label: column 'intent' is not "
        f"in {tmp_path / 'test.parquet'} (its columns: text, category)"
    )


def test_a_golden_set_maps_only_input_and_label(tmp_path: Path) -> None:
    write_table(tmp_path / "test.csv", [BANKING77_ROW])
    text = GOLDEN % "test.csv" + "        columns: {input: text, labels: category}\n"
    assert file_problems(text, tmp_path) == [
        "driftd.yaml:10: deployments[0].retune.golden_set.columns.labels: unknown key; "
        "did you mean 'label'?"
    ]
    text = GOLDEN % "test.csv" + "        columns: {input: text, intent: category}\n"
    assert file_problems(text, tmp_path) == [
        "driftd.yaml:10: deployments[0].retune.golden_set.columns.intent: unknown key; "
        "expected one of: input, label"
    ]


def test_a_golden_set_of_a_format_jobs_cannot_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / "golden.txt").write_text("input,label\n")
    (problem,) = file_problems(GOLDEN % "golden.txt", tmp_path)
    assert problem == (
        f"driftd.yaml:8: deployments[0].retune.golden_set: {tmp_path / 'golden.txt'}: a golden "
        "set is read as CSV (.csv), JSONL (.jsonl) or Parquet (.parquet), by its suffix; got "
        "'.txt'"
    )


PROMPTED_GENERATION = """\
deployments:
  - name: support
    kind: prompted
    task: generation
    prompt: {model: m, system: Answer the customer.}
    retune:
      golden_set:
        path: golden.jsonl
"""


def test_a_generation_golden_set_needs_a_label_column_only_when_it_names_one(
    tmp_path: Path,
) -> None:
    # The support-bot example's golden set: questions, and reference answers under `reference`.
    write_table(tmp_path / "golden.jsonl", [{"input": "Where is my card?", "reference": "r"}])
    config = parse_config(PROMPTED_GENERATION, base_dir=tmp_path, environ={})
    assert config.deployments[0].retune.golden_set is not None
    (problem,) = file_problems(PROMPTED_GENERATION + "        columns: {label: answer}\n", tmp_path)
    assert problem.startswith(
        "driftd.yaml:9: deployments[0].retune.golden_set.columns.label: column 'answer' is not "
        f"in {tmp_path / 'golden.jsonl'} (its columns: input, reference)"
    )


def test_config_validate_refuses_a_golden_set_it_cannot_read(tmp_path: Path) -> None:
    write_table(tmp_path / "test.csv", [BANKING77_ROW])
    (tmp_path / "driftd.yaml").write_text(MINIMAL + "    retune: {golden_set: test.csv}\n")
    done = run_driftd("config", "validate", "driftd.yaml", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert (
        "driftd.yaml:7: deployments[0].retune.golden_set.columns.input: column 'input' is not "
        "in test.csv (its columns: text, category)"
    ) in done.stderr + done.stdout


FINETUNED_GENERATION = """\
deployments:
  - name: answers
    kind: finetuned
    task: generation
    model: {provider: openai, name: gpt-4o-mini-2024-07-18}
    upstream: {base_url: "http://127.0.0.1:9/v1"}
    retune: {golden_set: golden.jsonl}
"""


def test_a_generation_fine_tune_without_a_rubric_needs_reference_answers(tmp_path: Path) -> None:
    write_table(tmp_path / "golden.jsonl", [{"input": "Where is my card?"}])
    (problem,) = file_problems(FINETUNED_GENERATION, tmp_path)
    assert problem.startswith(
        f"driftd.yaml:7: deployments[0].retune.golden_set: {tmp_path / 'golden.jsonl'} has no "
        "reference answers (no column 'label', 'reference', 'expected'; its columns: input), "
        "and with no judge.rubric a generation fine-tune is gated on them"
    )
    # With a rubric the judge scores; with references, they do.
    judged = FINETUNED_GENERATION + "    judge: {rubric: Answers the question.}\n"
    assert parse_config(judged, base_dir=tmp_path, environ={}).deployments[0].judge.rubric
    write_table(tmp_path / "golden.jsonl", [{"input": "Where is my card?", "reference": "r"}])
    assert parse_config(FINETUNED_GENERATION, base_dir=tmp_path, environ={}).deployments
