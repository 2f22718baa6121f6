"""Shared e2e fixtures: the Fleetwarden CRDs installed, exactly as a user installs them; the
operator started as its own ServiceAccount (never as admin); agents as theirs.

Use it with ``from fixtures_fleetwarden import crds_installed  # noqa: F401`` in a test
module (tests/e2e is on sys.path during collection), or register this module in
tests/e2e/conftest.py with ``pytest_plugins = ["fixtures_fleetwarden"]``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetwarden.devcluster import pki, procs

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


def crd_names() -> list[str]:
    """The names of the CRDs in crds/ (e.g. agentbudgets.fleetwarden.dev)."""
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    return names


@pytest.fixture(scope="session")
def crds_installed(cluster: Any) -> list[str]:
    """`kubectl apply -f crds/`, then wait until every CRD is Established; returns their names."""
    cluster.kubectl("apply", "-f", str(CRDS))
    names = crd_names()
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"customresourcedefinition/{name}" for name in names], timeout=90)
    return names


# ---------------------------------------------------------------- the operator, never as admin
#
# Every e2e test that starts the operator (``fleetwarden operator``, or kopf on one handler
# module) starts it here, with a kubeconfig holding a TokenRequest token of the operator's
# own ServiceAccount from manifests/ (serviceaccount.yaml, rbac.yaml): a verb missing from
# the ClusterRole fails the test that needs it. ``identity(rules=...)`` makes a per-test copy
# of the ClusterRole with other rules (a fault to inject: a verb taken away), bound to a
# ServiceAccount of the test's namespace; ``set_rules`` changes it while the operator runs.

MANIFESTS = ROOT / "manifests"
OPERATOR_NAMESPACE = "fleetwarden-system"
OPERATOR_ACCOUNT = "fleetwarden-operator"
IDENTITY_FILES = ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml")
# Lease timings of the e2e operators: short enough that a restart or failover costs seconds,
# long enough that a loaded 2-core machine does not lose a lease by a late renewal.
LEASE_FLAGS = ("--lease-duration", "6", "--renew-deadline", "4.5", "--retry-period", "1")


def manifest_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def operator_rules() -> list[dict[str, Any]]:
    """The rules of the shipped ClusterRole fleetwarden-operator (a fresh copy to edit)."""
    (role,) = [d for d in manifest_docs("rbac.yaml") if d["kind"] == "ClusterRole"]
    return copy.deepcopy(role["rules"])


def without_verb(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> list[dict[str, Any]]:
    """``rules`` with ``verb`` taken away from ``group``/``resource`` (other resources of the same
    rule keep it). AssertionError when no rule granted it: the fault would inject nothing."""
    out, found = [], False
    for rule in copy.deepcopy(rules):
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            found = True
            others = [r for r in rule["resources"] if r != resource]
            if others:
                out.append({**rule, "resources": others})
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:
                out.append({**rule, "resources": [resource], "verbs": verbs})
            continue
        out.append(rule)
    assert found, f"no rule grants {verb} on {group or 'core'}/{resource}"
    return out


def token_kubeconfig(cluster: Any, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig at ``path`` for ServiceAccount ``namespace/account``: the cluster entry of the
    admin kubeconfig (server, CA), and a token from the TokenRequest API (`kubectl create token`)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    path.write_text(pki.token_kubeconfig(Path(cluster.kubeconfig).read_text(), token, f"{namespace}-{account}",
                                         namespace))
    path.chmod(0o600)
    return path


def refuse_admin(cluster: Any, kubeconfig: Path | str, expected_user: str) -> None:
    """AssertionError unless ``kubeconfig`` authenticates as ``expected_user`` and cannot grant
    itself anything (no RBAC writes, no wildcard): the harness never runs the operator as admin."""
    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cluster.kubectl_path, f"--kubeconfig={kubeconfig}", *args], capture_output=True,
                              text=True, timeout=30, check=False, env=cluster.env)

    who = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout.strip()
    assert who == expected_user, f"refusing to run the operator as {who or '?'} (want {expected_user})"
    for probe in (("create", "clusterrolebindings.rbac.authorization.k8s.io"), ("*", "*", "--all-namespaces")):
        answer = kubectl("auth", "can-i", *probe).stdout.strip()
        assert answer == "no", f"refusing to run the operator as {who}: it may {' '.join(probe)}"


@dataclasses.dataclass
class Identity:
    """Who an operator process is: its kubeconfig, username, and where it may hold its Lease."""

    kubeconfig: Path
    username: str
    lease_namespace: str
    cluster_role: str | None = None  # the per-test copy, when there is one

    def env(self, cluster: Any) -> dict[str, str]:
        env = dict(cluster.env)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def can(self, cluster: Any, *request: str) -> bool:
        """``kubectl auth can-i REQUEST`` as this identity."""
        result = subprocess.run([cluster.kubectl_path, f"--kubeconfig={self.kubeconfig}", "auth", "can-i", *request],
                                capture_output=True, text=True, timeout=30, check=False, env=cluster.env)
        return result.stdout.strip() == "yes"

    def set_rules(self, cluster: Any, rules: list[dict[str, Any]], *, until: Sequence[str], allowed: bool) -> None:
        """Replace the rules of this identity's ClusterRole copy; wait until the authorizer answers
        ``allowed`` for the request ``until`` (kubectl auth can-i arguments)."""
        assert self.cluster_role is not None, "only a per-test identity (rules=...) can change its rules"
        cluster.apply(json.dumps(_cluster_role(self.cluster_role, rules)))
        cluster.wait_for(lambda: self.can(cluster, *until) is allowed, 30,
                         f"can-i {' '.join(until)} = {allowed} as {self.username}")


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"fleetwarden.dev/e2e": "true"}}, "rules": rules}


def operator_identity(cluster: Any, workdir: Path, request: pytest.FixtureRequest, *, namespace: str | None = None,
                      rules: list[dict[str, Any]] | None = None) -> Identity:
    """The operator's identity. Without ``rules``: the shipped ServiceAccount fleetwarden-system/
    fleetwarden-operator and its ClusterRole and Lease Role, applied from manifests/ as they are.
    With ``rules`` (and ``namespace``): a ServiceAccount in ``namespace`` bound to a copy of the
    ClusterRole with these rules, and to a copy of the Lease Role in ``namespace``."""
    for name in IDENTITY_FILES:
        cluster.apply(str(MANIFESTS / name))
    if rules is None:
        account_ns, account, lease_ns, role_name = OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, None
    else:
        assert namespace is not None, "a per-test identity lives in the test's namespace"
        account_ns, account, lease_ns = namespace, "fleetwarden-operator", namespace
        role_name = f"fleetwarden-operator-{namespace}"[:253]
        (lease_role,) = [d for d in manifest_docs("rbac.yaml") if d["kind"] == "Role"]
        subject = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
        objects = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}},
            _cluster_role(role_name, rules),
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": role_name, "labels": {"fleetwarden.dev/e2e": "true"}},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
             "subjects": subject},
            {**lease_role, "metadata": {"name": "leader-election", "namespace": namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "leader-election", "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
             "subjects": subject},
        ]
        cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        request.addfinalizer(lambda: cluster.kubectl("delete", "clusterrole,clusterrolebinding", role_name,
                                                     "--ignore-not-found", check=False))
    username = f"system:serviceaccount:{account_ns}:{account}"
    kubeconfig = token_kubeconfig(cluster, account_ns, account, workdir / f"{account_ns}-{account}.kubeconfig")
    refuse_admin(cluster, kubeconfig, username)
    return Identity(kubeconfig, username, lease_ns, role_name)


class Operator:
    """One operator process (``python -m fleetwarden operator`` by default) as ``identity``."""

    def __init__(self, cluster: Any, identity: Identity, argv: Sequence[str], log_path: Path,
                 metrics_port: int | None = None) -> None:
        self.cluster = cluster
        self.identity = identity
        self.metrics_port = metrics_port
        self.log_path = log_path
        env = identity.env(cluster)
        env["PYTHONUNBUFFERED"] = "1"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, *argv], stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` (with these labels) on the operator's own /metrics."""
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        for line in text.splitlines():
            if (line.startswith(name + " ") or line.startswith(name + "{")) and all(w in line for w in wanted):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def evaluations(self) -> float:
        return self.metric("fleetwarden_evaluation_seconds_count")

    def wait_evaluations(self, cluster: Any, more: int, timeout: float = 60) -> None:
        """Wait until the operator has evaluated ``more`` more times (budget cycles)."""
        start = self.evaluations()
        cluster.wait_for(lambda: self.evaluations() >= start + more, timeout, f"{more} more evaluations")

    def tail(self, lines: int = 150) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> float:
        """SIGKILL (no cleanup, no Lease release); the monotonic time it was sent."""
        at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return at

    def stop(self) -> None:
        procs.end(self.proc)
        if not self.log.closed:
            self.log.close()


