"""CSV raw lines are stored once by content, without a hash index (shared.ingest.batch_writer)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from shared.config import Settings
from tests.conftest import ALL_RAW, count
from tests.helpers.csv_runs import HEADER, csv_row, only_file, run_csv


def _raw_payloads(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT payload FROM raw_lines WHERE source = 'csv' ORDER BY id")).scalars())


def _assert_no_duplicate_content(engine: Engine) -> None:
    with engine.connect() as conn:
        repeated = conn.execute(text(
            f"SELECT count(*) - count(DISTINCT content_hash) FROM {ALL_RAW}")).scalar_one()
    assert repeated == 0


def test_a_line_appended_again_adds_no_raw_row(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    path = only_file(csv_dir, "coin.csv", HEADER + "".join(csv_row(i, i) for i in range(1, 6)))
    assert run_csv(clean_db, settings)["raw_inserted"] == 5
    # An exporter re-writes the last day and adds a new one.
    with path.open("a") as handle:
        handle.write(csv_row(5, 5) + csv_row(6, 6))
    run = run_csv(clean_db, settings)
    assert (run["fetched"], run["inserted"], run["unchanged"], run["raw_inserted"]) == (2, 1, 1, 1)
    assert count(clean_db, ALL_RAW) == 6 and count(clean_db, "quotes") == 6
    _assert_no_duplicate_content(clean_db)


def test_a_line_repeated_inside_one_batch_is_stored_once(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "coin.csv",
              HEADER + csv_row(1, 1) + csv_row(2, 2) + csv_row(1, 1) + csv_row(3, 3))
    run = run_csv(clean_db, settings)
    assert (run["fetched"], run["inserted"], run["unchanged"], run["raw_inserted"]) == (4, 3, 1, 3)
    _assert_no_duplicate_content(clean_db)


def test_corrections_flipping_back_and_forth_store_each_line_once(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    first = HEADER + csv_row(1, 1) + csv_row(2, 2)
    corrected = HEADER + csv_row(1, 1, "101") + csv_row(2, 2)
    path = only_file(csv_dir, "coin.csv", first)
    run_csv(clean_db, settings)
    # The corrected line is a new payload for a stored observation: kept raw, quote unchanged.
    path.write_text(corrected)
    assert run_csv(clean_db, settings)["raw_inserted"] == 1
    # Back to the first version (one more row so the file differs), then the correction again:
    # every line is stored already, the quote keys tell for most, the raw table for the rest.
    path.write_text(first + csv_row(3, 3))
    assert run_csv(clean_db, settings)["raw_inserted"] == 1
    path.write_text(corrected + csv_row(3, 3) + csv_row(4, 4))
    run = run_csv(clean_db, settings)
    assert (run["fetched"], run["inserted"], run["raw_inserted"]) == (4, 1, 1)
    assert _raw_payloads(clean_db) == [
        csv_row(1, 1).strip(), csv_row(2, 2).strip(), csv_row(1, 1, "101").strip(),
        csv_row(3, 3).strip(), csv_row(4, 4).strip()]
    with clean_db.connect() as conn:
        prices = conn.execute(text(
            "SELECT price_usd::text FROM quotes ORDER BY observed_at")).scalars().all()
    assert prices == ["100.5", "100.5", "100.5", "100.5"]  # the first value seen is kept
    _assert_no_duplicate_content(clean_db)


def test_a_rejected_line_read_again_in_place_is_not_stored_again(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    bad = "2,Testcoin,TST,2021-01-02 23:59:59,110,90,95,abc,1000,5000\n"
    path = only_file(csv_dir, "coin.csv", HEADER + csv_row(1, 1) + bad)
    run_csv(clean_db, settings)
    assert count(clean_db, ALL_RAW) == 2 and count(clean_db, "rejected_records") == 1
    # Replaced (first line corrected): read from the top; the bad line is where it was.
    path.write_text(HEADER + csv_row(1, 1, "99") + bad + csv_row(3, 3))
    run = run_csv(clean_db, settings)
    assert (run["fetched"], run["rejected"], run["raw_inserted"]) == (3, 1, 2)
    assert count(clean_db, ALL_RAW) == 4 and count(clean_db, "rejected_records") == 1
    _assert_no_duplicate_content(clean_db)


def test_quotes_keep_8_bytes_of_the_hash_and_rows_with_all_32_still_match(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    path = only_file(csv_dir, "coin.csv", HEADER + "".join(csv_row(i, i) for i in range(1, 4)))
    run_csv(clean_db, settings)
    with clean_db.begin() as conn:
        lengths = conn.execute(text("SELECT DISTINCT length(raw_hash) FROM quotes")).scalars()
        assert list(lengths) == [8]
        # Rows written before migration 0024 hold the line's whole SHA-256 (the raw block's).
        conn.execute(text(
            "UPDATE quotes q SET raw_hash = substring(b.line_hashes FROM n * 32 + 1 FOR 32) "
            "FROM raw_line_blocks b, generate_series(0, cardinality(b.line_numbers) - 1) n "
            "WHERE substring(b.line_hashes FROM n * 32 + 1 FOR 8) = q.raw_hash"))
        assert list(conn.execute(text("SELECT DISTINCT length(raw_hash) FROM quotes")
                                 ).scalars()) == [32]
    # An exporter re-writes the last day and adds a new one: the re-written line is known
    # stored through its quote's 32-byte hash.
    with path.open("a") as handle:
        handle.write(csv_row(3, 3) + csv_row(4, 4))
    run = run_csv(clean_db, settings)
    assert (run["fetched"], run["inserted"], run["unchanged"], run["raw_inserted"]) == (2, 1, 1, 1)
    assert count(clean_db, ALL_RAW) == 4
    _assert_no_duplicate_content(clean_db)
