"""CSV source through the real loader on PostgreSQL: rejects, incremental reads, replaced files."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from shared.config import Settings
from tests.conftest import count
from tests.helpers.csv_runs import HEADER, csv_row, only_file, run_csv


def test_broken_rows_are_rejected_with_line_and_reason(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "broken.csv", HEADER
              + csv_row(1, 1)
              + "2,Testcoin,TST,2021-01-02 23:59:59,110,90,95,abc,1000,5000\n"   # bad number
              + "3,Testcoin,TST,,110,90,95,100,1000,5000\n"                      # missing date
              + "4,Testcoin,TST,2021-01-04 23:59:59,110,90\n"                    # columns
              + csv_row(5, 5, "1.5e3")                                              # exponent: ok
              + "6,Testcoin,TST,2021-01-06 23:59:59,110,90,95,-,1000,5000\n"     # no price
              + csv_row(7, 7))
    run = run_csv(clean_db, settings)
    assert run["status"] == "succeeded"
    assert (run["fetched"], run["inserted"], run["rejected"]) == (7, 3, 4)
    with clean_db.connect() as conn:
        rejects = conn.execute(text(
            "SELECT location, reason FROM rejected_records ORDER BY id")).all()
        prices = conn.execute(text(
            "SELECT price_usd::text FROM quotes ORDER BY observed_at")).scalars().all()
    assert rejects == [
        ("broken.csv:3", "not a number: 'abc'"),
        ("broken.csv:4", "missing Date"),
        ("broken.csv:5", "expected 10 columns, got 6"),
        ("broken.csv:7", "missing Close"),
    ]
    assert prices == ["100.5", "1500", "100.5"]
    # Every line is kept raw, good or bad.
    assert count(clean_db, "raw_lines") == 7


def test_append_reads_only_new_lines_and_replace_rereads_without_duplicates(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    path = only_file(csv_dir, "coin.csv", HEADER + "".join(csv_row(i, i) for i in range(1, 11)))
    assert run_csv(clean_db, settings)["inserted"] == 10

    with path.open("a") as handle:
        handle.write(csv_row(11, 11) + csv_row(12, 12))
    run = run_csv(clean_db, settings)
    assert (run["fetched"], run["inserted"], run["unchanged"]) == (2, 2, 0)

    nothing = run_csv(clean_db, settings)
    assert (nothing["fetched"], nothing["inserted"]) == (0, 0)

    # Replaced: same rows plus a changed first row -> the file is read again from the top;
    # known rows add nothing, the new observation is added once.
    path.write_text(HEADER + csv_row(1, 1, "101") + "".join(csv_row(i, i) for i in range(2, 14)))
    run = run_csv(clean_db, settings)
    assert run["fetched"] == 13
    assert (run["inserted"], run["unchanged"]) == (1, 12)
    assert count(clean_db, "quotes") == 13
    with clean_db.connect() as conn:
        offsets = conn.execute(text("SELECT value->>'offset' FROM checkpoints")).scalars().all()
    assert offsets == [str(path.stat().st_size)]


def test_unknown_header_is_rejected_once_and_kept(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "mystery.csv", "a,b,c\n1,2,3\n")
    run = run_csv(clean_db, settings)
    assert run["status"] == "succeeded" and run["rejected"] == 1
    with clean_db.connect() as conn:
        reason = conn.execute(text("SELECT reason FROM rejected_records")).scalar_one()
    assert "unrecognised CSV header" in reason
    assert run_csv(clean_db, settings)["rejected"] == 0


def test_fail_after_n_records_then_resume_matches_a_clean_run(
    clean_db: Engine, settings: Settings, csv_dir: Path, base_env: dict[str, str]
) -> None:
    from shared.config import load_settings

    only_file(csv_dir, "coin.csv", HEADER + "".join(csv_row(i, i) for i in range(1, 26)))
    failing = load_settings({**base_env, "CSV_DIR": str(csv_dir),
                             "FAIL_AFTER_N_RECORDS_CSV": "10", "CSV_BATCH_ROWS": "4"})
    run = run_csv(clean_db, failing)
    assert run["status"] == "failed" and "FAIL_AFTER_N_RECORDS=10" in run["error"]
    assert count(clean_db, "quotes") == 10
    resumed = run_csv(clean_db, settings)
    assert resumed["status"] == "succeeded"
    assert (resumed["fetched"], resumed["inserted"]) == (15, 15)
    assert count(clean_db, "quotes") == 25 and count(clean_db, "raw_lines") == 25
