"""The docs stay true to the code: every setting documented, every cited test and file exists."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# A newcomer reads the README in one sitting; the rest lives in docs/.
README_MAX_WORDS = 1_600


def _config_variables() -> set[str]:
    """Environment variable names shared/config.py reads; per-source forms as <SOURCE>."""
    text = (ROOT / "shared" / "config.py").read_text()
    names = set(re.findall(r'\(env, "([A-Z][A-Z0-9_]+)"', text))
    names |= set(re.findall(r'env\.get\(\s*"([A-Z][A-Z0-9_]+)"', text))
    names |= {f"{a}<SOURCE>{b}" for a, b in
              re.findall(r'f"([A-Z_]*)\{source\.upper\(\)\}([A-Z_]*)"', text)}
    return names


def test_the_config_scan_finds_the_settings() -> None:
    """The scan below is not vacuous: it sees known names of each kind."""
    names = _config_variables()
    assert {"DATABASE_URL", "API_TOKEN", "CSV_BATCH_ROWS", "API_READ_RATE_LIMIT",
            "FAIL_AFTER_N_RECORDS_<SOURCE>"} <= names, sorted(names)


def test_every_setting_is_in_the_readme() -> None:
    """Each variable of shared/config.py is named in the README (or by its `PREFIX_*` group)."""
    readme = README.read_text()
    groups = re.findall(r"`([A-Z][A-Z0-9]*_)\*`", readme)
    missing = sorted(name for name in _config_variables()
                     if f"`{name}`" not in readme
                     and not any(name.startswith(prefix) for prefix in groups))
    assert not missing, f"README.md does not document: {missing}"


def test_readme_is_short_and_links_to_docs_that_exist() -> None:
    """The README stays a newcomer's page, and every docs/ link it gives resolves."""
    readme = README.read_text()
    words = len(readme.split())
    assert words <= README_MAX_WORDS, f"README.md has {words} words"
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert {"docs/operations.md", "docs/design.md", "docs/faults.md",
            "docs/benchmarks.md"} <= set(links)
    assert all((ROOT / link).is_file() for link in links), links


def _documented_rule(rule: str) -> str:
    """A Flask rule as the docs write it: `<id:job_id>` -> `<id>`, `<string:asset>` -> `<asset>`."""
    def name(match: re.Match[str]) -> str:
        arg = match.group(1)
        return "<id>" if arg == "id" or arg.endswith("_id") else f"<{arg}>"
    return re.sub(r"<(?:\w+:)?(\w+)>", name, rule)


def test_every_route_is_in_the_readme_api_table(app: Any) -> None:
    """Each route the app serves (Swagger UI's asset files aside) is named in the README."""
    readme = README.read_text()
    rules = {_documented_rule(rule.rule) for rule in app.url_map.iter_rules()
             if not rule.rule.startswith(("/static/", "/docs/assets/"))}
    assert {"/data", "/jobs/<id>", "/raw/<source>/<id>", "/runs/compare"} <= rules, rules
    missing = sorted(rule for rule in rules if not re.search(
        r"`(?:GET |POST )?" + re.escape(rule) + r"(?:\?[^`]*)?`", readme))
    assert not missing, f"README.md does not list: {missing}"


