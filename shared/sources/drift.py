"""Schema-drift detection for JSON sources: renamed, missing, retyped and new fields, scored."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from difflib import SequenceMatcher
from typing import Any, Collection, Literal, Sequence

logger = logging.getLogger("shared.sources.drift")

FieldKind = Literal["number", "string", "datetime"]
DriftKind = Literal["renamed", "missing", "retyped", "new"]

# A rename is applied automatically only at or above this confidence.
MAP_THRESHOLD = 0.7


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field a source reads: dotted path into the item, expected kind, required or not."""

    path: str
    kind: FieldKind
    required: bool = False


# Field paths are upstream JSON keys: an event stores them as text PostgreSQL can hold (no
# NUL) and short (the detail quotes them with repr, which escapes).
_PATH_CHARS = 200


def _storable(path: str | None) -> str | None:
    if path is None:
        return None
    path = path.replace("\x00", "\ufffd")
    return path if len(path) <= _PATH_CHARS else path[:_PATH_CHARS] + "..."


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """One observed change of an upstream's shape, with how sure we are and what we did."""

    source: str
    location: str
    kind: DriftKind
    field: str
    observed: str | None
    confidence: float
    mapped: bool
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", _storable(self.field))
        object.__setattr__(self, "observed", _storable(self.observed))


@dataclass
class DriftReport:
    """The drift found on one page and how to read items despite it."""

    events: list[DriftEvent] = field(default_factory=list)
    # expected path -> the path it now lives at
    renames: dict[str, str] = field(default_factory=dict)
    # expected paths absent from every item and not confidently mapped
    missing: list[str] = field(default_factory=list)

    def value(self, flat_item: dict[str, Any], path: str) -> Any:
        """The item's value for the expected `path`, following a mapped rename."""
        return flat_item.get(self.renames.get(path, path))

    def has(self, flat_item: dict[str, Any], path: str) -> bool:
        """Whether the item carries the expected `path` (or its mapped rename)."""
        return self.renames.get(path, path) in flat_item


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as one dict of dotted paths to leaf values (lists stay leaves)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict) and (value or not prefix):
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (Decimal, int, float)) and not isinstance(value, bool)


def _is_numeric_string(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return Decimal(value.strip()).is_finite()
    except InvalidOperation:
        return False


def _is_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _compatible(kind: FieldKind, value: Any) -> bool:
    if value is None:
        return True
    if kind == "number":
        return _is_number(value) or _is_numeric_string(value)
    if kind == "datetime":
        return _is_timestamp(value)
    return isinstance(value, str)


def name_similarity(expected: str, observed: str) -> float:
    """0..1: how likely `observed` is a renamed `expected` judging by the names alone."""
    *parent_a, leaf_a = expected.lower().split(".")
    *parent_b, leaf_b = observed.lower().split(".")
    if parent_a != parent_b:
        return 0.0
    tokens_a, tokens_b = set(leaf_a.split("_")), set(leaf_b.split("_"))
    ratio = SequenceMatcher(None, leaf_a, leaf_b).ratio()
    overlap = len(tokens_a & tokens_b) / len(tokens_a | tokens_b)
    # `price` for `current_price`, `volume` for `total_volume`: one name contains the other.
    nested = tokens_a <= tokens_b or tokens_b <= tokens_a
    contained = 0.85 if tokens_a & tokens_b and nested else 0.0
    return max(ratio, overlap, contained)


def _is_known(path: str, known: Collection[str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in known for i in range(1, len(parts) + 1))


def detect_drift(
    source: str,
    location: str,
    items: Sequence[Any],
    fields: Sequence[FieldSpec],
    known: Collection[str],
) -> DriftReport:
    """Compare one page's items with the fields we expect; map confident renames."""
    report = DriftReport()
    flats = [flatten(item) for item in items if isinstance(item, dict)]
    if not flats:
        return report
    present: set[str] = set().union(*(f.keys() for f in flats))
    expected_paths = {spec.path for spec in fields}
    unknown = sorted(p for p in present if p not in expected_paths and not _is_known(p, known))
    claimed: set[str] = set()

    for spec in fields:
        if spec.path in present:
            if spec.kind == "number":
                _check_retype(report, source, location, spec, flats)
            continue
        candidates = _rename_candidates(spec, [p for p in unknown if p not in claimed], flats)
        best = candidates[0] if candidates else (0.0, None)
        runner_up = candidates[1][0] if len(candidates) > 1 else 0.0
        confidence, observed = best
        if observed is not None and confidence >= MAP_THRESHOLD and confidence - runner_up >= 0.1:
            report.renames[spec.path] = observed
            claimed.add(observed)
            report.events.append(DriftEvent(
                source, location, "renamed", spec.path, observed, confidence, True,
                f"{spec.path!r} renamed to {observed!r}; mapped",
            ))
        else:
            report.missing.append(spec.path)
            hint = f"; best candidate {observed!r} at {confidence:.2f}" if observed else ""
            report.events.append(DriftEvent(
                source, location, "missing", spec.path, observed, confidence, False,
                f"{spec.path!r} missing and no confident rename{hint}; items rejected",
            ))

    for path in unknown:
        if path not in claimed:
            report.events.append(DriftEvent(
                source, location, "new", path, path, 1.0, False, f"new field {path!r} ignored",
            ))
    for event in report.events:
        logger.warning(
            "%s %s: schema drift (%s) %s [confidence %.2f]",
            source, location, event.kind, event.detail, event.confidence,
        )
    return report


def _rename_candidates(
    spec: FieldSpec, paths: Sequence[str], flats: Sequence[dict[str, Any]]
) -> list[tuple[float, str]]:
    """(confidence, path) of each unclaimed new field as a rename of `spec`, best first."""
    candidates: list[tuple[float, str]] = []
    for path in paths:
        name = name_similarity(spec.path, path)
        carrying = [f[path] for f in flats if path in f]
        typed = [v for v in carrying if _compatible(spec.kind, v)]
        non_null = [v for v in typed if v is not None]
        # All-null evidence says little about type; count it half.
        type_score = (len(typed) / len(carrying)) * (1.0 if non_null else 0.5)
        presence = len(carrying) / len(flats)
        candidates.append((round(0.6 * name + 0.4 * type_score * presence, 2), path))
    candidates.sort(reverse=True)
    return candidates


def _check_retype(
    report: DriftReport, source: str, location: str, spec: FieldSpec, flats: list[dict[str, Any]]
) -> None:
    """Record numbers that arrive as strings (mapped when every one of them parses)."""
    strings = [
        f[spec.path] for f in flats
        if isinstance(f.get(spec.path), str) and f[spec.path].strip()
    ]
    if not strings:
        return
    parsed = sum(1 for s in strings if _is_numeric_string(s))
    confidence = round(parsed / len(strings), 2)
    mapped = parsed == len(strings)
    report.events.append(DriftEvent(
        source, location, "retyped", spec.path, "string", confidence, mapped,
        f"{spec.path!r} is a string in {len(strings)} item(s); "
        + ("parsed as numbers" if mapped else "unparseable values rejected"),
    ))
