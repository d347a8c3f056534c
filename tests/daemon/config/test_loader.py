import json
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config import load_config, parse_config
from daemon.config.models import Action, Method, Signal
from daemon.domain import Kind, Task
from daemon.errors import ConfigDeprecation, ConfigError
from tests.helpers.cli import run_driftd
from tests.helpers.configs import finetuned_config

ROOT = Path(__file__).resolve().parents[3]

MINIMAL = finetuned_config(labels=("card_arrival", "card_linking"))


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="driftd.yaml", environ=environ)
    return caught.value.problems


@pytest.mark.parametrize(
    "example", sorted(path.parent.name for path in ROOT.glob("examples/*/driftd.yaml"))
)
def test_examples_are_valid(example: str) -> None:
    # Loading reads the header of every data file the example names, as `config validate` does.
    config = load_config(ROOT / "examples" / example / "driftd.yaml", environ={})
    assert len(config.deployments) == 1
    golden = config.deployments[0].retune.golden_set
    assert golden is not None
    assert golden.path.is_file()


def test_defaults_are_documented_values() -> None:
    config = parse_config(MINIMAL, environ={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8477
    assert config.storage.url == "sqlite:///driftd.db"
    deployment = config.deployment("intents")
    assert deployment.kind is Kind.finetuned
    assert deployment.task is Task.classification
    assert deployment.policy.on_drift is Action.alert
    assert deployment.policy.cooldown == timedelta(hours=6)
    assert deployment.monitor.window == timedelta(hours=24)
    assert deployment.method is Method.trainer
    assert Signal.performance in deployment.signals


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    file = tmp_path / "conf" / "driftd.yaml"
    file.parent.mkdir()
    (file.parent / "golden.csv").write_text("input,label\n")
    train = tmp_path / "train.csv"
    train.write_text("input,label\n")
    file.write_text(
        MINIMAL + f"    retune: {{golden_set: golden.csv, data: {{training_data: {train}}}}}\n"
    )
    deployment = load_config(file, environ={}).deployments[0]
    assert deployment.retune.golden_set is not None
    assert deployment.retune.golden_set.path == tmp_path / "conf" / "golden.csv"
    assert deployment.retune.data.training_data == train
    assert deployment.model is not None
    assert deployment.model.name == str(tmp_path / "conf" / "model")


def test_hub_ids_are_not_taken_for_paths(tmp_path: Path) -> None:
    file = tmp_path / "driftd.yaml"
    file.write_text(MINIMAL.replace("./model", "sentence-transformers/all-MiniLM-L6-v2"))
    model = load_config(file, environ={}).deployments[0].model
    assert model is not None
    assert model.name == "sentence-transformers/all-MiniLM-L6-v2"


def test_storage_url_comes_from_the_environment_first() -> None:
    url = "postgresql://driftd:s3cret@db.internal/driftd"
    config = parse_config(MINIMAL, environ={"DRIFTD_STORAGE_URL": url})
    assert config.storage.url == url


def test_wrong_type_names_path_line_and_expectation() -> None:
    text = MINIMAL + "    monitor:\n      max_rows: lots\n"
    assert problems(text) == [
        "driftd.yaml:8: deployments[0].monitor.max_rows: expected a valid integer, unable to "
        "parse string as an integer, got 'lots'"
    ]


def test_duration_error_reads_like_the_issue_promised() -> None:
    text = (
        MINIMAL
        + MINIMAL.split("\n", 1)[1].replace("intents", "second")
        + ("    policy:\n      cooldown: soon\n")
    )
    (problem,) = problems(text)
    assert problem.startswith("driftd.yaml:13: deployments[1].policy.cooldown: ")
    assert "expected a duration like '6h'" in problem


def test_unknown_key_suggests_the_close_one() -> None:
    (problem,) = problems(MINIMAL + "    polcy: {}\n")
    assert problem == "driftd.yaml:7: deployments[0].polcy: unknown key; did you mean 'policy'?"


def test_unknown_key_lists_the_allowed_ones_when_nothing_is_close() -> None:
    (problem,) = problems("server: {host: 0.0.0.0, zzz: 1}\n")
    assert problem == (
        "driftd.yaml:1: server.zzz: unknown key; "
        "expected one of: host, metrics_auth, port, shutdown_grace"
    )


def test_missing_deployment_name() -> None:
    text = MINIMAL.replace("  - name: intents\n    kind", "  - kind")
    assert problems(text) == ["driftd.yaml:2: deployments[0].name: required, but missing"]


def test_duplicate_deployment_name() -> None:
    text = MINIMAL + MINIMAL.split("\n", 1)[1]
    assert problems(text) == [
        "driftd.yaml:7: deployments[1].name: duplicate deployment name 'intents' "
        "(already used by deployments[0])"
    ]


@pytest.mark.parametrize(
    ("extra", "path", "what"),
    [
        (
            "    upstream: {api_key: abc123}\n",
            "deployments[0].upstream.api_key",
            "looks like a secret",
        ),
        (
            "    upstream: {base_url: 'https://u:hunter2@llm.internal/v1'}\n",
            "deployments[0].upstream.base_url",
            "contains a password in a URL",
        ),
        (
            "    prompt_note: 'key sk-abcdefghijklmnopqrstuvwx'\n",
            "deployments[0].prompt_note",
            "contains an OpenAI-style API key",
        ),
    ],
)
def test_secrets_in_the_file_are_refused_without_echoing_them(
    extra: str, path: str, what: str
) -> None:
    (problem,) = problems(MINIMAL + extra)
    assert problem.startswith(f"driftd.yaml:7: {path}: {what}")
    assert "abc123" not in problem
    assert "hunter2" not in problem
    assert "sk-abc" not in problem


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
SLACK_HOOK = "https://hooks.slack.com/services/T000/B000/XXXXXXXX"
DISCORD_HOOK = "https://discord.com/api/webhooks/123456789012345678/Zt9-x_secretpart"


def hook(line: str) -> str:
    return MINIMAL + "    retune:\n      hooks:\n" + f"        {line}\n"


@pytest.mark.parametrize(
    ("text", "path", "what", "secret"),
    [
        (
            MINIMAL + f"    prompt_note: 'token {JWT}'\n",
            "deployments[0].prompt_note",
            "contains a JSON Web Token",
            "dozjgNry",
        ),
        (
            hook(f"webhook: {SLACK_HOOK}"),
            "deployments[0].retune.hooks.webhook",
            "contains a Slack webhook URL",
            "XXXXXXXX",
        ),
        (
            hook(f"webhook: {DISCORD_HOOK}"),
            "deployments[0].retune.hooks.webhook",
            "contains a Discord webhook URL",
            "secretpart",
        ),
        (
            hook("command: [curl, -u, 'admin:hunter2', 'https://hooks.internal/x']"),
            "deployments[0].retune.hooks.command[2]",
            "contains a password in -u USER:PASSWORD",
            "hunter2",
        ),
        (
            hook("command: [curl, '--user=admin:hunter2', 'https://hooks.internal/x']"),
            "deployments[0].retune.hooks.command[1]",
            "contains a password in --user USER:PASSWORD",
            "hunter2",
        ),
        (
            hook("command: [reload, '--password=hunter2']"),
            "deployments[0].retune.hooks.command[1]",
            "contains a credential after --password",
            "hunter2",
        ),
        (
            hook("command: [reload, --token, hunter2]"),
            "deployments[0].retune.hooks.command[2]",
            "contains a credential after --token",
            "hunter2",
        ),
        (
            hook("command: [reload, --api-key, hunter2]"),
            "deployments[0].retune.hooks.command[2]",
            "contains a credential after --api-key",
            "hunter2",
        ),
        (
            hook("command: [curl, -H, 'Authorization: Basic hunter2', 'https://hooks.internal/x']"),
            "deployments[0].retune.hooks.command[2]",
            "contains a credential in the header Authorization",
            "hunter2",
        ),
        (
            hook("command: [curl, 'https://admin:hunter2@hooks.internal/x']"),
            "deployments[0].retune.hooks.command[1]",
            "contains a password in a URL",
            "hunter2",
        ),
        (
            hook("command: [sh, -c, 'curl -u admin:hunter2 https://hooks.internal/x']"),
            "deployments[0].retune.hooks.command[2]",
            "contains a password in -u USER:PASSWORD",
            "hunter2",
        ),
        (
            hook("command: [sh, -c, \"curl -H 'X-Api-Key: hunter2' https://hooks.internal\"]"),
            "deployments[0].retune.hooks.command[2]",
            "contains a credential in the header X-Api-Key",
            "hunter2",
        ),
        (
            hook("command: 'curl -u admin:hunter2 https://hooks.internal/x'"),
            "deployments[0].retune.hooks.command",
            "contains a password in -u USER:PASSWORD",
            "hunter2",
        ),
    ],
)
def test_more_secret_shapes_are_refused_without_echoing_them(
    text: str, path: str, what: str, secret: str
) -> None:
    (problem,) = problems(text)
    assert problem.startswith(f"driftd.yaml:{text.count(chr(10))}: {path}: {what}; ")
    assert "secrets never go in the file" in problem
    assert secret not in problem


def test_a_credential_in_a_command_says_to_read_it_from_the_environment() -> None:
    (problem,) = problems(hook("command: [reload, --token, hunter2]"))
    assert "the command inherits driftd's environment" in problem
    assert "$HOOK_TOKEN" in problem


def test_a_webhook_url_in_the_retune_hook_asks_for_a_receiver_that_is_no_credential() -> None:
    (problem,) = problems(hook(f"webhook: {SLACK_HOOK}"))
    assert problem.endswith(
        "retune.hooks.webhook has no environment-variable form, so point it at a receiver whose "
        "URL is not itself a credential (e.g. a relay in your network that holds it)"
    )


def test_a_webhook_url_elsewhere_points_to_an_environment_variable() -> None:
    (problem,) = problems(MINIMAL + f"    prompt_note: 'alerts go to {DISCORD_HOOK}'\n")
    assert "contains a Discord webhook URL" in problem
    assert "notifications.slack.url_env" in problem


@pytest.mark.parametrize(
    "command",
    [
        "[curl, -u, 'admin:$HOOK_PASSWORD', 'https://hooks.internal/x']",
        "[curl, -u, admin, 'https://hooks.internal/x']",
        "[reload, --token, '\"$TOKEN\"']",
        "[reload, '--token=${TOKEN}', --no-password, 'https://hooks.internal/x']",
        "[reload, --token-file, /run/secrets/token]",
        "[curl, -H, 'Authorization: Bearer $HOOK_TOKEN', -H, 'Content-Type: application/json']",
        "[sh, -c, 'curl -u \"admin:$HOOK_PASSWORD\" https://hooks.internal/x']",
        "[sh, -c, 'curl -H \"Authorization: Bearer ${HOOK_TOKEN}\" https://$USER:$PW@h/x']",
        "[sh, -c, 'curl --token \"$(cat /run/secrets/token)\" https://hooks.internal/x']",
        "[docker, run, --rm, -u, '1000:1000', -p, '8080:80', reloader]",
        "[mkdir, -p, /srv/models]",
        "[systemctl, reload, vllm]",
    ],
)
def test_commands_that_take_credentials_from_the_environment_are_accepted(command: str) -> None:
    config = parse_config(hook(f"command: {command}"), environ={})
    assert config.deployments[0].retune.hooks.command is not None


def test_a_url_password_taken_from_a_variable_is_still_refused_outside_a_command() -> None:
    # Only a shell expands $PW; driftd would send these characters as the password.
    (problem,) = problems(MINIMAL + "    upstream: {base_url: 'https://u:$PW@llm.internal/v1'}\n")
    assert "deployments[0].upstream.base_url: contains a password in a URL" in problem


@pytest.mark.parametrize(
    "variable",
    ["DRIFTD_ADMIN_TOKENS", "DRIFTD_INGEST_TOKENS", "DRIFTD_PROXY_TOKENS", "DRIFTD_STORAGE_URL"],
)
@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("    upstream: {{api_key_env: {}}}\n", "deployments[0].upstream.api_key_env"),
        ("notifications: {{slack: {{url_env: {}}}}}\n", "notifications.slack.url_env"),
    ],
)
def test_a_secret_env_must_not_name_driftds_own_credentials(
    variable: str, extra: str, path: str
) -> None:
    (problem,) = problems(MINIMAL + extra.format(variable))
    assert problem.startswith(f"driftd.yaml:7: {path}: {variable} holds driftd's own credentials")
    assert "must never travel to an upstream or a webhook" in problem


