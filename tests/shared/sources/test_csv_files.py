"""CSV_DIR as untrusted input, in-process: listing, opening without following anything, swaps
and deletions between listing and opening, bounded line reading; and a vanished file written
through the real loader as a file-level reject."""
from __future__ import annotations

import errno
import io
import os
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from shared.bounds import LINE_MAX_BYTES
from shared.config import Settings
from shared.db import unit_of_work
from shared.identity.resolve import IdentityError, IdentityHint, resolve_assets
from shared.jobs.submit import create_job
from shared.ingest.batch_writer import BatchWriter
from shared.sources.base import RunContext
from shared.sources.csv_files import (
    LINK,
    OVERSIZE_MARK,
    VANISHED,
    FileProblem,
    LineScanner,
    list_entries,
    open_entry,
    safe_name,
)
from shared.sources.csv_source import CsvSource

HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"
ROW = "1,Testcoin,TST,2021-01-01 23:59:59,110,90,95,100.5,1000,5000\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty CSV folder of its own."""
    target = tmp_path / "csv"
    target.mkdir()
    return target


def _ctx(settings: Settings, run_id: int = 1) -> RunContext:
    return RunContext(run_id=run_id, source="csv", settings=settings)


def test_listing_judges_each_entry_without_opening_it(folder: Path, tmp_path: Path) -> None:
    (folder / "a.csv").write_text(HEADER + ROW)
    (folder / "x.csv").mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text(HEADER + ROW)
    (folder / "l.csv").symlink_to(outside)
    (folder / "i.csv").symlink_to(folder / "a.csv")  # inside the folder: not followed either
    os.mkfifo(folder / "h.csv")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "s.csv"))
    (folder / os.fsdecode(b"bad\xff.csv")).write_text(HEADER + ROW)
    (folder / "new\nline.csv").write_text(HEADER + ROW)
    (folder / ".hidden.csv").write_text(HEADER + ROW)
    (folder / "notes.txt").write_text("not csv")
    try:
        entries = {e.key: e.problem for e in list_entries(folder)}
    finally:
        server.close()
    assert entries == {
        "a.csv": None,
        "bad\\xff.csv": "file name is not valid UTF-8",
        "h.csv": "not a regular file (a FIFO)",
        "i.csv": LINK,
        "l.csv": LINK,
        "new\\x0aline.csv": "file name contains control characters",
        "s.csv": "not a regular file (a socket)",
        "x.csv": "not a regular file (a directory)",
    }
    assert list_entries(folder / "missing") == []


def test_safe_name_escapes_bad_bytes_and_control_characters() -> None:
    assert safe_name("plain-ñame.csv") == "plain-ñame.csv"
    assert safe_name(os.fsdecode(b"a\xff\xfe.csv")) == "a\\xff\\xfe.csv"
    assert safe_name("tab\there\x1b.csv") == "tab\\x09here\\x1b.csv"
    safe_name(os.fsdecode(b"\xff")).encode("utf-8")  # always encodable


@pytest.mark.parametrize("swap, reason", [
    ("fifo", "not a regular file (a FIFO)"),
    ("directory", "not a regular file (a directory)"),
    ("link", LINK),
    ("delete", VANISHED),
])
def test_a_swap_between_listing_and_opening_is_caught(
    folder: Path, tmp_path: Path, swap: str, reason: str
) -> None:
    """The entry was a regular file when listed; what is there at open time decides."""
    path = folder / "swapped.csv"
    path.write_text(HEADER + ROW)
    (entry,) = list_entries(folder)
    assert entry.problem is None
    path.unlink()
    if swap == "fifo":
        os.mkfifo(path)
    elif swap == "directory":
        path.mkdir()
    elif swap == "link":
        (tmp_path / "elsewhere.csv").write_text(HEADER + ROW)
        path.symlink_to(tmp_path / "elsewhere.csv")
    started = time.monotonic()
    with pytest.raises(FileProblem) as caught:
        open_entry(folder, entry)
    assert str(caught.value) == reason
    assert time.monotonic() - started < 1  # a FIFO with no writer never blocks the open


