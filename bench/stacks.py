"""Code trees and their own stacks: jobs submitted and run the way users run them.

A CodeTree is a checkout of the project: the working tree (the code under test) or a commit
checked out into a temporary `git worktree` under var/bench/trees (`--baseline-ref`). A
TreeStack is what `make run` would start from that tree, minus beat and gunicorn: a database
of its own migrated by the tree's migrations, the tree's `celery -A worker worker` with the
command line of the tree's own scripts/stack.py, and the tree's app answering POST /jobs
(bench/submitter.py, in a process of the tree). The driver never imports a tree's code: it
goes through those processes (PYTHONPATH and working directory = the tree) and through what
did not change between commits (the task names, the jobs and runs rows, POST /jobs), so a
baseline with another module layout (before e8c39b3: shared/runs.py etc.) runs as it is.
"""
from __future__ import annotations

import ast
import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
from sqlalchemy import text

from bench.common import BENCH_DIR, BenchDatabase, say, stop_process
from scripts.stack import ROOT

TREES_DIR = BENCH_DIR / "trees"
TERMINAL = ("succeeded", "partial", "failed", "skipped")
# What `make run` starts when a tree's scripts/stack.py cannot be read (see worker_argv).
DEFAULT_WORKER_ARGV = ["-m", "celery", "-A", "worker", "worker", "-l", "INFO"]


