"""Where a CSV job run by the real worker spends its time: `python -m bench.profile`.

1. A PostgreSQL of its own with pg_stat_statements and auto_explain preloaded (the system
   server's binaries, a fresh cluster in a temporary directory, on a free loopback port, run
   as the `postgres` account when started by root), its planner, memory, WAL, vacuum and
   durability settings copied from the server `make bench` uses, so that plans and costs
   match. `--database-url` names a server that preloads both instead.
2. Pass 1, timing: one stack of the tree (bench.stacks: a fresh database, the worker as
   `make run` starts it, the app for POST /jobs) runs the loads in order: the realistic file
   into the empty database (first), a realistic file of other coins into the database holding
   it (later), the noisy file (every line a jump). Around each job: pg_stat_statements reset,
   py-spy recording the worker and its children (--idle --threads: waits on the database
   count), then the top statements by total time and the samples of the child that ran the
   task: top functions by own samples (the innermost frame: time in a C call such as a
   psycopg2 execute shows there), by inclusive samples, and by innermost project frame.
3. Pass 2, plans: the same loads on a second fresh stack whose database has auto_explain log
   every statement's plan as EXPLAIN (ANALYZE, BUFFERS) would print it (log_analyze,
   log_buffers, nested statements; JSON). Per statement: calls and time in each load, and
   the plan's shape (node, relation, index; estimated vs actual rows of the scans) of the
   first and the last batch of each load, flagged where the empty and the full table differ.
   COPY has no plan: its time is in pass 1's statements.

Writes var/bench/profile/report.md (plus the raw stacks and the plans as JSON) and prints
the report. Figures from a profiled run are slower than the bench's (sampling, ANALYZE
timing): read them as shares, not as the job's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import BENCH_DIR, say
from bench.cpu import backend_cpu_seconds
from bench.stacks import CodeTree, TreeStack, checkout, remove_tree, working_tree
from bench.worker_ingest import bench_files
from scripts.embedded import free_port
from scripts.stack import VAR_DIR, ensure_services

OUT_DIR = BENCH_DIR / "profile"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Copied from the bench's server to ours, so that our plans and costs are the bench's.
COPIED_SETTINGS = (
    "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size",
    "max_wal_size", "min_wal_size", "checkpoint_timeout", "wal_buffers", "wal_level",
    "synchronous_commit", "fsync", "full_page_writes", "autovacuum", "random_page_cost",
    "seq_page_cost", "effective_io_concurrency", "jit", "default_statistics_target",
    "max_parallel_workers_per_gather",
)
AUTO_EXPLAIN = {
    "auto_explain.log_min_duration": "0", "auto_explain.log_analyze": "on",
    "auto_explain.log_buffers": "on", "auto_explain.log_timing": "on",
    "auto_explain.log_nested_statements": "on", "auto_explain.log_format": "json",
}
PROJECT_PARTS = ("shared/", "worker/", "api/")


# ------------------------------------------------------------------------------------------
# Our own PostgreSQL


class OwnPostgres:
    """A throwaway PostgreSQL cluster preloading pg_stat_statements and auto_explain."""

    def __init__(self, settings: dict[str, str], bin_dir: Path = PG_BIN) -> None:
        self.bin = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="kasparro-pgprof-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = free_port()
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self._run([str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"])
        conf = {**settings, "listen_addresses": "'127.0.0.1'", "port": str(self.port),
                "unix_socket_directories": "''",
                "shared_preload_libraries": "'pg_stat_statements,auto_explain'",
                "pg_stat_statements.max": "10000", "pg_stat_statements.track": "top",
                "log_line_prefix": "'%m [%p] %d '", "lc_messages": "'C'"}
        with (self.data / "postgresql.conf").open("a") as out:
            out.write("\n# bench.profile\n")
            out.writelines(f"{name} = {value}\n" for name, value in conf.items())
        self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                   "-t", "60", "start"])
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        user = self.user
        done = subprocess.run(argv, cwd=self.base, capture_output=True, text=True,
                              user=user.pw_uid if user else None,
                              group=user.pw_gid if user else None,
                              extra_groups=[] if user else None)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                       "stop"])
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def server_settings(url: str) -> dict[str, str]:
    """COPIED_SETTINGS as the server at `url` has them, quoted for postgresql.conf."""
    engine = create_engine(make_url(url).set(database="postgres"))
    try:
        with engine.connect() as conn:
            out = {}
            for name in COPIED_SETTINGS:
                value = conn.execute(text(f"SHOW {name}")).scalar_one()
                out[name] = "'" + str(value).replace("'", "''") + "'"
            return out
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------
# py-spy


def _py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy") or "py-spy"


class Spy:
    """py-spy record on a process and its children, raw (collapsed) stacks, until stop()."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(pid), "--subprocesses", "--idle", "--threads",
             "--nonblocking", "--format", "raw", "--rate", str(rate), "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.5)  # attached to every child before the job starts
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy failed: {self.proc.stderr.read().decode()[-1000:]}"
                               if self.proc.stderr else "py-spy failed")

    def stop(self) -> Path:
        """Stop sampling; the raw stacks file."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return self.out


def read_stacks(path: Path) -> Iterator[tuple[int, str, list[str], int]]:
    """(pid, thread, frames outermost first, samples) of each line of a raw py-spy file."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        pid, thread, frames = 0, "", []
        for frame in stack.split(";"):
            if frame.startswith("process "):
                pid = int(frame.split()[1].rstrip(":").split(":")[0])
            elif frame.startswith("thread ("):
                thread = frame
            else:
                frames.append(frame)
        yield pid, thread, frames, int(count)


