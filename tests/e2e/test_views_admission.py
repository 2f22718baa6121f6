"""The opt-in ValidatingAdmissionPolicy that refuses agent Deployments without a budget label,
on the real API server."""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = ROOT / "manifests" / "policies" / "require-budget-label.yaml"


def _deployment(name: str, namespace: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "agent", "image": "example.invalid/agent:1"}]},
            },
        },
    }


def _create(cluster, manifest: dict[str, object]):
    return cluster.kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)


@pytest.fixture
def governed_namespace(cluster):
    """A second namespace, labelled fleetwarden.dev/governed=true."""
    name = f"governed-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"fleetwarden.dev/governed": "true"}}}))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def policy(cluster, namespace, governed_namespace):
    """The policy from the manifest, its binding scoped to this test's namespaces only.

    Scoping the binding keeps the cluster-wide policy from refusing other tests' agents.
    """
    policy_doc, binding_doc = list(yaml.safe_load_all(POLICY_FILE.read_text(encoding="utf-8")))
    suffix = uuid.uuid4().hex[:6]
    policy_doc = copy.deepcopy(policy_doc)
    binding_doc = copy.deepcopy(binding_doc)
    policy_doc["metadata"]["name"] += f"-{suffix}"
    binding_doc["metadata"]["name"] += f"-{suffix}"
    binding_doc["spec"]["policyName"] = policy_doc["metadata"]["name"]
    binding_doc["spec"]["matchResources"] = {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace, governed_namespace]}]}}
    docs = {"apiVersion": "v1", "kind": "List", "items": [policy_doc, binding_doc]}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(docs))
    # The API server picks a new policy up asynchronously: wait until it refuses.
    probe = _deployment("probe", namespace, {"fleetwarden.dev/agent": "true"})
    deadline = time.monotonic() + 60
    while True:
        result = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
        if result.returncode != 0 and "fleetwarden.dev/budget" in result.stderr:
            break
        assert time.monotonic() < deadline, f"the policy never took effect: {result.stdout}{result.stderr}"
        time.sleep(0.5)
    yield policy_doc["metadata"]["name"]
    cluster.kubectl("delete", "-f", "-", input=json.dumps(docs), check=False)


def test_agent_deployment_without_budget_label_is_refused(cluster, namespace, policy):
    """An agent Deployment with no fleetwarden.dev/budget label is refused with a message naming the fix."""
    result = _create(cluster, _deployment("support-bot", namespace, {"fleetwarden.dev/agent": "true"}))
    assert result.returncode != 0
    assert f"agent Deployment {namespace}/support-bot has no fleetwarden.dev/budget label" in result.stderr
    assert "kubectl label deployment support-bot fleetwarden.dev/budget=<agentbudget>" in result.stderr
    assert cluster.kubectl("get", "deployment", "support-bot", "-n", namespace, check=False).returncode != 0


def test_agent_deployment_with_budget_label_is_accepted(cluster, namespace, policy):
    """An agent Deployment labelled with its AgentBudget is created."""
    labels = {"fleetwarden.dev/agent": "true", "fleetwarden.dev/budget": "cx"}
    result = _create(cluster, _deployment("support-bot", namespace, labels))
    assert result.returncode == 0, result.stderr
    got = json.loads(cluster.kubectl("get", "deployment", "support-bot", "-n", namespace, "-o", "json").stdout)
    assert got["metadata"]["labels"]["fleetwarden.dev/budget"] == "cx"


def test_removing_the_budget_label_later_is_refused(cluster, namespace, policy):
    """An update that drops the budget label from an agent Deployment is refused."""
    labels = {"fleetwarden.dev/agent": "true", "fleetwarden.dev/budget": "cx"}
    assert _create(cluster, _deployment("lead-scorer", namespace, labels)).returncode == 0
    result = cluster.kubectl("label", "deployment", "lead-scorer", "-n", namespace, "fleetwarden.dev/budget-",
                             check=False)
    assert result.returncode != 0
    assert "has no fleetwarden.dev/budget label" in result.stderr


def test_non_agent_deployment_is_unaffected(cluster, namespace, policy):
    """A Deployment that is not an agent, in an ungoverned namespace, needs no budget label."""
    result = _create(cluster, _deployment("web", namespace, {"app": "web"}))
    assert result.returncode == 0, result.stderr


def test_any_deployment_in_a_governed_namespace_needs_the_label(cluster, governed_namespace, policy):
    """In a namespace labelled fleetwarden.dev/governed=true every Deployment counts as an agent."""
    worker = _deployment("worker", governed_namespace, {"app": "worker"})
    # The API server sees a new namespace's labels through its informer: allow it a moment.
    deadline = time.monotonic() + 30
    while cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(worker),
                          check=False).returncode == 0:
        assert time.monotonic() < deadline, "a Deployment in the governed namespace was never refused"
        time.sleep(0.5)
    refused = _create(cluster, worker)
    assert refused.returncode != 0
    assert f"agent Deployment {governed_namespace}/worker has no fleetwarden.dev/budget label" in refused.stderr
    accepted = _create(cluster, _deployment("worker", governed_namespace,
                                            {"app": "worker", "fleetwarden.dev/budget": "ops"}))
    assert accepted.returncode == 0, accepted.stderr
