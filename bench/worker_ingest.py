"""Cases 1-3 through a real Celery worker: first load, later load, noisy file, re-run, append.

What users run: a job POSTed to the app, run by `celery -A worker worker` started as `make run`
starts it, timed from the job row's creation to its end (bench.stacks). Every round starts each
code tree's stack afresh (a new database migrated by that tree, a new worker) and then:

1. first load: the realistic file A into the empty database;
2. later loads, in alternating order from round to round (so neither sits on the bigger
   table every time): the realistic file B (other coins) and the noisy file N (other coins
   again, every line a `jump`), each into the database already holding the earlier loads;
3. re-run with nothing new (B's folder again), then 10,000 lines appended to B (10 days per
   coin, each coin's walk going on).

Each load's bare COPY of the same file is measured in the same round, just before the jobs;
with `--baseline-ref` the two trees' jobs follow it in an order that alternates by round. The
table gives medians of the rounds' own ratios; every sample is in the notes and the JSON.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
from functools import partial
from pathlib import Path
from typing import Any, Callable

from bench.common import BENCH_DIR, BenchDatabase, Row, copy_baseline, say
from bench.gen import append_days, kaggle_file
from bench.stacks import CodeTree, TreeStack, checkout, remove_tree, worker_argv, working_tree

LOADS = ("first", "later", "noisy")


def bench_files(coins: int, days: int) -> dict[str, Path]:
    """The three input files (generated once, kept in var/bench/data)."""
    data = BENCH_DIR / "data"
    say(f"input files: {coins}x{days} realistic (x2, other coins) and noisy, in {data}")
    return {
        "first": kaggle_file(data / f"kaggle_{coins}x{days}.csv", coins, days),
        "later": kaggle_file(data / f"kaggle_B_{coins}x{days}.csv", coins, days, seed=9,
                             prefix="B"),
        "noisy": kaggle_file(data / f"kaggle_noisy_{coins}x{days}.csv", coins, days, seed=10,
                             prefix="N", noisy=True),
    }


def _median_round(rounds: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]
                  ) -> tuple[float, dict[str, Any]]:
    """(median of key over the rounds, the round holding it: the upper one of an even count)."""
    ordered = sorted(rounds, key=key)
    chosen = ordered[len(ordered) // 2]
    return key(chosen), chosen


def _one_round(round_no: int, trees: list[CodeTree], env: dict[str, str], db: BenchDatabase,
               files: dict[str, Path], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One round for every tree; {tree label: {load: job result, "copy_<load>": s, ...}}."""
    order = trees if round_no % 2 else trees[::-1]
    results: dict[str, dict[str, Any]] = {tree.label: {} for tree in trees}
    stacks: list[TreeStack] = []
    try:
        for index, tree in enumerate(order):
            stack = TreeStack(tree, env, 9 + index, f"ingest-{index}")
            stacks.append(stack)
            say(f"round {round_no}: {tree.label} ({tree.commit}): fresh database, worker, app")
            stack.start(warm_up=2)
        # B is appended to in step 3: each tree gets its own copy of it, fresh each round.
        live = {}
        for stack in stacks:
            live[stack.tree.label] = stack.dir / "work" / files["later"].name
            live[stack.tree.label].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files["later"], live[stack.tree.label])
        later = ("later", "noisy") if round_no % 2 else ("noisy", "later")
        lines = args.coins * args.days
        for load in ("first", *later):
            say(f"round {round_no}: {load} load, {lines:,} lines: bare COPY, then "
                + ", then ".join(s.tree.label for s in stacks))
            copy_seconds, _ = copy_baseline(db, files[load])
            for stack in stacks:
                stack.link(live[stack.tree.label] if load == "later" else files[load])
                db.checkpoint()
                job = stack.run_job()
                job["copy_seconds"] = copy_seconds
                job["worker_peak_rss_mb"] = stack.children_peak_rss_mb()
                results[stack.tree.label][load] = job
                say(f"  COPY {copy_seconds:.2f} s, {stack.tree.label} job {job['seconds']:.2f} s "
                    f"({job['seconds'] / copy_seconds:.2f}x)")
        for stack in stacks:
            stack.link(live[stack.tree.label])
            db.checkpoint()
            results[stack.tree.label]["rerun"] = stack.run_job()
        for stack in stacks:
            appended = append_days(live[stack.tree.label], args.coins, args.days,
                                   args.append_days, prefix="B")
            db.checkpoint()
            job = stack.run_job()
            job["appended"] = appended
            results[stack.tree.label]["append"] = job
            say(f"  {stack.tree.label}: re-run {results[stack.tree.label]['rerun']['seconds']:.3f}"
                f" s, append {appended:,} lines {job['seconds']:.3f} s")
    finally:
        for stack in stacks:
            stack.stop()
    return results


