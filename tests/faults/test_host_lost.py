"""A worker host lost (F34): two worker nodes, the one running a run killed whole mid-run."""
from __future__ import annotations

import csv
import re
import signal
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import text

from tests.conftest import WorkerProcess, count
from tests.faults.conftest import FAULT_ENV, ROWS, Fault, source_lock_holder, worker_children
from tests.helpers.waiting import poll

pytestmark = pytest.mark.faults


def _source_rows(csv_dir: Path) -> set[tuple[str, datetime, Decimal]]:
    """Every (source_asset_id, observed_at, close) the generated CSV file holds."""
    with (csv_dir / "faults.csv").open(newline="") as handle:
        return {(f"{row['Symbol']}:{row['Name']}",
                 datetime.strptime(row["Date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc),
                 Decimal(row["Close"]))
                for row in csv.DictReader(handle)}


def _stored_rows(fault: Fault) -> list[tuple[str, datetime, Decimal]]:
    with fault.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(  # type: ignore[misc]
            "SELECT source_asset_id, observed_at, price_usd FROM quotes WHERE source = 'csv'"))]


def _alive(pid: int) -> bool:
    """Whether a process of that id still runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _received(worker: WorkerProcess, task_id: str) -> int:
    return len(re.findall(rf"\[{task_id}\] received", worker.log_text()))


def test_f34_worker_host_lost_mid_run_the_other_node_finishes_it_once(
    fault: Fault, fault_worker: Any, csv_dir: Path
) -> None:
    # Two nodes, as on two hosts that both mount the CSV files, each its own `-n` node name
    # and process tree. Which one takes the run is up to the broker.
    nodes = [fault_worker(concurrency=1), fault_worker(concurrency=1)]
    assert nodes[0].node != nodes[1].node
    job_id = fault.post_job()
    lost: list[WorkerProcess] = []

    def freeze_the_running_node() -> None:
        # The whole node stops (main process and child) at once: nothing it does meanwhile,
        # no ack, no heartbeat, no last batch, as when its host goes away.
        for node in nodes:
            if source_lock_holder(fault.engine, node, "csv") is not None:
                node.kill(signal.SIGSTOP)
                lost.append(node)
                return
        raise AssertionError("no node holds the CSV run's lock")

    committed = fault.pause_mid_run(freeze_the_running_node, ROWS // 4)
    (gone,) = lost
    (survivor,) = [node for node in nodes if node is not gone]
    with fault.engine.connect() as conn:
        task_id = conn.execute(text("SELECT celery_task_id FROM runs WHERE job_id = :j"),
                               {"j": job_id}).scalar_one()
    assert _received(gone, task_id) == 1 and _received(survivor, task_id) == 0
    processes = [gone.proc.pid] + [child.pid for child in worker_children(gone)]
    gone.kill(signal.SIGKILL)  # kill -9 of the node's whole process group
    gone.proc.wait(10)
    killed_at = time.monotonic()
    # The group's SIGKILL reaches each process; a child dies when the kernel gets to it.
    poll(lambda: [pid for pid in processes if _alive(pid)], lambda alive: not alive, 10,
         "the lost node's processes gone", 0.05)
    assert count(fault.engine, "quotes") == committed  # nothing moved while it was frozen

    # The survivor's restore sweep hands the unacknowledged message back once the visibility
    # timeout has passed; it resumes the run from the committed checkpoint.
    job = fault.wait_job(job_id, timeout=int(FAULT_ENV["CELERY_VISIBILITY_TIMEOUT"]) + 60)
    took = time.monotonic() - killed_at
    assert job["status"] == "succeeded", job
    assert _received(survivor, task_id) == 1
    visibility = int(FAULT_ENV["CELERY_VISIBILITY_TIMEOUT"])
    # Within the visibility timeout (counted from the delivery, before the kill), a sweep
    # (BROKER_RESTORE_INTERVAL_SECONDS) and the rest of the run.
    assert took < visibility + 30, took
    print(f"killed node {gone.node} with {committed}/{ROWS} quotes committed; "
          f"{survivor.node} finished the run {took:.1f} s after the kill")
    run = job["runs"][0]
    assert (run["attempts"], run["fetched"], run["inserted"]) == (2, ROWS, ROWS), run
    # Exactly once: the stored rows are the file's rows, each once (no gap, no duplicate).
    stored = _stored_rows(fault)
    assert len(stored) == len(set(stored)) == ROWS
    assert set(stored) == _source_rows(csv_dir)
    fault.assert_invariants()  # also: every queue and `unacked` empty, checkpoints monotonic
    fault.assert_clean_rerun_adds_nothing()
