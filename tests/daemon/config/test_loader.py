"""Loading a configuration: defaults, paths, the problems it reports and how (types, unknown
keys, secrets, YAML syntax, inconsistent deployments)."""

from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config import load_config, parse_config
from daemon.config.models import Action, Method, Signal
from daemon.domain import Kind, Task
from daemon.errors import ConfigDeprecation, ConfigError
from tests.daemon.config.conftest import MINIMAL, problems

ROOT = Path(__file__).resolve().parents[3]


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


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_job_retries_back_off_as_configured() -> None:
    scheduling = parse_config(MINIMAL, environ={}).scheduling
    assert (scheduling.job_backoff, scheduling.job_backoff_max) == (
        timedelta(seconds=30),
        timedelta(minutes=30),
    )
    text = "scheduling: {job_backoff: 2m, job_backoff_max: 1m}\n" + MINIMAL
    assert problems(text) == [
        "driftd.yaml:1: scheduling: job_backoff_max (1m) must not be shorter than job_backoff (2m)"
    ]
