"""The README's commands run as printed, from a fresh copy of the repository.

Every command of the README's ```sh blocks runs in a new directory holding the files a clone
would have (with this working tree's uncommitted changes), with the virtualenv's `driftd` on the
PATH. On the shipped example each must exit 0: the other statuses the README announces (2 for an
invalid configuration, 1 for drift, …) would each mean the example or the command is broken.
Placeholders are filled from the shipped Banking77 example; long-running commands run bounded.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import environ_without
from tests.helpers.serve import Server, free_port, running

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV = ROOT / ".venv"
EXAMPLE_CONFIG = "examples/banking77/driftd.yaml"
DEPLOYMENT = "banking77-intents"
SEEDED_JOB, SEEDED_VERSION, FIRST_VERSION = "1", "banking77-intents-b", "banking77-intents-a"
# The README's placeholders and what stands for them. Commands name their configuration with
# `-c driftd.yaml`, or take it from ./driftd.yaml or DRIFTD_CONFIG: the example's, both ways.
PLACEHOLDERS = {
    "driftd.yaml": EXAMPLE_CONFIG,
    "NAME": DEPLOYMENT,
    "past.csv": "examples/banking77/data/served-test.csv",
    "ID": SEEDED_JOB,  # the job the test puts in the store before the commands that steer jobs
    "VERSION": SEEDED_VERSION,  # likewise a candidate version, beside an active one to roll back to
    "H": "127.0.0.1",
}
# Commands not run here, and why.
NOT_RUN = {
    "make test": "runs this whole test suite, this test included (minutes)",
    "make demo": "trains a model and replays traffic for minutes; tests/daemon/test_demo.py runs "
    "`driftd demo --small`",
    "make run": "runs below, bounded, in the form the README gives for writes: "
    "`DRIFTD_INGEST_TOKENS=dev-token make run`",
}
SERVE_WITHIN = 45.0
README_PORT = 8477


def _sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)


def _commands(block: str) -> list[str]:
    """The block's commands: continuations and quoted line breaks joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands, pending = [], ""
    for line in joined.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue  # a blank line, or the output the README shows for the command above
        pending = f"{pending}\n{line}" if pending else re.sub(r"\s{2,}#\s.*$", "", line)
        try:
            shlex.split(pending)
        except ValueError:
            continue  # a quoted argument goes on over the next line
        commands.append(pending.strip())
        pending = ""
    assert not pending, f"unbalanced quotes in the README: {pending}"
    return commands


