"""The spec of a re-tune job, as the daemon writes it: what the job gets to work with."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.config import Config, parse_config
from daemon.config.sections.policy import Budget
from daemon.config.sections.retune import FineTuningAPI
from daemon.errors import ConfigError, NotEnoughLabels
from daemon.retune.specs import finetune_spec
from daemon.store import NewSample, Store
from retrain.contract import SPEC_VERSION, FineTuneSpec

CONFIG = """\
deployments:
  - name: intents
    kind: finetuned
    task: classification
    model: {provider: %s, name: %s}
    labels: [card_arrival, card_linking]
    policy: {on_drift: retune}
    upstream: {base_url: "http://127.0.0.1:9/v1", api_key_env: DRIFTD_OPENAI_KEY}
    retune:
      golden_set: golden.jsonl
      data: {min_labelled: 3, training_data: original.csv, input_field: text, label_field: category}
"""


def config(tmp_path: Path, provider: str, model: str) -> Config:
    (tmp_path / "golden.jsonl").write_text(json.dumps({"input": "hi", "label": "card_arrival"}))
    (tmp_path / "original.csv").write_text("text,category\nwhere is it,card_arrival\n")
    text = CONFIG % (provider, model) + f"scheduling: {{jobs_dir: {tmp_path / 'jobs'}}}\n"
    return parse_config(text, environ={}, base_dir=tmp_path)


def labelled(store: Store, count: int) -> None:
    store.ensure_deployment("intents", "finetuned", "classification")
    now = datetime.now(UTC)
    store.insert_samples(
        "intents",
        [
            NewSample(f"s-{i}", now - timedelta(minutes=i), input=f"q {i}", label="card_linking")
            for i in range(count)
        ],
    )


def test_a_trainer_spec_names_absolute_inputs_and_the_active(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    cfg = config(tmp_path, "transformers", "./model")
    labelled(store, 4)
    spec = finetune_spec(
        cfg, store, cfg.deployments[0], trigger="drift", lineage={"check_ids": [1]}
    )
    assert spec.method == "trainer"
    assert spec.base_model == str((tmp_path / "model").resolve())
    assert spec.active is not None
    assert spec.active.model_dir == Path(spec.base_model)
    for path in (spec.production_file, spec.original_file, spec.golden_set):
        assert path is not None
        assert path.is_absolute()
        assert path.is_file()
    assert (spec.original_input_field, spec.original_label_field) == ("text", "category")
    rows = spec.production_file.read_text().splitlines()
    assert len(rows) == 4
    assert spec.lineage == {"check_ids": [1], "base_version": None}
    again = finetune_spec(cfg, store, cfg.deployments[0], trigger="drift", lineage={})
    assert again.production_file != spec.production_file  # each job its own export
    # What the job reads back is what was built, and it is versioned.
    stored = spec.to_json()
    assert stored["spec_version"] == SPEC_VERSION
    assert FineTuneSpec.model_validate(stored) == spec


def test_an_openai_spec_fine_tunes_the_active_through_the_upstream(
    store: Store, tmp_path: Path
) -> None:
    cfg = config(tmp_path, "openai", "ft:gpt-4o-mini-2024-07-18:acme::abc1")
    labelled(store, 3)
    spec = finetune_spec(cfg, store, cfg.deployments[0], trigger="schedule", lineage={})
    assert spec.method == "openai"
    assert spec.openai is not None
    assert spec.openai.base_model == "ft:gpt-4o-mini-2024-07-18:acme::abc1"
    assert spec.openai.base_url == "http://127.0.0.1:9/v1"
    assert spec.openai.api_key_env == "DRIFTD_OPENAI_KEY"
    assert (spec.base_model, spec.active) == (None, None)
    assert "sk-" not in json.dumps(spec.to_json())
    # Unconfigured: OpenAI picks the epochs, the status is read every 10 s, no cost cap.
    assert (spec.openai.hyperparameters, spec.openai.poll_interval_s) == ({}, 10.0)
    assert spec.openai.max_cost_usd is None


def test_an_openai_spec_carries_the_configured_fine_tuning_and_its_cost_cap(
    store: Store, tmp_path: Path
) -> None:
    cfg = config(tmp_path, "openai", "gpt-4o-mini-2024-07-18")
    deployment = cfg.deployments[0].model_copy(
        update={
            "policy": cfg.deployments[0].policy.model_copy(
                update={"budget": Budget(max_usd_per_job=2.5)}
            ),
            "retune": cfg.deployments[0].retune.model_copy(
                update={
                    "openai": FineTuningAPI(
                        hyperparameters={"n_epochs": 2, "batch_size": 8},
                        poll_interval=timedelta(seconds=3),
                        price_per_million_training_tokens=3.0,
                    )
                }
            ),
        }
    )
    labelled(store, 3)
    spec = finetune_spec(cfg, store, deployment, trigger="schedule", lineage={})
    assert spec.openai is not None
    assert spec.openai.hyperparameters == {"n_epochs": 2, "batch_size": 8}
    assert spec.openai.poll_interval_s == 3.0
    assert (spec.openai.max_cost_usd, spec.openai.price_per_million_training_tokens) == (2.5, 3.0)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            "    retune: {golden_set: golden.jsonl, openai: {hyperparameters: {epochs: 3}}}\n",
            "deployments[0].retune.openai.hyperparameters: hyperparameters.epochs is not one "
            "OpenAI takes (batch_size, learning_rate_multiplier, n_epochs)",
        ),
        (
            "    retune: {golden_set: golden.jsonl, openai: {poll_interval: 2h}}\n",
            "deployments[0].retune.openai.poll_interval: must be at most 1h",
        ),
        (
            "    retune: {golden_set: golden.jsonl}\n    policy: {budget: {max_usd_per_job: 2}}\n",
            "deployments[0]: policy.budget.max_usd_per_job caps an OpenAI fine-tune only when its "
            "cost is known before it starts: set retune.openai.price_per_million_training_tokens "
            "and retune.openai.hyperparameters.n_epochs",
        ),
    ],
    ids=["unknown-hyperparameter", "slow-polling", "uncapped-cost"],
)
def test_openai_fine_tuning_settings_are_checked_at_load_time(
    tmp_path: Path, section: str, problem: str
) -> None:
    (tmp_path / "golden.jsonl").write_text(json.dumps({"input": "hi", "label": "card_arrival"}))
    text = (
        "deployments:\n  - name: intents\n    kind: finetuned\n    task: classification\n"
        "    model: {provider: openai, name: gpt-4o-mini-2024-07-18}\n"
        "    labels: [card_arrival, card_linking]\n" + section
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={}, base_dir=tmp_path)
    assert problem in "\n".join(caught.value.problems)


def test_too_few_labels_is_an_error_that_says_what_to_do(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    cfg = config(tmp_path, "transformers", "./model")
    labelled(store, 2)
    with pytest.raises(
        NotEnoughLabels, match=r"has 2 labelled samples in the last 30d; .*min_labelled is 3"
    ):
        finetune_spec(cfg, store, cfg.deployments[0], trigger="drift", lineage={})


def test_the_golden_set_travels_with_its_columns(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    plain = config(tmp_path, "transformers", "./model")
    (tmp_path / "test.csv").write_text("text,category\nwhere is my card,card_arrival\n")
    text = (CONFIG % ("transformers", "./model")).replace(
        "golden_set: golden.jsonl",
        "golden_set: {path: test.csv, columns: {input: text, label: category}}",
    )
    mapped = parse_config(
        text + f"scheduling: {{jobs_dir: {tmp_path / 'jobs'}}}\n", environ={}, base_dir=tmp_path
    )
    labelled(store, 3)

    spec = finetune_spec(mapped, store, mapped.deployments[0], trigger="drift", lineage={})
    assert spec.golden_set == (tmp_path / "test.csv").resolve()
    assert (spec.golden_input_field, spec.golden_label_field) == ("text", "category")
    # A golden set given as a bare path is read by its columns input and label.
    spec = finetune_spec(plain, store, plain.deployments[0], trigger="drift", lineage={})
    assert spec.golden_set == (tmp_path / "golden.jsonl").resolve()
    assert (spec.golden_input_field, spec.golden_label_field) == ("input", "label")


GENERATION = """\
deployments:
  - name: answers
    kind: finetuned
    task: generation
    model: {provider: openai, name: gpt-4o-mini-2024-07-18}
    policy: {on_drift: retune%s}
    upstream: {base_url: "http://127.0.0.1:9/v1", api_key_env: DRIFTD_OPENAI_KEY}
    retune:
      golden_set: golden.jsonl
      gate: {metric: judge_score}
      data: {min_labelled: 1}
      openai: {hyperparameters: {n_epochs: 2}, price_per_million_training_tokens: 3}
    judge: {model: judge-mini%s}
