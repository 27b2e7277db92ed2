"""End to end: a CSV folder of hostile files and lines, loaded by a real worker subprocess.

The run ends partial (some files cannot be read) without waiting on the FIFO; every bad line
and file has its rejected record with file, line and reason; every good line of every file,
and the canary file sorted after all the bad ones, is loaded and served by /data; nothing
outside CSV_DIR is read.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, text

from shared.bounds import CELL_MAX_CHARS, LINE_MAX_BYTES
from shared.sources.csv_files import LINK, OVERSIZE_MARK
from tests.conftest import count
from tests.helpers.waiting import wait_for_job

pytestmark = pytest.mark.e2e

HEADER = b"SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"
TOO_LONG = f"line longer than {LINE_MAX_BYTES} bytes"


def row(n: int, name: str, symbol: str, day: int = 1, close: str = "1.5",
        volume: str = "10", mcap: str = "100", date: str | None = None) -> bytes:
    """One Kaggle-format line."""
    stamp = date or f"2021-01-{day:02d} 23:59:59"
    return f"{n},{name},{symbol},{stamp},2,1,1,{close},{volume},{mcap}\n".encode()


def good(symbol: str) -> bytes:
    """The good line a hostile file carries after its bad ones: it must load."""
    return row(99, f"Good{symbol}", symbol, day=2)


# file name -> (content, [(line, reason prefix)], good symbol loaded from it)
ROW_CASES: dict[str, tuple[bytes, list[tuple[int, str]], str]] = {
    "a_nul.csv": (row(1, "Nul\x00coin", "NUL") + good("GA"), [(2, "NUL byte in the line")], "GA"),
    "b_bigcell.csv": (row(1, "B" * (5 * 1024 * 1024), "BIG") + good("GB"), [(2, TOO_LONG)],
                      "GB"),
    "c_longname.csv": (row(1, "L" * 400, "LNG") + good("GC"),
                       [(2, "name longer than 300 characters")], "GC"),
    "d_numbers.csv": (row(1, "Hugecoin", "HUG", close="1e200000")
                      + row(2, "Hugecoin", "HUG", day=2, close="1e300")
                      + row(3, "Hugecoin", "HUG", day=3, mcap="1e5000") + good("GD"),
                      [(2, "'1e200000' is out of range"), (3, "'1e300' is out of range"),
                       (4, "'1e5000' is out of range")], "GD"),
    "e_badutf8.csv": (row(1, "Bad", "BAD").replace(b"Bad", b"B\xffd\xc3") + good("GE"),
                      [(2, "invalid UTF-8")], "GE"),
    # Our own cases.
    "f_cell.csv": (row(1, "Cellcoin", "CEL", volume="1" * 10_000) + good("GF"),
                   [(2, f"cell 9 longer than {CELL_MAX_CHARS} characters")], "GF"),
    "g_quote.csv": (b'1,"Unclosed,UNC,2021-01-01,2,1,1,1,1,1\n' + good("GG"),
                    [(2, "expected 10 columns")], "GG"),
    "i_tz.csv": (row(1, "Tzcoin", "TZC", date="9999-12-31T23:00:00-05:00") + good("GI"),
                 [(2, "timestamp out of range")], "GI"),
    "j_symbol.csv": (row(1, "Symcoin", "S" * 70) + good("GJ"),
                     [(2, "symbol longer than 64 characters")], "GJ"),
    "k_tiny.csv": (row(1, "Tinycoin", "TNY", close="1e-50") + good("GK"),
                   [(2, "'1e-50' is too precise")], "GK"),
    "l_eof.csv": (good("GL") + b"2,Eof," + b"E" * (LINE_MAX_BYTES + 100), [(3, TOO_LONG)],
                  "GL"),
    "q_cr.csv": (row(1, "Cr\rcoin", "CRC") + good("GQ"),
                 [(2, "not valid CSV: new-line character seen")], "GQ"),
    "n_header.csv": (b"\x00\xff\xfebinary,junk\x00\n" + good("NOPE"),
                     [(1, "unrecognised CSV header")], ""),
}
# Entries that cannot be read at all: file-level rejects (key -> reason).
FILE_CASES = {
    "bad\\xff.csv": "file name is not valid UTF-8",
    "h.csv": "not a regular file (a FIFO)",
    "m_ctrl\\x1b.csv": "file name contains control characters",
    "o.csv": LINK,
    "p.csv": LINK,
    "s.csv": "not a regular file (a socket)",
    "x.csv": "not a regular file (a directory)",
    "y.csv": LINK,
}
CANARY = [row(n, "Canarycoin", "CNRY", day=n, close=f"{n}.25") for n in (1, 2, 3)]


@pytest.fixture
def hostile_dir(csv_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """The hostile folder (the alias file kept), with its outside targets beside it."""
    for path in csv_dir.glob("*.csv"):
        if path.name != "asset_aliases.csv":
            path.unlink()
    outside = tmp_path / "outside"
    (outside / "somedir").mkdir(parents=True)
    (outside / "outside.csv").write_bytes(HEADER + row(1, "Outsidecoin", "OUTS"))
    for name, (body, _, _) in ROW_CASES.items():
        (csv_dir / name).write_bytes(body if name == "n_header.csv" else HEADER + body)
    (csv_dir / "x.csv").mkdir()
    (csv_dir / "y.csv").symlink_to(outside / "somedir")
    (csv_dir / "p.csv").symlink_to("/etc/passwd")
    (csv_dir / "o.csv").symlink_to(outside / "outside.csv")
    (csv_dir / os.fsdecode(b"bad\xff.csv")).write_bytes(HEADER + row(1, "Badname", "BADN"))
    (csv_dir / "m_ctrl\x1b.csv").write_bytes(HEADER + row(1, "Ctrlname", "CTRL"))
    os.mkfifo(csv_dir / "h.csv")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(csv_dir / "s.csv"))
    (csv_dir / "zzz_canary.csv").write_bytes(HEADER + b"".join(CANARY))
    assert sorted(os.listdir(csv_dir))[-1] == "zzz_canary.csv"
    yield csv_dir
    server.close()


def _csv_job(client: Any, auth_headers: dict[str, str]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers)
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(client, int(response.get_json()["id"]), timeout=60)
    return job, time.monotonic() - started


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_hostile_csv_folder_through_a_real_worker(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    hostile_dir: Path, tmp_path: Path,
) -> None:
    worker_factory({"CSV_DIR": str(hostile_dir), "ETL_SOURCES": "csv"})
    job, elapsed = _csv_job(client, auth_headers)

    # No wait on the FIFO (the task time limit is 120 s here): done in seconds.
    assert elapsed < 30, elapsed
    (run,) = job["runs"]
    assert run["status"] == "partial", run
    assert job["status"] == "partial" and job["error"] == run["error"]
    assert run["error"].startswith("csv: bad\\xff.csv: file name is not valid UTF-8; h.csv: ")
    assert "more unreadable files" in run["error"]
    assert str(tmp_path) not in run["error"] and "/" not in run["error"]

    # The canary, sorted after every bad file, is fully loaded, published and served.
    assert count(clean_db, "quotes", "source_asset_id = 'CNRY:Canarycoin'") == 3
    served = client.get("/data?symbol=CNRY").get_json()
    assert [(r["symbol"], r["price_usd"]) for r in served["data"]] == [("CNRY", "3.25")]
    # So is the good line of every file with bad lines.
    for name, (_, _, symbol) in ROW_CASES.items():
        if symbol:
            assert count(clean_db, "quotes", "source_asset_id = :s",
                         s=f"{symbol}:Good{symbol}") == 1, name

    # Every bad line and file has its rejected record: file, line, reason.
    rejects = {loc: reason for loc, reason in _rows(
        clean_db, "SELECT location, reason FROM rejected_records WHERE source = 'csv'")}
    expected_lines = {f"{name}:{line}": reason for name, (_, cases, _) in ROW_CASES.items()
                      for line, reason in cases}
    for location, reason in expected_lines.items():
        assert rejects.get(location, "").startswith(reason), (location, rejects.get(location))
    for key, reason in FILE_CASES.items():
        assert rejects.get(key) == reason, (key, rejects.get(key))
    assert len(rejects) == len(expected_lines) + len(FILE_CASES)
    assert all(len(reason) < 200 and str(tmp_path) not in reason for reason in rejects.values())

    # Nothing outside CSV_DIR was read, nothing from a refused file was loaded.
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    stored = _rows(clean_db, "SELECT payload FROM raw_line_blocks UNION ALL "
                             "SELECT payload || reason FROM rejected_records")
    assert not any(passwd in payload or "Outsidecoin" in payload or "Badname" in payload
                   or "Ctrlname" in payload for payload, in stored)
    assert count(clean_db, "quotes",
                 "source_asset_id LIKE ANY (ARRAY['OUTS%', 'BADN%', 'CTRL%', 'NOPE%'])") == 0
    # The oversize lines are kept as a short, marked preview, not 5 MB.
    previews = _rows(clean_db, "SELECT length(payload) FROM raw_lines "
                               f"WHERE payload LIKE '%{OVERSIZE_MARK}'")
    assert len(previews) == 2 and all(n < 1100 for n, in previews)

    # Again: the same rejects (no duplicates), nothing new; the bad files keep it partial.
    before = {t: count(clean_db, t) for t in ("quotes", "rejected_records", "raw_lines")}
    again, elapsed = _csv_job(client, auth_headers)
    (run,) = again["runs"]
    assert run["status"] == "partial" and run["inserted"] == 0 and elapsed < 30
    assert {t: count(clean_db, t) for t in before} == before
