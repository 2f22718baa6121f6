"""Each CostPolicy compiled into a ConfigMap the agents mount: ``fleetwarden-policy-<name>``.

Keys (what ``fleetwarden.sdk.GuardrailPolicy.from_dir`` reads):

- ``policy.json``: ``CostPolicySpec.model_dump(mode="json", by_alias=True)`` as JSON
  (camelCase, every default filled in, keys sorted), so the SDK enforces exactly what
  the operator validated;
- ``halt``: ``"true"`` while an AgentBudget of the policy's agents is killed (kill switch
  engaged) or suspended, else ``"false"``; the SDK then refuses every model and tool call.

The ConfigMap is owned by the CostPolicy (ownerReference: deleted with it). The
policy's status says what was published: ``configMap``, ``matchedAgents``,
``observedGeneration``, ``lastCompiled`` and the ``Ready`` condition (``False`` with reason
``InvalidSpec`` when the spec does not validate; nothing is published then).

1. Watch events of CostPolicies (no finalizer, no annotations): compile, publish if the
   ConfigMap differs, write the status if it changed.
2. Watch events of AgentBudgets: when a budget's halted state changes (or is first seen
   by this process), recompile the policies of its namespace.
3. Watch events of Deployments: when one is created, deleted or relabelled (not merely
   scaled), recompile the policies of its namespace: a Deployment relabelled into a killed
   budget's selector raises its policy's halt flag, and ``matchedAgents`` stays true.

A pod mounts it as a volume (``docs/approvals.md`` shows how); the
kubelet refreshes a mounted ConfigMap within about a minute, and the SDK re-reads it
at most once a second. Environment variables from a ConfigMap would never refresh.

Run alone: ``kopf run --standalone -m fleetwarden.handlers.policyconfig``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
import pydantic

from fleetwarden import errors
from fleetwarden.adapters import configmaps, kube
from fleetwarden.core import evaluate, spec, timefmt

log = logging.getLogger(__name__)

PREFIX = "fleetwarden-policy-"
POLICY_KEY = "policy.json"
HALT_KEY = "halt"
HALTED_STATES = {"Killed", "Suspended"}


# ---------------------------------------------------------------- pure


def configmap_name(policy_name: str) -> str:
    return (PREFIX + policy_name)[:253]


def compile_spec(policy_spec: Mapping[str, Any]) -> spec.CostPolicySpec:
    """Validate a CostPolicy's spec (raises ManifestError naming the field)."""
    try:
        return spec.CostPolicySpec.model_validate(dict(policy_spec))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = "spec." + ".".join(str(p) for p in first["loc"]) if first["loc"] else "spec"
        raise errors.ManifestError(first["msg"], field=field) from exc


def policy_json(policy: spec.CostPolicySpec) -> str:
    return json.dumps(policy.model_dump(mode="json", by_alias=True), sort_keys=True, indent=2)


def budget_halted(budget: Mapping[str, Any]) -> bool:
    """An AgentBudget whose agents must stop: suspended, or killed by the kill switch."""
    status = budget.get("status") or {}
    return bool((budget.get("spec") or {}).get("suspend")) or bool(
        (status.get("killSwitch") or {}).get("engaged")) or status.get("state") in HALTED_STATES


def halted(policy: spec.CostPolicySpec, deployments: Sequence[Mapping[str, Any]],
           budgets: Sequence[Mapping[str, Any]]) -> bool:
    """True when a halted AgentBudget covers an agent of the policy.

    The policy's agents are the Deployments its selector picks; a budget covers one when
    its selector picks it too. A budget with exactly the policy's selector covers the
    policy's agents even before any Deployment exists."""
    agents = [dict(d.get("metadata", {}).get("labels") or {}) for d in deployments
              if policy.selector.matches(dict(d.get("metadata", {}).get("labels") or {}))]
    for budget in budgets:
        if not budget_halted(budget):
            continue
        try:
            selector = spec.LabelSelector.model_validate((budget.get("spec") or {}).get("selector") or {})
        except pydantic.ValidationError:
            continue
        if selector == policy.selector or any(selector.matches(labels) for labels in agents):
            return True
    return False