def _s(seconds: float) -> str:
    """A duration as the table shows it: ms below a second."""
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _over_copy(r: dict[str, Any], load: str) -> float:
    """A round's job time over its bare COPY's."""
    return float(r[load]["seconds"] / r[load]["copy_seconds"])


def _steps(r: dict[str, Any], top: str, bottom: str) -> float:
    """One step's job time over another's, same round and tree."""
    return float(r[top]["seconds"] / r[bottom]["seconds"])


def _versus(r: dict[str, Any], step: str, current: str, baseline: str) -> float:
    """A round's job time on the code under test over the baseline tree's."""
    return float(r[current][step]["seconds"] / r[baseline][step]["seconds"])


def _fetched(job: dict[str, Any]) -> int:
    return sum(int(run.get("fetched") or 0) for run in job["runs"])


def _tree_rows(label: str, rounds: list[dict[str, Any]], lines: int, suffix: str) -> list[Row]:
    """The rows of one tree: its loads against bare COPY and against each other."""
    rows = []
    for load, what, goal, limit in (
            ("first", "first load into an empty database (fresh, migrated)", "none (info)",
             None),
            ("later", "later load of a new file, database holding data (realistic prices)",
             "<= 1.3x", 1.3),
            ("noisy", "noisy file (every line a jump flag), database holding data",
             "none (info)", None)):
        ratio, chosen = _median_round(rounds, partial(_over_copy, load=load))
        job = chosen[load]
        rows.append(Row(f"1. {what}, {lines:,} lines, job through the worker vs bare COPY"
                        f"{suffix}", _s(job["seconds"]), f"COPY {_s(job['copy_seconds'])}",
                        ratio, goal, None if limit is None else ratio <= limit))
    ratio, chosen = _median_round(rounds, partial(_steps, top="noisy", bottom="later"))
    rows.append(Row(f"1. noisy file vs realistic file (same round){suffix}",
                    _s(chosen["noisy"]["seconds"]),
                    f"realistic {_s(chosen['later']['seconds'])}", ratio, "<= 1.15x",
                    ratio <= 1.15))
    ratio, chosen = _median_round(rounds, partial(_steps, top="first", bottom="later"))
    rows.append(Row(f"1. first load vs later load (same round){suffix}",
                    _s(chosen["first"]["seconds"]),
                    f"later {_s(chosen['later']['seconds'])}", ratio, "within 10% (<= 1.1x)",
                    ratio <= 1.1))
    ratio, chosen = _median_round(rounds, partial(_steps, top="rerun", bottom="first"))
    rows.append(Row(f"2. re-run, nothing new, through the worker{suffix}",
                    f"{_s(chosen['rerun']['seconds'])} (read "
                    f"{_fetched(chosen['rerun'])} lines)",
                    f"first load {_s(chosen['first']['seconds'])}", ratio, "<= 2%",
                    ratio <= 0.02))

    def per_line(r: dict[str, Any]) -> float:
        return float(r["append"]["seconds"] / r["append"]["appended"]
                     / (r["first"]["seconds"] / lines))

    ratio, chosen = _median_round(rounds, per_line)
    append = chosen["append"]
    all_new = all(_fetched(r["append"]) == r["append"]["appended"] for r in rounds)
    rows.append(Row(f"3. append {append['appended']:,} lines through the worker: time per "
                    f"line{suffix}",
                    f"{append['seconds'] / append['appended'] * 1e6:.1f} us/line "
                    f"({_s(append['seconds'])}, read {_fetched(append):,} lines)",
                    f"first load {chosen['first']['seconds'] / lines * 1e6:.1f} us/line",
                    ratio, "<= 2x, only new lines read", ratio <= 2.0 and all_new))
    return rows


