"""Each CostPolicy compiled into a ConfigMap the agents mount: ``fleetwarden-policy-<name>``.

Keys (what ``fleetwarden.sdk.GuardrailPolicy.from_dir`` reads):

- ``policy.json``: ``CostPolicySpec.model_dump(mode="json", by_alias=True)`` as JSON
  (camelCase, every default filled in, keys sorted), so the SDK enforces exactly what
  the operator validated;
- ``halt``: ``"true"`` while an AgentBudget of the policy's agents is killed (kill switch
  engaged) or suspended, else ``"false"``; the SDK then refuses every model and tool call;
- ``replicas.json``: ``{"<Deployment>": n}`` for each agent of the policy, n =
  :func:`replica_count` (at least 1); the SDK of each replica enforces 1/n of each rate limit,
  so the limits hold across the agent's replicas (docs/sdk.md, "Fleet-wide rate limits");
- ``steps.json``: what the graduated-response steps in force (``status.steps.active`` of an
  AgentBudget in Enforce that covers the policy's agents) ask of the SDK:
  ``{"maxOutputTokens": n or null, "stopNewTasks": bool, "steps": [...]}`` (:func:`steps_json`).

The ConfigMap is owned by the CostPolicy (ownerReference: deleted with it). The
policy's status says what was published: ``configMap``, ``matchedAgents``,
``observedGeneration``, ``lastCompiled`` and the ``Ready`` condition (``False`` with reason
``InvalidSpec`` when the spec does not validate; nothing is published then).

1. Watch events of CostPolicies (no finalizer, no annotations): compile, publish if the
   ConfigMap differs, write the status if it changed.
2. Watch events of AgentBudgets: when a budget's halted state changes (or is first seen
   by this process), recompile the policies of its namespace.
3. Watch events of Deployments: when one is created, deleted, relabelled, scaled or its
   ready replicas change, recompile the policies of its namespace: a Deployment relabelled
   into a killed budget's selector raises its policy's halt flag, ``matchedAgents`` stays
   true, and ``replicas.json`` follows the replica count.

A transient API failure (:mod:`fleetwarden.handlers.retry`) publishes the namespace's
policies again, read afresh, after ``retry.DELAY`` (kopf never retries a watch-event
handler); one that trying again cannot help is logged and left for the next event.

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
from fleetwarden.core import manifests, spec, timefmt
from fleetwarden.core import status as status_model
from fleetwarden.handlers import retry

log = logging.getLogger(__name__)

PREFIX = "fleetwarden-policy-"
POLICY_KEY = "policy.json"
HALT_KEY = "halt"
REPLICAS_KEY = "replicas.json"
STEPS_KEY = "steps.json"
HALTED_STATES = {"Killed", "Suspended"}


# ---------------------------------------------------------------- pure


def configmap_name(policy_name: str) -> str:
    return (PREFIX + policy_name)[:253]


def compile_spec(policy_spec: Mapping[str, Any]) -> spec.CostPolicySpec:
    """Validate a CostPolicy's spec (raises ManifestError naming the field)."""
    try:
        return spec.CostPolicySpec.model_validate(dict(policy_spec))
    except pydantic.ValidationError as exc:
        raise manifests.object_error(exc, "spec") from exc


def policy_json(policy: spec.CostPolicySpec) -> str:
    return json.dumps(policy.model_dump(mode="json", by_alias=True), sort_keys=True, indent=2)


def budget_halted(budget: Mapping[str, Any]) -> bool:
    """An AgentBudget whose agents must stop: suspended, or killed by the kill switch."""
    status = budget.get("status") or {}
    return bool((budget.get("spec") or {}).get("suspend")) or bool(
        (status.get("killSwitch") or {}).get("engaged")) or status.get("state") in HALTED_STATES


