"""GET /metrics: Prometheus text built from PostgreSQL at scrape time.

The ETL runs in worker processes, so in-process counters in the API would only ever see the
API's own work; reading the run records instead makes every API replica report the same,
complete figures.

Types follow Prometheus' conventions: a gauge for a current state (rows per layer, runs in
each status now: a run leaves `queued` and `running`, so those counts go down), a counter
(exposed with `_total`) only for what never goes down (finished runs by outcome, drift events,
upstream requests summed over runs, which are never deleted).
"""
from __future__ import annotations

from typing import Any, Iterator

from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from api.db import get_session
from shared.models import TERMINAL_STATUSES
from shared.stats import collect_stats, http_totals

blp = Blueprint("metrics", __name__)


class _EtlCollector:
    """Turns `collect_stats` and `http_totals` into metric families."""

    def __init__(self, stats: dict[str, Any], http: dict[str, dict[str, float]]) -> None:
        self.stats, self.http = stats, http

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family once."""
        records = GaugeMetricFamily("kasparro_records", "Rows per source and layer",
                                    labels=["source", "layer"])
        runs = GaugeMetricFamily("kasparro_runs", "Runs per source in each status now",
                                 labels=["source", "status"])
        finished = CounterMetricFamily("kasparro_runs_finished",
                                       "Runs that ended, per source and outcome",
                                       labels=["source", "status"])
        last_ok = GaugeMetricFamily("kasparro_last_success_timestamp_seconds",
                                    "When the source last succeeded", labels=["source"])
        duration = GaugeMetricFamily("kasparro_run_duration_avg_seconds",
                                     "Average duration of succeeded runs", labels=["source"])
        drift = CounterMetricFamily("kasparro_drift_events", "Schema-drift events",
                                    labels=["source", "mapped"])
        for entry in self.stats["sources"]:
            source = entry["source"]
            for layer, n in entry["records"].items():
                records.add_metric([source, layer], n)
            for status, n in entry["runs_by_status"].items():
                runs.add_metric([source, status], n)
                if status in TERMINAL_STATUSES:
                    finished.add_metric([source, status], n)
            if entry["last_success"] and entry["last_success"]["finished_at"]:
                last_ok.add_metric([source], entry["last_success"]["finished_at"].timestamp())
            if entry["average_duration_ms"] is not None:
                duration.add_metric([source], entry["average_duration_ms"] / 1000)
            drift.add_metric([source, "true"], entry["drift"]["mapped"])
            drift.add_metric([source, "false"], entry["drift"]["unmapped"])
        yield from (records, runs, finished, last_ok, duration, drift)
        families = {
            "requests": CounterMetricFamily("kasparro_http_requests", "Upstream requests sent",
                                            labels=["source"]),
            "retries": CounterMetricFamily("kasparro_http_retries", "Upstream retries",
                                           labels=["source"]),
            "rate_limit_waits": CounterMetricFamily(
                "kasparro_rate_limit_waits", "Waits for the shared quota", labels=["source"]),
            "rate_limit_wait_seconds": CounterMetricFamily(
                "kasparro_rate_limit_wait_seconds", "Seconds spent waiting for the quota",
                labels=["source"]),
        }
        for source, values in sorted(self.http.items()):
            for name, family in families.items():
                family.add_metric([source], values[name])
        yield from families.values()


@blp.route("/metrics")
def metrics() -> Response:
    """Prometheus exposition of records, runs, freshness, drift and upstream traffic."""
    session = get_session()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EtlCollector(collect_stats(session), http_totals(session)))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
