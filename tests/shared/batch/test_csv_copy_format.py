"""batch.copy_format owns the COPY layout: the CSV fast path's inline lines equal quote_line's,
the staging tables have the real tables' column types, and binary rows load as written."""
from __future__ import annotations

import io
from array import array
from pathlib import Path

from sqlalchemy import Engine, text

from shared.batch import copy_format
from shared.batch.copy_format import ASSET_SLOT, QUOTE_COPY_COLUMNS, block_copy_text, quote_line
from shared.ingest.line_blocks import copy_line_block
from shared.batch.types import LineBlock, content_hash
from shared.sources.csv_formats import detect_format
from shared.sources.csv_source import _LineReader

KAGGLE_HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"
PLAIN_LINES = [
    "1,Bitcoin,BTC,2013-04-29 23:59:59,147.48800659179688,134.0,134.44400024414062,"
    "144.5399932861328,0.0,1603768864.5",
    "2, Wrapped Bitcoin ,wbtc,2013-05-01,1,1,1,12.50,0,0",
    "3,Ðogecoin,DOGE,2013-05-05 23:59:59,1,1,1,0.07,5,5",
]


def test_fast_path_lines_equal_quote_line_of_the_general_path() -> None:
    """A plain Kaggle line (digits as Decimal prints them) rendered inline by the fast path is
    the line quote_line gives for the general path's ParsedQuote of the same line."""
    fmt = detect_format(KAGGLE_HEADER, Path("prices.csv"))
    assert fmt is not None
    reader = _LineReader("prices.csv", fmt, run_id=42)
    for number, line in enumerate(PLAIN_LINES, start=2):
        batch = reader.batch([(number, line)], {}, {"offset": 0})
        assert batch.rejects == [] and batch.quotes == [], line
        (block,) = batch.quote_blocks
        raw_hash = content_hash("csv", "prices.csv", line)
        parsed = fmt.parse(line.split(","), f"prices.csv:{number}", raw_hash)
        assert block_copy_text(block) == quote_line(ASSET_SLOT, "csv", 42, parsed), line
        assert block_copy_text(block).count("\t") == len(QUOTE_COPY_COLUMNS) - 1


def test_staging_tables_have_the_tables_column_types(clean_db: Engine) -> None:
    """STAGING_DDL's table matches the quotes' columns, name and type (staged text
    is unbounded: the real table's varchar checks the length on the INSERT from staging)."""
    columns = ("SELECT column_name, data_type FROM information_schema.columns "
               "WHERE table_name = :t AND table_schema LIKE :schema")
    with clean_db.begin() as conn:
        conn.exec_driver_sql(copy_format.STAGING_DDL)
        for stage, table, wanted in (
            (copy_format.STAGE_QUOTES, "quotes", copy_format.QUOTE_COPY_COLUMNS),
        ):
            staged = dict(conn.execute(text(columns), {"t": stage, "schema": "pg_temp%"}).all())
            real = {name: "text" if kind == "character varying" else kind for name, kind
                    in conn.execute(text(columns), {"t": table, "schema": "public"}).all()}
            assert list(staged) == list(wanted)
            assert staged == {name: real[name] for name in wanted}, table


def test_binary_line_block_reads_back_as_written(clean_db: Engine) -> None:
    """A raw_line_blocks row written with the binary COPY pieces reads back field by field."""
    lines = ["a,b", "tab\there", "ünï"]
    hashes = b"".join(content_hash("csv", "f.csv", line) for line in lines)
    block = LineBlock("f.csv", array("i", [2, 3, 70000]), "\n".join(lines), hashes)
    run_id = 7  # raw_line_blocks.run_id has no foreign key (runs are pruned, blocks stay)
    with clean_db.begin() as conn:
        cursor = conn.connection.cursor()
        assert copy_line_block(cursor, "csv", run_id, block, None, set()) == 3
        row = conn.execute(text(
            "SELECT source, file_key, line_numbers, payload, line_hashes, run_id "
            "FROM raw_line_blocks")).one()
    stored = (*row[:4], bytes(row[4]), row[5])
    assert stored == ("csv", "f.csv", [2, 3, 70000], "\n".join(lines), hashes, run_id)
    assert copy_format.binary_copy(b"x").startswith(copy_format.PGCOPY_HEADER)
    assert io.BytesIO(copy_format.binary_copy()).read()[-2:] == copy_format.PGCOPY_TRAILER
