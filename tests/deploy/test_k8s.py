"""deploy/k8s: both overlays build (kustomize-equivalent) into manifests that the Kubernetes
schemas accept, with what the platform team asked for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from deploy.container import plan
from tests.deploy.kustomize import KustomizeError, build, resource_id, strategic_merge

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
SERVICES = ("user", "order", "commission", "stats")
# The oldest Kubernetes minor we support and the newest schemas the package ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], Any]]:
    resources = build(K8S / "overlays" / request.param)
    return request.param, {resource_id(r): r for r in resources}


def pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    if resource["kind"] == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return resource["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(
    overlay: tuple[str, dict[tuple[str, str], Any]], version: str
) -> None:
    _, resources = overlay
    for key, resource in resources.items():
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key} is invalid for Kubernetes {version}: {exc.message} at {exc.path}")


def test_overlays_contain_the_whole_deployment(
    overlay: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    name, resources = overlay
    kinds = Counter(kind for kind, _ in resources)
    deployments = {n for kind, n in resources if kind == "Deployment"}
    assert deployments == {"gateway", *SERVICES, *(f"{s}-worker" for s in SERVICES)}
    hpas = {n for kind, n in resources if kind == "HorizontalPodAutoscaler"}
    assert hpas == deployments  # gateway, HTTP replicas and the consumers (workers)
    assert {n for kind, n in resources if kind == "PodDisruptionBudget"} == deployments
    assert {n for kind, n in resources if kind == "Service"} == {"gateway", *SERVICES}
    assert kinds["Ingress"] == 1 and kinds["Job"] == 1 and kinds["CronJob"] == 2
    assert ("ConfigMap", "tuike-config") in resources
    assert ("Secret", "tuike-secrets") in resources
    namespace = "tuike-dev" if name == "dev" else "tuike"
    assert ("Namespace", namespace) in resources
    for (kind, _), resource in resources.items():
        if kind != "Namespace":
            assert resource["metadata"]["namespace"] == namespace
        assert resource["metadata"]["labels"]["tuike.io/environment"] == name


def test_deployments_are_probed_limited_and_run_as_non_root(
    overlay: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    name, resources = overlay
    for (kind, deployment_name), resource in resources.items():
        if kind not in ("Deployment", "Job", "CronJob"):
            continue
        spec = pod_spec(resource)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["resources"]["requests"] and container["resources"]["limits"]
            tag = "dev" if name == "dev" else "0.1.0"
            assert container["image"] == f"ghcr.io/tuike/tuike:{tag}"
            # The command is one the image's entrypoint knows.
            plan(container["args"])
            if kind != "Deployment":
                continue
            assert "livenessProbe" in container
            if deployment_name.endswith("-worker"):
                assert container["args"][1] == "worker"
                # Prometheus must be able to scrape the worker's lag and DLQ counts.
                annotations = resource["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/port"] == "9100"
            elif deployment_name == "gateway":
                # its /readyz fails when any upstream does: one service down must not take
                # every gateway pod out of its Service
                assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
            else:
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_services_take_their_database_from_the_secret_and_serve_http_only(
    overlay: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    _, resources = overlay
    secret_keys = set(resources[("Secret", "tuike-secrets")]["stringData"])
    for service in SERVICES:
        for deployment in (service, f"{service}-worker"):
            container = pod_spec(resources[("Deployment", deployment)])["containers"][0]
            env = {e["name"]: e for e in container["env"]}
            ref = env["TUIKE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "tuike-secrets", "key": f"{service}-database-url"}
            assert ref["key"] in secret_keys
        api_env = {
            e["name"]: e.get("value")
            for e in pod_spec(resources[("Deployment", service)])["containers"][0]["env"]
        }
        assert api_env["TUIKE_RUN_WORKERS"] == "false"
    gateway_env = {
        e["name"]: e for e in pod_spec(resources[("Deployment", "gateway")])["containers"][0]["env"]
    }
    assert (
        gateway_env["TUIKE_GATEWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] in secret_keys
    )
    # payee details are encrypted with a key of their own, never one derived from the internal key
    for deployment in ("commission", "commission-worker"):
        env = {
            e["name"]
            for e in pod_spec(resources[("Deployment", deployment)])["containers"][0]["env"]
        }
        assert "TUIKE_PAYEE_ENCRYPTION_KEY" in env
    # The Secret is a template: placeholders only.
    for value in resources[("Secret", "tuike-secrets")]["stringData"].values():
        assert "REPLACE-ME" in value
    migrate = pod_spec(resources[("Job", "tuike-migrate")])["containers"][0]
    assert migrate["args"] == ["migrate"]
    assert {e["name"] for e in migrate["env"]} >= {
        f"TUIKE_{s.upper()}_DATABASE_URL" for s in SERVICES
    }
    rebuild = pod_spec(resources[("CronJob", "tuike-stats-rebuild")])["containers"][0]
    assert {e["name"]: e for e in rebuild["env"]}["TUIKE_DATABASE_URL"]["valueFrom"][
        "secretKeyRef"
    ]["key"] == "stats-database-url"
    crons = {n: r for (k, n), r in resources.items() if k == "CronJob"}
    assert {tuple(pod_spec(r)["containers"][0]["args"]) for r in crons.values()} == {
        ("reconcile",),
        ("stats-rebuild",),
    }


def test_workers_scale_no_further_than_the_partitions(
    overlay: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    _, resources = overlay
    partitions = int(
        resources[("ConfigMap", "tuike-config")]["data"]["TUIKE_KAFKA_TOPIC_PARTITIONS"]
    )
    for service in SERVICES:
        hpa = resources[("HorizontalPodAutoscaler", f"{service}-worker")]["spec"]
        assert hpa["maxReplicas"] <= partitions
        assert hpa["minReplicas"] <= hpa["maxReplicas"]


def test_only_the_gateway_is_reachable_from_outside(
    overlay: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    _, resources = overlay
    policies = {n: r["spec"] for (k, n), r in resources.items() if k == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            sources = rule.get("from")
            if sources is None:  # open to anyone: only the gateway may be selected
                assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
                    "gateway"
                ), name
            else:
                for source in sources:
                    assert "ipBlock" not in source, name
    ingress = resources[("Ingress", "gateway")]["spec"]
    backends = {
        path["backend"]["service"]["name"]
        for rule in ingress["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"gateway"}
    for (kind, name), resource in resources.items():
        if kind == "Service":
            assert resource["spec"]["type"] == "ClusterIP", name


def test_overlays_differ_where_environments_do() -> None:
    dev = {resource_id(r): r for r in build(K8S / "overlays" / "dev")}
    prod = {resource_id(r): r for r in build(K8S / "overlays" / "prod")}
    assert dev[("Deployment", "gateway")]["spec"]["replicas"] == 1
    assert prod[("Deployment", "gateway")]["spec"]["replicas"] == 3
    assert dev[("ConfigMap", "tuike-config")]["data"]["TUIKE_LOG_LEVEL"] == "DEBUG"
    assert prod[("HorizontalPodAutoscaler", "gateway")]["spec"]["maxReplicas"] == 20
    assert prod[("Ingress", "gateway")]["spec"]["tls"][0]["hosts"] == ["tuike.example.com"]
    assert dev[("Ingress", "gateway")]["spec"]["rules"][0]["host"] == "tuike-dev.example.com"
    # dev runs one replica: its PDBs must not block node drains
    assert dev[("PodDisruptionBudget", "gateway")]["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "tuike",
                "app.kubernetes.io/component": "gateway",
            }
        },
    }
    # the prod gateway patch kept the base container's probes and env
    gateway = pod_spec(prod[("Deployment", "gateway")])
    assert gateway["topologySpreadConstraints"]
    container = gateway["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "500m"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["env"] == pod_spec(dev[("Deployment", "gateway")])["containers"][0]["env"]


def test_the_build_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(KustomizeError, match="unsupported fields"):
        build(tmp_path)
    merged = strategic_merge(
        {"containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]}]},
        {"containers": [{"name": "a", "env": [{"name": "B", "value": "2"}]}]},
    )
    assert merged == {
        "containers": [
            {
                "name": "a",
                "image": "x",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            }
        ]
    }
