"""GET /metrics reports what workers did, read from PostgreSQL."""
from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


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
    assert samples[("kasparro_runs_total", (("source", "csv"), ("status", "succeeded")))] == 1
    assert ("kasparro_last_success_timestamp_seconds", (("source", "csv"),)) in samples
    assert samples[("kasparro_http_requests_total", (("source", "csv"),))] == 0