@pytest.mark.parametrize("path", ["deploy/compose/driftd.yaml", "deploy/docker/driftd.yaml"])
def test_the_shipped_deploy_configurations_are_valid(path: str) -> None:
    # The compose stack mounts examples/banking77/data beside the file, so its paths resolve there.
    text = (ROOT / path).read_text()
    config = parse_config(text, source=path, base_dir=ROOT / "examples" / "banking77", environ={})
    assert config.server.port == 8477


def test_storage_password_points_to_the_environment_variable() -> None:
    (problem,) = problems("storage: {url: 'postgresql://driftd:pw@db/driftd'}\n")
    assert "storage.url: contains a password in a URL" in problem
    assert "DRIFTD_STORAGE_URL" in problem


def test_a_secret_env_must_name_a_driftd_or_openai_variable() -> None:
    (problem,) = problems(MINIMAL + "    upstream: {api_key_env: HOME}\n")
    assert problem.startswith("driftd.yaml:7: deployments[0].upstream.api_key_env: expected")


def test_every_problem_is_reported_in_file_order() -> None:
    text = "server: {port: 99999}\n" + MINIMAL + "    policy: {on_drift: explode}\n"
    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["1", "8"]
    assert "server.port: expected less than or equal to 65535, got 99999" in found[0]
    assert "'none', 'alert' or 'retune', got 'explode'" in found[1]