def start_operator(cluster: Any, prometheus_url: str, namespace: str, workdir: Path, request: pytest.FixtureRequest,
                   extra: Sequence[str] = (), *, identity: Identity | None = None, interval: float = 2.0,
                   scrape_interval: float = 2.0, name: str = "operator", lease_name: str | None = None,
                   shard_lease: bool = False) -> Operator:
    """``fleetwarden operator`` for ``namespace``, as the operator's ServiceAccount (``identity``, by
    default the shipped one), under leader election on a Lease of this test (``shard_lease``: no
    ``--lease-name``, the operator's own default for a shard of ``namespace``); stopped (its log
    printed) when the test ends."""
    from fleetwarden.handlers import leader  # here: importing the package registers kopf handlers

    identity = identity or operator_identity(cluster, workdir, request)
    lease = leader.lease_name([namespace]) if shard_lease else lease_name or f"fleetwarden-{namespace}"[:253]
    port = procs.free_port()
    argv = ["-m", "fleetwarden", "operator", "--interval", str(interval), "--prometheus-url", prometheus_url,
            "--scrape-interval", str(scrape_interval), "--metrics-port", str(port), "--namespace", namespace,
            "--leader-elect", *(() if shard_lease else ("--lease-name", lease)),
            "--lease-namespace", identity.lease_namespace, *LEASE_FLAGS, *extra]
    return _started(cluster, request, Operator(cluster, identity, argv, workdir / f"{name}.log", port), lease)


