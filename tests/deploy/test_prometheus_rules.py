"""deploy/prometheus: the scrape config and alert rules are well formed, every expression
parses as PromQL, and every alert has a runbook in docs/operations.md."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.observability import (
    ROOT,
    alert_rules,
    metric_names,
    rule_files,
    rule_queries,
)

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# What the issue asks the rules to watch, by the metric that shows it.
REQUIRED_SIGNALS = {
    "error rate": "promoter_api_request_count_total",
    "p99 latency": "promoter_api_request_duration_seconds_bucket",
    "outbox backlog / consumer lag": "promoter_message_queue_size",
    "DLQ growth": "promoter_dlq_messages_total",
    "settlement lag": "promoter_settlement_lag_seconds",
    "ledger verify failures": "promoter_ledger_verify_failures_total",
}


def test_rule_files_exist_and_every_rule_is_complete() -> None:
    assert rule_files(), "no rule files in deploy/prometheus/rules"
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in alert_rules():
        assert re.fullmatch(r"Tuike[A-Z][A-Za-z0-9]+", rule["alert"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["runbook_url"] == (f"docs/operations.md#{rule['alert'].lower()}")
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule["for"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}


@pytest.mark.parametrize("query", rule_queries(), ids=lambda q: q.where)
def test_rule_expression_parses(query: object) -> None:
    assert metric_names(query.expr)  # type: ignore[attr-defined]


def test_bad_expressions_are_refused_by_the_parser() -> None:
    with pytest.raises(ValueError):
        metric_names("sum(rate(promoter_api_request_count_total[5m])")
    with pytest.raises(ValueError):
        metric_names('{__name__=~"promoter_.*"}')


def test_rules_watch_what_the_issue_asks_for() -> None:
    watched = set().union(*(metric_names(q.expr) for q in rule_queries()))
    for signal, metric in REQUIRED_SIGNALS.items():
        assert metric in watched, f"no alert on {signal} ({metric})"


def test_every_alert_has_a_runbook_section() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in operations.splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        assert rule["alert"].lower() in headings, f"docs/operations.md lacks ### {rule['alert']}"


def test_scrape_config_loads_every_rule_file_and_scrapes_every_process() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    targets = {
        target
        for job in config["scrape_configs"]
        if job["job_name"].startswith("tuike-")
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {
        "gateway:8000",
        "user:8001",
        "order:8002",
        "commission:8003",
        "stats:8004",
    }
    for job in config["scrape_configs"]:
        assert DURATION.match(job.get("scrape_interval", config["global"]["scrape_interval"]))