def test_a_file_deleted_between_listing_and_opening_is_a_file_level_reject(
    clean_db: Engine, settings: Settings, folder: Path
) -> None:
    """The source's own steps, with the deletion in the window between them; the reject is
    then written by the real loader, and the run would end partial with the reason."""
    (folder / "gone.csv").write_text(HEADER + ROW)
    (folder / "kept.csv").write_text(HEADER + ROW.replace("TST", "KPT"))
    source = CsvSource(settings)
    source.directory = folder
    entries = source.files()
    assert [e.key for e in entries] == ["gone.csv", "kept.csv"]
    (folder / "gone.csv").unlink()  # the window: listed, not yet opened

    with unit_of_work(clean_db) as session:
        run_id = create_job(session, ["csv"], "cli").job.runs[0].id
    ctx = _ctx(settings, run_id)
    gone = list(source.entry_batches(entries[0], ctx))
    kept = list(source.entry_batches(entries[1], ctx))
    (batch,) = gone
    assert [(r.location, r.reason, r.payload) for r in batch.rejects] == [
        ("gone.csv", VANISHED, "")]
    assert batch.raw_lines is None and batch.quote_count == 0
    assert batch.checkpoint == {"offset": 0, "line": 0, "format": None}
    assert source.partial_reason == f"csv: gone.csv: {VANISHED}"
    assert sum(b.quote_count for b in kept) == 1

    with unit_of_work(clean_db) as session:
        writer = BatchWriter("csv", run_id, {})
        for written in gone + kept:
            writer.write(session, written, None)
    with clean_db.connect() as conn:
        rejects = conn.execute(text(
            "SELECT location, reason, run_id FROM rejected_records")).all()
        quotes = conn.execute(text("SELECT source_asset_id FROM quotes")).scalars().all()
    assert [tuple(r) for r in rejects] == [("gone.csv", VANISHED, run_id)]
    assert quotes == ["KPT:Testcoin"]


def _scan(data: bytes, limit: int = 1000) -> tuple[list[tuple[int, str]], dict[int, str], int]:
    scanner = LineScanner(io.BytesIO(data), 0, 0)
    lines: list[tuple[int, str]] = []
    flagged: dict[int, str] = {}
    while True:
        got, bad = scanner.read(limit)
        if not got:
            return lines, flagged, scanner.offset
        lines += got
        flagged.update(bad)


def test_scanner_flags_nul_bad_utf8_and_oversize_lines_and_keeps_offsets() -> None:
    big = b"9," + b"x" * (5 * 1024 * 1024) + b"\n"
    data = (b"a,1\r\n" + b"b,\x002\n" + b"c,\xff\xfe3\n" + big + b"\n  \n" + b"d,4\n"
            + b"e," + b"y" * (LINE_MAX_BYTES + 10))  # oversize last line, no newline
    for limit in (1, 2, 1000):  # batch boundaries anywhere, even inside the skipped line
        lines, flagged, offset = _scan(data, limit)
        assert offset == len(data)
        numbers = [n for n, _ in lines]
        assert numbers == [1, 2, 3, 4, 7, 8]  # 5 and 6 are blank
        texts = dict(lines)
        assert texts[1] == "a,1" and texts[7] == "d,4"
        assert texts[2] == "b,\ufffd2" and texts[3] == "c,\ufffd\ufffd3"
        assert texts[4].startswith("9,xxx") and texts[4].endswith(OVERSIZE_MARK)
        assert len(texts[4]) < 1100
        assert flagged == {
            2: "NUL byte in the line",
            3: "invalid UTF-8 (byte 3 of the line)",
            4: f"line longer than {LINE_MAX_BYTES} bytes",
            8: f"line longer than {LINE_MAX_BYTES} bytes",
        }


def test_scanner_offset_after_an_oversize_line_is_the_next_line() -> None:
    """A read that stops on an oversize line has skipped to its end: the checkpoint offset
    is a line boundary, and reading on from it gives the next line."""
    first = b"z" * (LINE_MAX_BYTES * 3) + b"\n"
    data = first + b"next,1\n"
    scanner = LineScanner(io.BytesIO(data), 0, 0)
    lines, flagged = scanner.read(1)
    assert [n for n, _ in lines] == [1] and 1 in flagged
    assert scanner.offset == len(first)
    rest = LineScanner(io.BytesIO(data[scanner.offset:]), 0, scanner.line_no)
    assert rest.read(10)[0] == [(2, "next,1")]


def test_a_line_of_exactly_the_limit_is_read(folder: Path) -> None:
    line = b"q" * LINE_MAX_BYTES
    lines, flagged, _ = _scan(line + b"\n" + line)
    assert [len(t) for _, t in lines] == [LINE_MAX_BYTES, LINE_MAX_BYTES] and flagged == {}


