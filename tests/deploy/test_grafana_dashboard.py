"""deploy/grafana: the provisioning points at the dashboard and the datasource it uses, and the
dashboard shows what SREs asked for with queries that parse."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.deploy.observability import (
    ROOT,
    dashboard_panels,
    dashboard_queries,
    dashboards,
    metric_names,
)

GRAFANA = ROOT / "deploy" / "grafana"
REQUIRED_PANELS = {
    "API rate by route": "promoter_api_request_count_total",
    "API latency by route": "promoter_api_request_duration_seconds_bucket",
    "commission calculation duration": "promoter_commission_calculation_duration_seconds_bucket",
    "queue sizes": "promoter_message_queue_size",
    "settlements": "promoter_settled_records_total",
    "withdrawals pending": "promoter_withdrawals_pending",
}


def test_provisioning_loads_the_dashboards_with_their_datasource() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in datasources}
    assert [source["url"] for source in datasources] == ["http://prometheus:9090"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "tuike.yml").read_text())[
        "providers"
    ]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert dashboards()
    for path in dashboards():
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["uid"] and document["title"]
        ids = [panel["id"] for panel in dashboard_panels(path)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard_panels(path):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel["targets"], panel["title"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q.where)
def test_dashboard_query_parses(query: object) -> None:
    assert metric_names(query.expr)  # type: ignore[attr-defined]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    shown = set().union(*(metric_names(q.expr) for q in dashboard_queries()))
    for what, metric in REQUIRED_PANELS.items():
        assert metric in shown, f"no panel for {what} ({metric})"
    by_route = [q.expr for q in dashboard_queries() if "promoter_api_request" in q.expr]
    assert all("path" in expr for expr in by_route), "API panels must break down by route"
