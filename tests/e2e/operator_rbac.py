"""What the operator's ServiceAccount may and may not do, asked of the real API server.

One list for every way of installing the operator: tests/e2e/test_install.py checks the
kustomize install with it, tests/e2e/test_chart_install.py the Helm chart's. Requests are
(verb, resource, flags...) as `kubectl auth can-i` takes them; "support" is any agent namespace.
"""

from __future__ import annotations

import json
from typing import Any

# The operator may watch its resources, write their status, scale and patch agents, post events.
MAY: list[tuple[str, ...]] = [
    ("patch", "deployments.apps", "--subresource=scale", "-n", "support"),
    ("update", "deployments.apps", "--subresource=scale", "-n", "support"),
    ("patch", "deployments.apps", "-n", "support"),
    ("watch", "deployments.apps", "--all-namespaces"),
    ("watch", "agentbudgets.fleetwarden.dev", "--all-namespaces"),
    ("patch", "agentbudgets.fleetwarden.dev", "--subresource=status", "-n", "support"),
    ("patch", "costpolicies.fleetwarden.dev", "--subresource=status", "-n", "support"),
    ("patch", "costapprovals.fleetwarden.dev", "--subresource=status", "-n", "support"),
    ("create", "events", "-n", "support"),
    ("get", "events", "-n", "support"),  # an Event posted again bumps its count (no storm after a restart)
    ("create", "events.events.k8s.io", "-n", "support"),
    ("create", "configmaps", "-n", "support"),
    ("list", "namespaces"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
]

# It may not read secrets, delete or create workloads, exec, or grant itself more.
MAY_NOT: list[tuple[str, ...]] = [
    ("get", "secrets", "-n", "support"),
    ("list", "secrets", "--all-namespaces"),
    ("delete", "deployments.apps", "-n", "support"),
    ("update", "deployments.apps", "-n", "support"),
    ("create", "deployments.apps", "-n", "support"),
    ("create", "pods", "--subresource=exec", "-n", "support"),
    ("create", "pods", "-n", "support"),
    ("delete", "agentbudgets.fleetwarden.dev", "-n", "support"),
    ("create", "costapprovals.fleetwarden.dev", "-n", "support"),
    ("delete", "configmaps", "-n", "support"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts", "-n", "support"),
    ("create", "serviceaccounts", "--subresource=token", "-n", "support"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    # leader election is confined to the operator's own namespace
    ("create", "leases.coordination.k8s.io", "-n", "support"),
    ("update", "leases.coordination.k8s.io", "-n", "support"),
    ("update", "leases.coordination.k8s.io", "-n", "kube-system"),
]

# KEDA ScaledObjects: read and patch (pause a killed agent), nothing more.
KEDA_VERBS: list[tuple[str, bool]] = [("get", True), ("list", True), ("patch", True),
                                      ("delete", False), ("create", False), ("update", False)]

# In its own namespace: hold the leader-election Lease.
LEASE_VERBS: list[tuple[str, bool]] = [("get", True), ("create", True), ("update", True),
                                       ("delete", False)]


def service_account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def can_i(cluster: Any, user: str, *args: str) -> bool:
    """`kubectl auth can-i ARGS --as=USER`."""
    result = cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def may_on(cluster: Any, user: str, verb: str, group: str, resource: str, namespace: str) -> bool:
    """A SelfSubjectAccessReview as USER for a resource the server may not serve (no CRD):
    `kubectl auth can-i` cannot name the group of an unknown resource, the review can."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                              "namespace": namespace}}}
    result = cluster.kubectl("create", "-f", "-", "-o", "json", f"--as={user}", input=json.dumps(review))
    return bool(json.loads(result.stdout)["status"].get("allowed"))
