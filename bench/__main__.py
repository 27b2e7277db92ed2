"""`make bench`: measure ingest, re-runs, appends, /data under load and parallel sources.

Sets up its own database (created, migrated with `flask --app api db upgrade`, dropped at the
end) on the PostgreSQL and Redis that `scripts.stack.ensure_services()` finds or starts,
prints one table of figures and goals, and writes it to var/bench-results.md. Every figure
is a ratio against a baseline measured in the same run; nothing here is a pass/fail test.
The ingest cases run jobs through a real Celery worker on databases of their own
(bench.worker_ingest); `--baseline-ref` runs them on another commit too, round by round.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from bench.common import BENCH_DIR, RESULTS, BenchDatabase, Row, copy_baseline, only, say
from bench.data_load import data_cases, data_notes
from bench.gen import append_days, kaggle_file
from bench.history import history_cases, history_notes
from bench.longrun import add_longrun_arguments, longrun_cases
from bench.runs import big_file, median, run_ingest
from bench.sources import sources_cases
from bench.storage import add_storage_arguments, storage_cases
from bench.worker_ingest import worker_ingest_cases
from scripts.stack import ROOT, VAR_DIR, ensure_services


def inproc_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                 ) -> tuple[list[Row], dict[str, Any]]:
    """Cases 1-3 in process (`--cases inproc`): this tree's task code in a warm process.

    No worker, no broker, no app: `create_job`, `execute_run` and `finalize_job` called in a
    fresh process that has run one job (bench.ingest), on the bench's own database. What users
    run is the `ingest` case (bench.worker_ingest); this one isolates the code path, e.g. to
    compare two variants of it quickly. The machines are shared: a vCPU's speed was seen to
    move by a third within minutes. So the bare COPY and the pipeline are measured in
    alternating pairs (`--rounds`), each pair a ratio, and the table gives the median pair;
    appends likewise (each on top of the last).
    Every sample is kept in the notes and the JSON report.
    """
    data = BENCH_DIR / "data"
    coins, days = args.coins, args.days
    small_coins = max(1, coins // 4)
    say(f"generating {coins}x{days} and {small_coins}x{days} Kaggle files (kept in {data})")
    big = kaggle_file(data / f"kaggle_{coins}x{days}.csv", coins, days)
    small = kaggle_file(data / f"kaggle_{small_coins}x{days}.csv", small_coins, days)
    rows_big, rows_small = coins * days, small_coins * days

    say(f"memory: pipeline on {rows_small:,} rows")
    mem_small = run_ingest(env, only(BENCH_DIR / "csv-small", small))

    work = BENCH_DIR / "work"
    live = work / big.name
    csv_dir = BENCH_DIR / "csv-big"
    pairs: list[tuple[float, float | None, dict[str, Any]]] = []
    for round_no in range(1, args.rounds + 1):
        db.truncate_all()
        say(f"round {round_no}/{args.rounds}: COPY baseline, {rows_big:,} rows")
        copy_seconds, copy_cpu = copy_baseline(db, big)
        db.truncate_all()
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        shutil.copyfile(big, live)  # case 3 appends to the last round's copy
        csv_dir = only(BENCH_DIR / "csv-big", live)
        db.checkpoint()
        say(f"round {round_no}/{args.rounds}: pipeline, {rows_big:,} rows "
            "(raw + quotes + identity + checkpoint, finalize)")
        run = run_ingest(env, csv_dir)
        say(f"  COPY {copy_seconds:.2f} s, pipeline {run['seconds']:.2f} s "
            f"({run['seconds'] / copy_seconds:.2f}x), peak RSS {run['maxrss_mb']:.0f} MB")
        pairs.append((copy_seconds, copy_cpu, run))
    copy_seconds, copy_cpu, first = median(pairs, key=lambda pair: pair[2]["seconds"] / pair[0])

    say("re-run with nothing new")
    rerun = run_ingest(env, csv_dir)

    append_rows = args.append_days * coins
    appends: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        say(f"append {append_rows:,} lines ({round_no + 1}/{args.rounds})")
        append_days(live, coins, days + round_no * args.append_days, args.append_days)
        db.checkpoint()
        appends.append(run_ingest(env, csv_dir))
    appended = median(appends, key=lambda run: run["seconds"])

    peak_rss = max(run["maxrss_mb"] for _, _, run in pairs)
    per_line_first = first["seconds"] / rows_big * 1e6
    per_line_append = appended["seconds"] / append_rows * 1e6
    per_line_marginal = (appended["seconds"] - rerun["seconds"]) / append_rows * 1e6
    rows = [
        Row(f"1i. CSV ingest in process, {rows_big:,} rows, whole pipeline vs bare COPY",
            f"{first['seconds']:.2f} s", f"COPY {copy_seconds:.2f} s",
            first["seconds"] / copy_seconds, "<= 2.0x", first["seconds"] / copy_seconds <= 2.0),
        Row(f"1i. peak RSS of the process, {rows_big:,} vs {rows_small:,} rows (the highest "
            "of the rounds)", f"{peak_rss:.0f} MB", f"{mem_small['maxrss_mb']:.0f} MB",
            peak_rss / mem_small["maxrss_mb"], "flat (<= 1.15x)",
            peak_rss / mem_small["maxrss_mb"] <= 1.15),
        Row("2i. re-run in process, nothing new", f"{rerun['seconds'] * 1000:.0f} ms "
            f"(read {rerun['run']['fetched']} lines)", f"first run {first['seconds']:.2f} s",
            rerun["seconds"] / first["seconds"], "<= 2%",
            rerun["seconds"] / first["seconds"] <= 0.02),
        Row(f"3i. append {append_rows:,} lines in process: time per line",
            f"{per_line_append:.1f} us/line ({appended['seconds']:.2f} s, "
            f"read {appended['run']['fetched']:,} lines)",
            f"first run {per_line_first:.1f} us/line", per_line_append / per_line_first,
            "proportional (<= 2.0x, only new lines read)",
            per_line_append / per_line_first <= 2.0
            and all(run["run"]["fetched"] == append_rows for run in appends)),
        Row("3i. (for comparison) append, per line beyond a run's fixed cost "
            "(append run - re-run with nothing new)",
            f"{per_line_marginal:.1f} us/line", f"first run {per_line_first:.1f} us/line",
            per_line_marginal / per_line_first, "none (the row above is the goal)", None),
    ]
    facts = {"copy_seconds": copy_seconds, "copy_backend_cpu_seconds": copy_cpu,
             "first": first, "rerun": rerun, "append": appended, "small": mem_small,
             "rounds": [{"copy_seconds": c, "pipeline": run} for c, _, run in pairs],
             "appends": appends}
    return rows, facts


def memory_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                 ) -> tuple[list[Row], dict[str, Any]]:
    """Case 1's memory row: peak RSS of the process running one job, big file vs a quarter.

    In process (bench.ingest, a fresh process per job): a worker child's own peak would be the
    most of every task it ever ran. Leaves the big file loaded in the bench's database (the
    /data case's data set).
    """
    coins, days = args.coins, args.days
    small_coins = max(1, coins // 4)
    big = big_file(args)
    small = kaggle_file(BENCH_DIR / "data" / f"kaggle_{small_coins}x{days}.csv", small_coins,
                        days)
    db.truncate_all()
    say(f"memory: one job in process on {small_coins * days:,} lines, then {coins * days:,}")
    small_run = run_ingest(env, only(BENCH_DIR / "csv-small", small))
    db.truncate_all()
    db.checkpoint()
    big_run = run_ingest(env, only(BENCH_DIR / "csv-big", big))
    ratio = big_run["maxrss_mb"] / small_run["maxrss_mb"]
    rows = [Row(f"1. peak RSS of a process running one job (this tree's task code), "
                f"{coins * days:,} vs {small_coins * days:,} lines",
                f"{big_run['maxrss_mb']:.0f} MB", f"{small_run['maxrss_mb']:.0f} MB", ratio,
                "flat (<= 1.15x)", ratio <= 1.15)]
    return rows, {"small": small_run, "big": big_run}


# ------------------------------------------------------------------------------------------


def render(rows: list[Row], notes: list[str]) -> str:
    """The results as a Markdown table plus notes."""
    header = ["case", "measured", "baseline (same run)", "ratio", "goal", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


CASES = ("ingest", "inproc", "memory", "data", "sources", "history", "storage", "longrun")
DEFAULT_CASES = ("ingest", "memory", "data", "sources", "history")


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print/write the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--coins", type=int, default=1000)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--append-days", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="COPY/pipeline pairs and appends measured; the median counts")
    parser.add_argument("--data-coins", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None,
                        help="override gunicorn's worker count "
                        "(default: api/serving/gunicorn_conf.py, "
                             "as make run)")
    parser.add_argument("--gecko-coins", type=int, default=10_000,
                        help="coins the replay CoinGecko serves (41 pages: past the free quota)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (default: "
                        f"{','.join(DEFAULT_CASES)}; inproc: cases 1-3 in a warm process, "
                        "no worker)")
    parser.add_argument("--ref", default=None,
                        help="ingest: measure this commit (checked out under var/bench/trees) "
                        "instead of the working tree")
    parser.add_argument("--baseline-ref", default=None,
                        help="ingest: also run every round on this commit (its own worker, "
                        "database and migrations), alternating with the code under test")
    parser.add_argument("--output", type=Path, default=RESULTS)
    add_storage_arguments(parser)
    add_longrun_arguments(parser)
    parser.add_argument("--keep-db", action="store_true",
                        help="leave the database in place (for EXPLAIN ANALYZE afterwards)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    cases = set(args.cases.split(","))
    if cases - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(cases - set(CASES)))}")

    started = time.monotonic()
    services = ensure_services(VAR_DIR)
    db: BenchDatabase | None = None
    rows: list[Row] = []
    notes: list[str] = []
    facts: dict[str, Any] = {}
    try:
        db = BenchDatabase(services.database_url)
        env = {**os.environ, **services.env(), "DATABASE_URL": db.url,
               "API_TOKEN": os.environ.get("API_TOKEN") or uuid.uuid4().hex,
               "PYTHONPATH": str(ROOT)}
        say(f"database {db.name} ({services.origin['postgres']} PostgreSQL)")
        if cases - {"ingest"}:
            # The ingest case's jobs run on databases of their own (one per code tree and
            # round); here it only needs a bare COPY table.
            db.migrate(env)
        steps: list[tuple[str, Callable[..., tuple[list[Row], dict[str, Any]]]]] = [
            ("ingest", worker_ingest_cases), ("inproc", inproc_cases),
            ("memory", memory_cases), ("data", data_cases), ("sources", sources_cases),
            ("history", history_cases), ("storage", storage_cases), ("longrun", longrun_cases)]
        for name, step in steps:
            if name in cases:
                new_rows, new_facts = step(db, env, args)
                rows += new_rows
                facts[name] = new_facts
    finally:
        if db is not None and not args.keep_db:
            db.drop()
        elif db is not None:
            say(f"kept database {db.name}")
        services.stop()
    notes.append(f"{time.monotonic() - started:.0f} s in all; {os.cpu_count()} CPUs; "
                 f"PostgreSQL from {services.origin['postgres']}")
    if "ingest" in facts:
        notes += facts["ingest"]["notes"]
    if "inproc" in facts:
        i = facts["inproc"]
        notes.append("in-process ingest rounds (COPY s / pipeline s = ratio): " + "; ".join(
            f"{r['copy_seconds']:.2f} / {r['pipeline']['seconds']:.2f} = "
            f"{r['pipeline']['seconds'] / r['copy_seconds']:.2f}" for r in i["rounds"])
            + "; appends (s): " + ", ".join(f"{a['seconds']:.3f}" for a in i["appends"]))
        seen = i["first"].get("publishes") or []
        if seen:
            notes.append(
                f"/data visibility (case 1i): the first rows were served {seen[0]:.2f} s into the "
                f"{i['first']['seconds']:.2f} s run, the last {seen[-1]:.2f} s in "
                f"({len(seen)} publishes, each in its batch's commit: 0 s from commit to /data); "
                f"re-run with nothing new: {len(i['rerun'].get('publishes') or [])} publishes")
        first_cpu, copy_cpu = i["first"].get("backend_cpu_seconds"), i["copy_backend_cpu_seconds"]
        if first_cpu is not None and copy_cpu is not None:
            notes.append(
                f"CPU (case 1i): bare COPY {copy_cpu:.2f} s in its server backend; pipeline "
                f"{first_cpu:.2f} s in server backends + {i['first']['worker_cpu_seconds']:.2f}"
                f" s in the worker process (2 cores: the two overlap, batch by batch)")
    notes += history_notes(facts.get("history"))
    notes += data_notes(facts.get("data"))
    for name in ("sources", "storage", "longrun"):
        notes += facts.get(name, {}).get("notes", [])
    table = render(rows, notes)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    (args.output.with_suffix(".json")).write_text(json.dumps(facts, indent=2, default=str))
    say(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
