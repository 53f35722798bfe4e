"""A kustomize-equivalent build of deploy/k8s, in Python, for the tests (no kubectl here).

It implements the subset of kustomize the manifests use, with kustomize's semantics, and
refuses any other field so a manifest never relies on something this build ignores:
``resources`` (files and directories), ``namespace``, ``labels`` (pairs, includeSelectors,
includeTemplates), ``images`` (newName, newTag), ``replicas`` and ``patches`` (strategic merge
patches by file, or inline JSON 6902 patches with a target of kind, name and an equality
labelSelector).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "patches",
}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Strategic-merge list keys of the core types (kubernetes' patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "tolerations": "key",
}


class KustomizeError(ValueError):
    pass


def load_documents(path: Path) -> list[Resource]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def build(directory: Path) -> list[Resource]:
    """The resources of the kustomization in ``directory``, as ``kubectl kustomize`` would
    produce them (order: resources in the order listed)."""
    kustomization_path = directory / "kustomization.yaml"
    if not kustomization_path.exists():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    kustomization = load_documents(kustomization_path)[0]
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kustomization_path}: unsupported fields {sorted(unknown)}")

    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(build(target))
        elif target.is_file():
            resources.extend(load_documents(target))
        else:
            raise KustomizeError(f"{kustomization_path}: resource {entry} does not exist")
    _check_unique(resources, kustomization_path)

    for patch in kustomization.get("patches", []):
        _apply_patch(resources, patch, directory)
    for label in kustomization.get("labels", []):
        _apply_labels(resources, label)
    for image in kustomization.get("images", []):
        _apply_image(resources, image)
    for replica in kustomization.get("replicas", []):
        _apply_replicas(resources, replica)
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED_KINDS:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def resource_id(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _check_unique(resources: list[Resource], where: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        key = resource_id(resource)
        if key in seen:
            raise KustomizeError(f"{where}: {key} is defined twice")
        seen.add(key)


# -- patches -------------------------------------------------------------------------------------
def _apply_patch(resources: list[Resource], patch: dict[str, Any], directory: Path) -> None:
    if "path" in patch:
        bodies = load_documents(directory / patch["path"])
    elif "patch" in patch:
        bodies = [yaml.safe_load(patch["patch"])]
    else:
        raise KustomizeError(f"patch without path or patch: {patch}")
    for body in bodies:
        if isinstance(body, list):  # JSON 6902 operations
            targets = _select(resources, patch.get("target"))
            if not targets:
                raise KustomizeError(f"patch target matches nothing: {patch.get('target')}")
            for resource in targets:
                for operation in body:
                    _json6902(resource, operation)
            continue
        if "target" in patch:
            targets = _select(resources, patch["target"])
        else:
            targets = [r for r in resources if resource_id(r) == resource_id(body)]
        if not targets:
            raise KustomizeError(f"strategic merge patch matches nothing: {resource_id(body)}")
        for resource in targets:
            merged = strategic_merge(resource, body)
            resource.clear()
            resource.update(merged)


def _select(resources: list[Resource], target: dict[str, Any] | None) -> list[Resource]:
    if not target:
        raise KustomizeError("an inline JSON 6902 patch needs a target")
    selected = []
    wanted_labels = {}
    for term in filter(None, (target.get("labelSelector") or "").split(",")):
        if "=" not in term or "!=" in term:
            raise KustomizeError(f"only equality label selectors are supported: {term}")
        key, value = term.split("=", 1)
        wanted_labels[key.strip()] = value.strip()
    for resource in resources:
        if "kind" in target and resource["kind"] != target["kind"]:
            continue
        if "name" in target and not re.fullmatch(target["name"], resource["metadata"]["name"]):
            continue
        labels = resource["metadata"].get("labels") or {}
        if any(labels.get(key) != value for key, value in wanted_labels.items()):
            continue
        selected.append(resource)
    return selected


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {path}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _json6902(resource: Resource, operation: dict[str, Any]) -> None:
    parts = _pointer(operation["path"])
    parent: Any = resource
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    op = operation["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise KustomizeError(f"unsupported op {op}")
        return
    if op == "add":
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "replace":
        if last not in parent:
            raise KustomizeError(f"replace of missing {operation['path']}")
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        if last not in parent:
            raise KustomizeError(f"remove of missing {operation['path']}")
        del parent[last]
    else:
        raise KustomizeError(f"unsupported op {op}")


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge: maps merge, null deletes, lists with a merge key merge by
    it, other lists are replaced."""
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    merge_key = MERGE_KEYS.get(field)
    if isinstance(original, list) and isinstance(patch, list) and merge_key:
        merged_list = copy.deepcopy(original)
        for item in patch:
            match = next((o for o in merged_list if o.get(merge_key) == item.get(merge_key)), None)
            if match is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[merged_list.index(match)] = strategic_merge(match, item)
        return merged_list
    return copy.deepcopy(patch)


# -- transformers --------------------------------------------------------------------------------
def _pod_template(resource: Resource) -> dict[str, Any] | None:
    if resource["kind"] in WORKLOAD_KINDS:
        return resource["spec"]["template"]  # type: ignore[no-any-return]
    if resource["kind"] == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return None


def _apply_labels(resources: list[Resource], label: dict[str, Any]) -> None:
    pairs = label["pairs"]
    for resource in resources:
        resource["metadata"].setdefault("labels", {}).update(pairs)
        template = _pod_template(resource)
        if template is not None and (
            label.get("includeTemplates") or label.get("includeSelectors")
        ):
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if label.get("includeSelectors"):
            spec = resource.get("spec", {})
            if resource["kind"] == "Service":
                spec.setdefault("selector", {}).update(pairs)
            elif "selector" in spec and isinstance(spec["selector"], dict):
                spec["selector"].setdefault("matchLabels", {}).update(pairs)


def _containers(resource: Resource) -> list[dict[str, Any]]:
    template = _pod_template(resource)
    if template is None:
        return []
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _apply_image(resources: list[Resource], image: dict[str, Any]) -> None:
    for resource in resources:
        for container in _containers(resource):
            name, _, _ = container["image"].partition(":")
            if "@" in name or name != image["name"]:
                continue
            new_name = image.get("newName", name)
            tag = image.get("newTag", container["image"].partition(":")[2])
            container["image"] = f"{new_name}:{tag}" if tag else new_name


def _apply_replicas(resources: list[Resource], replica: dict[str, Any]) -> None:
    matched = [
        r
        for r in resources
        if r["metadata"]["name"] == replica["name"]
        and r["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}
    ]
    if not matched:
        raise KustomizeError(f"replicas: no workload named {replica['name']}")
    for resource in matched:
        resource["spec"]["replicas"] = int(replica["count"])
