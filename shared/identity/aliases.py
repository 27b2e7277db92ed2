"""The alias file (`source,source_asset_id,asset_slug,symbol,name`): identity overrides."""
from __future__ import annotations

import csv
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shared.bounds import NAME_MAX, SLUG_MAX, SOURCE_ASSET_ID_MAX, SYMBOL_MAX, text_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alias:
    """A line of the alias file: treat (source, id) as this coin."""

    source: str
    source_asset_id: str
    asset_slug: str | None
    symbol: str | None
    name: str | None


def load_aliases(path: Path | None) -> dict[tuple[str, str], Alias]:
    """Read the alias file (source,source_asset_id,asset_slug,symbol,name); missing = empty.

    It usually sits in CSV_DIR, so it is read like the data there: a FIFO or device is not
    read (nothing blocks), bad bytes and broken lines cost only their rows, each logged.
    """
    handle = _open_alias_file(path)
    if handle is None:
        return {}
    aliases: dict[tuple[str, str], Alias] = {}
    with handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        try:
            for row in rows:
                alias = _alias(row)
                if alias is not None:
                    aliases[(alias.source, alias.source_asset_id)] = alias
        except csv.Error as exc:
            log.warning("alias file: line %s unreadable (%s); later lines ignored",
                        rows.line_num, exc)
    return aliases


def _open_alias_file(path: Path | None) -> TextIO | None:
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # absent or unreadable: no aliases, as before
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.warning("alias file is not a regular file; ignored")
        return None
    os.set_blocking(fd, True)
    return open(fd, newline="", encoding="utf-8-sig", errors="replace")


def _alias(row: dict[str | Any, str | Any]) -> Alias | None:
    """One alias line, or None for a line without an id or with a value no column holds."""
    def cell(name: str) -> str:
        value = row.get(name)
        return value.strip() if isinstance(value, str) else ""

    source, source_id, slug = cell("source"), cell("source_asset_id"), cell("asset_slug")
    symbol, name = cell("symbol").upper(), cell("name")
    if not source or not source_id:
        return None
    problem = (text_problem(source_id, SOURCE_ASSET_ID_MAX, "source_asset_id")
               or text_problem(slug, SLUG_MAX, "asset_slug")
               or text_problem(symbol, SYMBOL_MAX, "symbol")
               or text_problem(name, NAME_MAX, "name"))
    if problem is not None:
        log.warning("alias file: %r/%r skipped: %s", source[:32], source_id[:64], problem)
        return None
    return Alias(source, source_id, slug or None, symbol or None, name or None)
