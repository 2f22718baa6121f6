"""ConfigMaps and annotations the operator keeps: incident records, compiled policies.

Thin calls on :class:`fleetwarden.adapters.kube.Kube`'s clients; failures are
``kube.KubeError`` (a :class:`fleetwarden.errors.KubernetesError`) with the client's
exception as ``__cause__``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes.client import exceptions as kube_exceptions

from fleetwarden.adapters import kube
from fleetwarden.core import spec

MANAGED_BY = {"app.kubernetes.io/managed-by": "fleetwarden"}



def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        response = fn(*args, _preload_content=False, **kwargs)
        return json.loads(response.data)
    except (kube_exceptions.ApiException, OSError, ValueError) as exc:
        raise kube.wrap_api_error(what, exc) from exc


def get(k: kube.Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The ConfigMap as a dict, or None when it does not exist."""
    try:
        return _call(f"read configmap {namespace}/{name}", k.core.read_namespaced_config_map,  # type: ignore[no-any-return]
                     name, namespace)
    except kube.KubeError as exc:
        if exc.status == 404:
            return None
        raise


def list_named(k: kube.Kube, name: str) -> list[dict[str, Any]]:
    """Every ConfigMap called ``name``, in all namespaces."""
    data = _call(f"list configmaps {name}", k.core.list_config_map_for_all_namespaces,
                 field_selector=f"metadata.name={name}")
    return list(data.get("items") or [])


def upsert(k: kube.Kube, namespace: str, name: str, data: Mapping[str, str | None], *,
           labels: Mapping[str, str] | None = None,
           owner_references: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Create the ConfigMap, or merge-patch ``data`` into it (a None value removes a key).

    Keys not named in ``data`` are left as they are, so writers of different keys never
    overwrite each other."""
    metadata: dict[str, Any] = {"labels": {**MANAGED_BY, **dict(labels or {})}}
    if owner_references is not None:
        metadata["ownerReferences"] = [dict(r) for r in owner_references]
    patch = {"metadata": metadata, "data": dict(data)}
    try:
        return _call(f"patch configmap {namespace}/{name}", k.core.patch_namespaced_config_map,  # type: ignore[no-any-return]
                     name, namespace, patch)
    except kube.KubeError as exc:
        if exc.status != 404:
            raise
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, **metadata},
            "data": {key: value for key, value in data.items() if value is not None}}
    try:
        return _call(f"create configmap {namespace}/{name}", k.core.create_namespaced_config_map,  # type: ignore[no-any-return]
                     namespace, body)
    except kube.KubeError as exc:
        if exc.status != 409:  # created in between: patch it
            raise
    return _call(f"patch configmap {namespace}/{name}", k.core.patch_namespaced_config_map,  # type: ignore[no-any-return]
                 name, namespace, patch)


def get_budget(k: kube.Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _call(f"read agentbudget {namespace}/{name}", k.custom.get_namespaced_custom_object,  # type: ignore[no-any-return]
                     spec.GROUP, spec.VERSION, namespace, kube.BUDGET_PLURAL, name)
    except kube.KubeError as exc:
        if exc.status == 404:
            return None
        raise


def annotate_budget(k: kube.Kube, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
    """Set (None: remove) annotations on an AgentBudget (metadata only; no status, no spec)."""
    _call(f"annotate agentbudget {namespace}/{name}", k.custom.patch_namespaced_custom_object,
          spec.GROUP, spec.VERSION, namespace, kube.BUDGET_PLURAL, name,
          {"metadata": {"annotations": dict(annotations)}})


def patch_policy_status(k: kube.Kube, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch a CostPolicy's status subresource."""
    _call(f"patch status of costpolicy {namespace}/{name}", k.custom.patch_namespaced_custom_object_status,
          spec.GROUP, spec.VERSION, namespace, kube.POLICY_PLURAL, name, {"status": dict(status)})


def get_policy(k: kube.Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _call(f"read costpolicy {namespace}/{name}", k.custom.get_namespaced_custom_object,  # type: ignore[no-any-return]
                     spec.GROUP, spec.VERSION, namespace, kube.POLICY_PLURAL, name)
    except kube.KubeError as exc:
        if exc.status == 404:
            return None
        raise
