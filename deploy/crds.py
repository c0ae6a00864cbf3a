"""Offline checks of the custom resources the manifests use, which kubernetes-validate has no schema for:
KEDA's ScaledObject (``keda.sh/v1alpha1``).

``SCALED_OBJECT`` is a structural JSON schema written from KEDA's published CRD
(kedacore/keda ``config/crd/bases/keda.sh_scaledobjects.yaml``, version v1alpha1, as in KEDA 2.10 to
2.16) for the whole ``spec``: the same field names, types and required fields, and, stricter than the
CRD, unknown fields refused (a typo is an error, as ``kubernetes-validate --strict`` makes it for
built-in kinds) and ``metricType`` limited to the three values KEDA's controller accepts. On top of it,
``scaled_object_problems`` checks what the schema cannot: the HPA ``behavior`` against Kubernetes' own
HorizontalPodAutoscaler schema, replica bounds, and each trigger's metadata as its scaler reads it
(prometheus: serverAddress, query, threshold; cpu/memory: metricType and value).
"""

from __future__ import annotations

import re
from typing import Any

INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                "namespace": {"type": "string"},
                "labels": STRINGS,
                "annotations": STRINGS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": INT32,
                "cooldownPeriod": INT32,
                "initialCooldownPeriod": INT32,
                "idleReplicaCount": INT32,
                "minReplicaCount": INT32,
                "maxReplicaCount": INT32,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {"failureThreshold": INT32, "replicas": INT32},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": STRINGS,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}

# Metadata keys each scaler reads (KEDA's scaler documentation); any other key is a typo.
PROMETHEUS_KEYS = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "queryParameters",
    "unsafeSsl",
    "authModes",
}
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def is_scaled_object(doc: dict) -> bool:
    return doc.get("kind") == "ScaledObject" and str(doc.get("apiVersion", "")).startswith("keda.sh/")


def scaled_object_problems(doc: dict, kubernetes_version: str) -> list[str]:
    """Every problem of one ScaledObject: schema first, then the checks the schema cannot make."""
    import jsonschema

    validator = jsonschema.Draft7Validator(SCALED_OBJECT)
    problems = [
        f"{'.'.join(str(p) for p in err.absolute_path) or '(top level)'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        return problems
    spec = doc["spec"]
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not 0 <= low <= high:
        problems.append(f"spec: minReplicaCount {low} and maxReplicaCount {high}: need 0 <= min <= max")
    behavior = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        problems += _behavior_problems(behavior, kubernetes_version)
    for index, trigger in enumerate(spec["triggers"]):
        problems += [f"spec.triggers.{index} ({trigger['type']}): {p}" for p in _trigger_problems(trigger)]
    return problems


def _behavior_problems(behavior: dict, kubernetes_version: str) -> list[str]:
    """The behavior KEDA hands to the HPA it makes, validated as part of a real HPA object."""
    import kubernetes_validate

    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "behavior-check"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }
    try:
        kubernetes_validate.validate(hpa, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path if p not in ("spec",))
        return [f"spec.advanced.horizontalPodAutoscalerConfig.{where}: {err.message}"]
    return []


def _trigger_problems(trigger: dict) -> list[str]:
    metadata, kind, metric = trigger["metadata"], trigger["type"], trigger.get("metricType")
    problems = []
    if kind == "prometheus":
        for key in ("serverAddress", "query", "threshold"):
            if not metadata.get(key, "").strip():
                problems.append(f"metadata.{key}: missing; the prometheus scaler needs it")
        if not re.match(r"^https?://[^/\s]+", metadata.get("serverAddress", "")):
            address = metadata.get("serverAddress")
            problems.append(f"metadata.serverAddress: {address!r} is not an http(s) URL")
        for key in ("threshold", "activationThreshold"):
            if key in metadata and not NUMBER.match(metadata[key]):
                problems.append(f"metadata.{key}: {metadata[key]!r} is not a number")
        query = metadata.get("query", "")
        for opening, closing in ("()", "{}", "[]"):
            if query.count(opening) != query.count(closing):
                problems.append(f"metadata.query: unbalanced {opening}{closing} in {query!r}")
        unknown = sorted(set(metadata) - PROMETHEUS_KEYS)
        if unknown:
            known = ", ".join(sorted(PROMETHEUS_KEYS))
            problems.append(f"metadata: unknown keys {unknown}; the prometheus scaler reads {known}")
        if metric == "Utilization":
            problems.append("metricType: Utilization is for cpu and memory; use Value or AverageValue")
    elif kind in ("cpu", "memory"):
        if metric not in ("Utilization", "AverageValue"):
            problems.append(f"metricType: {metric!r}; the {kind} scaler takes Utilization or AverageValue")
        if "type" in metadata:
            problems.append("metadata.type: removed in KEDA 2.10; set metricType on the trigger")
        if not NUMBER.match(metadata.get("value", "")):
            problems.append(f"metadata.value: {metadata.get('value')!r} must be a number")
        unknown = sorted(set(metadata) - {"value", "containerName"})
        if unknown:
            problems.append(f"metadata: unknown keys {unknown}; the {kind} scaler reads value, containerName")
    return problems
