"""Each module of api/, shared/ and worker/: its size, its docstrings, and what it may do."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "shared", "worker")
# Past this a module has usually grown a second concern (the size flask-smorest's stay under).
MAX_LINES = 450
# A newcomer reads a folder's top at a glance; more than this wants a package.
MAX_TOP_MODULES = 10
LOCKS = ROOT / "shared" / "locks.py"
# Writes in SQL text and through the ORM or SQLAlchemy Core.
SQL_WRITE = re.compile(r"\b(INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|TRUNCATE|"
                       r"COPY\s+\w+.*\bFROM|MERGE\s+INTO)\b", re.DOTALL)
ORM_WRITE = re.compile(r"\bsession\.(add|add_all|merge|delete|flush|bulk_\w+)\(|\.commit\(\)")
CORE_WRITES = frozenset({"insert", "update", "delete"})
# Modules of shared/queries/ that write, each with why it must (none today).
QUERIES_THAT_WRITE: dict[str, str] = {}


def _files(*tops: str) -> list[Path]:
    return sorted(path for top in tops for path in (ROOT / top).rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_module_over_the_line_cap() -> None:
    """Every module stays under MAX_LINES lines."""
    sizes = {_name(path): len(path.read_text().splitlines()) for path in _files(*PACKAGES)}
    assert len(sizes) > 100, len(sizes)
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_few_modules_at_the_top_of_shared_and_api() -> None:
    """shared/ and api/ hold at most MAX_TOP_MODULES modules each beside their packages."""
    for top in ("shared", "api"):
        found = sorted(p.name for p in (ROOT / top).glob("*.py") if p.name != "__init__.py")
        assert len(found) <= MAX_TOP_MODULES, (top, found)


def _summary_problem(node: ast.Module) -> str | None:
    """What is wrong with a module docstring's summary line, if anything."""
    doc = ast.get_docstring(node, clean=True)
    if not doc:
        return "no docstring"
    lines = doc.splitlines()
    if len(lines) > 1 and lines[1].strip():
        return "summary runs past one line"
    return None


def test_every_module_opens_with_a_one_line_docstring() -> None:
    """Each module's docstring starts with one line saying what it owns (more may follow)."""
    problems = {_name(path): problem for path in _files(*PACKAGES)
                if (problem := _summary_problem(ast.parse(path.read_text())))}
    assert problems == {}


def test_every_public_function_and_class_has_a_docstring() -> None:
    """Public module-level functions, classes and their public methods carry a docstring.

    Nested closures and marshmallow's `class Meta` are details of the function or class that
    holds them.
    """
    missing = []
    for path in _files(*PACKAGES):
        todo = list(ast.parse(path.read_text()).body)
        while todo:
            node = todo.pop()
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_") or node.name == "Meta":
                continue
            if not ast.get_docstring(node):
                missing.append(f"{_name(path)}:{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                todo.extend(node.body)
    assert missing == []


def _writes(path: Path) -> list[str]:
    """What in a module's source writes to the database: SQL text, ORM calls, Core imports."""
    source = path.read_text()
    found = [m.group(0).split()[0] for m in SQL_WRITE.finditer(source)]
    found += [m.group(0) for m in ORM_WRITE.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"import {a.name}" for a in node.names if a.name in CORE_WRITES]
    return found


def test_the_write_scan_finds_writes() -> None:
    """The scan below is not vacuous: it sees each kind of write where the write side has it."""
    seen = {word for path in _files("shared") for word in _writes(path)}
    assert {"INSERT", "UPDATE", "DELETE", "COPY", "import insert", "import update"} <= seen, seen
    assert any(word.startswith("session.") for word in seen), seen


def test_queries_only_read() -> None:
    """shared/queries/ is the read side: no module there writes, unless allowed above."""
    writes = {_name(path): found for path in _files("shared/queries")
              if (found := _writes(path)) and _name(path) not in QUERIES_THAT_WRITE}
    assert writes == {}


def test_every_advisory_lock_key_comes_from_shared_locks() -> None:
    """One key space for advisory locks: a module that takes one gets its key from shared.locks."""
    assert LOCKS.is_file(), "shared/locks.py does not exist"
    own_keys = sorted(
        _name(path) for path in _files(*PACKAGES)
        if path != LOCKS and re.search(r"pg_(try_)?advisory", path.read_text())
        and not re.search(r"^\s*(from shared\.locks import|from shared import locks|"
                          r"import shared\.locks)", path.read_text(), re.MULTILINE))
    assert own_keys == []