def _covering(policy: spec.CostPolicySpec, deployments: Sequence[Mapping[str, Any]],
              budgets: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The AgentBudgets that cover an agent of the policy.

    The policy's agents are the Deployments its selector picks; a budget covers one when
    its selector picks it too. A budget with exactly the policy's selector covers the
    policy's agents even before any Deployment exists."""
    agents = [dict(d.get("metadata", {}).get("labels") or {}) for d in deployments
              if policy.selector.matches(dict(d.get("metadata", {}).get("labels") or {}))]
    out = []
    for budget in budgets:
        try:
            selector = spec.LabelSelector.model_validate((budget.get("spec") or {}).get("selector") or {})
        except pydantic.ValidationError:
            continue
        if selector == policy.selector or any(selector.matches(labels) for labels in agents):
            out.append(budget)
    return out


def halted(policy: spec.CostPolicySpec, deployments: Sequence[Mapping[str, Any]],
           budgets: Sequence[Mapping[str, Any]]) -> bool:
    """True when a halted AgentBudget covers an agent of the policy."""
    return any(budget_halted(b) for b in _covering(policy, deployments, budgets))


def budget_steps(budget: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The steps in force of an AgentBudget that acts on them (``spec.enforcement`` Enforce, the
    default): DryRun and Warn steps reach no agent."""
    if (budget.get("spec") or {}).get("enforcement", spec.Enforcement.enforce.value) != spec.Enforcement.enforce.value:
        return []
    steps = (budget.get("status") or {}).get("steps") or {}
    active = steps.get("active") if isinstance(steps, Mapping) else None
    return [a for a in active or () if isinstance(a, Mapping)]


def steps_json(policy: spec.CostPolicySpec, deployments: Sequence[Mapping[str, Any]],
               budgets: Sequence[Mapping[str, Any]]) -> str:
    """What the steps in force of the budgets covering the policy's agents ask of the SDK:
    ``{"maxOutputTokens": the lowest CapOutputTokens cap or null, "stopNewTasks": bool,
    "steps": ["<budget>/<step>", ...]}``."""
    caps: list[int] = []
    stop = False
    names: list[str] = []
    for budget in _covering(policy, deployments, budgets):
        name = (budget.get("metadata") or {}).get("name")
        for step in budget_steps(budget):
            action, tokens = step.get("action"), step.get("maxOutputTokens")
            if action == spec.StepAction.cap_output_tokens.value and isinstance(tokens, int) and tokens >= 1:
                caps.append(tokens)
            elif action == spec.StepAction.stop_new_tasks.value:
                stop = True
            else:
                continue
            names.append(f"{name}/{step.get('name')}")
    return json.dumps({"maxOutputTokens": min(caps) if caps else None, "stopNewTasks": stop,
                       "steps": sorted(names)}, sort_keys=True)


def replica_count(deployment: Mapping[str, Any]) -> int:
    """How many replicas share an agent's rate limits: the larger of the desired
    (``spec.replicas``, default 1) and the ready replicas, at least 1. The desired count covers
    pods still starting and a replica that died until it is replaced (the others do not take
    its share: under the limit, never over it); the ready count covers a rollout's surge pods."""
    desired = (deployment.get("spec") or {}).get("replicas")
    ready = (deployment.get("status") or {}).get("readyReplicas")
    counts = [n for n in (1 if desired is None else desired, ready) if isinstance(n, int)]
    return max([1, *counts])


def replicas_json(deployments: Sequence[Mapping[str, Any]]) -> str:
    counts = {str((d.get("metadata") or {}).get("name")): replica_count(d) for d in deployments}
    return json.dumps(counts, sort_keys=True)


def compile_data(policy: spec.CostPolicySpec, is_halted: bool,
                 deployments: Sequence[Mapping[str, Any]] = (), budgets: Sequence[Mapping[str, Any]] = ()
                 ) -> dict[str, str]:
    """The ConfigMap's data; ``deployments`` are the policy's agents, ``budgets`` the namespace's."""
    return {POLICY_KEY: policy_json(policy), HALT_KEY: "true" if is_halted else "false",
            REPLICAS_KEY: replicas_json(deployments), STEPS_KEY: steps_json(policy, deployments, budgets)}


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    return {"apiVersion": spec.API_VERSION, "kind": "CostPolicy", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": False}


# ---------------------------------------------------------------- I/O


class _State:
    def __init__(self) -> None:
        self.kube: kube.Kube | None = None
        self.budget_halted: dict[str, tuple[bool, str]] = {}  # uid -> halted, the steps the SDK sees
        self.deployment_labels: dict[str, tuple[dict[str, str], int]] = {}  # uid -> labels, replicas last seen
        self.retries: dict[str, asyncio.TimerHandle] = {}  # namespace -> its pending republish
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
        ready = status_model.condition_body(conditions, "Ready", "False", "InvalidSpec", str(exc), now, generation)
        _write_status(k, namespace, name, status, {"observedGeneration": generation, "conditions": [ready]})
        return False
    deployments = k.list_deployments(namespace, policy.selector)
    budgets = k.list_budgets(namespace)
    data = compile_data(policy, halted(policy, deployments, budgets), deployments, budgets)
    current = configmaps.get(k, namespace, cm_name)
    refs = (current or {}).get("metadata", {}).get("ownerReferences") or []
    written = False
    if current is None or (current.get("data") or {}) != data or not any(
            r.get("uid") == meta.get("uid") for r in refs):
        configmaps.upsert(k, namespace, cm_name, data, labels={"fleetwarden.dev/costpolicy": name[:63]},
                          owner_references=[owner_reference(body)])
        written = True
    halt_text = "halted" if data[HALT_KEY] == "true" else "not halted"
    ready = status_model.condition_body(conditions, "Ready", "True", "Compiled",
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
    meta = body.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    try:
        await asyncio.to_thread(_publish, dict(body))
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        _retry(namespace, f"costpolicy {namespace}/{meta.get('name')}", exc)


def _publish(body: Mapping[str, Any]) -> None:
    with retry.temporary():
        publish(body)


def _retry(namespace: str, what: str, exc: kopf.TemporaryError | kopf.PermanentError) -> None:
    """A watch event is never retried by kopf: after a transient failure the namespace's
    policies are read and published again after the error's delay (one pending per namespace)."""
    if isinstance(exc, kopf.TemporaryError):
        delay = exc.delay if exc.delay is not None else retry.DELAY
        log.warning("%s not published: %s; trying again in %gs", what, exc, delay)
        retry.call_later(STATE.retries, namespace, delay, lambda: _republish(namespace))
    else:
        log.warning("%s not published: %s", what, exc)


@kopf.on.event(spec.GROUP, spec.VERSION, "agentbudgets")
async def on_agentbudget_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """When a budget's halted state or its steps in force change, recompile the policies of its namespace."""
    meta = body.get("metadata", {})
    uid = str(meta.get("uid"))
    now_halted = (event.get("type") != "DELETED" and budget_halted(body),
                  json.dumps(budget_steps(body), sort_keys=True) if event.get("type") != "DELETED" else "")
    if STATE.budget_halted.get(uid) == now_halted:
        return
    if event.get("type") == "DELETED":
        STATE.budget_halted.pop(uid, None)
    else:
        STATE.budget_halted[uid] = now_halted
    namespace = meta.get("namespace") or "default"
    await _republish(namespace)


def deployment_changed(event: Mapping[str, Any], body: Mapping[str, Any],
                       seen: dict[str, tuple[dict[str, str], int]]) -> bool:
    """Whether a Deployment event can change what a policy publishes: created, deleted,
    relabelled, or its :func:`replica_count` changed (scaled, readiness). The initial listing
    (``type`` None) and other updates cannot; ``seen`` (uid -> labels, count) is kept up to date."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid"))
    kind = event.get("type")
    if kind == "DELETED":
        seen.pop(uid, None)
        return True
    now = (dict(meta.get("labels") or {}), replica_count(body))
    before = seen.get(uid)
    seen[uid] = now
    return kind is not None and before != now


@kopf.on.event("apps", "v1", "deployments")
async def on_deployment_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """A Deployment created, deleted, relabelled or rescaled: recompile the policies of its namespace."""
    if deployment_changed(event, body, STATE.deployment_labels):
        namespace = body.get("metadata", {}).get("namespace") or "default"
        await _republish(namespace)


async def _republish(namespace: str) -> None:
    """Publish every CostPolicy of ``namespace`` again (read afresh)."""
    try:
        await asyncio.to_thread(_republish_namespace, namespace)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        _retry(namespace, f"policies in {namespace}", exc)


def _republish_namespace(namespace: str) -> None:
    """Publish each policy; once every one was tried, a failure is raised (a transient one
    first: then all are tried again)."""
    with retry.temporary():
        failures: list[errors.ExternalError] = []
        for body in STATE.client().list_policies(namespace):
            try:
                publish(body)
            except errors.ExternalError as exc:
                failures.append(exc)
        if failures:
            raise next((e for e in failures if retry.transient(e)), failures[0])
