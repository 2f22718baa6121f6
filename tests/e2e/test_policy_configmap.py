"""A CostPolicy compiled into the ConfigMap the agents mount, by the handlers under kopf on the
real API server: content equals the spec, edits follow, halt follows the budget, GC follows
the owner. The handlers run as the operator's ServiceAccount; the agent reads its ConfigMap as an
agent ServiceAccount bound by the fleetwarden-agent role."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import Identity, Operator, agent_identity, crds_installed, start_kopf  # noqa: F401
from prometheus_client import CollectorRegistry

from fleetwarden import sdk
from fleetwarden.core import spec

POLICY_SPEC = {
    "selector": {"matchLabels": {"team": "support"}},
    "tokenCaps": {"perTask": 20000},
    "rateLimits": {"toolCallsPerMinute": 30, "perTool": {"crm.search": 10}},
    "tools": {"allow": ["crm.*", "kb.search"]},
    "approvals": [{"name": "refunds", "tool": "payments.refund", "amountAboveUSD": 50}],
}


def _deployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "support-bot", "namespace": namespace, "labels": {"team": "support"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "support-bot"}},
                 "template": {"metadata": {"labels": {"app": "support-bot"}},
                              "spec": {"containers": [{"name": "agent", "image": "example.invalid/agent:1"}]}}},
    }


@pytest.fixture
def policy_operator(cluster: Any, namespace: str, crds_installed: list[str], workdir: Path,  # noqa: F811
                    request: pytest.FixtureRequest) -> Operator:
    """The policy handlers under kopf, watching this test's namespace only, as the operator's ServiceAccount."""
    return start_kopf(cluster, namespace, "fleetwarden.handlers.policyconfig", workdir, request)


@pytest.fixture
def agent(cluster: Any, namespace: str, workdir: Path) -> Identity:
    """The agent's ServiceAccount (fleetwarden-agent role), which reads the compiled policy."""
    return agent_identity(cluster, namespace, "support-bot", workdir)


def _configmap(cluster: Any, namespace: str, agent: Identity) -> dict[str, Any] | None:
    """The policy ConfigMap, read as the agent."""
    result = subprocess.run([cluster.kubectl_path, f"--kubeconfig={agent.kubeconfig}", "get", "configmap",
                             "fleetwarden-policy-support", "-n", namespace, "-o", "json"],
                            capture_output=True, text=True, timeout=30, check=False, env=cluster.env)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_policy_becomes_a_configmap_and_follows_edits(cluster: Any, namespace: str,
                                                      policy_operator: Operator, agent: Identity) -> None:
    """policy.json equals the validated spec; an edit, a suspended budget and deletion all follow."""
    cluster.apply(json.dumps(_deployment(namespace)))
    cluster.apply(json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy",
                              "metadata": {"name": "support", "namespace": namespace}, "spec": POLICY_SPEC}))
    policy = cluster.get_json("costpolicy", "support", "-n", namespace)

    cm = cluster.wait_for(lambda: _configmap(cluster, namespace, agent), 60, "the policy ConfigMap")
    expected = spec.CostPolicySpec.model_validate(policy["spec"])
    assert json.loads(cm["data"]["policy.json"]) == expected.model_dump(mode="json", by_alias=True)
    assert sdk.GuardrailPolicy.from_json(cm["data"]["policy.json"]).spec == expected
    assert cm["data"]["halt"] == "false"
    assert [(r["kind"], r["name"], r["uid"]) for r in cm["metadata"]["ownerReferences"]] == [
        ("CostPolicy", "support", policy["metadata"]["uid"])]

    def ready_status() -> dict[str, Any] | None:
        status = cluster.get_json("costpolicy", "support", "-n", namespace).get("status") or {}
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready" and c["status"] == "True"]
        return status if ready else None

    status = cluster.wait_for(ready_status, 30, "the CostPolicy Ready condition")
    assert (status["configMap"], status["matchedAgents"]) == ("fleetwarden-policy-support", 1)

    # An edit is published.
    cluster.kubectl("patch", "costpolicy", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"tokenCaps": {"perTask": 5000}}}))
    cluster.wait_for(lambda: json.loads((_configmap(cluster, namespace, agent) or {"data": {"policy.json": "{}"}})
                                        ["data"]["policy.json"]).get("tokenCaps", {}).get("perTask") == 5000,
                     60, "the edited token cap in the ConfigMap")

    # A suspended budget over the same agents raises the halt flag; resuming lowers it.
    cluster.apply(json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                              "metadata": {"name": "support", "namespace": namespace},
                              "spec": {"selector": {"matchLabels": {"team": "support"}}, "suspend": True,
                                       "limits": [{"window": "hour", "amountUSD": 10}]}}))
    cluster.wait_for(lambda: (_configmap(cluster, namespace, agent) or {}).get("data", {}).get("halt") == "true",
                     60, "halt=true after the budget was suspended")
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": False}}))
    cluster.wait_for(lambda: (_configmap(cluster, namespace, agent) or {}).get("data", {}).get("halt") == "false",
                     60, "halt=false after the budget was resumed")

    # A suspended budget over other agents leaves the flag down, until the policy's Deployment
    # is relabelled into that budget's selector (and back out of it).
    cluster.apply(json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                              "metadata": {"name": "premium", "namespace": namespace},
                              "spec": {"selector": {"matchLabels": {"tier": "premium"}}, "suspend": True,
                                       "limits": [{"window": "hour", "amountUSD": 10}]}}))
    cluster.kubectl("scale", "deployment", "support-bot", "-n", namespace, "--replicas=0")  # not a relabel
    for label, halt in (("tier=premium", "true"), ("tier-", "false")):
        cluster.kubectl("label", "deployment", "support-bot", "-n", namespace, label)
        cluster.wait_for(lambda halt=halt: (_configmap(cluster, namespace, agent) or {}).get("data", {}).get("halt") == halt,
                         60, f"halt={halt} after `kubectl label deployment support-bot {label}`")

    # Deleting the policy deletes its ConfigMap (ownerReference, garbage collector).
    cluster.kubectl("delete", "costpolicy", "support", "-n", namespace)
    cluster.wait_for(lambda: _configmap(cluster, namespace, agent) is None, 60, "the ConfigMap to be collected")
    assert policy_operator.proc.poll() is None