def _short(frame: str) -> str:
    """`func (path/file.py:line)` without the line: samples of one function add up."""
    return re.sub(r":\d+\)$", ")", frame)


def _is_project(frame: str) -> bool:
    match = re.search(r"\(([^)]*)\)$", frame)
    return bool(match) and match.group(1).startswith(PROJECT_PARTS)  # type: ignore[union-attr]


def stack_summary(path: Path, top: int) -> dict[str, Any]:
    """The task child's samples per thread: top functions (own, inclusive, project frame).

    The child is the process whose samples hold `execute_run`; its main thread counts only
    while it runs a task (celery's `trace_task` on the stack: else it waits for one), the
    threads the task started (batch writers, read-ahead) always. Threads are named as py-spy
    names them. Inclusive counts are of project functions only (shared/, worker/, api/).
    """
    stacks = list(read_stacks(path))
    per_pid: Counter[int] = Counter()
    for pid, _, frames, count in stacks:
        if any("execute_run" in frame for frame in frames):
            per_pid[pid] += count
    if not per_pid:
        return {"error": f"no sample of execute_run in {path}"}
    task_pid = per_pid.most_common(1)[0][0]
    threads: Counter[str] = Counter()
    own: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    project: dict[str, Counter[str]] = defaultdict(Counter)
    for pid, thread, frames, count in stacks:
        if pid != task_pid or not frames:
            continue
        name = thread.split("): ", 1)[1] if "): " in thread else thread
        if name == "MainThread" and not any("trace_task" in f for f in frames):
            continue
        threads[name] += count
        own[name][_short(frames[-1])] += count
        for function in {_short(f) for f in frames if _is_project(f)}:
            inclusive[name][function] += count
        inner = next((f for f in reversed(frames) if _is_project(f)), None)
        project[name][_short(inner) if inner else "(no project frame)"] += count

    def pick(counter: Counter[str], total: int) -> list[tuple[str, int, float]]:
        return [(name, n, n / total) for name, n in counter.most_common(top)]

    return {"pid": task_pid, "threads": {
        name: {"samples": total, "own": pick(own[name], total),
               "inclusive": pick(inclusive[name], total), "project": pick(project[name], total)}
        for name, total in threads.most_common()}}


# ------------------------------------------------------------------------------------------
# pg_stat_statements and auto_explain

TOP_STATEMENTS = """
SELECT calls, total_exec_time AS total_ms, mean_exec_time AS mean_ms, rows,
    shared_blks_hit AS hit, shared_blks_read AS read, shared_blks_dirtied AS dirtied,
    shared_blks_written AS written, temp_blks_written AS temp, wal_bytes,
    regexp_replace(query, '\\s+', ' ', 'g') AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC
"""


