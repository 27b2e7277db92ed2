"""The ingest bench's own logic: its input files, its reading of tree code, py-spy stacks and
auto_explain logs, and the rows it derives (a misread figure would be a wrong table row).
Nothing here starts a service or times anything."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.gen import NOISY_MIN_FACTOR, append_days, kaggle_file
from bench.profile import plan_digest, read_plans, stack_summary, statement_key
from bench.stacks import DEFAULT_WORKER_ARGV, CodeTree, worker_argv, working_tree
from bench.worker_ingest import _tree_rows, _versus_rows


def _closes(path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with path.open() as rows:
        next(rows)
        for line in rows:
            cells = line.rstrip("\n").split(",")
            out.setdefault(cells[2], []).append(float(cells[7]))
    return out


def test_noisy_file_jumps_on_every_line_but_each_coins_first(tmp_path: Path) -> None:
    noisy = _closes(kaggle_file(tmp_path / "noisy.csv", 5, 40, seed=3, prefix="N", noisy=True))
    assert sorted(noisy) == [f"NC{i:06d}" for i in range(1, 6)]
    for closes in noisy.values():
        assert len(closes) == 40
        # The quality checks' default jump factor is 10; every move here is at least 20x.
        assert all(abs(math.log(b / a)) >= math.log(NOISY_MIN_FACTOR) - 1e-9
                   for a, b in zip(closes, closes[1:]))


def test_realistic_file_moves_a_few_percent_a_day(tmp_path: Path) -> None:
    closes = _closes(kaggle_file(tmp_path / "real.csv", 5, 200, seed=3))
    moves = [abs(math.log(b / a)) for c in closes.values() for a, b in zip(c, c[1:])]
    assert max(moves) < math.log(10)  # never a jump
    assert sorted(moves)[len(moves) // 2] < 0.05


def test_append_continues_the_coins_of_a_prefixed_file(tmp_path: Path) -> None:
    path = kaggle_file(tmp_path / "b.csv", 4, 10, seed=9, prefix="B")
    before = _closes(path)
    assert append_days(path, 4, 10, 3, prefix="B") == 12
    after = _closes(path)
    assert sorted(after) == sorted(before)  # the same coins, no new unprefixed ones
    for symbol, closes in after.items():
        assert len(closes) == 13
        assert abs(math.log(closes[10] / before[symbol][-1])) < math.log(10)


def test_worker_argv_is_make_runs(tmp_path: Path) -> None:
    argv = worker_argv(working_tree())
    assert argv[1:6] == ["-m", "celery", "-A", "worker", "worker"]
    # A tree whose launcher cannot be read gets the default command.
    other = CodeTree("old", tmp_path, "0" * 12)
    assert worker_argv(other)[1:] == DEFAULT_WORKER_ARGV
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "stack.py").write_text(
        'import sys\ncommands = {"worker": [sys.executable, "-m", "celery", "-A", "worker", '
        '"worker", "-l", "INFO", "-c", "2"]}\n')
    assert worker_argv(other)[1:] == [*DEFAULT_WORKER_ARGV, "-c", "2"]


def test_stack_summary_reads_the_task_child_per_thread(tmp_path: Path) -> None:
    worker = 'process 10:"celery worker"'
    child = 'process 11:"celery worker"'
    task = "trace_task (celery/app/trace.py:450);execute_run (shared/ingest/execute.py:90)"
    writer = "thread (0x2): batch-writer-0;_Writers._run (shared/ingest/pipeline.py:1)"
    raw = tmp_path / "stacks.txt"
    raw.write_text("\n".join([
        # The child's main thread waiting for a task: not counted.
        f"{worker};{child};thread (0x1): MainThread;Connection._recv (billiard/connection.py:1) 50",
        f"{worker};{child};thread (0x1): MainThread;{task};"
        "read_ahead (shared/ingest/pipeline.py:200);Condition.wait (threading.py:320) 30",
        f"{worker};{child};{writer};_copy_new_rows (shared/ingest/batch_writer.py:102) 60",
        f"{worker};{child};{writer};_copy_new_rows (shared/ingest/batch_writer.py:110);"
        "execute (psycopg2/extras.py:1) 20",
        # Another child, idle.
        f'{worker};process 12:"celery worker";thread (0x3): MainThread;'
        "Connection._recv (billiard/connection.py:1) 80",
    ]) + "\n")
    summary = stack_summary(raw, 5)
    assert summary["pid"] == 11
    threads = summary["threads"]
    assert set(threads) == {"MainThread", "batch-writer-0"}
    assert threads["MainThread"]["samples"] == 30
    writing = threads["batch-writer-0"]
    assert writing["samples"] == 80
    assert writing["project"][0] == ("_copy_new_rows (shared/ingest/batch_writer.py)", 80, 1.0)
    assert writing["own"][0][:2] == ("_copy_new_rows (shared/ingest/batch_writer.py)", 60)
    assert ("_Writers._run (shared/ingest/pipeline.py)", 80, 1.0) in writing["inclusive"]


def test_auto_explain_plans_are_read_and_compared(tmp_path: Path) -> None:
    def record(db: str, ms: float, query: str, scan: str) -> str:
        plan = {"Query Text": query, "Plan": {
            "Node Type": "Aggregate", "Plan Rows": 1, "Actual Rows": 1, "Actual Loops": 1,
            "Plans": [{"Node Type": scan, "Relation Name": "current_quotes", "Plan Rows": 10,
                       "Actual Rows": 1000, "Actual Loops": 1, "Shared Hit Blocks": 7}]}}
        body = json.dumps(plan, indent=2)
        return (f"2026-12-07 10:00:00.123 UTC [42] {db} LOG:  duration: {ms} ms  plan:\n"
                f"{body}\n")

    log = tmp_path / "postgres.log"
    log.write_text(
        "2026-12-07 10:00:00.000 UTC [7]  LOG:  checkpoint starting: time\n"
        + record("bench", 1.5, "SELECT max(x) FROM current_quotes WHERE asset_id = ANY('{1,2}')",
                 "Seq Scan")
        + record("other", 9.0, "SELECT 1", "Result")
        + record("bench", 2.5, "SELECT max(x) FROM current_quotes WHERE asset_id = ANY('{3}')",
                 "Seq Scan"))
    first = read_plans(log, 0, log.stat().st_size, "bench")
    assert [p["ms"] for p in first] == [1.5, 2.5]
    assert statement_key(first[0]["Query Text"]) == statement_key(first[1]["Query Text"])
    later = [{**p, "Plan": {**p["Plan"], "Plans": [{**p["Plan"]["Plans"][0],
                                                    "Node Type": "Index Scan"}]}} for p in first]
    digest = plan_digest({"first": first, "later": later}, 5)
    assert len(digest) == 1 and digest[0]["plans_differ"]
    assert digest[0]["loads"]["first"]["calls"] == 2
    assert "Seq Scan on current_quotes (est 10, actual 1000 x 1 loops) [hit 7]" in \
        digest[0]["loads"]["first"]["first_plan"][1]
    assert not plan_digest({"first": first}, 5)[0]["plans_differ"]


def _job(seconds: float, copy: float | None = None, fetched: int = 0,
         appended: int | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {"seconds": seconds, "runs": [{"fetched": fetched}]}
    if copy is not None:
        job["copy_seconds"] = copy
    if appended is not None:
        job["appended"] = appended
    return job


def _round(scale: float) -> dict[str, Any]:
    return {"first": _job(10 * scale, 5), "later": _job(6 * scale, 5),
            "noisy": _job(6.6 * scale, 5), "rerun": _job(0.1 * scale),
            "append": _job(0.15 * scale, fetched=1000, appended=1000)}


def test_rows_are_medians_of_the_rounds_own_ratios() -> None:
    rounds = [_round(1.0), _round(3.0), _round(2.0)]
    rows = {row.case.split(",")[0]: row for row in _tree_rows("t", rounds, 1_000_000, "")}
    later = rows["1. later load of a new file"]
    assert later.ratio == 2 * 6 / 5 and later.met is False  # the middle round, 2.0
    assert later.measured == "12.00 s" and later.baseline == "COPY 5.00 s"
    noisy = rows["1. noisy file vs realistic file (same round)"]
    assert math.isclose(noisy.ratio or 0, 1.1) and noisy.met is True
    first = rows["1. first load vs later load (same round)"]
    assert math.isclose(first.ratio or 0, 10 / 6) and first.met is False
    rerun = rows["2. re-run"]
    assert math.isclose(rerun.ratio or 0, 0.01) and rerun.met is True
    append = rows["3. append 1"]
    assert math.isclose(append.ratio or 0, 15.0) and append.met is False  # 150 vs 10 us/line


def test_versus_rows_compare_trees_round_by_round() -> None:
    rounds = [{"new": _round(1.2), "old": _round(1.0)}, {"new": _round(2.0), "old": _round(2.5)},
              {"new": _round(1.0), "old": _round(1.0)}]
    rows = _versus_rows("new", "old", rounds)
    assert [r.case.split(":")[0] for r in rows] == [
        "1-3. first load", "1-3. later load, realistic", "1-3. noisy file",
        "1-3. re-run, nothing new", "1-3. append"]
    assert all(math.isclose(r.ratio or 0, 1.0) for r in rows)  # rounds 0.8, 1.0, 1.2
    assert rows[1].met is True and rows[0].met is None
