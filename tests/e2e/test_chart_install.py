"""The operator installed from the Helm chart's rendered manifests, on the real API server.

`helm template` renders the chart (CRDs included) and `kubectl apply` installs it into a
namespace at the `restricted` Pod Security level. KWOK fakes the operator's pods as Running
(there is no image here), which shows they are admitted. Then the operator runs for real:
the rendered container's own command and environment, as a process on this machine,
authenticated with a token of the chart's ServiceAccount, so everything it does goes
through the chart's RBAC. It reads a real Prometheus (the chart's `prometheus.url`) that
scrapes a controlled exporter, and engages the kill switch on a real Deployment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import operator_rbac
import pytest
import yaml
from fixtures_fleetwarden import crd_names
from test_chart import CHART, objects
from test_operator_budget import (
    Exporter,
    budget,
    condition,
    deployment,
    exporter,  # noqa: F401 - fixture
    llm_labels,
    replicas,
    scrape,
    status,
)

from fleetwarden.devcluster import procs

NAMESPACE = "fleetwarden-chart"
AGENTS = "fleetwarden-chart-agents"
RELEASE = "fw-chart"
OPERATOR = f"{RELEASE}-fleetwarden-operator"  # the chart's name for a release not named fleetwarden
USER = operator_rbac.service_account(NAMESPACE, OPERATOR)
SECONDS = 2  # the operator's interval and Prometheus' scrape interval, set through the chart's values

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    metrics, liveness = procs.free_ports(2)
    return {"metrics": metrics, "liveness": liveness}


@pytest.fixture(scope="module")
def installed(cluster: Any, helm: str, prometheus: Any, ports: dict[str, int]) -> Iterator[list[dict[str, Any]]]:
    """The chart rendered with this cluster's Prometheus and free ports, serving AGENTS, applied with
    kubectl into NAMESPACE (labelled `restricted`); the rendered objects. Removed afterwards (the
    CRDs stay: other tests use them)."""
    for ns in (NAMESPACE, AGENTS):  # still terminating from an earlier run?
        cluster.kubectl("wait", "--for=delete", f"namespace/{ns}", "--timeout=120s", check=False, timeout=150)
    cluster.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
    cluster.kubectl("create", "namespace", AGENTS)
    values = {"prometheus.url": prometheus.url, "prometheus.scrapeInterval": SECONDS, "interval": SECONDS,
              "metrics.port": ports["metrics"], "liveness.port": ports["liveness"], "watchNamespaces[0]": AGENTS}
    result = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds",
                             *[f"--set={k}={v}" for k, v in values.items()]],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    output = cluster.kubectl("apply", "-f", "-", input=result.stdout, timeout=120).stdout
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"customresourcedefinition/{name}" for name in crd_names()], timeout=90)
    rendered = objects(result.stdout)
    assert len([line for line in output.splitlines() if line.strip()]) == len(rendered), output
    yield rendered
    for ns in (AGENTS, NAMESPACE):
        cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s",
                        check=False, timeout=150)
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", OPERATOR, "--ignore-not-found", check=False)


def test_chart_installs_the_operator_under_restricted_pod_security(cluster: Any,
                                                                    installed: list[dict[str, Any]]) -> None:
    """The rendered chart creates the operator's ServiceAccount, RBAC, Lease Role, Deployment (two replicas,
    both admitted at the `restricted` level and Running on KWOK) and its PodDisruptionBudget."""
    kinds = {(o["kind"], o["metadata"]["name"]) for o in installed}
    assert {("ServiceAccount", OPERATOR), ("ClusterRole", OPERATOR), ("ClusterRoleBinding", OPERATOR),
            ("Role", f"{OPERATOR}-leader-election"), ("Deployment", OPERATOR),
            ("PodDisruptionBudget", OPERATOR), ("Service", f"{OPERATOR}-metrics")} <= kinds

    def running() -> bool:
        pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
        return len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)

    cluster.wait_for(running, 90, "two operator pods Running")
    pdb = cluster.get_json("poddisruptionbudget", OPERATOR, "-n", NAMESPACE)
    cluster.wait_for(lambda: cluster.get_json("poddisruptionbudget", OPERATOR, "-n", NAMESPACE)["status"]
                     .get("disruptionsAllowed") == 1, 60, "the PodDisruptionBudget allowing one disruption")
    assert pdb["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("request_args", operator_rbac.MAY, ids=" ".join)
def test_chart_operator_may(cluster: Any, installed: list[dict[str, Any]], request_args: tuple[str, ...]) -> None:
    """The chart's operator may all that the kustomize install's may (tests/e2e/operator_rbac.py)."""
    assert operator_rbac.can_i(cluster, USER, *request_args)


@pytest.mark.parametrize("request_args", operator_rbac.MAY_NOT, ids=" ".join)
def test_chart_operator_may_not(cluster: Any, installed: list[dict[str, Any]],
                                request_args: tuple[str, ...]) -> None:
    """The chart's operator may nothing that the kustomize install's may not."""
    assert not operator_rbac.can_i(cluster, USER, *request_args)


@pytest.mark.parametrize(("verb", "allowed"), operator_rbac.LEASE_VERBS)
def test_chart_operator_may_hold_its_lease(cluster: Any, installed: list[dict[str, Any]], verb: str,
                                           allowed: bool) -> None:
    """In the release namespace the chart's operator may get, create and update Leases."""
    assert operator_rbac.can_i(cluster, USER, verb, "leases.coordination.k8s.io", "-n", NAMESPACE) is allowed


