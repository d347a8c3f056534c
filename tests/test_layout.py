"""Promises the layout makes: what ships in the wheel, who imports whom, what starts fast."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["monitors", "retrain"])
def test_pure_packages_never_import_the_daemon(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "daemon", f"{path} imports {name}"


def test_the_command_line_does_not_load_heavy_libraries() -> None:
    code = (
        "import sys, daemon.cli, daemon.serve, daemon.store; "
        "print(sorted(m for m in ('torch', 'transformers', 'evidently', 'pandas') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_the_wheel_ships_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("driftd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "daemon/store/migrations/env.py",
        "daemon/store/migrations/script.py.mako",
        "daemon/store/migrations/versions/0001_initial.py",
        "monitors/__init__.py",
        "retrain/__init__.py",
    ):
        assert expected in names
    assert not any(name.startswith("tests/") for name in names)
