"""Benchmarks behind `make bench`: ingest at scale, re-runs, appends, /data under load, sources."""
