"""CostApprovals on the real API server: who may ask, who may decide, what is recorded, expiry.

Installs crds/, manifests/approvals-rbac.yaml and manifests/approvals-policy.yaml exactly as
shipped. The agent is a real ServiceAccount with a TokenRequest token, bound as
manifests/agent-rolebinding.example.yaml binds one (the fleetwarden-agent role); the operator
runs as its own ServiceAccount. Impersonated (``--as``): a second service account that RBAC
lets do everything (so the admission policy alone must stop it), and a person, alice, bound
to the approver role.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import Operator, agent_identity, crds_installed, start_kopf  # noqa: F401 - fixture

from fleetwarden.adapters import approvals
from fleetwarden.core import timefmt

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "manifests" / "approvals-rbac.yaml"
POLICY = ROOT / "manifests" / "approvals-policy.yaml"


@pytest.fixture(scope="module")
def approvals_installed(cluster: Any, crds_installed: list[str]) -> None:  # noqa: F811
    """The approval roles and the admission policy, as shipped; waits until the policy bites."""
    cluster.apply(str(RBAC))
    cluster.apply(str(POLICY))
    probe_ns = "fleetwarden-vap-probe"
    cluster.kubectl("create", "namespace", probe_ns, check=False)
    lying = _request_manifest(probe_ns, "probe", requester="someone-else")

    def refused() -> bool:
        result = cluster.kubectl("create", "-f", "-", input=json.dumps(lying), check=False)
        if result.returncode == 0:  # the policy was not loaded yet: remove and try again
            cluster.kubectl("delete", "costapproval", "-n", probe_ns, "--all", check=False)
            return False
        return "must be the creator" in result.stderr

    cluster.wait_for(refused, 60, "the CostApproval admission policy to be enforced")
    cluster.kubectl("delete", "namespace", probe_ns, "--wait=false", check=False)


def _request_manifest(namespace: str, agent: str, *, requester: str, expires_in: float = 600) -> dict[str, Any]:
    return {
        "apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostApproval",
        "metadata": {"generateName": f"{agent}-", "namespace": namespace},
        "spec": {"agent": agent, "requester": requester, "rule": "refunds", "tool": "payments.refund",
                 "amountUSD": 120.0, "reason": "refund above 50 USD",
                 "expiresAt": timefmt.rfc3339(time.time() + expires_in)},
    }


def _sa(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@pytest.fixture
def identities(cluster: Any, namespace: str, approvals_installed: None, workdir: Path) -> dict[str, str]:
    """agent (fleetwarden-agent role, its own token: ``agent_kubeconfig``), greedy (requester and
    approver roles), alice (approver role)."""
    agent = agent_identity(cluster, namespace, "agent", workdir)
    cluster.kubectl("create", "serviceaccount", "greedy", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "greedy-requests", "-n", namespace,
                    "--clusterrole=fleetwarden-approval-requester", f"--serviceaccount={namespace}:greedy")
    cluster.kubectl("create", "rolebinding", "approvers", "-n", namespace, "--clusterrole=fleetwarden-approver",
                    "--user=alice", f"--serviceaccount={namespace}:greedy")
    return {"agent": agent.username, "agent_kubeconfig": str(agent.kubeconfig), "greedy": _sa(namespace, "greedy"),
            "alice": "alice"}


def _backend(cluster: Any, namespace: str, user: str, identities: dict[str, str] | None = None
             ) -> approvals.KubernetesApprovalBackend:
    """The SDK's approval backend as ``user``: the agent with its own token, others impersonated."""
    if identities is not None and user == identities["agent"]:
        return approvals.KubernetesApprovalBackend(namespace, api=approvals.api_client(identities["agent_kubeconfig"]))
    return approvals.KubernetesApprovalBackend(
        namespace, api=approvals.api_client(cluster.kubeconfig, as_user=user))


def _ask(backend: approvals.KubernetesApprovalBackend, namespace: str, timeout: float = 600) -> str:
    request_id = backend.request(agent="support-bot", namespace=namespace, workflow="refunds", task_id="t-1",
                                 rule="refund-policy/refunds", tool="payments.refund", amount_usd=120.0,
                                 reason="refund above 50 USD", timeout_seconds=timeout)
    return request_id.split("/", 1)[1]


