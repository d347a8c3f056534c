"""The ``driftd`` command as a user runs it: the installed script, in a subprocess."""

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from daemon.store import normalize_url
from tests.helpers.cli import environ_without, run_driftd
from tests.helpers.configs import finetuned_config

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77" / "driftd.yaml"


def driftd(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``driftd ARGS`` in ``cwd`` (the repository's root by default), with ``env`` added."""
    return run_driftd(*args, cwd=cwd or ROOT, env={**environ_without(), **(env or {})}, timeout=60)


def test_help_lists_the_commands() -> None:
    result = driftd("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "config", "db", "versions", "--version"):
        assert command in result.stdout


def test_check_documents_json_as_a_flag_that_prints_failures_too() -> None:
    result = driftd("check", "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "--json" in line]
    # A flag takes no value: typer would otherwise show one (<bool>) beside it.
    assert "<" not in line, line
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "also when the check fails (then with its error)" in text


def test_python_dash_m_daemon_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: driftd" in result.stdout


@pytest.mark.parametrize("args", [("--version",), ("version",)])
def test_version_prints_driftd_and_its_libraries(args: tuple[str, ...]) -> None:
    result = driftd(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"driftd {version('driftd')}"
    assert f"torch {version('torch')}" in lines
    assert f"evidently {version('evidently')}" in lines
    # The old command still answers, saying what replaced it.
    assert ("deprecated" in result.stderr) == (args == ("version",))


def test_validate_accepts_the_example() -> None:
    result = driftd("config", "validate", str(BANKING77))
    assert result.returncode == 0, result.stderr
    assert "valid; 1 deployment(s): banking77-intents (finetuned, classification)" in result.stdout


GOOD = finetuned_config()
BROKEN = {
    "wrong type": (
        GOOD + "    sampling: {rate: often}\n",
        "bad.yaml:7: deployments[0].sampling.rate: expected a valid number",
    ),
    "unknown key": (
        GOOD + "    polciy: {}\n",
        "bad.yaml:7: deployments[0].polciy: unknown key; did you mean 'policy'?",
    ),
    "missing name": (
        GOOD.replace("  - name: intents\n    kind", "  - kind"),
        "bad.yaml:2: deployments[0].name: required, but missing",
    ),
    "duplicate name": (
        GOOD + GOOD.split("\n", 1)[1],
        "bad.yaml:7: deployments[1].name: duplicate deployment name 'intents'",
    ),
    "secret in the file": (
        GOOD + "    upstream: {api_key: sk-0123456789abcdefghijklmn}\n",
        "bad.yaml:7: deployments[0].upstream.api_key: looks like a secret",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_validate_rejects_broken_files_with_status_2_naming_the_path(
    case: str, tmp_path: Path
) -> None:
    text, expected = BROKEN[case]
    (tmp_path / "bad.yaml").write_text(text)
    result = driftd("config", "validate", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "sk-0123" not in result.stderr + result.stdout


def test_validate_warns_of_a_retired_value_and_accepts_the_file(tmp_path: Path) -> None:
    (tmp_path / "golden.csv").write_text("input,label\nhello,a\n")
    retired = "    policy: {on_drift: retrain}\n    retune: {golden_set: golden.csv}\n"
    (tmp_path / "old.yaml").write_text(GOOD + retired)
    result = driftd("config", "validate", "old.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(
        "warning: old.yaml:7: deployments[0].policy.on_drift: 'retrain' is deprecated since 0.2 "
        "and read as 'retune'"
    )
    assert "valid; 1 deployment(s)" in result.stdout


def test_validate_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = driftd("config", "validate", "absent.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "absent.yaml: no such file" in result.stderr


def test_without_a_configuration_the_error_says_how_to_name_one(tmp_path: Path) -> None:
    # No -c and no driftd.yaml where the command runs: the default file is missing.
    result = driftd("checks", cwd=tmp_path)
    assert result.returncode == 2
    assert "driftd.yaml: no such file" in result.stderr
    assert "pass the configuration with -c FILE or set DRIFTD_CONFIG" in result.stderr
    assert str(tmp_path) in result.stderr  # where it looked


def test_the_configuration_reference_is_up_to_date() -> None:
    result = driftd("config", "reference")
    assert result.returncode == 0, result.stderr
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert result.stdout == docs, "run: driftd config reference > docs/configuration.md"


def tables(url: str) -> set[str]:
    engine = create_engine(normalize_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_db_upgrade_creates_the_schema_once(db_url: str, tmp_path: Path) -> None:
    first = driftd("db", "upgrade", "--url", db_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "schema upgraded from empty to" in first.stdout
    created = tables(db_url)
    assert {"samples", "checks", "jobs", "versions", "events", "leases", "run_claims"} <= created
    second = driftd("db", "upgrade", "--url", db_url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert tables(db_url) == created


def test_db_upgrade_defaults_to_sqlite_in_the_working_directory(tmp_path: Path) -> None:
    result = driftd("db", "upgrade", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "samples" in tables(f"sqlite:///{tmp_path / 'driftd.db'}")


def test_db_upgrade_reads_the_url_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = driftd("db", "upgrade", cwd=tmp_path, env={"DRIFTD_STORAGE_URL": url})
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "driftd.db").exists()
    assert "samples" in tables(url)


def test_db_upgrade_reports_an_unreachable_store(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:9/nowhere"
    result = driftd("db", "upgrade", "--url", url, cwd=tmp_path)
    assert result.returncode == 1
    assert "127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
