"""The alias file sits in the untrusted CSV folder: read without blocking, bad rows dropped."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from shared.identity.aliases import Alias, load_aliases

HEADER = b"source,source_asset_id,asset_slug,symbol,name\n"
GOOD = b"csv,BTC,bitcoin,btc,Bitcoin\n"


def test_a_fifo_alias_file_is_ignored_without_blocking(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "asset_aliases.csv"
    os.mkfifo(fifo)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert load_aliases(fifo) == {}
    assert time.monotonic() - started < 1
    assert "not a regular file" in caplog.text
    assert load_aliases(tmp_path / "missing.csv") == {} and load_aliases(None) == {}


def test_bad_alias_rows_cost_only_themselves(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "asset_aliases.csv"
    path.write_bytes(
        HEADER
        + b"# a comment\n"
        + b"csv,NUL,nul\x00slug,NUL,Nul\n"              # NUL: no column holds it
        + b"csv,LONG,long,LNG," + b"n" * 301 + b"\n"    # name longer than varchar(300)
        + b"csv,SLUG," + b"s" * 201 + b",SLG,Slug\n"    # slug longer than varchar(200)
        + b"csv,BAD,bad,BAD,B\xffd\n"                   # bad byte: shown, row kept
        + GOOD
    )
    with caplog.at_level(logging.WARNING):
        aliases = load_aliases(path)
    assert set(aliases) == {("csv", "BAD"), ("csv", "BTC")}
    assert aliases[("csv", "BTC")] == Alias("csv", "BTC", "bitcoin", "BTC", "Bitcoin")
    assert aliases[("csv", "BAD")].name == "B\ufffdd"
    for reason in ("asset_slug contains a NUL character", "name longer than 300 characters",
                   "asset_slug longer than 200 characters"):
        assert reason in caplog.text
