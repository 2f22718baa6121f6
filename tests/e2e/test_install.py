"""`kubectl apply -k manifests/` on the real API server, and what the operator may and may not do.

The operator image does not exist here; KWOK fakes its pod as Running, which is enough to
show the pod passes the `restricted` Pod Security level of its namespace. RBAC is checked
with `kubectl auth can-i --as=<the operator's ServiceAccount>` against tests/e2e/operator_rbac.py
(the chart's install is checked against the same lists).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fixtures_fleetwarden
import operator_rbac
import pytest
from fixtures_fleetwarden import crd_names

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
NAMESPACE = "fleetwarden-system"
OPERATOR = operator_rbac.service_account(NAMESPACE, "fleetwarden-operator")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def installed(cluster: Any) -> Iterator[str]:
    """`kubectl apply -k manifests/`; its output. Afterwards the operator's own objects are removed
    (the CRDs stay: other tests use them)."""
    # a namespace still terminating from an earlier run would refuse the new objects (one that is
    # Active, e.g. made by the operator e2e harness, is simply applied over)
    phase = cluster.kubectl("get", "namespace", NAMESPACE, "-o", "jsonpath={.status.phase}", check=False).stdout
    if phase == "Terminating":
        cluster.kubectl("wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=120s", check=False, timeout=150)
    output = cluster.kubectl("apply", "-k", str(MANIFESTS), timeout=120).stdout
    yield output
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=120s",
                    check=False, timeout=150)
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", "fleetwarden-operator", "--ignore-not-found",
                    check=False)
    cluster.kubectl("delete", "clusterrole", "fleetwarden-agent", "--ignore-not-found", check=False)


def test_apply_k_installs_crds_and_operator(cluster: Any, installed: str) -> None:
    """The kustomization creates the CRDs, namespace, ServiceAccount, RBAC and the operator Deployment."""
    for line in ("namespace/fleetwarden-system", "serviceaccount/fleetwarden-operator",
                 "clusterrole.rbac.authorization.k8s.io/fleetwarden-operator",
                 "clusterrolebinding.rbac.authorization.k8s.io/fleetwarden-operator",
                 "role.rbac.authorization.k8s.io/fleetwarden-operator-leader-election",
                 "rolebinding.rbac.authorization.k8s.io/fleetwarden-operator-leader-election",
                 "poddisruptionbudget.policy/fleetwarden-operator",
                 "deployment.apps/fleetwarden-operator", "service/fleetwarden-operator-metrics",
                 "poddisruptionbudget.policy/fleetwarden-operator",
                 "role.rbac.authorization.k8s.io/fleetwarden-operator-leader-election",
                 "rolebinding.rbac.authorization.k8s.io/fleetwarden-operator-leader-election",
                 "clusterrole.rbac.authorization.k8s.io/fleetwarden-agent",
                 *[f"customresourcedefinition.apiextensions.k8s.io/{name}" for name in crd_names()]):
        assert line in installed
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"customresourcedefinition/{name}" for name in crd_names()], timeout=90)


def test_operator_pod_is_admitted_under_restricted_pod_security(cluster: Any, installed: str) -> None:
    """The operator pods pass the namespace's `restricted` Pod Security level and run (faked by KWOK)."""
    labels = cluster.get_json("namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    wanted = cluster.get_json("deployment", "fleetwarden-operator", "-n", NAMESPACE)["spec"]["replicas"]
    assert wanted == 2

    def running() -> bool:
        pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
        return len(pods) == wanted and all(p["status"].get("phase") == "Running" for p in pods)

    cluster.wait_for(running, 90, "the operator pods Running")


@pytest.mark.parametrize("request_args", operator_rbac.MAY, ids=" ".join)
def test_operator_may(cluster: Any, installed: str, request_args: tuple[str, ...]) -> None:
    """The operator may watch its resources, write their status, scale and patch agents, post events."""
    assert operator_rbac.can_i(cluster, OPERATOR, *request_args)


@pytest.mark.parametrize("request_args", operator_rbac.MAY_NOT, ids=" ".join)
def test_operator_may_not(cluster: Any, installed: str, request_args: tuple[str, ...]) -> None:
    """The operator may not read secrets, delete or create workloads, exec, or grant itself more."""
    assert not operator_rbac.can_i(cluster, OPERATOR, *request_args)


@pytest.mark.parametrize(("verb", "allowed"), operator_rbac.KEDA_VERBS)
def test_operator_may_pause_keda_scaled_objects(cluster: Any, installed: str, verb: str, allowed: bool) -> None:
    """The operator may read and patch KEDA ScaledObjects (to pause a killed agent), and nothing more."""
    assert operator_rbac.may_on(cluster, OPERATOR, verb, "keda.sh", "scaledobjects", "support") is allowed


@pytest.mark.parametrize(("verb", "allowed"), operator_rbac.LEASE_VERBS)
def test_operator_may_hold_its_lease(cluster: Any, installed: str, verb: str, allowed: bool) -> None:
    """In its own namespace the operator may get, create and update Leases (leader election)."""
    assert operator_rbac.can_i(cluster, OPERATOR, verb, "leases.coordination.k8s.io", "-n", NAMESPACE) is allowed


def test_the_e2e_harness_runs_the_operator_as_its_service_account_never_as_admin(
        cluster: Any, installed: str, tmp_path: Path) -> None:
    """The harness' token kubeconfig is the operator's ServiceAccount and passes its check; the admin
    kubeconfig (or any identity that may write RBAC) is refused."""
    kubeconfig = fixtures_fleetwarden.token_kubeconfig(cluster, NAMESPACE, "fleetwarden-operator",
                                                       tmp_path / "operator.kubeconfig")
    fixtures_fleetwarden.refuse_admin(cluster, kubeconfig, OPERATOR)
    with pytest.raises(AssertionError, match="refusing to run the operator as"):
        fixtures_fleetwarden.refuse_admin(cluster, cluster.kubeconfig, OPERATOR)
    with pytest.raises(AssertionError, match="refusing to run the operator as"):
        fixtures_fleetwarden.refuse_admin(cluster, kubeconfig, "system:serviceaccount:other:account")
