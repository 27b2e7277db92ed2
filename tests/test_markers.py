"""The fast subset stays in-process: a test that starts a real process carries a marker."""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the fast subset leaves out (tests/README.md).
KEEP_OUT = frozenset({"e2e", "faults", "browser", "slow", "processes"})
# Names whose use starts a process: the project's workers, servers and launcher children,
# and a fresh interpreter (`sys.executable`) for the CLI, `flask db` or a task.
STARTS_A_PROCESS = frozenset({"worker_factory", "module_worker_factory", "WorkerProcess",
                              "Gunicorn", "RedisServer", "Popen", "spawn", "executable"})
Function = ast.FunctionDef | ast.AsyncFunctionDef


def _marks(decorators: list[ast.expr]) -> set[str]:
    """The `pytest.mark.<name>` names among decorators or a `pytestmark` value."""
    found = set()
    for node in decorators:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) \
                    and sub.value.attr == "mark":
                found.add(sub.attr)
    return found


def _names(node: ast.AST) -> set[str]:
    """Every identifier and attribute name a node uses."""
    return {sub.id if isinstance(sub, ast.Name) else sub.attr for sub in ast.walk(node)
            if isinstance(sub, (ast.Name, ast.Attribute))} | {
        arg.arg for sub in ast.walk(node) if isinstance(sub, ast.arguments)
        for arg in sub.args + sub.kwonlyargs}


def _starting_process(tree: ast.Module) -> set[str]:
    """Module-level functions (fixtures, helpers) that start a process, directly or through
    another such function of the module."""
    functions = {node.name: node for node in tree.body if isinstance(node, Function)}
    starting = {name for name, node in functions.items() if _names(node) & STARTS_A_PROCESS}
    while True:
        more = {name for name, node in functions.items()
                if name not in starting and _names(node) & starting}
        if not more:
            return starting
        starting |= more


def unmarked_tests(path: Path) -> list[str]:
    """Tests of one module that start a process but carry no marker keeping them out."""
    tree = ast.parse(path.read_text())
    module_marks: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            module_marks |= _marks([node.value])
    if module_marks & KEEP_OUT:
        return []
    starting = _starting_process(tree) | STARTS_A_PROCESS
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [f"{label}::{node.name}" for node in tree.body
            if isinstance(node, Function) and node.name.startswith("test_")
            and _names(node) & starting and not _marks(node.decorator_list) & KEEP_OUT]


def test_the_scan_sees_a_process_and_a_marker(tmp_path: Path) -> None:
    """A helper that spawns makes its callers count; a marker on the test or module clears it."""
    sample = tmp_path / "test_sample.py"
    body = ("import pytest, subprocess, sys\n"
            "def _run():\n    subprocess.run([sys.executable, '-c', ''])\n"
            "def test_a():\n    _run()\n"
            "@pytest.mark.processes\ndef test_b():\n    _run()\n"
            "def test_c():\n    pass\n")
    sample.write_text(body)
    assert unmarked_tests(sample) == ["test_sample.py::test_a"]
    sample.write_text("import pytest\npytestmark = [pytest.mark.slow]\n" + body)
    assert unmarked_tests(sample) == []


def test_the_markers_are_registered() -> None:
    """Each marker the fast subset leaves out is registered (pytest runs --strict-markers)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    registered = {line.split(":")[0].strip()
                  for line in config["tool:pytest"]["markers"].splitlines() if ":" in line}
    assert KEEP_OUT <= registered, registered


def test_every_test_that_starts_a_process_is_out_of_the_fast_subset() -> None:
    """Outside e2e/, faults/ and browser/ (marked whole), a test that starts a worker, a
    server or a fresh interpreter is marked processes (or e2e, faults, slow)."""
    unmarked = [test for path in sorted((ROOT / "tests").rglob("test_*.py"))
                if path.parent.name not in {"e2e", "faults", "browser"}
                and path != Path(__file__).resolve()
                for test in unmarked_tests(path)]
    assert unmarked == []
