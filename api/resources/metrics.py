"""GET /metrics: Prometheus text built from PostgreSQL at scrape time.

The ETL runs in worker processes, so in-process counters in the API would only ever see the
API's own work; reading the run records instead makes every API replica report the same,
complete figures.

Nothing here counts a table that grows every day: counts are the writers' own
(shared.storage.counters) and storage figures catalog reads (shared.storage.usage).

Types follow Prometheus' conventions: a gauge for a current state (rows per layer, runs in
each status now: a run leaves `queued` and `running`, so those counts go down), a counter
(exposed with `_total`) only for what never goes down (finished runs by outcome, drift events,
upstream requests summed over runs, which are never deleted).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api.db import get_session
from api.http.read_timeout import (
    count_timeout, is_statement_timeout, timeout_counts, use_probe_timeout,
)
from api.broker import check_workers, guarded, queue_depths
from shared.queries.freshness import STATES, SourceState, source_states
from shared.queries.notifications import notification_counts
from shared.models import TERMINAL_STATUSES
from shared.queries.stats import collect_stats, http_totals
from shared.storage import counters
from shared.storage.usage import storage_figures

blp = Blueprint("metrics", __name__)
# The scrape's reads have the probes' own bound (api/http/read_timeout.py), and what times out is
# left out rather than failing the scrape.
blp.before_request(use_probe_timeout)


class _EtlCollector:
    """Turns `collect_stats` and `http_totals` into metric families (None: left out)."""

    def __init__(self, stats: dict[str, Any] | None,
                 http: dict[str, dict[str, float]] | None) -> None:
        self.stats, self.http = stats, http

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family once."""
        if self.stats is not None:
            yield from self._stats_families(self.stats)
        if self.http is not None:
            yield from self._http_families(self.http)

    @staticmethod
    def _stats_families(stats: dict[str, Any]) -> Iterator[Metric]:
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
        # Anomalies are only ever added (GET /anomalies): a counter per kind and source.
        anomalies = CounterMetricFamily("kasparro_anomalies", "Run and data anomalies recorded",
                                        labels=["kind", "source"])
        for entry in stats["sources"]:
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
            for kind, n in entry["anomalies"].items():
                anomalies.add_metric([kind, source], n)
        yield from (records, runs, finished, last_ok, duration, drift, anomalies)

    @staticmethod
    def _http_families(http: dict[str, dict[str, float]]) -> Iterator[Metric]:
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
        for source, values in sorted(http.items()):
            for name, family in families.items():
                family.add_metric([source], values[name])
        yield from families.values()


class _OpsCollector:
    """Per-source freshness (shared.queries.freshness), queue depth and workers online."""

    def __init__(self, states: dict[str, SourceState], queues: dict[str, int],
                 workers: int | None, notifications: dict[tuple[str, str], int],
                 timeouts: dict[str, int] | None) -> None:
        self.states, self.queues, self.workers = states, queues, workers
        self.notifications, self.timeouts = notifications, timeouts

    def collect(self) -> Iterator[Metric]:
        """Yield the operations families (a source never seen succeeding has no timestamp)."""
        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["source"] if labels is None else labels)

        last_ok = gauge("kasparro_source_last_success_timestamp_seconds",
                        "Unix time of the source's last succeeded run")
        objective = gauge("kasparro_source_freshness_objective_seconds",
                          "Seconds after its last success at which the source is stale")
        age = gauge("kasparro_source_age_seconds", "Seconds since the source's last success")
        data_age = gauge("kasparro_source_data_age_seconds",
                         "Seconds since the newest observation the source published")
        failures = gauge("kasparro_source_consecutive_failures",
                         "Failed or partial runs since the source's last success")
        state = gauge("kasparro_source_state", "1 for the source's current state, else 0",
                      ["source", "state"])
        for name, st in self.states.items():
            objective.add_metric([name], st.objective_seconds)
            failures.add_metric([name], st.consecutive_failures)
            if st.last_success_at is not None and st.age_seconds is not None:
                last_ok.add_metric([name], st.last_success_at.timestamp())
                age.add_metric([name], st.age_seconds)
            if st.data_age_seconds is not None:
                data_age.add_metric([name], st.data_age_seconds)
            for value in STATES:
                state.add_metric([name, value], 1.0 if st.state == value else 0.0)
        yield from (last_ok, objective, age, data_age, failures, state)
        depth = gauge("kasparro_queue_depth", "Tasks waiting in the broker queue", ["queue"])
        for queue, n in sorted(self.queues.items()):
            depth.add_metric([queue], n)
        yield depth
        sent = gauge("kasparro_notifications_24h",
                     "Notifications created in the last 24 h, per target and status now",
                     ["target", "status"])
        for (target, status), n in sorted(self.notifications.items()):
            sent.add_metric([target, status], n)
        yield sent
        if self.workers is not None:
            workers = GaugeMetricFamily("kasparro_workers_online",
                                        "Celery workers that answered a ping (cached briefly)")
            workers.add_metric([], self.workers)
            yield workers
        if self.timeouts is not None:
            timeouts = CounterMetricFamily(
                "kasparro_api_statement_timeouts",
                "API reads cancelled by their statement timeout, per route (all processes)",
                labels=["route"])
            for route, n in sorted(self.timeouts.items()):
                timeouts.add_metric([route], n)
            yield timeouts


