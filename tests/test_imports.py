"""The import graph of api/, shared/ and worker/: no circle, no import back up the layers."""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "shared", "worker")
# shared's ground: what every domain package stands on; it imports none of them.
GROUND = frozenset({"config", "config_values", "db", "errors", "logging_setup", "bounds",
                    "models", "locks", "celery_config", "task_names", "redis_client"})
Graph = dict[str, set[str]]


@cache
def modules() -> dict[str, Path]:
    """Dotted name -> file of every module under api/, shared/ and worker/."""
    found: dict[str, Path] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _named(module: str, tree: ast.Module) -> Iterator[str]:
    """Every dotted name an import statement of `module` names (relative ones made absolute)."""
    is_package = modules()[module].name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def module_graph() -> Graph:
    """Module -> the project modules it imports, at any depth of its code.

    Importing `a.b.c` also runs the packages `a` and `a.b`: those count as imported too,
    except the importer's own packages, which already ran before it.
    """
    known = modules()
    graph: Graph = {}
    for module, path in known.items():
        own = set(_ancestors(module))
        targets: set[str] = set()
        for name in _named(module, ast.parse(path.read_text())):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                targets |= {name, *(a for a in _ancestors(name) if a in known)}
        graph[module] = targets - own - {module}
    return graph


def unit(module: str) -> str:
    """The package a module belongs to (`shared.quality`), or the module itself at the top."""
    return ".".join(module.split(".")[:2])


@cache
def package_graph() -> Graph:
    """The module graph seen from the packages: `shared.ingest` -> `shared.quality`, ..."""
    graph: Graph = {}
    for module, targets in module_graph().items():
        graph.setdefault(unit(module), set()).update(
            unit(target) for target in targets if unit(target) != unit(module))
    return graph


def reachable(graph: Graph, start: str) -> set[str]:
    """Every node reached from `start` by one arrow or more."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def circles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one member: each is an import circle."""
    reach = {node: reachable(graph, node) for node in graph}
    found: list[list[str]] = []
    placed: set[str] = set()
    for node in sorted(graph):
        if node in placed:
            continue
        component = {node} | {other for other in reach[node] if node in reach.get(other, ())}
        placed |= component
        if len(component) > 1:
            found.append(sorted(component))
    return found


def _offenders(importer: str, forbidden: tuple[str, ...]) -> list[str]:
    """`a -> b` for each import from a module under `importer` into one under `forbidden`."""
    return sorted(f"{module} -> {target}" for module, targets in module_graph().items()
                  if module == importer or module.startswith(importer + ".")
                  for target in targets
                  if any(target == f or target.startswith(f + ".") for f in forbidden))


def test_the_graph_sees_the_imports() -> None:
    """The scan is not vacuous: it finds the modules, plain, package-level and late imports."""
    graph = module_graph()
    assert len(graph) > 100, len(graph)
    assert "shared.config" in graph["shared.db"]
    assert "shared.models" in graph["shared.ingest.execute"]
    assert "api.resources.status" in graph["api.app"]  # imported inside create_app
    assert "shared.sources.csv_source" in graph["shared.sources"]
    assert {"api.app", "shared.config"} <= reachable(graph, "api")
    assert circles({"a": {"b"}, "b": {"c", "a"}, "c": set(), "d": {"d"}}) == [["a", "b"]]


def test_no_import_circle_between_modules() -> None:
    """No module imports, through any chain, a module that imports it back."""
    assert circles(module_graph()) == []


def test_no_import_circle_between_packages() -> None:
    """Packages (`shared.<package>`, `api.<package>`, a top-level module) form no circle."""
    found = circles(package_graph())
    arrows = sorted(f"{module} -> {target}" for module, targets in module_graph().items()
                    for target in targets for component in found
                    if unit(module) in component and unit(target) in component
                    and unit(module) != unit(target))
    assert found == [], arrows


def test_the_ground_imports_no_domain_package() -> None:
    """shared's ground (config, db, errors, models, ...) stands on nothing above it."""
    ground = {f"shared.{name}" for name in GROUND}
    upward = sorted(f"{module} -> {target}" for module, targets in module_graph().items()
                    if unit(module) in ground
                    for target in targets
                    if target.startswith("shared.") and unit(target) not in ground)
    assert upward == []


def test_shared_imports_neither_api_nor_worker() -> None:
    """shared is what api and worker both stand on: it never reaches back into either."""
    assert _offenders("shared", ("api", "worker")) == []


def test_api_never_imports_worker_and_worker_never_imports_api() -> None:
    """The API enqueues by task name (shared.task_names); the worker never serves HTTP."""
    assert _offenders("api", ("worker",)) == []
    assert _offenders("worker", ("api",)) == []


def test_no_test_module_imports_another() -> None:
    """Tests share helpers through tests/helpers/ and conftest fixtures, never a test module
    (importing one also imports its tests, and couples two files that look independent)."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("tests.")]
            else:
                continue
            if any(name.rsplit(".", 1)[-1].startswith("test_") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