def _variants(command: str, port: int) -> list[list[str]]:
    """The runnable forms of one printed line, placeholders filled.

    `A | B` lists alternative commands and `approve|cancel|retry` alternative words; `[...]` is
    optional: it runs with all its options (the bare command is the same code with defaults)."""
    runs: list[list[str]] = []
    fill = {**PLACEHOLDERS, "P": str(port)}
    for alternative in command.split(" | "):
        words = shlex.split(alternative.replace("[", "").replace("]", ""))
        expanded: list[list[str]] = [[]]
        for word in words:
            expanded = [[*done, option] for done in expanded for option in word.split("|")]
        runs.extend([fill.get(word, word) for word in form] for form in expanded)
    return runs


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Path:
    """The files a clone has (tracked and new, not ignored), with this tree's changes."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path / "driftd"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def _environ(workdir: Path) -> dict[str, str]:
    env = environ_without()
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env['PATH']}"
    env["DRIFTD_CONFIG"] = EXAMPLE_CONFIG
    env["HF_HUB_OFFLINE"] = "1"
    env["NO_COLOR"] = "1"
    return env


def _seed_a_job_and_versions(workdir: Path) -> None:
    """What the steering commands act on: a job awaiting approval, an active and a candidate."""
    from daemon.domain import JobState
    from daemon.store.jobs import create_job
    from daemon.store.repository import Store
    from daemon.store.versions import add_version, promote

    with Store.open(f"sqlite:///{workdir / 'driftd.db'}") as store:
        job = create_job(
            store, DEPLOYMENT, "evaluate", "manual", {}, state=JobState.awaiting_approval
        )
        assert str(job) == SEEDED_JOB
        for name in (FIRST_VERSION, SEEDED_VERSION):
            add_version(store, DEPLOYMENT, kind="model", name=name, artifact=f"models/{name}")
        promote(store, DEPLOYMENT, FIRST_VERSION, actor="test")


def _serve_bounded(args: list[str], workdir: Path, env: dict[str, str], port: int) -> None:
    """Start a command that serves on ``port``, wait for /readyz, SIGTERM it (as a user's Ctrl-C
    or a service manager does); it must exit 0."""
    log = workdir / f"serve-{port}.log"
    server = Server(args, cwd=workdir, env=env, port=port, log=log, new_session=True)
    with running(server, timeout=SERVE_WITHIN, stop_within=30):
        pass


def _readme_commands() -> Iterator[str]:
    for block in _sh_blocks():
        yield from _commands(block)


def test_each_command_of_the_readme_exits_as_it_says(fresh_copy: Path) -> None:
    env = _environ(fresh_copy)
    failures, ran, seeded = [], [], False
    for printed in _readme_commands():
        if printed in NOT_RUN or printed.startswith(("curl ", "make ")):
            assert printed in NOT_RUN or printed.startswith("curl "), f"{printed}: not run, why?"
            continue
        port = free_port()
        for args in _variants(printed, port):
            if not seeded and any(v in args for v in (SEEDED_JOB, SEEDED_VERSION)):
                _seed_a_job_and_versions(fresh_copy)
                seeded = True
            ran.append(shlex.join(args))
            if args[:2] == ["driftd", "serve"]:
                _serve_bounded(args, fresh_copy, env, port)
                continue
            result = subprocess.run(
                args, cwd=fresh_copy, env=env, capture_output=True, text=True, timeout=120
            )
            if result.returncode != 0:
                failures.append(
                    f"$ {shlex.join(args)}  (printed: {printed})\nexit {result.returncode}:\n"
                    f"{result.stdout[-1500:]}{result.stderr[-1500:]}"
                )
    assert len(ran) >= 10, ran
    assert not failures, "\n\n".join(failures)


def test_make_run_serves_the_example_and_takes_the_readmes_curl_commands(
    fresh_copy: Path,
) -> None:
    readme = README.read_text()
    printed = "DRIFTD_INGEST_TOKENS=dev-token make run"
    assert f"`{printed}`" in readme
    assert "make run\n" in _sh_blocks()
    if not (VENV / "bin" / "driftd").exists():
        pytest.skip("no .venv here: `make run` would set it up (minutes)")
    if _port_in_use(README_PORT):
        pytest.skip(f"port {README_PORT}, where the README's example serves, is in use here")
    # A clone set up before: the copy's .venv is this one, newer than pyproject.toml, so make
    # finds it up to date and does not install anything.
    (fresh_copy / ".venv").symlink_to(VENV)
    stamp = (VENV / "bin" / "driftd").stat().st_mtime - 60
    os.utime(fresh_copy / "pyproject.toml", (stamp, stamp))
    env = _environ(fresh_copy)
    del env["DRIFTD_CONFIG"]
    assert subprocess.run(["make", "-q", "setup"], cwd=fresh_copy, env=env).returncode == 0
    env["DRIFTD_INGEST_TOKENS"] = "dev-token"
    curls = [
        command
        for block in _sh_blocks()
        for command in _commands(block)
        if command.startswith("curl ")
    ]
    assert curls, "the README shows no curl command"
    answers = []
    server = Server(
        ["make", "run"],
        cwd=fresh_copy,
        env=env,
        port=README_PORT,
        log=fresh_copy / "make-run.log",
        new_session=True,
    )
    # The daemon is make's child: SIGTERM reaches it, and make exits with its status.
    with running(server, timeout=SERVE_WITHIN, stop_within=30, signal_children=True):
        for command in curls:
            result = subprocess.run(
                ["bash", "-c", command], cwd=fresh_copy, env=env, capture_output=True, text=True
            )
            answers.append(result.stdout.strip())
            assert result.returncode == 0, f"{command}: {result.stderr}"
    # Each curl's answer is the output line the README prints under it.
    shown_answers = [
        line.lstrip("# ").strip()
        for block in _sh_blocks()
        for line in block.splitlines()
        if line.startswith("# {")
    ]
    assert answers == shown_answers


def test_ci_runs_the_readmes_test_command_after_a_fresh_setup() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [line.strip() for line in ci.splitlines() if line.strip().startswith(("rm ", "make"))]
    assert steps == ["rm -rf .venv", "make setup", "make test"]
    assert "make test\n" in _sh_blocks()


def test_make_run_serves_the_example_on_sqlite() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "driftd serve -c examples/banking77/driftd.yaml" in makefile
    assert "$(BIN)/pip install --quiet $(TORCH_PIP_OPTIONS) '$(TORCH_SPEC)'" in makefile


def test_the_readmes_proxy_figures_are_those_of_the_benchmark() -> None:
    """Every ms and x figure of the README's proxy sentence is in benchmarks/RESULTS.md's
    proxy section."""
    readme = README.read_text()
    sentence = re.search(r"The proxy adds .*?`benchmarks/RESULTS\.md`\)", readme, re.S)
    assert sentence, "the README no longer cites the proxy benchmark"
    figures = re.findall(r"(\d+(?:\.\d+)?) ?(ms|x)\b", sentence.group(0))
    assert figures, sentence.group(0)
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    proxy = results.split("## proxy.py", 1)[1].split("\n## ", 1)[0]
    for number, unit in figures:
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", proxy), (
            f"the README's {number} {unit} is not in the proxy section of benchmarks/RESULTS.md"
        )
