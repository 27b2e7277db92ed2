"""The docs stay true to the code: every setting documented, every cited test and file exists."""
from __future__ import annotations

import re
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