# ---------------------------------------------------------------- the operator running


def service_account_kubeconfig(cluster: Any, path: Path) -> Path:
    """A kubeconfig that authenticates with a fresh token of the chart's ServiceAccount."""
    token = cluster.kubectl("create", "token", OPERATOR, "-n", NAMESPACE, "--duration=1h").stdout.strip()
    ca = cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o",
                         "jsonpath={.clusters[0].cluster.certificate-authority-data}").stdout
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "c",
    }))
    return path


@pytest.fixture
def chart_operator(cluster: Any, installed: list[dict[str, Any]], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The rendered operator container's command and environment, run here as the chart's ServiceAccount.
    Yields the container spec and the log path."""
    (deployment_obj,) = [o for o in installed if o["kind"] == "Deployment"]
    (container,) = deployment_obj["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["fleetwarden", "operator"]  # the image's console script; here run by this Python
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "FLEETWARDEN_", "POD_"))}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    # the downward API's fields, as the kubelet fills them in
    fields = {"metadata.name": "fw-chart-operator-0", "metadata.namespace": deployment_obj["metadata"]["namespace"]}
    env.update({e["name"]: fields[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in container["env"]
                if "fieldRef" in (e.get("valueFrom") or {})})
    env["KUBECONFIG"] = str(service_account_kubeconfig(cluster, tmp_path / "operator.kubeconfig"))
    env["PYTHONUNBUFFERED"] = "1"
    log_path = tmp_path / "operator.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fleetwarden", *command[1:]], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        yield {"container": container, "log": log_path, "proc": proc}
    finally:
        cluster.kubectl("delete", "agentbudget", "--all", "-n", AGENTS, "--timeout=30s", check=False, timeout=60)
        procs.end(proc)
        print(f"--- operator log ---\n{log_path.read_text()[-15000:]}")


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_operator_from_the_chart_acts_as_its_service_account(cluster: Any, installed: list[dict[str, Any]],
                                                             chart_operator: dict[str, Any], prometheus: Any,
                                                             exporter: Exporter) -> None:  # noqa: F811
    """Run with the chart's command, environment and RBAC only, the operator reads the Prometheus the values
    name, fills in an AgentBudget's status, engages the kill switch (scale to zero) and posts the Event,
    answers its liveness probe where the Deployment probes it, and is never refused by the API server."""
    exporter.set("llm_cost", 0.0, **llm_labels("bot", AGENTS))
    cluster.apply(deployment("bot", AGENTS, 3))
    job = scrape(prometheus, exporter, AGENTS)
    try:
        prometheus.wait_for_query(f'fleetwarden_llm_cost_usd_total{{namespace="{AGENTS}"}}', timeout=30)
        cluster.apply(budget(AGENTS, hour_cap=1.0))
        cluster.wait_for(lambda: condition(status(cluster, AGENTS), "Ready").get("status") == "True", 90,
                         "the budget Ready on the chart's Prometheus")
        exporter.set("llm_cost", 2.0, **llm_labels("bot", AGENTS))  # 200% of the hour's cap: past 150%
        cluster.wait_for(lambda: replicas(cluster, AGENTS, "bot") == 0, 90, "the kill switch scaling bot to 0")
        cluster.wait_for(lambda: (status(cluster, AGENTS).get("killSwitch") or {}).get("engaged"), 30,
                         "status.killSwitch.engaged")
        reasons = {e.get("reason") for e in cluster.get_json("events", "-n", AGENTS)["items"]}
        assert "KillSwitchEngaged" in reasons, reasons
    finally:
        prometheus.remove_target(job)
    container = chart_operator["container"]
    probe = container["livenessProbe"]["httpGet"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    code, _ = _get(f"http://127.0.0.1:{port[probe['port']]}{probe['path']}")
    assert code == 200
    _, metrics = _get(f"http://127.0.0.1:{port['metrics']}/metrics")
    assert 'fleetwarden_operator_prometheus_fetches_total{result="ok"}' in metrics
    assert re.search(r"^fleetwarden_operator_prometheus_fetch_seconds_count [1-9]", metrics, re.M), metrics[-3000:]
    # each query of the fetch, by name. The rolling day is always read in pieces (the spend ledger):
    # its start bit, and its hours up to midnight unless it starts on one (23:00-00:00 UTC)
    for query in ("inference_cost", "spend latest", "spend day (start|hours)", "freshness"):
        assert re.search(rf'^fleetwarden_operator_prometheus_query_seconds_count{{query="{query}"}} [1-9]',
                         metrics, re.M), metrics[-3000:]
    assert chart_operator["proc"].poll() is None
    log = chart_operator["log"].read_text()
    assert "forbidden" not in log.lower(), log[-5000:]
