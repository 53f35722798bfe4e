"""Reading the alert rules and the Grafana dashboard: their PromQL expressions and the metric
names those name (shared by the rule, dashboard and exported-metrics tests)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
# Series Prometheus makes itself rather than scraping them from a service.
PROMETHEUS_SYNTHETIC = {"up"}
# Grafana's variables, replaced by values PromQL accepts before parsing.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$service": ".*",
}
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*\w+\)$")


@dataclass(frozen=True)
class Query:
    where: str  # "rule TuikeHighErrorRate" / "panel 'Requests per second' A"
    expr: str


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in rule_files():
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in document["groups"]:
            rules.extend(group["rules"])
    return rules


def rule_queries() -> list[Query]:
    return [
        Query(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for rule in alert_rules()
    ]


def dashboard_panels(path: Path) -> list[dict[str, Any]]:
    document = json.loads(path.read_text(encoding="utf-8"))
    panels: list[dict[str, Any]] = []
    for panel in document["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def dashboard_queries() -> list[Query]:
    queries = []
    for path in dashboards():
        for panel in dashboard_panels(path):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append(
                    Query(f"{path.name} panel {panel['title']!r} {target['refId']}", expr)
                )
    return queries


def dashboard_variable_metrics() -> set[str]:
    """Metrics the dashboard's template variables read (``label_values(metric, label)``)."""
    names = set()
    for path in dashboards():
        document = json.loads(path.read_text(encoding="utf-8"))
        for variable in document.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            match = LABEL_VALUES.match(text or "")
            assert match, f"{path.name}: variable {variable['name']} query {text!r}"
            names.add(match["metric"])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (raises ValueError when it does not parse)."""
    names: set[str] = set()
    unnamed: list[str] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                unnamed.append(str(node))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    if unnamed:
        raise ValueError(f"selectors without a metric name: {unnamed}")
    return names


def all_named_metrics() -> dict[str, list[str]]:
    """metric name -> where it is used, over every rule and dashboard query."""
    used: dict[str, list[str]] = {}
    for query in [*rule_queries(), *dashboard_queries()]:
        for name in metric_names(query.expr):
            used.setdefault(name, []).append(query.where)
    for name in dashboard_variable_metrics():
        used.setdefault(name, []).append("dashboard variable")
    return used


def exported_series_names(family_name: str, family_type: str) -> set[str]:
    """The series names a family of the text exposition format can be queried by."""
    if family_type == "counter":
        return {f"{family_name}_total", f"{family_name}_created"}
    if family_type == "histogram":
        return {f"{family_name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")}
    if family_type == "summary":
        return {family_name, *(f"{family_name}_{s}" for s in ("count", "sum", "created"))}
    return {family_name}