def top_statements(stack: TreeStack, top: int) -> dict[str, Any]:
    """The statements of the stack's database by total execution time since the reset."""
    assert stack.db is not None
    with stack.db.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(text(TOP_STATEMENTS)).mappings()]
    total = sum(float(r["total_ms"]) for r in rows)
    return {"total_ms": total, "statements": len(rows), "top": rows[:top]}


def reset_statements(stack: TreeStack) -> None:
    """pg_stat_statements_reset(), the extension created in the stack's database if need be."""
    assert stack.db is not None
    with stack.db.engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        conn.execute(text("SELECT pg_stat_statements_reset()"))


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] (\S*) ?(\w+):  (.*)$")


def read_plans(log: Path, start: int, end: int, database: str) -> list[dict[str, Any]]:
    """auto_explain's plans logged between two offsets of the server log, for `database`."""
    with log.open("rb") as handle:
        handle.seek(start)
        chunk = handle.read(end - start).decode(errors="replace")
    plans: list[dict[str, Any]] = []
    current: list[str] | None = None
    duration = 0.0

    def flush() -> None:
        if current is None:
            return
        try:
            body = json.loads("\n".join(current))
        except ValueError:
            return
        plans.append({"ms": duration, **body})

    for line in chunk.splitlines():
        match = _RECORD.match(line)
        if match:
            flush()
            current = None
            db, _level, message = match.groups()
            found = re.match(r"duration: ([\d.]+) ms  plan:\s*(.*)$", message)
            if db == database and found:
                duration = float(found.group(1))
                current = [found.group(2)] if found.group(2) else []
        elif current is not None:
            current.append(line)
    flush()
    return plans


def statement_key(query: str) -> str:
    """A statement's text with its literals and parameters masked, first 150 characters."""
    masked = re.sub(r"'(?:[^']|'')*'", "?", query)
    masked = re.sub(r"\$\d+|\b\d+(?:\.\d+)?\b", "?", masked)
    masked = re.sub(r"ARRAY\[[^\]]*\]", "ARRAY[?]", masked)
    masked = re.sub(r"\(\s*\?(?:\s*,\s*\?)+\s*\)", "(?...)", masked)
    return re.sub(r"\s+", " ", masked).strip()[:150]


def plan_shape(node: dict[str, Any], depth: int = 0) -> list[str]:
    """The plan's nodes, one line each: type, relation/index, rows estimated vs actual."""
    label = node.get("Node Type", "?")
    if node.get("Relation Name"):
        label += f" on {node['Relation Name']}"
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    if "Plan Rows" in node and "Actual Rows" in node:
        loops = node.get("Actual Loops", 1)
        label += f" (est {node['Plan Rows']}, actual {node['Actual Rows']} x {loops} loops)"
    buffers = [f"{k.split()[1].lower()} {node[k]}" for k in (
        "Shared Hit Blocks", "Shared Read Blocks", "Shared Dirtied Blocks",
        "Shared Written Blocks") if node.get(k)]
    if buffers:
        label += " [" + ", ".join(buffers) + "]"
    lines = ["  " * depth + label]
    for child in node.get("Plans", []):
        lines += plan_shape(child, depth + 1)
    return lines


def _bare(shape: list[str]) -> list[str]:
    """A plan shape without its row counts and buffers: what the planner chose."""
    return [re.sub(r" \(est .*$| \[.*$", "", line) for line in shape]


