"""GET /metrics reports what workers did, read from PostgreSQL."""
from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text as text_sql


def test_metrics_reflect_a_job_run_elsewhere(clean_db: Any, app: Any) -> None:
    # The job runs through the CLI, i.e. not in the API's request path.
    assert app.test_cli_runner().invoke(args=["etl", "run", "--source", "csv"]).exit_code == 0
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }
    rows = 2991 + 3776 + 399
    assert samples[("kasparro_records", (("layer", "quotes"), ("source", "csv")))] == rows
    assert samples[("kasparro_records", (("layer", "raw"), ("source", "csv")))] == rows
    assert samples[("kasparro_runs", (("source", "csv"), ("status", "succeeded")))] == 1
    assert samples[("kasparro_runs_finished_total",
                    (("source", "csv"), ("status", "succeeded")))] == 1
    assert ("kasparro_last_success_timestamp_seconds", (("source", "csv"),)) in samples
    assert samples[("kasparro_http_requests_total", (("source", "csv"),))] == 0


def _types(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_metric_types_follow_prometheus_conventions(
    clean_db: Any, app: Any, settings: Any, auth_headers: dict[str, str]
) -> None:
    """Gauges for current states; counters only for what never goes down, named `_total`."""
    client = app.test_client()
    assert app.test_cli_runner().invoke(args=["etl", "run", "--source", "csv"]).exit_code == 0
    # A queued job (no worker here): its run is `queued` now and will leave that state.
    assert client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers).status_code == 202
    text = client.get("/metrics").get_data(as_text=True)
    types = _types(text)
    assert types["kasparro_runs"] == "gauge"
    assert types["kasparro_records"] == "gauge"
    assert types["kasparro_last_success_timestamp_seconds"] == "gauge"
    for name in ("kasparro_runs_finished", "kasparro_drift_events", "kasparro_http_requests",
                 "kasparro_http_retries", "kasparro_rate_limit_waits",
                 "kasparro_rate_limit_wait_seconds"):
        assert types[name] == "counter", name
    assert "# TYPE kasparro_runs gauge" in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    queued = samples[("kasparro_runs", (("source", "csv"), ("status", "queued")))]
    assert queued == 1
    # Only terminal outcomes are counted as finished: a queued run is not.
    assert ("kasparro_runs_finished_total", (("source", "csv"), ("status", "queued"))) \
        not in samples
    # The queued run starts and ends (as a worker would): the gauge goes down, the
    # counter of finished runs only goes up.
    with clean_db.begin() as conn:
        conn.execute(text_sql("UPDATE runs SET status = 'failed', started_at = now(), "
                              "finished_at = now() WHERE status = 'queued'"))
    after = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(
            client.get("/metrics").get_data(as_text=True)) for s in family.samples
    }
    assert after[("kasparro_runs", (("source", "csv"), ("status", "queued")))] == 0
    finished = ("kasparro_runs_finished_total", (("source", "csv"), ("status", "failed")))
    assert after[finished] == samples.get(finished, 0) + 1
    succeeded = ("kasparro_runs_finished_total", (("source", "csv"), ("status", "succeeded")))
    assert after[succeeded] == samples[succeeded] == 1
