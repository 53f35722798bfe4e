"""docker-compose.yml: valid against the Compose Specification schema and wired the way the
issue asks (databases per service, KRaft Kafka with its topics, migrations first, readiness-
ordered start, Prometheus and Grafana provisioned)."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy.container import plan
from libs.common.messaging.envelope import ALL_TOPICS, dlq_topic

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"user": 8001, "order": 8002, "commission": 8003, "stats": 8004}
VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema, as vendored by the PyPI package check-jsonschema."""
    vendor = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``$$``)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        if match["op"] == "-" and not env.get(name):
            return str(match["arg"])
        if match["op"] == "?" and not env.get(name):
            raise ValueError(f"required variable {name}: {match['arg']}")
        return env.get(name, "")

    return VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    # Interpolated with an environment that sets none of our variables: the defaults must work.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUIKE_")}
    return dict(interpolate(raw, env))


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["depends_on"]["user"]["condition"] = "service_ready"
    broken["services"]["redis"]["helthcheck"] = {}
    schema = compose_schema()
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    assert len(errors) >= 2


def test_data_stores_are_mysql8_redis7_and_kraft_kafka(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["mysql"]["image"].startswith("mysql:8")
    assert services["redis"]["image"].startswith("redis:7")
    kafka = services["kafka"]
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert not any("zookeeper" in name for name in services)
    for name in ("mysql", "redis", "kafka"):
        assert "healthcheck" in services[name], name
        assert "ports" not in services[name], f"{name} must not be published"


def test_init_creates_a_database_per_service(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["mysql"]["volumes"]
    assert "./deploy/compose/mysql:/docker-entrypoint-initdb.d:ro" in mounts
    init_sql = "\n".join(
        path.read_text() for path in sorted((ROOT / "deploy" / "compose" / "mysql").glob("*.sql"))
    )
    created = set(re.findall(r"CREATE DATABASE IF NOT EXISTS `(\w+)`", init_sql))
    assert created == {f"tuike_{name}" for name in (*SERVICES, "gateway")}
    grants = set(re.findall(r"GRANT ALL PRIVILEGES ON `(\w+)`\.\* TO 'tuike'@'%'", init_sql))
    assert grants == created
    gateway_url = compose["services"]["gateway"]["environment"]["TUIKE_GATEWAY_DATABASE_URL"]
    assert gateway_url.startswith("mysql+asyncmy://tuike:") and "/tuike_gateway?" in gateway_url
    for name in SERVICES:
        url = compose["services"][name]["environment"]["TUIKE_DATABASE_URL"]
        assert re.fullmatch(
            rf"mysql\+asyncmy://tuike:[^@]+@mysql:3306/tuike_{name}\?charset=utf8mb4", url
        )
        migrate_url = compose["services"]["migrate"]["environment"][
            f"TUIKE_{name.upper()}_DATABASE_URL"
        ]
        assert migrate_url == url


def test_kafka_init_creates_every_topic_and_its_dead_letters(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    listed = set(script.split("for topic in", 1)[1].split("; do", 1)[0].replace("\\", " ").split())
    assert listed == {*ALL_TOPICS, *(dlq_topic(t) for t in ALL_TOPICS)}
    assert "--if-not-exists" in script


def test_start_is_ordered_by_readiness(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["mysql"]["condition"] == "service_healthy"
    for name, port in SERVICES.items():
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["TUIKE_PORT"] == str(port)
        assert f"http://127.0.0.1:{port}/readyz" in service["healthcheck"]["test"]
        assert services["gateway"]["depends_on"][name]["condition"] == "service_healthy"
        assert services["gateway"]["environment"][f"TUIKE_{name.upper()}_SERVICE_URL"] == (
            f"http://{name}:{port}"
        )
    for name in ("migrate", "gateway", *SERVICES):
        plan(services[name]["command"])  # a command the image's entrypoint knows
        assert services[name]["environment"]["TUIKE_KAFKA_ENABLE_IDEMPOTENCE"] == "true"
    assert services["gateway"]["ports"] == ["8000:8000"]


def test_prometheus_and_grafana_are_provisioned_from_the_repository(
    compose: dict[str, Any],
) -> None:
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    prometheus_volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in prometheus_volumes
    assert (
        "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro"
        in (compose["services"]["grafana"]["volumes"])
    )