def test_identity_never_sends_nul_or_overlong_names_to_the_database(clean_db: Engine) -> None:
    """Sources reject such records first; identity stays safe if one slips through."""
    hints = [IdentityHint("nul-coin", "N\x00L", "Nul\x00coin"),
             IdentityHint("long-coin", "S" * 80, "L" * 400)]
    with unit_of_work(clean_db) as session:
        mapped = resolve_assets(session, "coingecko", hints, {})
    assert set(mapped) == {"nul-coin", "long-coin"}
    rows = _rows(clean_db, "SELECT a.symbol, a.name, m.symbol, m.name FROM assets a "
                           "JOIN asset_source_ids m ON m.asset_id = a.id ORDER BY a.id")
    assert rows == [("NL", "Nulcoin", "NL", "Nulcoin"),
                    ("S" * 64, "L" * 300, "S" * 64, "L" * 300)]
    for bad_id, reason in (("x" * 301, "longer than 300"), ("a\x00b", "NUL character")):
        with unit_of_work(clean_db) as session, pytest.raises(IdentityError, match=reason):
            resolve_assets(session, "coingecko", [IdentityHint(bad_id, "X", "X")], {})


def _rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_a_read_error_mid_file_keeps_what_was_read(
    settings: Settings, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO after the first batch: that batch stands, the file gets a file-level reject that
    leaves its checkpoint where the first batch moved it, and the run is partial."""
    (folder / "eio.csv").write_text(HEADER + ROW * 3)
    source = CsvSource(settings)
    source.directory, source.batch_rows = folder, 1
    real_read = LineScanner.read
    calls: list[int] = []

    def failing_read(self: LineScanner, limit: int) -> tuple[list[tuple[int, str]],
                                                             dict[int, str]]:
        calls.append(limit)
        if len(calls) > 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_read(self, limit)

    monkeypatch.setattr(LineScanner, "read", failing_read)
    first, failed = list(source.batches(_ctx(settings)))
    assert first.quote_count == 1 and first.checkpoint["line"] == 2
    assert [(r.location, r.reason) for r in failed.rejects] == [
        ("eio.csv", "read failed (Input/output error)")]
    assert failed.checkpoint == first.checkpoint
    assert source.partial_reason == "csv: eio.csv: read failed (Input/output error)"


def test_an_oversize_header_rejects_the_file_until_it_changes(
    settings: Settings, folder: Path
) -> None:
    (folder / "wide.csv").write_bytes(b"h" * (LINE_MAX_BYTES * 2) + b"\n" + ROW.encode())
    source = CsvSource(settings)
    source.directory = folder
    (batch,) = list(source.batches(_ctx(settings)))
    (reject,) = batch.rejects
    assert (reject.location, reject.reason) == (
        "wide.csv:1", "header line too long; file skipped until it changes")
    assert reject.payload.endswith(OVERSIZE_MARK) and len(reject.payload) < 1100
    assert batch.checkpoint["offset"] == (folder / "wide.csv").stat().st_size
    assert source.partial_reason is None  # read, just not usable: like an unknown header


def test_batches_double_and_a_batch_of_few_rows_per_coin_is_followed_by_a_full_one(
    settings: Settings, folder: Path
) -> None:
    """Coin after coin (many rows per coin): 2,000, 4,000, 8,000, ... lines; day after day of
    1,000 coins (2 rows per coin in the first batch): the rest in one full batch."""
    def line(n: int, coin: int, day: int) -> str:
        return f"{n},Coin{coin},C{coin},2021-01-{day:02d} 23:59:59,2,1,1,1.5,3,4\n"

    source = CsvSource(settings)
    source.directory, source.batch_rows = folder, 25_000
    (folder / "tall.csv").write_text(HEADER + "".join(
        line(n, n // 28, n % 28 + 1) for n in range(20_000)))
    assert [b.quote_count for b in source.batches(_ctx(settings))] == [2000, 4000, 8000, 6000]
    (folder / "tall.csv").unlink()
    (folder / "wide.csv").write_text(HEADER + "".join(
        line(n, n % 1000, n // 1000 + 1) for n in range(10_000)))
    assert [b.quote_count for b in source.batches(_ctx(settings))] == [2000, 8000]