def plan_digest(plans_by_load: dict[str, list[dict[str, Any]]], top: int
                ) -> list[dict[str, Any]]:
    """Per statement (by key): calls and ms per load, first and last plan of each load."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for load, plans in plans_by_load.items():
        for plan in plans:
            groups[statement_key(plan.get("Query Text", ""))][load].append(plan)
    digest = []
    for key, loads in groups.items():
        entry: dict[str, Any] = {"statement": key, "loads": {}}
        shapes: dict[str, list[str]] = {}
        for load, plans in loads.items():
            first, last = plans[0], plans[-1]
            entry["loads"][load] = {
                "calls": len(plans), "total_ms": sum(p["ms"] for p in plans),
                "first_ms": first["ms"], "last_ms": last["ms"],
                "first_plan": plan_shape(first["Plan"]), "last_plan": plan_shape(last["Plan"]),
            }
            shapes[f"{load} first"] = _bare(plan_shape(first["Plan"]))
            shapes[f"{load} last"] = _bare(plan_shape(last["Plan"]))
        distinct = {tuple(s) for s in shapes.values()}
        entry["plans_differ"] = len(distinct) > 1
        entry["total_ms"] = sum(v["total_ms"] for v in entry["loads"].values())
        digest.append(entry)
    digest.sort(key=lambda e: -float(e["total_ms"]))
    return digest[:top]


# ------------------------------------------------------------------------------------------


def _spec(items: list[tuple[str, int, float]]) -> list[str]:
    return [f"  - {share:5.1%} {name} ({n} samples)" for name, n, share in items]


def render(facts: dict[str, Any]) -> str:
    """The report as Markdown."""
    out = [f"# Profile of a CSV job through the worker ({facts['tree']})", "",
           f"- {facts['lines']:,} lines a load; server: {facts['server']}; py-spy rate "
           f"{facts['rate']}/s; {facts['when']}", ""]
    for load, data in facts["loads"].items():
        cpu = data.get("cpu", {})
        backends = (f", server backends {cpu['backends']:.2f} s" if "backends" in cpu else "")
        out += [f"## {load} load: job {data['job']['seconds']:.2f} s (profiled)", "",
                f"- CPU: worker children {cpu.get('worker_children', 0):.2f} s{backends}", ""]
        stats = data["statements"]
        out += [f"### Top statements by total time ({stats['total_ms'] / 1000:.2f} s in "
                f"{stats['statements']} distinct statements)", "",
                "| total ms | calls | mean ms | rows | hit | read | dirtied | written | WAL MB "
                "| statement |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in stats["top"]:
            query = r["query"][:140].replace("|", "\\|")
            out.append(f"| {r['total_ms']:.0f} | {r['calls']} | {r['mean_ms']:.2f} | {r['rows']} "
                       f"| {r['hit']} | {r['read']} | {r['dirtied']} | {r['written']} | "
                       f"{float(r['wal_bytes']) / 1e6:.1f} | `{query}` |")
        spy = data["stacks"]
        out += ["", f"### Where the task child's threads are (py-spy, pid {spy.get('pid')})", ""]
        if "error" in spy:
            out.append(f"- {spy['error']}")
        for thread, t in spy.get("threads", {}).items():
            out += [f"- **{thread}**, {t['samples']} samples "
                    f"({t['samples'] / facts['rate']:.1f} s); innermost project frame:",
                    *_spec(t["project"]), "  own (innermost frame, any code):",
                    *_spec(t["own"][:10]), "  inclusive (project functions):",
                    *_spec(t["inclusive"])]
        out.append("")
    if facts.get("plans"):
        out += ["## Plans (auto_explain, EXPLAIN ANALYZE BUFFERS of every statement)", ""]
        for entry in facts["plans"]:
            mark = " **plans differ**" if entry["plans_differ"] else ""
            out.append(f"### `{entry['statement']}`{mark}")
            for load, v in entry["loads"].items():
                out += [f"- {load}: {v['calls']} calls, {v['total_ms']:.0f} ms; first "
                        f"{v['first_ms']:.1f} ms, last {v['last_ms']:.1f} ms",
                        "  ```", *[f"  first: {line}" for line in v["first_plan"]],
                        *[f"  last:  {line}" for line in v["last_plan"]], "  ```"]
            out.append("")
    return "\n".join(out) + "\n"


def _children_cpu(pid: int) -> float:
    """User + system CPU seconds of a process's children so far."""
    total = 0.0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _loads(stack: TreeStack, files: dict[str, Path], loads: list[str],
           each: Callable[[str, Path], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for load in loads:
        stack.link(files[load])
        out[load] = each(load, files[load])
    return out


def main(argv: list[str] | None = None) -> int:
    """Profile the loads; write and print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coins", type=int, default=1000)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--loads", default="first,later,noisy")
    parser.add_argument("--ref", default=None, help="profile this commit, not the working tree")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--no-plans", action="store_true", help="skip pass 2 (auto_explain)")
    parser.add_argument("--database-url", default=None,
                        help="a server preloading pg_stat_statements and auto_explain "
                        "(default: start one)")
    parser.add_argument("--pg-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of our server over the copied ones (repeatable), "
                        "e.g. autovacuum=on")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    loads = args.loads.split(",")
    services = ensure_services(VAR_DIR)
    tree: CodeTree | None = None
    server: OwnPostgres | None = None
    stacks: list[TreeStack] = []
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        files = bench_files(args.coins, args.days)
        tree = checkout(args.ref) if args.ref else working_tree()
        if args.database_url:
            url = args.database_url
        else:
            settings = server_settings(services.database_url)
            for item in args.pg_set:
                name, _, value = item.partition("=")
                settings[name] = "'" + value.replace("'", "''") + "'"
            server = OwnPostgres(settings)
            url = server.url
            say(f"our PostgreSQL on port {server.port} ({server.base}); settings from the "
                f"bench's server: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        env = {**os.environ, **services.env(), "DATABASE_URL": url,
               "API_TOKEN": os.environ.get("API_TOKEN") or uuid.uuid4().hex}
        facts: dict[str, Any] = {
            "tree": f"{tree.label} {tree.commit}", "lines": args.coins * args.days,
            "rate": args.rate, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "server": "own (pg_stat_statements, auto_explain), settings copied" if server
            else url, "loads": {}}

        stack = TreeStack(tree, env, 9, "profile")
        stacks.append(stack)
        say("pass 1: timing (pg_stat_statements, py-spy)")
        stack.start(warm_up=2)

        def timed(load: str, _file: Path) -> dict[str, Any]:
            reset_statements(stack)
            assert stack.db is not None
            stack.db.checkpoint()
            spy = Spy(stack.worker_pid, args.out / f"stacks-{load}.txt", args.rate)
            worker_before = _children_cpu(stack.worker_pid)
            backend_before = backend_cpu_seconds(stack.db.engine, stack.db.name)
            try:
                job = stack.run_job()
            finally:
                spy.stop()
            cpu = {"worker_children": _children_cpu(stack.worker_pid) - worker_before}
            backend_after = backend_cpu_seconds(stack.db.engine, stack.db.name)
            if backend_before is not None and backend_after is not None:
                cpu["backends"] = backend_after - backend_before
            say(f"  {load}: job {job['seconds']:.2f} s (profiled)")
            return {"job": job, "cpu": cpu, "statements": top_statements(stack, args.top),
                    "stacks": stack_summary(spy.out, args.top)}

        facts["loads"] = _loads(stack, files, loads, timed)
        stack.stop()
        stacks.remove(stack)
        if not args.no_plans:
            say("pass 2: plans (auto_explain)")
            log = server.log if server else None
            if log is None:
                say("  --database-url given: its log is not ours to read; plans skipped")
            else:
                stack = TreeStack(tree, env, 9, "profile-plans", db_settings=AUTO_EXPLAIN)
                stacks.append(stack)
                stack.start(warm_up=1)
                plans: dict[str, list[dict[str, Any]]] = {}

                def explained(load: str, _file: Path) -> dict[str, Any]:
                    assert log is not None and stack.db is not None
                    start = log.stat().st_size
                    job = stack.run_job()
                    time.sleep(0.5)
                    plans[load] = read_plans(log, start, log.stat().st_size, stack.db.name)
                    say(f"  {load}: job {job['seconds']:.2f} s, {len(plans[load])} plans")
                    return job

                _loads(stack, files, loads, explained)
                (args.out / "plans.json").write_text(json.dumps(plans, default=str))
                facts["plans"] = plan_digest(plans, args.top)
    finally:
        for stack in stacks:
            stack.stop()
        if server is not None:
            server.stop()
        if tree is not None:
            remove_tree(tree)
        services.stop()
    report = render(facts)
    (args.out / "report.md").write_text(report)
    (args.out / "report.json").write_text(json.dumps(facts, indent=2, default=str))
    print(report)
    say(f"written to {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
