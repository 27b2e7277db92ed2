"""One ingest job in a fresh process, the median of rounds, and the bench's big Kaggle file.

Shared by the in-process, memory and /data cases (bench.__main__, bench.data_load).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from bench.common import BENCH_DIR
from bench.gen import kaggle_file
from scripts.stack import ROOT


def run_ingest(env: dict[str, str], csv_dir: Path) -> dict[str, Any]:
    """One csv job in a fresh process (bench.ingest); its JSON report."""
    out = subprocess.run([sys.executable, "-m", "bench.ingest", str(csv_dir)], cwd=ROOT,
                         env=env, check=True, capture_output=True, text=True)
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if report["run"]["status"] != "succeeded":
        raise RuntimeError(f"ingest run did not succeed: {report}")
    return report


def median(values: list[Any], key: Callable[[Any], float] | None = None) -> Any:
    """The middle element of `values`, ordered by `key` (the upper one of an even count)."""
    return sorted(values, key=key)[len(values) // 2]


def big_file(args: argparse.Namespace) -> Path:
    """The `--coins` x `--days` Kaggle file (made once, kept in var/bench/data)."""
    return kaggle_file(BENCH_DIR / "data" / f"kaggle_{args.coins}x{args.days}.csv", args.coins,
                       args.days)