@pytest.mark.parametrize("retired", ["retrain", "revise_prompt"])
def test_a_retired_policy_action_is_read_as_retune_with_a_warning(retired: str) -> None:
    text = MINIMAL + f"    policy: {{on_drift: {retired}}}\n"
    with pytest.warns(ConfigDeprecation) as warned:
        found = problems(text)
    (warning,) = warned
    assert str(warning.message).startswith(
        f"driftd.yaml:7: deployments[0].policy.on_drift: '{retired}' is deprecated since 0.2 "
        "and read as 'retune'"
    )
    # Read as a re-tune: which needs a golden set to gate the candidate on.
    assert [p.split(": ", 1)[1] for p in found] == [
        "deployments[0]: re-tuning can run (policy.on_drift or retune.schedule) but "
        "retune.golden_set is not set: a candidate cannot be gated without it"
    ]


def test_yaml_syntax_error_names_the_line() -> None:
    assert problems("server:\n  host: [unclosed\n") == [
        "driftd.yaml:3: YAML syntax error: expected ',' or ']', but got '<stream end>'"
    ]


def test_duplicate_yaml_keys_are_refused() -> None:
    (problem,) = problems("server:\n  port: 1\n  port: 2\n")
    assert problem == "driftd.yaml:3: server.port: duplicate key (first on line 2)"


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == [
        "driftd.yaml: expected a mapping of sections at the top level"
    ]