def _cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test function) pairs cited as `tests/x.py::name`, and `::name` after one."""
    cited: list[tuple[str, str]] = []
    for line in text.splitlines():
        current = ""
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", line):
            current = path or current
            assert current, f"`::{name}` with no file before it: {line[:80]}"
            cited.append((current, name))
    return cited


def test_every_test_the_fault_matrix_cites_exists() -> None:
    """Each row of docs/faults.md names a test function that exists in that file."""
    cited = _cited_tests((DOCS / "faults.md").read_text())
    assert len(cited) >= 20, cited
    missing = [f"{path}::{name}" for path, name in cited
               if not (ROOT / path).is_file()
               or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE)]
    assert not missing, f"docs/faults.md cites missing tests: {missing}"


def test_no_reference_to_a_missing_faults_file() -> None:
    """Code and docs cite docs/faults.md, not a FAULTS.md the repository does not have."""
    offenders = []
    for pattern in ("api/**/*.py", "shared/**/*.py", "worker/**/*.py", "tests/**/*.py",
                    "bench/**/*.py", "scripts/**/*.py", "*.md", "docs/*.md"):
        for path in ROOT.glob(pattern):
            if path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"(?<![\w/])FAULTS\.md", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, offenders


# Where a cited path may start: the repository's own folders (var/ is made at run time).
TOP_FOLDERS = ("api", "shared", "worker", "tests", "docs", "scripts", "migrations", "bench",
               "deploy", "ops", "data", "requirements", ".github", ".ci")
CITED_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(map(re.escape, TOP_FOLDERS))
                        + r")/[\w./-]*)(?![\w*<{])")
CITED_MODULE = re.compile(r"(?<![\w./-])((?:api|shared|worker)(?:\.[A-Za-z_]\w*)+)")
# `api.md`, `worker.log`: file names that look like dotted module names.
FILE_SUFFIXES = {"md", "py", "log", "txt", "json", "yml", "yaml", "csv", "html", "env", "cfg"}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _code_prose(path: Path) -> str:
    """The comments and docstrings of a module: what a reader takes as a citation."""
    source = path.read_text()
    parts = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


def _cited_texts() -> dict[str, str]:
    """Relative name -> text of every doc page and of every module's comments and docstrings."""
    texts = {str(path.relative_to(ROOT)): path.read_text()
             for path in [README, ROOT / "tests" / "README.md", *sorted(DOCS.glob("*.md"))]}
    for top in ("api", "shared", "worker"):
        for path in sorted((ROOT / top).rglob("*.py")):
            texts[str(path.relative_to(ROOT))] = _code_prose(path)
    return texts


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("api", "shared", "worker"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _missing_module(name: str, modules: dict[str, Path]) -> bool:
    """Whether `a.b.c.attr` names no module, or an attribute its module never mentions."""
    parts = name.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return False
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        if module in modules:
            break
    else:
        return True
    return end < len(parts) and not re.search(rf"\b{parts[end]}\b", modules[module].read_text())


def test_the_citation_scans_see_paths_and_modules() -> None:
    """The scans below are not vacuous, and they catch a stale citation."""
    texts = _cited_texts()
    paths = {p for text in texts.values() for p in CITED_PATH.findall(text)}
    assert {"shared/config.py", "docs/design.md"} <= paths, sorted(paths)[:20]
    assert CITED_PATH.findall("see `shared/jobs.py`, tests/test_*.py") == ["shared/jobs.py"]
    names = {n for text in texts.values() for n in CITED_MODULE.findall(text)}
    assert len(names) > 5, names
    modules = _modules()
    assert _missing_module("shared.jobs.submit.no_such_function", modules)
    assert not _missing_module("shared.jobs.submit", modules)


def test_every_path_the_docs_and_code_cite_exists() -> None:
    """Each repository path in the docs, the README and the code's comments and docstrings
    exists (a file moved or removed leaves none behind)."""
    missing = sorted({f"{name}: {path}" for name, text in _cited_texts().items()
                      for path in CITED_PATH.findall(text)
                      if not (ROOT / path.rstrip(".")).exists()})
    assert missing == []


def test_every_module_the_docs_and_code_name_exists() -> None:
    """Each dotted `api.`/`shared.`/`worker.` name cited is a module, or one's attribute."""
    modules = _modules()
    missing = sorted({f"{name}: {dotted}" for name, text in _cited_texts().items()
                      for dotted in CITED_MODULE.findall(text)
                      if _missing_module(dotted.rstrip("."), modules)})
    assert missing == []


def test_every_relative_link_of_the_docs_resolves() -> None:
    """Markdown links between pages (`quality.md`, `../ops/README.md`) lead to a file."""
    missing = []
    for page in [README, ROOT / "tests" / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if "://" not in target and not target.startswith("mailto:") \
                    and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert missing == []


def test_design_names_every_package_and_ground_module() -> None:
    """docs/design.md's code layout has a line for each package of shared/ and api/, and for
    each module at the top of shared/ (the ground)."""
    design = (DOCS / "design.md").read_text()
    layout = design.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    names = [f"`{path.name}/`" for top in ("shared", "api") for path in (ROOT / top).iterdir()
             if (path / "__init__.py").is_file()]
    names += [f"`{path.name}`" for path in (ROOT / "shared").glob("*.py")
              if path.name != "__init__.py"]
    assert len(names) > 15, names
    assert [name for name in names if name not in layout] == []