def _fleetwarden(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in a subprocess (its own kubeconfig and identity)."""
    result = subprocess.run([sys.executable, "-m", "fleetwarden", *argv], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ), check=False)
    return result.returncode, result.stdout, result.stderr


def _status(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get_json("costapproval", name, "-n", namespace).get("status") or {}


def _patch_status(cluster: Any, namespace: str, name: str, status: dict[str, Any], user: str
                  ) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("patch", "costapproval", name, "-n", namespace, "--subresource=status",
                           "--type=merge", "-p", json.dumps({"status": status}), as_user=user, check=False)


def test_agent_creates_a_request_recording_itself(cluster: Any, namespace: str, identities: dict[str, str]) -> None:
    """The backend creates a CostApproval whose spec.requester is the agent's service account."""
    name = _ask(_backend(cluster, namespace, identities["agent"], identities), namespace)
    body = cluster.get_json("costapproval", name, "-n", namespace)
    assert body["spec"]["requester"] == identities["agent"]
    assert body["spec"]["agent"] == "support-bot" and body["spec"]["amountUSD"] == 120.0
    assert not body.get("status", {}).get("decision")


def test_a_request_in_someone_elses_name_is_refused(cluster: Any, namespace: str,
                                                    identities: dict[str, str]) -> None:
    """Creating a request whose spec.requester is not the creator is refused by the admission policy."""
    manifest = _request_manifest(namespace, "support-bot", requester="alice")
    result = cluster.kubectl("create", "-f", "-", input=json.dumps(manifest), as_user=identities["agent"],
                             check=False)
    assert result.returncode != 0
    assert "spec.requester must be the creator" in result.stderr


@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_the_agent_cannot_decide_its_own_request(cluster: Any, namespace: str, identities: dict[str, str],
                                                 verb: str) -> None:
    """The agent's service account can neither approve nor deny: RBAC gives it no status access."""
    name = _ask(_backend(cluster, namespace, identities["agent"], identities), namespace)
    code, _, err = _fleetwarden(verb, name, "-n", namespace, "--kubeconfig", identities["agent_kubeconfig"])
    assert code == 2
    assert "forbidden" in err.lower() and "costapprovals/status" in err
    result = _patch_status(cluster, namespace, name, {"decision": "Approved", "decidedBy": identities["agent"],
                                                      "decidedAt": timefmt.rfc3339(time.time())},
                           identities["agent"])
    assert result.returncode != 0 and "forbidden" in result.stderr.lower()
    assert not _status(cluster, namespace, name).get("decision")


@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_admission_policy_stops_a_requester_rbac_would_allow(cluster: Any, namespace: str,
                                                             identities: dict[str, str], verb: str) -> None:
    """A service account with the approver role still cannot decide its own request (the policy refuses)."""
    name = _ask(_backend(cluster, namespace, identities["greedy"]), namespace)
    code, _, err = _fleetwarden(verb, name, "-n", namespace, "--kubeconfig", cluster.kubeconfig,
                                "--as", identities["greedy"])
    assert code == 2
    assert "can neither approve nor deny it" in err
    assert not _status(cluster, namespace, name).get("decision")


def test_a_person_approves_and_the_agent_sees_it(cluster: Any, namespace: str, identities: dict[str, str]) -> None:
    """alice approves with `fleetwarden approve`; decidedBy is alice; the waiting agent gets "approved"."""
    backend = _backend(cluster, namespace, identities["agent"], identities)
    name = _ask(backend, namespace)
    result: dict[str, str] = {}
    waiter = threading.Thread(target=lambda: result.setdefault("decision", backend.wait(f"{namespace}/{name}", 60)))
    waiter.start()
    code, out, err = _fleetwarden("approve", name, "-n", namespace, "--kubeconfig", cluster.kubeconfig,
                                  "--as", "alice", "--reason", "customer is entitled")
    assert code == 0, err
    assert "Approved by alice" in out
    waiter.join(60)
    assert result.get("decision") == "approved"
    status = _status(cluster, namespace, name)
    assert (status["decision"], status["decidedBy"], status["reason"]) == ("Approved", "alice",
                                                                           "customer is entitled")
    # A decision is final: the CLI says so, and the API server refuses a raw change too.
    code, _, err = _fleetwarden("deny", name, "-n", namespace, "--kubeconfig", cluster.kubeconfig, "--as", "alice")
    assert code == 2 and "already Approved (by alice)" in err
    raw = _patch_status(cluster, namespace, name, {"decision": "Denied"}, "alice")
    assert raw.returncode != 0 and "a decision is final" in raw.stderr


def test_a_person_denies_and_cannot_record_another_name(cluster: Any, namespace: str,
                                                        identities: dict[str, str]) -> None:
    """decidedBy must be the decider: alice writing decidedBy=bob is refused; her own denial is recorded."""
    backend = _backend(cluster, namespace, identities["agent"], identities)
    name = _ask(backend, namespace)
    lie = _patch_status(cluster, namespace, name, {"decision": "Approved", "decidedBy": "bob",
                                                   "decidedAt": timefmt.rfc3339(time.time())}, "alice")
    assert lie.returncode != 0 and "decidedBy must be the username of whoever decides (alice)" in lie.stderr
    code, _, err = _fleetwarden("deny", name, "-n", namespace, "--kubeconfig", cluster.kubeconfig, "--as", "alice")
    assert code == 0, err
    assert backend.wait(f"{namespace}/{name}", 30) == "denied"
    assert _status(cluster, namespace, name)["decidedBy"] == "alice"


@pytest.fixture
def approvals_operator(cluster: Any, namespace: str, workdir: Path, request: pytest.FixtureRequest) -> Operator:
    """The approvals handlers under kopf, watching this test's namespace only, as the operator's
    ServiceAccount."""
    return start_kopf(cluster, namespace, "fleetwarden.handlers.approvals", workdir, request)


def test_an_undecided_request_expires(cluster: Any, namespace: str, identities: dict[str, str],
                                      approvals_operator: Operator) -> None:
    """Past spec.expiresAt the operator sets Expired, recording its own identity, and posts an Event."""
    backend = _backend(cluster, namespace, identities["agent"], identities)
    name = _ask(backend, namespace, timeout=4)
    assert backend.wait(f"{namespace}/{name}", 60) == "expired"
    status = _status(cluster, namespace, name)
    assert (status["decision"], status["decidedBy"]) == ("Expired", approvals_operator.identity.username)
    assert approvals_operator.identity.username == "system:serviceaccount:fleetwarden-system:fleetwarden-operator"
    expires = cluster.get_json("costapproval", name, "-n", namespace)["spec"]["expiresAt"]
    assert timefmt.parse_rfc3339_strict(status["decidedAt"]) >= timefmt.parse_rfc3339_strict(expires)

    def expired_event() -> bool:
        events = cluster.get_json("events", "-n", namespace, "--field-selector",
                                  f"involvedObject.name={name}")["items"]
        return any(e["reason"] == "ApprovalExpired" for e in events)

    cluster.wait_for(expired_event, 30, "the ApprovalExpired event")
    assert approvals_operator.proc.poll() is None