def compile_data(policy: spec.CostPolicySpec, is_halted: bool) -> dict[str, str]:
    """The ConfigMap's data."""
    return {POLICY_KEY: policy_json(policy), HALT_KEY: "true" if is_halted else "false"}


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    return {"apiVersion": spec.API_VERSION, "kind": "CostPolicy", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": False}


# ---------------------------------------------------------------- I/O


class _State:
    def __init__(self) -> None:
        self.kube: kube.Kube | None = None
        self.budget_halted: dict[str, bool] = {}
        self.deployment_labels: dict[str, dict[str, str]] = {}  # uid -> labels last seen
        self.clock = time.time

    def client(self) -> kube.Kube:
        if self.kube is None:
            self.kube = kube.Kube(kube.load_config())
        return self.kube


STATE = _State()


def publish(body: Mapping[str, Any], k: kube.Kube | None = None, now: float | None = None) -> bool:
    """Compile one CostPolicy body and publish it; True when the ConfigMap was written."""
    k = k or STATE.client()
    now = STATE.clock() if now is None else now
    meta = body.get("metadata", {})
    name, namespace, generation = meta["name"], meta.get("namespace") or "default", meta.get("generation")
    status = dict(body.get("status") or {})
    conditions = status.get("conditions") or []
    cm_name = configmap_name(name)
    try:
        policy = compile_spec(body.get("spec") or {})
    except errors.ManifestError as exc:
        ready = evaluate.condition(conditions, "Ready", "False", "InvalidSpec", str(exc), now, generation)
        _write_status(k, namespace, name, status, {"observedGeneration": generation, "conditions": [ready]})
        return False
    deployments = k.list_deployments(namespace, policy.selector)
    data = compile_data(policy, halted(policy, deployments, k.list_budgets(namespace)))
    current = configmaps.get(k, namespace, cm_name)
    refs = (current or {}).get("metadata", {}).get("ownerReferences") or []
    written = False
    if current is None or (current.get("data") or {}) != data or not any(
            r.get("uid") == meta.get("uid") for r in refs):
        configmaps.upsert(k, namespace, cm_name, data, labels={"fleetwarden.dev/costpolicy": name[:63]},
                          owner_references=[owner_reference(body)])
        written = True
    halt_text = "halted" if data[HALT_KEY] == "true" else "not halted"
    ready = evaluate.condition(conditions, "Ready", "True", "Compiled",
                               f"published in ConfigMap {cm_name} ({halt_text})", now, generation)
    new = {"observedGeneration": generation, "configMap": cm_name, "matchedAgents": len(deployments),
           "conditions": [ready]}
    if written:
        new["lastCompiled"] = timefmt.rfc3339(now)
    _write_status(k, namespace, name, status, new)
    return written


def _write_status(k: kube.Kube, namespace: str, name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    if all(old.get(key) == value for key, value in new.items()):
        return
    try:
        configmaps.patch_policy_status(k, namespace, name, new)
    except kube.KubeError as exc:
        if exc.status != 404:  # deleted meanwhile
            raise


@kopf.on.event(spec.GROUP, spec.VERSION, "costpolicies")
async def on_costpolicy_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """Compile and publish the policy on every change (a no-op when nothing differs)."""
    if event.get("type") == "DELETED":
        return  # the ConfigMap goes with its owner
    await asyncio.to_thread(_publish_with_retry, dict(body))


def _publish_with_retry(body: dict[str, Any], attempts: int = 3) -> None:
    for attempt in range(attempts):
        try:
            publish(body)
            return
        except errors.ExternalError as exc:
            if attempt == attempts - 1:
                log.warning("costpolicy %s/%s not published: %s", body["metadata"].get("namespace"),
                            body["metadata"].get("name"), exc)
                return
            time.sleep(1 + attempt)


@kopf.on.event(spec.GROUP, spec.VERSION, "agentbudgets")
async def on_agentbudget_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """When a budget's halted state changes, recompile the policies of its namespace."""
    meta = body.get("metadata", {})
    uid = str(meta.get("uid"))
    now_halted = event.get("type") != "DELETED" and budget_halted(body)
    if STATE.budget_halted.get(uid) == now_halted:
        return
    if event.get("type") == "DELETED":
        STATE.budget_halted.pop(uid, None)
    else:
        STATE.budget_halted[uid] = now_halted
    namespace = meta.get("namespace") or "default"
    await asyncio.to_thread(_republish_namespace, namespace)


def deployment_changed(event: Mapping[str, Any], body: Mapping[str, Any],
                       seen: dict[str, dict[str, str]]) -> bool:
    """Whether a Deployment event can change what a policy covers: created, deleted or
    relabelled. The initial listing (``type`` None) and scaling or status updates cannot;
    ``seen`` (uid -> labels) is kept up to date."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid"))
    kind = event.get("type")
    if kind == "DELETED":
        seen.pop(uid, None)
        return True
    labels = dict(meta.get("labels") or {})
    before = seen.get(uid)
    seen[uid] = labels
    return kind is not None and before != labels


@kopf.on.event("apps", "v1", "deployments")
async def on_deployment_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """A Deployment created, deleted or relabelled: recompile the policies of its namespace."""
    if deployment_changed(event, body, STATE.deployment_labels):
        namespace = body.get("metadata", {}).get("namespace") or "default"
        await asyncio.to_thread(_republish_namespace, namespace)


def _republish_namespace(namespace: str) -> None:
    try:
        policies = STATE.client().list_policies(namespace)
    except errors.ExternalError as exc:
        log.warning("policies in %s not recompiled: %s", namespace, exc)
        return
    for body in policies:
        _publish_with_retry(body)