class _StorageCollector:
    """Storage in sight (shared.storage.usage): catalog figures and the samples' growth."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        """Bytes per table and partition, the database, per quote, growth and days left."""
        f = self.figures
        tables = GaugeMetricFamily("kasparro_storage_bytes",
                                   "Bytes of a table (indexes and TOAST included)",
                                   labels=["table"])
        parts = GaugeMetricFamily("kasparro_storage_partition_bytes", "Bytes of a partition",
                                  labels=["table", "partition"])
        for entry in f["tables"]:
            tables.add_metric([entry["table"]], entry["bytes"])
            for part in entry["partitions"]:
                parts.add_metric([entry["table"], part["partition"]], part["bytes"])
        yield from (tables, parts)
        singles = [
            ("kasparro_storage_database_bytes", "pg_database_size", f["database_bytes"]),
            ("kasparro_storage_budget_bytes", "STORAGE_BUDGET_BYTES", f["budget_bytes"]),
            ("kasparro_storage_bytes_per_quote", "Bytes of quotes and raw tables per quote",
             f["bytes_per_quote"]),
            ("kasparro_storage_growth_bytes_per_day", "Database growth per day (hourly samples)",
             f["growth_bytes_per_day"]),
            ("kasparro_storage_days_left", "Days until the budget at that growth",
             f["days_left"]),
        ]
        for name, doc, value in singles:
            if value is not None:  # absent, not 0, while unknown (no growth measured yet)
                gauge = GaugeMetricFamily(name, doc)
                gauge.add_metric([], value)
                yield gauge


def _workers_online() -> int | None:
    """The health check's cached worker ping count; None when the broker did not answer."""
    result = check_workers()
    return int(result["count"]) if "count" in result else None


def _within_limit(session: Session, read: Callable[[], Any], default: Any) -> Any:
    """read(), or `default` when a statement of it timed out (counted; its families left out).

    A scrape answers whatever one table's lock or one slow count does to the rest.
    """
    try:
        return read()
    except OperationalError as exc:
        if not is_statement_timeout(exc):
            raise
        session.rollback()  # the next read starts a transaction of its own
        count_timeout()
        return default


@blp.route("/metrics")
def metrics() -> Response:
    """Prometheus exposition of records, runs, freshness, drift, queues and upstream traffic."""
    session = get_session()
    registry = CollectorRegistry(auto_describe=False)
    # The writers' kept counts, read once for the three readers below (None: each tries).
    kept = _within_limit(session, lambda: counters.totals(session), None)
    registry.register(_EtlCollector(
        _within_limit(session, lambda: collect_stats(session, kept), None),
        _within_limit(session, lambda: http_totals(session, kept), None)))
    settings = current_app.config["SETTINGS"]
    storage = _within_limit(session, lambda: storage_figures(session, settings, kept), None)
    if storage is not None:
        registry.register(_StorageCollector(storage))
    now = datetime.now(timezone.utc)
    states = _within_limit(session, lambda: source_states(session, settings, now), {})
    notifications = _within_limit(
        session, lambda: notification_counts(session, now - timedelta(hours=24)), {})
    queues = guarded(queue_depths, None)
    # No ping when Redis did not answer: Celery would retry its connection for seconds.
    workers = guarded(_workers_online, None) if queues is not None else None
    # Read last, so that this scrape's own timeouts are in it.
    timeouts = guarded(timeout_counts, None) if queues is not None else None
    registry.register(_OpsCollector(states, queues or {}, workers, notifications, timeouts))
    replicas = current_app.extensions["db_replicas"]
    if replicas:  # DATABASE_READ_URLS: each replica's lag and whether reads go there
        registry.register(replicas)
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