def _git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass(frozen=True)
class CodeTree:
    """A checkout of the project: `label` names it in the table, `commit` is what it holds."""

    label: str
    root: Path
    commit: str
    temporary: bool = False

    def python_env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` for a process of this tree: its modules first, nothing of another tree's."""
        out = {k: v for k, v in env.items() if k != "COVERAGE_PROCESS_START"}
        out["PYTHONPATH"] = str(self.root)
        return out


def working_tree() -> CodeTree:
    """The code under test: this working tree, uncommitted changes included."""
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return CodeTree("this tree", ROOT, f"{head}{' + changes' if dirty else ''}")


def checkout(ref: str) -> CodeTree:
    """`ref` checked out (detached) into var/bench/trees/<sha>; reused when already there."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = TREES_DIR / sha[:12]
    if path.exists():
        try:
            if _git("rev-parse", "HEAD", cwd=path) == sha:
                return CodeTree(ref, path, sha[:12], temporary=True)
        except subprocess.CalledProcessError:
            pass
        remove_tree(CodeTree(ref, path, sha[:12], temporary=True))
    TREES_DIR.mkdir(parents=True, exist_ok=True)
    say(f"checking out {ref} ({sha[:12]}) into {path}")
    _git("worktree", "add", "--detach", str(path), sha)
    return CodeTree(ref, path, sha[:12], temporary=True)


def remove_tree(tree: CodeTree) -> None:
    """Remove a checkout made by `checkout` (the working tree is never touched)."""
    if not tree.temporary or tree.root == ROOT:
        return
    try:
        _git("worktree", "remove", "--force", str(tree.root))
    except subprocess.CalledProcessError:
        shutil.rmtree(tree.root, ignore_errors=True)
        _git("worktree", "prune")


def worker_argv(tree: CodeTree, env: dict[str, str] | None = None) -> list[str]:
    """The worker command line of the tree's `make run` (its scripts/stack.py).

    run_stack's `commands` dict maps "worker" to a list. Its literal items are read here; any
    other item (e.g. `",".join(queues())`, the queues of that tree) is evaluated by a process
    of the tree, in the namespace of the tree's own scripts.stack plus the imports it makes
    anywhere, where `sys.executable` is this venv's Python as well. A tree where no such list
    is found gets DEFAULT_WORKER_ARGV.
    """
    try:
        module = ast.parse((tree.root / "scripts" / "stack.py").read_text())
    except (OSError, SyntaxError):
        return [sys.executable, *DEFAULT_WORKER_ARGV]
    for node in ast.walk(module):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if (isinstance(key, ast.Constant) and key.value == "worker"
                    and isinstance(value, ast.List)):
                return _evaluate(tree, module, value.elts, env or dict(os.environ))
    return [sys.executable, *DEFAULT_WORKER_ARGV]


# In a process of the tree: its launcher's namespace plus every import the launcher makes
# anywhere (some are local to run_stack), then the items.
_EVALUATE = (
    "import json, sys\n"
    "import scripts.stack as launcher\n"
    "space = dict(vars(launcher))\n"
    "imports, items = json.loads(sys.argv[1])\n"
    "for statement in imports:\n"
    "    try:\n"
    "        exec(statement, space)\n"
    "    except Exception:\n"
    "        pass\n"
    "print(json.dumps([str(eval(item, space)) for item in items]))\n"
)


def _evaluate(tree: CodeTree, module: ast.Module, items: list[ast.expr],
              env: dict[str, str]) -> list[str]:
    """The items of a command list: literals as they are, the rest evaluated in the tree."""
    if all(isinstance(i, ast.Constant) and isinstance(i.value, str)
           or ast.unparse(i) == "sys.executable" for i in items):
        return [str(i.value) if isinstance(i, ast.Constant) else sys.executable for i in items]
    imports = [ast.unparse(n) for n in ast.walk(module)
               if isinstance(n, (ast.Import, ast.ImportFrom))]
    done = subprocess.run(
        [sys.executable, "-c", _EVALUATE,
         json.dumps([imports, [ast.unparse(i) for i in items]])],
        cwd=tree.root, env=tree.python_env(env), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not read the worker command of {tree.root}/scripts/stack.py:"
                           f" {done.stderr[-2000:]}")
    argv: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return argv


def _redis_url(base: str, db: int) -> str:
    return base.rsplit("/", 1)[0] + f"/{db}" if base.count("/") >= 3 else f"{base}/{db}"


def _read_line(stream: IO[bytes], proc: subprocess.Popen[bytes], timeout: float,
               what: str) -> dict[str, Any]:
    """The next JSON line of a child's stdout, waiting at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            line = stream.readline()
            if line:
                answer: dict[str, Any] = json.loads(line)
                return answer
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")


class TreeStack:
    """A tree's own database, Celery worker and app, on the bench's PostgreSQL and Redis."""

    def __init__(self, tree: CodeTree, env: dict[str, str], redis_db: int, name: str,
                 db_settings: dict[str, str] | None = None) -> None:
        self.tree = tree
        # ALTER DATABASE ... SET name = value, before the worker connects (bench.profile).
        self.db_settings = db_settings or {}
        self.name = name
        self.dir = BENCH_DIR / "stacks" / name
        self.csv_dir = self.dir / "csv"
        self.log_dir = self.dir / "log"
        self.base_env = env
        self.redis_db = redis_db
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        self.db: BenchDatabase | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.submitter: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def start(self, warm_up: int = 1) -> None:
        """A fresh database migrated by the tree, then its worker and app; `warm_up` jobs."""
        if self.csv_dir.exists():
            shutil.rmtree(self.csv_dir)
        self.csv_dir.mkdir(parents=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.db = BenchDatabase(self.base_env["DATABASE_URL"])
        self.env = self.tree.python_env({
            **self.base_env, "DATABASE_URL": self.db.url, "CSV_DIR": str(self.csv_dir),
            "REDIS_URL": _redis_url(self.base_env["REDIS_URL"], self.redis_db),
            "BROKER_KEY_PREFIX": self.prefix, "PYTHONUNBUFFERED": "1",
            # The app's jobs quota (10/minute) is for clients, not for a bench's rounds.
            "API_JOBS_RATE_LIMIT": "100000/minute",
        })
        self._check_imports()
        self.db.migrate(self.env, root=self.tree.root)
        if self.db_settings:
            with self.db.admin.connect() as conn:
                for name, value in self.db_settings.items():
                    conn.exec_driver_sql(
                        f'ALTER DATABASE "{self.db.name}" SET {name} = %s', (value,))
        self.worker = self._start_worker()
        self.submitter = self._start_submitter()
        # A worker child lives across tasks: what a process does once (imports, the ORM's
        # mappers, pooled connections, compiled statements) is not part of a run's cost. The
        # prefork pool hands a job's extract to the same idle child every time, its normalize
        # now and then to another: two empty jobs warm both, mostly.
        for _ in range(warm_up):
            self.run_job(timeout=120)

    def _check_imports(self) -> None:
        """The tree's processes import the tree's packages (not the editable install's)."""
        out = subprocess.run(
            [sys.executable, "-c", "import api, shared, worker; "
             "print('\\n'.join(m.__file__ for m in (api, shared, worker)))"],
            cwd=self.tree.root, env=self.env, capture_output=True, text=True)
        files = out.stdout.split()
        if out.returncode != 0 or len(files) != 3 or not all(
                Path(f).resolve().is_relative_to(self.tree.root.resolve()) for f in files):
            raise RuntimeError(f"{self.name}: the tree's packages do not import from "
                               f"{self.tree.root}: {out.stdout}{out.stderr[-2000:]}")

    def _start_worker(self) -> subprocess.Popen[bytes]:
        log = self.log_dir / "worker.log"
        argv = worker_argv(self.tree, self.env) + ["-n", f"{self.name}-{uuid.uuid4().hex[:6]}@%h"]
        start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, cwd=self.tree.root, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "ready." in log.read_text(errors="replace")[start:]:
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        stop_process(proc)
        raise RuntimeError(f"{self.name}: celery worker not ready; see {log}")

    def _start_submitter(self) -> subprocess.Popen[bytes]:
        source = (ROOT / "bench" / "submitter.py").read_text()
        with (self.log_dir / "submitter.log").open("ab") as err:
            proc = subprocess.Popen([sys.executable, "-c", source], cwd=self.tree.root,
                                    env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, start_new_session=True)
        assert proc.stdout is not None
        _read_line(proc.stdout, proc, 120, f"{self.name}: the app (POST /jobs)")
        return proc

    @property
    def worker_pid(self) -> int:
        """The worker's main process (its children run the tasks)."""
        assert self.worker is not None
        return self.worker.pid

    def link(self, *files: Path) -> None:
        """Make the worker's CSV folder hold exactly these files (hard links)."""
        for old in self.csv_dir.iterdir():
            old.unlink()
        for file in files:
            os.link(file.resolve(), self.csv_dir / file.name)

    def run_job(self, sources: str = "csv", timeout: float = 3600) -> dict[str, Any]:
        """POST /jobs, then poll the job row until it is terminal; what it took and did.

        `seconds` is the job row's own span, created_at (the POST's insert) to finished_at
        (set by normalize when the last run ended); `wall` the same seen from here (the POST
        plus the polling's 20 ms resolution).
        """
        assert self.submitter is not None and self.submitter.stdin is not None
        assert self.submitter.stdout is not None and self.db is not None
        started = time.perf_counter()
        self.submitter.stdin.write(f"{sources}\n".encode())
        self.submitter.stdin.flush()
        answer = _read_line(self.submitter.stdout, self.submitter, 60,
                            f"{self.name}: the app (POST /jobs)")
        if answer["status"] not in (200, 202) or answer["job_id"] is None:
            raise RuntimeError(f"{self.name}: POST /jobs answered {answer}")
        job_id = int(answer["job_id"])
        deadline = time.monotonic() + timeout
        engine = self.db.engine.execution_options(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            while True:
                status = conn.execute(text("SELECT status FROM jobs WHERE id = :id"),
                                      {"id": job_id}).scalar_one()
                if status in TERMINAL:
                    break
                if time.monotonic() > deadline or (self.worker and self.worker.poll() is not None):
                    raise RuntimeError(f"{self.name}: job {job_id} still {status}; see "
                                       f"{self.log_dir / 'worker.log'}")
                time.sleep(0.02)
            wall = time.perf_counter() - started
            job = dict(conn.execute(text(
                "SELECT status, extract(epoch FROM finished_at - created_at)::float AS seconds "
                "FROM jobs WHERE id = :id"), {"id": job_id}).mappings().one())
            runs = [dict(r) for r in conn.execute(text(
                "SELECT to_jsonb(r) AS row FROM runs r WHERE job_id = :id ORDER BY id"),
                {"id": job_id}).scalars()]
        keep = ("source", "status", "fetched", "inserted", "unchanged", "rejected",
                "raw_inserted", "error")
        result = {"job_id": job_id, "job_status": job["status"], "seconds": job["seconds"],
                  "wall": wall, "post_seconds": answer["seconds"],
                  "runs": [{k: r.get(k) for k in keep} for r in runs]}
        if job["status"] != "succeeded":
            raise RuntimeError(f"{self.name}: job {job_id} {job['status']}: {result['runs']}")
        return result

    def children_peak_rss_mb(self) -> float:
        """The highest peak RSS (VmHWM) among the worker's child processes, in MB."""
        peak = 0.0
        try:
            children = psutil.Process(self.worker_pid).children(recursive=True)
        except psutil.Error:
            return peak
        for child in children:
            try:
                status = Path(f"/proc/{child.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        return peak

    def stop(self) -> None:
        """Stop the app and the worker, drop the database, remove the broker's keys."""
        for proc in (self.submitter, self.worker):
            if proc is not None:
                if proc.stdin is not None:
                    proc.stdin.close()
                stop_process(proc)
                if proc.stdout is not None:
                    proc.stdout.close()
        self.submitter = self.worker = None
        if self.db is not None:
            self.db.drop()
            self.db = None
        if self.env:
            import redis

            client = redis.Redis.from_url(self.env["REDIS_URL"])
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