"""


def generation_config(tmp_path: Path, policy: str = "", judge: str = "") -> Config:
    (tmp_path / "golden.jsonl").write_text(json.dumps({"input": "hi", "label": "Hello!"}))
    text = GENERATION % (policy, judge) + f"scheduling: {{jobs_dir: {tmp_path / 'jobs'}}}\n"
    return parse_config(text, environ={}, base_dir=tmp_path)


def answered(store: Store) -> None:
    store.ensure_deployment("answers", "finetuned", "generation")
    store.insert_samples(
        "answers", [NewSample("s-1", datetime.now(UTC), input="hi", output="yo", label="Hello!")]
    )


def test_a_generation_spec_carries_the_judge_when_a_rubric_is_set(
    store: Store, tmp_path: Path
) -> None:
    cfg = generation_config(tmp_path, judge=", rubric: Greets back politely.")
    answered(store)
    spec = finetune_spec(cfg, store, cfg.deployments[0], trigger="drift", lineage={})
    assert spec.judge is not None
    assert (spec.judge.model, spec.judge.rubric) == ("judge-mini", "Greets back politely.")
    assert (spec.judge.base_url, spec.judge.api_key_env) == (
        "http://127.0.0.1:9/v1",
        "DRIFTD_OPENAI_KEY",
    )
    assert spec.max_tokens == 200_000  # retune.gate.max_tokens: no spend cap lowers it
    assert spec.gate.metric == "accuracy"  # unread: the gate's scorer names its metric
    assert FineTuneSpec.model_validate(spec.to_json()) == spec
    # Without a rubric, the golden set's reference answers score: no judge.
    plain = generation_config(tmp_path)
    assert (
        finetune_spec(plain, store, plain.deployments[0], trigger="drift", lineage={}).judge is None
    )


@pytest.mark.parametrize(
    ("usd", "prices", "cap"),
    [
        (
            "0.05",
            "price_per_million_input_tokens: 0.15, price_per_million_output_tokens: 0.6",
            83_333,
        ),
        (
            "5",
            "price_per_million_input_tokens: 0.15, price_per_million_output_tokens: 0.6",
            200_000,
        ),
        ("0.05", "price_per_million_input_tokens: 0.5", 100_000),
        ("0.05", "", 200_000),
    ],
)
def test_the_gate_cap_is_lowered_to_what_the_job_spend_cap_buys(
    store: Store, tmp_path: Path, usd: str, prices: str, cap: int
) -> None:
    judge = f", rubric: Greets back., {prices}" if prices else ", rubric: Greets back."
    cfg = generation_config(tmp_path, f", budget: {{max_usd_per_job: {usd}}}", judge)
    answered(store)
    spec = finetune_spec(cfg, store, cfg.deployments[0], trigger="drift", lineage={})
    assert spec.max_tokens == cap
