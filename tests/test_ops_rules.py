"""Alert rules, the Grafana dashboard and compose's observability profile name only real metrics."""
from __future__ import annotations

import json
from typing import Any, Iterator

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from tests.conftest import ROOT

ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "kasparro.json"
# Prometheus writes `up` for every scrape target itself; /metrics does not.
BUILTIN = {"up"}


def _walk(node: Any, found: set[str]) -> None:
    if type(node).__name__ == "VectorSelector":
        found.add(node.name)
        return
    for attr in ("lhs", "rhs", "expr", "args", "param", "vector_selector"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, (list, tuple)) else [child]:
            if item is not None:
                _walk(item, found)


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression selects, from PromQL's own grammar (promql-parser);
    a syntax error raises."""
    found: set[str] = set()
    _walk(promql_parser.parse(expr), found)
    return found - BUILTIN


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> Iterator[str]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]


def _exposed(app: Any) -> tuple[set[str], dict[str, str]]:
    """Sample and family names /metrics serves now, and each family's type."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.get_data(as_text=True)))
    # A family without samples yet (no notification today) is still declared by /metrics.
    names = {s.name for family in families for s in family.samples} | \
        {family.name for family in families}
    return names, {family.name: family.type for family in families}


def test_metric_names_from_promql() -> None:
    expr = ('(time() - a_seconds{source="x"}) > on(source) b_seconds '
            'unless sum by (queue) (rate(c_total[5m])) or absent(up{job="y"})')
    assert promql_metrics(expr) == {"a_seconds", "b_seconds", "c_total"}


def test_rules_cover_the_issue_and_use_exposed_metrics(clean_db: Engine, app: Any) -> None:
    # One real run, so that every family (timestamps, data age) has samples.
    assert app.test_cli_runner().invoke(args=["etl", "run", "--source", "csv"]).exit_code == 0
    names, types = _exposed(app)
    rules = _alert_rules()
    alerts = {rule["alert"] for rule in rules}
    assert {"KasparroSourceStale", "KasparroSourceFailing", "KasparroNoWorkers",
            "KasparroQueueBackingUp"} <= alerts
    used: set[str] = set()
    for rule in rules:
        metrics = promql_metrics(rule["expr"])
        assert metrics <= names, (rule["alert"], metrics - names)
        used |= metrics
    for name in ("kasparro_source_last_success_timestamp_seconds",
                 "kasparro_source_freshness_objective_seconds",
                 "kasparro_source_consecutive_failures", "kasparro_workers_online",
                 "kasparro_queue_depth"):
        assert name in used and types[name] == "gauge", name
    dashboard = set().union(*(promql_metrics(e) for e in _dashboard_exprs()))
    assert dashboard <= names, dashboard - names
    assert "kasparro_source_data_age_seconds" in dashboard


def test_compose_profile_wires_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        # Loopback only, as every other published port.
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"])
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "./ops/prometheus/alerts.yml:/etc/prometheus/alerts.yml" in mounts
    prometheus = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:8000"]
    assert "./ops/grafana/kasparro.json" in " ".join(services["grafana"]["volumes"])
    text = (ROOT / "docker-compose.yml").read_text().lower()
    assert "gf_security_admin_password" not in text and "admin_user" not in text
