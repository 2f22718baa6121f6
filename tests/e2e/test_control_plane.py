"""The local control plane behaves like a cluster: API, controllers, scheduler, KWOK, tokens, clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwarden.devcluster import build, procs

LOCAL_ONLY = pytest.mark.skipif(bool(os.environ.get("FLEETWARDEN_KUBECONFIG")),
                                reason="needs the local control plane (KWOK nodes, our own processes)")

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: agent
spec:
  replicas: 2
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: fleetwarden-agent:dev
"""


def _running_pods(cluster, namespace: str) -> list[dict]:
    pods = cluster.get_json("pods", "-n", namespace, "-l", "app=agent")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def test_api_server_answers_with_the_release_of_kubectl(cluster) -> None:
    """The API server is ready and reports the same version as the kubectl built with it."""
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    server = versions["serverVersion"]["gitVersion"]
    assert server.startswith("v1.")
    if cluster.state_dir is not None:
        assert versions["clientVersion"]["gitVersion"] == server


def test_default_namespace_and_ready_node_exist(cluster) -> None:
    """The default namespace exists and at least one node is Ready."""
    cluster.kubectl("get", "namespace", "default")
    nodes = cluster.get_json("nodes")["items"]
    ready = [n for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])]
    assert ready


@LOCAL_ONLY
def test_deployment_gets_running_pods_and_scales_to_zero(cluster, namespace) -> None:
    """A 2-replica Deployment reaches 2 Running pods on KWOK nodes; scaling to 0 removes them."""
    cluster.apply(DEPLOYMENT, namespace=namespace)
    pods = cluster.wait_for(lambda: len(_running_pods(cluster, namespace)) == 2 and _running_pods(cluster, namespace),
                            60, "2 Running pods")
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)
    assert all(p["status"].get("podIP") for p in pods)
    status = cluster.get_json("deployment", "agent", "-n", namespace)["status"]
    cluster.wait_for(lambda: cluster.get_json("deployment", "agent", "-n", namespace)["status"]
                     .get("readyReplicas") == 2, 30, "readyReplicas 2")
    assert status.get("replicas") == 2
    cluster.kubectl("scale", "deployment/agent", "--replicas=0", "-n", namespace)
    cluster.wait_for(lambda: cluster.get_json("pods", "-n", namespace, "-l", "app=agent")["items"] == [],
                     60, "pods removed after scale to 0")


def test_service_account_tokens_authenticate_and_authorize(cluster, namespace, tmp_path: Path) -> None:
    """A token-controller Secret token authenticates as its ServiceAccount; RBAC and --as agree."""
    user = f"system:serviceaccount:{namespace}:bot"
    cluster.kubectl("create", "serviceaccount", "bot", "-n", namespace)
    cluster.apply(f"""\
apiVersion: v1
kind: Secret
metadata:
  name: bot-token
  namespace: {namespace}
  annotations:
    kubernetes.io/service-account.name: bot
type: kubernetes.io/service-account-token
""")
    # The controller-manager's token controller signs the token with the service-account key.
    token_b64 = cluster.wait_for(
        lambda: cluster.get_json("secret", "bot-token", "-n", namespace).get("data", {}).get("token"),
        30, "token filled in by the controller-manager")
    import base64
    token = base64.b64decode(token_b64).decode()
    ca = cluster.kubectl("config", "view", "--raw", "--minify", "-o",
                         "jsonpath={.clusters[0].cluster.certificate-authority-data}").stdout
    kubeconfig = tmp_path / "bot.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": "bot", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "bot", "namespace": namespace}}],
        "current-context": "c",
    }))

    def as_bot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cluster.kubectl_path, f"--kubeconfig={kubeconfig}", *args],
                              capture_output=True, text=True, timeout=30, check=False)

    whoami = json.loads(as_bot("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == user
    assert as_bot("auth", "can-i", "list", "pods").stdout.strip() == "no"
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, as_user=user,
                           check=False).stdout.strip() == "no"
    cluster.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "bot-reads", "--role=pod-reader",
                    f"--serviceaccount={namespace}:bot", "-n", namespace)
    cluster.wait_for(lambda: as_bot("auth", "can-i", "list", "pods").stdout.strip() == "yes", 30,
                     "RBAC grant visible to the token")
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, as_user=user).stdout.strip() == "yes"
    assert cluster.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, as_user=user,
                           check=False).stdout.strip() == "no"
    assert as_bot("get", "pods").returncode == 0


@LOCAL_ONLY
def test_dev_cluster_down_leaves_no_process_behind(tmp_path: Path) -> None:
    """`dev-cluster up --prometheus --alertmanager` then `down` stops every process and removes the state."""
    build.find_binaries()  # built by the session's collection hook
    state = tmp_path / "state"

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "fleetwarden", "dev-cluster", f"--state-dir={state}",
                                 *args], capture_output=True, text=True, timeout=300, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"dev-cluster {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    try:
        up = cli("up", "--prometheus", "--alertmanager", "--scrape-interval=2")
        assert f"export KUBECONFIG={state}/kubeconfig" in up.stdout
        assert "PROMETHEUS_URL=http://127.0.0.1:" in up.stdout
        status = json.loads(cli("status", "--json").stdout)
        assert status["ready"] is True
        records = {}
        for directory in (state, state / "prometheus", state / "alertmanager"):
            records.update(procs.recorded(directory))
        assert set(records) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                                "prometheus", "alertmanager"}
        assert all(procs.is_running(r) for r in records.values())
        env = cli("env").stdout
        assert f"KUBECONFIG={state}/kubeconfig" in env
    finally:
        cli("down")
    assert not any(procs.is_running(r) for r in records.values())
    assert not any(Path(f"/proc/{r['pid']}").exists() and procs.is_running(r) for r in records.values())
    assert not state.exists()
    assert cli("status", check=False).returncode == 1
