"""The contract between the daemon and its jobs: specs and results are versioned JSON, read
back as the models they were written from, and a problem names its field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrain.__main__ import main
from retrain.contract import (
    SPEC_VERSION,
    SPECS,
    Candidate,
    EvaluateSpec,
    FineTuneResult,
    FineTuneSpec,
    GateSpec,
    Settlement,
    read_result,
)
from retrain.errors import SpecError


def golden(folder: Path) -> Path:
    path = folder / "golden.jsonl"
    path.write_text('{"input": "Where is my card?", "label": "card_arrival"}\n')
    return path


def test_a_spec_the_daemon_builds_is_what_the_job_reads(tmp_path: Path) -> None:
    production = tmp_path / "production.jsonl"
    production.write_text('{"input": "Where is my card?", "label": "card_arrival"}\n')
    built = FineTuneSpec(
        method="trainer",
        task="classification",
        labels=("card_arrival", "card_linking"),
        base_model="base",
        production_file=production,
        golden_set=golden(tmp_path),
        candidate=Candidate(name="intents-v2"),
        promote=True,
        lineage={"check_ids": [3]},
    )
    stored = built.to_json()
    assert stored["spec_version"] == SPEC_VERSION
    assert "output_dir" not in stored  # the runner adds it

    read = FineTuneSpec.parse({**stored, "output_dir": "out"}, tmp_path)

    assert read.model_dump(exclude={"output_dir"}) == built.model_dump(exclude={"output_dir"})
    assert read.output == tmp_path.absolute() / "out"
    # The daemon reads its bookkeeping back from the same JSON.
    settlement = Settlement.model_validate(stored)
    assert settlement.candidate is not None
    assert (settlement.candidate.name, settlement.promote) == ("intents-v2", True)


def test_a_spec_of_the_previous_release_has_no_version_and_is_read_as_version_1(
    tmp_path: Path,
) -> None:
    golden(tmp_path)
    (tmp_path / "model").mkdir()
    raw = {"golden_set": "golden.jsonl", "model_dir": "model", "output_dir": "out"}

    spec = EvaluateSpec.parse(raw, tmp_path)

    assert spec.spec_version == 1
    assert spec.golden_set == tmp_path.absolute() / "golden.jsonl"


def test_version_1_keys_are_read_under_their_new_names(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    raw = {
        "spec_version": 1,
        "golden_set": str(golden(tmp_path)),
        "champion": {"model_dir": "v1"},
        "challenger": {"model_dir": "v2"},
        "output_dir": "out",
    }
    spec = GateSpec.parse(raw, tmp_path)
    assert spec.active is not None
    assert (spec.active.model_dir.name, spec.candidate.model_dir.name) == ("v1", "v2")

    result = read_result(
        "gate",
        {
            "spec_version": 1,
            "passed": True,
            "champion": {"metrics": {"accuracy": 0.5}},
            "challenger": {"metrics": {"accuracy": 0.9}},
            "guards": {
                "macro_f1": {
                    "champion": 0.5,
                    "challenger": 0.9,
                    "difference": 0.4,
                    "tolerance": 0.01,
                    "ok": True,
                }
            },
        },
    )
    assert result.model_dump()["guards"]["macro_f1"]["active"] == 0.5
    assert result.model_dump()["active"]["metrics"] == {"accuracy": 0.5}
    assert result.model_dump()["candidate"]["metrics"] == {"accuracy": 0.9}


def test_a_spec_of_a_newer_release_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden(tmp_path)
    path = tmp_path / "job.json"
    newer = SPEC_VERSION + 1
    path.write_text(
        json.dumps({"spec_version": newer, "golden_set": "golden.jsonl", "a_new_key": {"x": 1}})
    )

    assert main(["evaluate", "--spec", str(path)]) == 2

    err = capsys.readouterr().err
    assert f"'spec_version' is {newer}, but this release of driftd reads versions up to" in err
    # The version is the one problem told: the rest of a newer spec may differ anywhere.
    assert "'model_dir' is required" not in err
    assert (tmp_path / "exit").read_text().strip() == "2"


@pytest.mark.parametrize(
    ("retired", "kind"), [("retrain", "finetune"), ("revise_prompt", "prompt_revision")]
)
def test_a_job_kind_of_0_1_runs_as_its_new_kind(
    retired: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.json"
    path.write_text("{}")

    assert main([retired, "--spec", str(path)]) == 2

    err = capsys.readouterr().err
    assert f"retrain: job kind {retired} is deprecated; running it as {kind}" in err
    assert f"retrain {kind}: invalid spec {path}" in err


def test_every_problem_names_its_field_nested_ones_by_their_path(tmp_path: Path) -> None:
    raw = {
        "golden_set": str(golden(tmp_path)),
        "active": None,
        "candidate": {"model_dir": "nowhere"},
        "seed": True,
        "output_dir": "out",
    }
    with pytest.raises(SpecError) as refused:
        GateSpec.parse(raw, tmp_path)
    problems = str(refused.value).split("; ")
    assert problems == [
        f"candidate.model_dir: {tmp_path.absolute() / 'nowhere'} is not a directory",
        "'seed' must be a whole number from 0 to 4294967295, got True",
    ]


def test_every_job_kind_has_a_spec_and_a_result() -> None:
    from retrain.__main__ import KINDS
    from retrain.contract import RESULTS

    assert set(SPECS) == set(RESULTS) == set(KINDS)
    assert all(kind == SPECS[kind].KIND for kind in SPECS)


def test_a_result_is_read_typed_and_a_newer_one_is_refused() -> None:
    result = read_result(
        "finetune",
        {
            "kind": "finetune",
            "status": "succeeded",
            "candidate": {"name": "intents-v2", "artifact": "/models/v2"},
            "gate": {"passed": True, "candidate": {"metrics": {"accuracy": 0.9}}},
        },
    )
    assert isinstance(result, FineTuneResult)
    assert result.spec_version == 1  # written before results carried a version
    assert result.gate is not None
    assert result.gate.passed
    assert result.candidate is not None
    assert result.candidate.artifact == "/models/v2"

    with pytest.raises(ValueError, match=r"the finetune job's result: 'spec_version' is 9"):
        read_result("finetune", {"spec_version": 9, "candidate": {"name": "x"}})