def start_kopf(cluster: Any, namespace: str, module: str, workdir: Path, request: pytest.FixtureRequest,
               identity: Identity | None = None) -> Operator:
    """kopf on one handler module (``fleetwarden.handlers.approvals``, ...), for ``namespace`` only,
    as the operator's ServiceAccount."""
    identity = identity or operator_identity(cluster, workdir, request)
    argv = ["-m", "kopf", "run", "--standalone", "--namespace", namespace, "-m", module]
    return _started(cluster, request, Operator(cluster, identity, argv, workdir / f"kopf-{module}.log"), None)


def _started(cluster: Any, request: pytest.FixtureRequest, op: Operator, lease: str | None) -> Operator:
    def finish() -> None:
        op.stop()
        print(f"--- {op.log_path.name} (shown by pytest when the test failed) ---\n{op.tail()}")
        if lease is not None:
            cluster.kubectl("delete", "lease", lease, "-n", op.identity.lease_namespace, "--ignore-not-found",
                            check=False)

    request.addfinalizer(finish)
    return op


# ---------------------------------------------------------------- agents, never as admin


AGENT_ROLEBINDING_EXAMPLE = MANIFESTS / "agent-rolebinding.example.yaml"


def agent_identity(cluster: Any, namespace: str, account: str, workdir: Path) -> Identity:
    """An agent ServiceAccount in ``namespace``, bound as manifests/agent-rolebinding.example.yaml
    binds one (names replaced) to the fleetwarden-agent ClusterRole of manifests/agent-rbac.yaml."""
    cluster.apply(str(MANIFESTS / "agent-rbac.yaml"))
    objects = []
    for doc in yaml.safe_load_all(AGENT_ROLEBINDING_EXAMPLE.read_text()):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "ServiceAccount":
            doc["metadata"]["name"] = account
        else:
            doc["metadata"]["name"] = f"{account}-fleetwarden-agent"
            doc["subjects"] = [{**s, "name": account, "namespace": namespace} for s in doc["subjects"]]
        objects.append(doc)
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    username = f"system:serviceaccount:{namespace}:{account}"
    kubeconfig = token_kubeconfig(cluster, namespace, account, workdir / f"{namespace}-{account}.kubeconfig")
    refuse_admin(cluster, kubeconfig, username)
    return Identity(kubeconfig, username, namespace)