def _versus_rows(current: str, baseline: str, rounds: list[dict[str, Any]]) -> list[Row]:
    """This tree's jobs against the baseline tree's, same round."""
    rows = []
    for step, what, goal in (
            ("first", "first load", "none (info)"),
            ("later", "later load, realistic", "no slower (<= 1.0x)"),
            ("noisy", "noisy file", "none (info)"),
            ("rerun", "re-run, nothing new", "none (info)"),
            ("append", "append", "none (info)")):
        ratio, chosen = _median_round(rounds, partial(_versus, step=step, current=current,
                                                      baseline=baseline))
        rows.append(Row(f"1-3. {what}: {current} vs {baseline} (same round, through the worker)",
                        _s(chosen[current][step]["seconds"]),
                        f"{baseline} {_s(chosen[baseline][step]['seconds'])}", ratio, goal,
                        ratio <= 1.0 if goal.startswith("no slower") else None))
    return rows


def worker_ingest_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                        ) -> tuple[list[Row], dict[str, Any]]:
    """Cases 1-3 through the worker, for this tree and (`--baseline-ref`) another commit."""
    files = bench_files(args.coins, args.days)
    lines = args.coins * args.days
    trees = [checkout(args.ref) if args.ref else working_tree()]
    rounds: list[dict[str, dict[str, Any]]] = []
    commands: dict[str, str] = {}
    try:
        if args.baseline_ref:
            trees.append(checkout(args.baseline_ref))
            if trees[1].commit == trees[0].commit:
                raise SystemExit(f"--baseline-ref {args.baseline_ref} is the code under test")
        commands = {tree.label: " ".join(Path(part).name for part in worker_argv(tree, env))
                    for tree in trees}
        for round_no in range(1, args.rounds + 1):
            rounds.append(_one_round(round_no, trees, env, db, files, args))
    finally:
        for tree in trees:
            remove_tree(tree)
    current = trees[0].label
    notes = []
    if len(trees) == 1:
        rows = _tree_rows(current, [r[current] for r in rounds], lines, "")
    else:
        baseline = trees[1].label
        rows = _tree_rows(current, [r[current] for r in rounds], lines, f" [{current}]")
        rows += _tree_rows(baseline, [r[baseline] for r in rounds], lines, f" [{baseline}]")
        rows += _versus_rows(current, baseline, rounds)
    for tree in trees:
        label = tree.label
        samples = "; ".join(
            f"round {n}: " + ", ".join(
                f"{load} {r[label][load]['seconds']:.2f}/{r[label][load]['copy_seconds']:.2f}"
                for load in LOADS)
            + f", re-run {r[label]['rerun']['seconds']:.3f}, append "
            f"{r[label]['append']['seconds']:.3f}"
            for n, r in enumerate(rounds, 1))
        peak = max(r[label][load]["worker_peak_rss_mb"] for r in rounds for load in LOADS)
        flagged = statistics.median(
            r[label]["noisy"]["seconds"] / r[label]["noisy"]["copy_seconds"] for r in rounds)
        notes.append(f"worker jobs, {label} ({tree.commit}; `{commands[label]}`), job s / "
                     "bare COPY s: "
                     f"{samples}; worker children's peak RSS {peak:.0f} MB; noisy/COPY median "
                     f"{flagged:.2f}")
    notes.append(
        "worker jobs: POST /jobs on the tree's own app, `celery -A worker worker` as that "
        "tree's `make run` starts it, each round on fresh databases; job time = the job row's "
        "created_at to finished_at")
    facts = {"trees": [{"label": t.label, "commit": t.commit} for t in trees],
             "lines": lines, "rounds": rounds}
    return rows, {**facts, "notes": notes}