def _replicas(cluster: Any, namespace: str, agent: Identity) -> dict[str, int] | None:
    cm = _configmap(cluster, namespace, agent)
    return json.loads(cm["data"]["replicas.json"]) if cm and "replicas.json" in cm["data"] else None


def _fleet_calls_at_once(data: dict[str, str], tmp_path: Path, replicas: int) -> int:
    """The calls ``replicas`` SDK replicas, each reading the published ConfigMap, let through at one instant."""
    (tmp_path / "cm").mkdir(exist_ok=True)
    for key, value in data.items():
        (tmp_path / "cm" / key).write_text(value)
    allowed = 0
    for _ in range(replicas):
        policy = sdk.GuardrailPolicy.from_dir(tmp_path / "cm", clock=lambda: 0.0)
        task = sdk.Tracker("support-bot", registry=CollectorRegistry(), policy=policy, clock=lambda: 0.0).start_task()
        for _ in range(100):
            try:
                task.check_tool("kb.search")
                allowed += 1
            except sdk.RateLimited:
                break
    return allowed


def test_the_rate_limit_share_follows_the_ready_replicas(cluster: Any, namespace: str, tmp_path: Path,
                                                         policy_operator: Operator, agent: Identity) -> None:
    """A Deployment of 3 replicas (pods Running on KWOK): replicas.json says 3, and 3 SDK replicas
    reading it let through the limit's burst (30) together, not 3 times it; scaled 3 -> 1 -> 3, the
    count follows once the pods are gone or ready."""
    deployment = _deployment(namespace)
    deployment["spec"]["replicas"] = 3
    cluster.apply(json.dumps(deployment))
    cluster.apply(json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy",
                              "metadata": {"name": "support", "namespace": namespace},
                              "spec": {**POLICY_SPEC, "rateLimits": {"toolCallsPerMinute": 30},
                                       "enforcement": "Enforce"}}))

    def ready(n: int) -> bool:
        status = cluster.get_json("deployment", "support-bot", "-n", namespace).get("status") or {}
        return (status.get("readyReplicas") or 0) == n and (status.get("replicas") or 0) == n

    for n in (3, 1, 3):
        cluster.kubectl("scale", "deployment", "support-bot", "-n", namespace, f"--replicas={n}")
        cluster.wait_for(lambda n=n: ready(n), 60, f"{n} ready replicas")
        cluster.wait_for(lambda n=n: _replicas(cluster, namespace, agent) == {"support-bot": n}, 60,
                         f"replicas.json to say {n}")
        cm = _configmap(cluster, namespace, agent)
        assert cm is not None
        assert _fleet_calls_at_once(cm["data"], tmp_path, n) == 30
    assert policy_operator.proc.poll() is None
