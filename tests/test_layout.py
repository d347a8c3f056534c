"""Promises the layout makes: what ships in the wheel, who imports whom, what starts fast."""

import ast
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.helpers.imports import loaded_after

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "monitors", "retrain")


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


def test_only_the_store_talks_sql() -> None:
    """SQLAlchemy (and Alembic, its migrations) is imported in ``daemon/store/`` only: every
    other module reaches the database through the store's functions, and holds an engine or a
    connection, if at all, as an opaque handle. Every import counts, also those inside
    functions and under ``if TYPE_CHECKING:``, so not even a type annotation needs SQLAlchemy
    outside the store."""
    assert sql_users(ROOT, PACKAGES, allowed=ROOT / "daemon" / "store") == []


def test_the_sql_check_sees_every_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "store").mkdir(parents=True)
    for name in ("__init__.py", "store/__init__.py", "clean.py"):
        (package / name).write_text("import json\nfrom . import store\n")
    (package / "store" / "sql.py").write_text("from sqlalchemy import select\n")
    (package / "later.py").write_text("def f() -> None:\n    import sqlalchemy.orm\n")
    (package / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sqlalchemy import Engine\n"
    )
    (package / "migrating.py").write_text("from alembic import command\n")

    assert sql_users(tmp_path, ["pkg"], allowed=package / "store") == [
        "pkg/later.py imports sqlalchemy.orm",
        "pkg/migrating.py imports alembic",
        "pkg/typed.py imports sqlalchemy",
    ]


def sql_users(root: Path, packages: Sequence[str], *, allowed: Path) -> list[str]:
    """Each import of SQLAlchemy or Alembic in ``root``'s ``packages`` outside ``allowed``."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if path.is_relative_to(allowed):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                found += [
                    f"{path.relative_to(root).as_posix()} imports {name}"
                    for name in names
                    if name.split(".")[0] in ("sqlalchemy", "alembic")
                ]
    return found


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle among the modules of ``daemon``, ``monitors`` and ``retrain``.

    The graph is read with ast, importing nothing, and holds the imports that run when a module
    is loaded: those at module level, also inside ``if``, ``try`` and ``with`` blocks and class
    bodies, but neither those inside functions (they run when called, as the command line's do,
    to start fast) nor those under ``if TYPE_CHECKING:`` (they never run). ``from pkg import
    name`` imports the module ``pkg.name`` when there is one, else ``pkg``; the packages above a
    module, which Python loads before it, are not counted as its imports.
    """
    cycles = import_cycles(import_graph(ROOT, PACKAGES))
    assert not cycles, "import cycles: " + "; ".join(" → ".join(cycle) for cycle in cycles)


def test_the_cycle_check_sees_runtime_imports_only(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("from . import c\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import pkg.a\n"
        "if TYPE_CHECKING:\n    from pkg import d\n"
        "def later() -> None:\n    from pkg import d\n"
    )
    (package / "d.py").write_text("from pkg.c import later\n")

    graph = import_graph(tmp_path, ["pkg"])

    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.a"},
        "pkg.d": {"pkg.c"},
    }
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def import_graph(root: Path, packages: Sequence[str]) -> dict[str, set[str]]:
    """Each module under ``root``'s ``packages`` → the modules among them it imports on load."""
    files: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in files.items():
        here = name if is_package else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in _loaded_with(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                above = here.split(".")
                base = above[: len(above) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    submodule = f"{module}.{alias.name}"
                    imported.add(submodule if submodule in files else module)
        graph[name] = {module for module in imported if module in files and module != name}
    return graph


def _loaded_with(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of ``body`` that run when the module is loaded, nested ones included."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield node
        if isinstance(node, ast.If):
            test = node.test
            type_checking = isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            type_checking |= isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            if not type_checking:
                yield from _loaded_with(node.body)
            yield from _loaded_with(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _loaded_with(block)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _loaded_with(node.body)


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle through each group of modules that reach each other by imports (a strongly
    connected component), as the shortest path from its first module back to it."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        order[module] = low[module] = len(order)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in order:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], order[other])
        if low[module] == order[module]:
            group = {stack.pop()}
            while module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in order:
            visit(module)
    cycles: list[list[str]] = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            module = queue.pop(0)
            if start in graph[module]:
                cycles.append([*paths[module], start])
                break
            for other in sorted(graph[module] & group):
                if other not in paths:
                    paths[other] = [*paths[module], other]
                    queue.append(other)
    return sorted(cycles)


def test_the_command_line_does_not_load_heavy_libraries() -> None:
    code = "import daemon.cli, daemon.serve, daemon.store"
    assert loaded_after(code, ("torch", "transformers", "evidently", "pandas")) == []


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
