"""Each setting's default is written once (shared.config.DEFAULTS); README and docs/ agree."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from shared.config import DEFAULTS, SOURCES, Settings, load_settings
from shared.quality.anomalies import AnomalyThresholds
from shared.quality.checks import QualityThresholds

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# What the README writes in its default column for a setting with no default in the code.
NO_DEFAULT = ("— (secret)", "— (secrets)", "unset")
# `NAME` (600/minute), `NAME` (default 3), `NAME` = 90: a default stated in prose.
PROSE_DEFAULT = re.compile(
    r"`([A-Z][A-Z0-9_]+)`\s*(?:\((?:default\s+)?|=\s*)(\d[\d,]*(?:\.\d+)?(?:e\d+)?(?:/\w+)?)")


def _readme_defaults() -> dict[str, str]:
    """Variable -> the README configuration table's default cell for it."""
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_<>]+)`", cells[0]) if len(cells) == 3 else []
        defaults = cells[1].split(", ") if names else []
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), line
        found.update(zip(names, defaults))
    return found


def _same(written: str, value: Any) -> bool:
    """The text a document writes equals the code's default (numbers compared as numbers)."""
    if isinstance(value, (int, float)):
        return float(written.replace(",", "")) == float(value)
    return written == value


def test_the_readme_table_is_read() -> None:
    """The scan is not vacuous: it sees the table's rows of each kind."""
    found = _readme_defaults()
    assert len(found) > 40, sorted(found)
    assert found["API_JOBS_RATE_LIMIT"] == "`10/minute`" and found["API_TOKEN"] == "— (secret)"
    assert found["BROKER_KEY_PREFIX"] == "empty"


def test_every_readme_default_is_the_code_default() -> None:
    """A literal default is DEFAULTS' value; a secret or unset one has none in the code, and
    one described from another setting (`hard − 30`) is computed, not fixed."""
    wrong = {}
    for name, written in _readme_defaults().items():
        literal = re.fullmatch(r"`([^`$]*)`", written)
        if literal:
            ok = name in DEFAULTS and _same(literal.group(1), DEFAULTS[name])
        elif written == "empty":
            ok = DEFAULTS.get(name) == ""
        else:
            ok = name not in DEFAULTS
        if not ok:
            wrong[name] = (written, DEFAULTS.get(name))
    assert wrong == {}


def test_every_default_stated_in_the_docs_is_the_code_default() -> None:
    """`NAME` (value) and `NAME` = value in README, docs/ and ops/README.md hold DEFAULTS."""
    texts = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "ops" / "README.md"]
    stated = [(path.name, name, value) for path in texts
              for name, value in PROSE_DEFAULT.findall(path.read_text()) if name in DEFAULTS]
    assert len(stated) >= 20, stated
    wrong = [entry for entry in stated if not _same(entry[2], DEFAULTS[entry[1]])]
    assert wrong == []


def test_every_code_default_is_documented() -> None:
    """Each default in DEFAULTS is stated in the README table or in prose (docs/quality.md)."""
    texts = " ".join(p.read_text() for p in (README, *(ROOT / "docs").glob("*.md")))
    documented = set(_readme_defaults()) | {name for name, _ in PROSE_DEFAULT.findall(texts)}
    assert sorted(set(DEFAULTS) - documented) == []


def test_settings_declare_no_default_of_their_own() -> None:
    """Every Settings field is given by load_settings, which takes defaults from DEFAULTS."""
    own = [f.name for f in dataclasses.fields(Settings)
           if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert own == []


def test_settings_and_thresholds_take_the_defaults() -> None:
    """With no environment, Settings and the quality and anomaly thresholds hold DEFAULTS."""
    settings = load_settings({})
    assert settings.redis_url == DEFAULTS["REDIS_URL"]
    assert settings.api_read_rate_limit == DEFAULTS["API_READ_RATE_LIMIT"]
    assert settings.quality_stale_seconds_by_source == {
        source: DEFAULTS[f"QUALITY_STALE_SECONDS_{source.upper()}"] for source in SOURCES}
    assert QualityThresholds.from_settings(settings) == QualityThresholds()
    assert AnomalyThresholds.from_settings(settings) == AnomalyThresholds()
    assert QualityThresholds().jump_factor == DEFAULTS["QUALITY_JUMP_FACTOR"]
    assert AnomalyThresholds().ratio == DEFAULTS["ANOMALY_RATIO"]
