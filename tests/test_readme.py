"""The README's two commands are the ones CI and the Makefile really run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_gives_the_run_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert "make run\n" in blocks
    assert "make test\n" in blocks


def test_ci_runs_the_readmes_test_command_after_a_fresh_setup() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [line.strip() for line in ci.splitlines() if line.strip().startswith(("rm ", "make"))]
    assert steps == ["rm -rf .venv", "make setup", "make test"]


def test_make_run_serves_the_example_on_sqlite() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "driftd serve -c examples/banking77/driftd.yaml" in makefile
    assert "pip install --quiet torch==2.13.0" in makefile
