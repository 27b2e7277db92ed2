"""shared.queries is a package of modules, not a facade: importers name the module they use."""
from __future__ import annotations

import ast
from pathlib import Path

import shared.queries

ROOT = Path(__file__).resolve().parents[3]


def test_the_package_exports_nothing_itself() -> None:
    """Its __init__ holds only a docstring, so no name can be re-exported from it."""
    tree = ast.parse(Path(shared.queries.__file__).read_text())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)


def test_no_importer_takes_names_from_the_package() -> None:
    """`from shared.queries import X` would find nothing; every importer names a module."""
    modules = {path.stem for path in Path(shared.queries.__file__).parent.glob("*.py")}
    offenders = []
    for package in ("api", "shared", "worker", "bench", "scripts", "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module == "shared.queries":
                    if any(alias.name not in modules for alias in node.names):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