def test_an_empty_file_is_a_daemon_with_no_deployments() -> None:
    assert parse_config("", environ={}).deployments == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    prompt: {model: m, system: s}\n", "'prompt' is only for kind 'prompted'"),
        ("    policy: {on_drift: retune}\n", "retune.golden_set is not set"),
        ("    retune: {method: openai}\n", "needs model.provider 'openai'"),
        ("    monitor: {signals: [judge]}\n", "do not apply to task 'classification'"),
        ("    monitor: {min_rows: 900, max_rows: 100}\n", "min_rows (900) exceeds max_rows (100)"),
        ("    monitor: {reference: {kind: fixed}}\n", "kind 'fixed' needs both 'start' and 'end'"),
        ("    monitor: {reference: {kind: dataset}}\n", "kind 'dataset' needs 'path'"),
        ("    redaction: {extra: [{name: ORDER, pattern: '(x'}]}\n", "invalid regular expression"),
        ("    monitor: {schedule: 'every now'}\n", "expected 'every <duration>'"),
        ("    monitor: {thresholds: {vibes: 0.5}}\n", "expected 'descriptors', 'text'"),
    ],
)
def test_inconsistent_deployments_are_explained(extra: str, message: str) -> None:
    (problem,) = problems(MINIMAL + extra)
    assert message in problem


def test_classification_needs_two_distinct_labels() -> None:
    (problem,) = problems(MINIMAL.replace("card_linking", "card_arrival"))
    assert "'labels' repeats 'card_arrival'" in problem


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


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml", environ={})


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
