"""Beat enqueues a job right after start, so a fresh stack fills itself; two beats, one job."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shared.jobs.schedule import tick_key, tick_time
from tests.conftest import ROOT, count, queue_lengths
from tests.helpers.waiting import poll

pytestmark = pytest.mark.e2e

# What shared.jobs.schedule logs for each tick message a worker runs.
TICK_LINE = re.compile(r"tick incremental-etl (\S+): job (\d+) (created|already created)")


def _start_beat(env: dict[str, str], tmp_path: Path, name: str
                ) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
             "-s", str(tmp_path / f"{name}-schedule")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _stop(beats: list[subprocess.Popen[bytes]]) -> None:
    for beat in beats:
        beat.terminate()
    for beat in beats:
        beat.wait(10)


def test_beat_fills_a_fresh_stack_without_any_request(
    clean_db: Any, client: Any, worker_factory: Any, csv_dir: Path, base_env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = {"CSV_DIR": str(csv_dir), "ETL_SOURCES": "csv", "ETL_SCHEDULE_SECONDS": "300"}
    worker = worker_factory(env)
    ticks_at_start = {tick_key("incremental-etl", tick_time(300))}
    beat, _ = _start_beat({**worker.env, **env}, tmp_path, "beat")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if count(clean_db, "jobs", "trigger = 'beat' AND status = 'succeeded'"):
                break
            time.sleep(0.5)
        ticks_at_start.add(tick_key("incremental-etl", tick_time(300)))
        # The start tick's job (its interval's; a boundary may have passed meanwhile).
        assert count(clean_db, "jobs", "trigger = 'beat' AND status = 'succeeded' AND "
                     "idempotency_key IN :keys", keys=tuple(ticks_at_start)) == 1
        body = client.get("/data?symbol=BTC&total=true").get_json()
        assert body["pagination"]["total"] == 1 and body["data"][0]["source"] == "csv"
    finally:
        _stop([beat])


def test_two_beats_make_one_job_per_tick(
    clean_db: Any, worker_factory: Any, csv_dir: Path, redis_url: str, tmp_path: Path,
) -> None:
    """A second beat started by mistake sends every tick again; each tick is still one job."""
    env = {"CSV_DIR": str(csv_dir), "ETL_SOURCES": "csv", "ETL_SCHEDULE_SECONDS": "2",
           "ETL_REAPER_INTERVAL_SECONDS": "600", "NOTIFY_EVALUATE_SECONDS": "600"}
    worker = worker_factory(env)
    started = [_start_beat({**worker.env, **env}, tmp_path, f"beat-{i}") for i in range(2)]
    beats = [proc for proc, _ in started]

    def messages_per_tick() -> dict[str, list[tuple[int, str]]]:
        seen: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for tick, job_id, outcome in TICK_LINE.findall(worker.log_text()):
            seen[tick].append((int(job_id), outcome))
        return seen

    try:
        # Several ticks, each sent by both beats (the start ticks aside): wait for them.
        poll(messages_per_tick,
             lambda seen: sum(1 for sent in seen.values() if len(sent) >= 2) >= 5,
             60, "five ticks sent by both beats")
        for _, log in started:
            assert log.read_text(errors="replace").count(
                "Sending due task incremental-etl") >= 4
    finally:
        _stop(beats)
    # Ticks sent just before the beats stopped may still be on their way to a job.
    poll(lambda: (queue_lengths(redis_url),
                  count(clean_db, "jobs", "status IN ('queued', 'running')")),
         lambda state: not any(state[0].values()) and state[1] == 0, 60, "the broker drained")
    seen = messages_per_tick()
    for tick, sent in seen.items():
        # Every message of one tick names the same job, and exactly one created it.
        assert len({job_id for job_id, _ in sent}) == 1, (tick, sent)
        assert [outcome for _, outcome in sent].count("created") == 1, (tick, sent)
    with clean_db.connect() as conn:
        jobs = dict(conn.execute(text(
            "SELECT idempotency_key, id FROM jobs WHERE trigger = 'beat'")).all())
    assert jobs == {tick_key("incremental-etl", tick): sent[0][0] for tick, sent in seen.items()}
    print(f"{len(jobs)} ticks, {sum(len(sent) for sent in seen.values())} tick messages: "
          + ", ".join(f"{tick[11:19]}x{len(sent)}" for tick, sent in sorted(seen.items())))
    # Duplicates were offered and refused: more tick messages than jobs.
    assert sum(len(sent) for sent in seen.values()) >= len(jobs) + 5
    assert count(clean_db, "jobs") == len(jobs)
    assert count(clean_db, "jobs", "status IN ('succeeded', 'skipped')") == len(jobs)
