"""The operator end to end: status, kill switch, resume, Prometheus outages.

Real parts only: the operator runs as a subprocess (``python -m fleetwarden operator``, as its
own ServiceAccount: tests/e2e/fixtures_fleetwarden.py) against the real API server, and reads a real Prometheus that scrapes a real /metrics
endpoint. The endpoint is a controlled exporter in this process (prometheus_client
counters the test sets), so the numbers Prometheus sees are exactly what the test chose.
Tests wait on conditions with timeouts; none sleeps and then asserts on timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client as pc
import pytest
from fixtures_fleetwarden import CRDS, agent_identity, crds_installed, start_operator  # noqa: F401 - fixture

from fleetwarden.devcluster import monitoring, procs

SCRAPE = 2.0

LLM = ["agent", "namespace", "workflow", "step", "model"]
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "llm_cost": ("fleetwarden_llm_cost_usd", LLM),
    "llm_calls": ("fleetwarden_llm_calls", [*LLM, "status"]),
    "input_tokens": ("fleetwarden_llm_input_tokens", LLM),
    "output_tokens": ("fleetwarden_llm_output_tokens", LLM),
    "tool_calls": ("fleetwarden_tool_calls", ["agent", "namespace", "workflow", "step", "tool", "status"]),
    "tool_cost": ("fleetwarden_tool_cost_usd", ["agent", "namespace", "workflow", "tool"]),
    "tasks": ("fleetwarden_tasks", ["agent", "namespace", "workflow", "status"]),
    "human_cost": ("fleetwarden_human_cost_usd", ["agent", "namespace", "workflow"]),
    "outcomes": ("fleetwarden_outcomes", ["agent", "namespace", "workflow", "outcome"]),
    "guardrails": ("fleetwarden_guardrail_decisions", ["agent", "namespace", "workflow", "tool", "status"]),
}


class Exporter:
    """fleetwarden_* counters on a loopback /metrics; ``set`` moves a counter to a total."""

    def __init__(self) -> None:
        self.registry = pc.CollectorRegistry()
        self.counters = {key: pc.Counter(name, name, labels, registry=self.registry)
                         for key, (name, labels) in FAMILIES.items()}
        self.port = procs.free_port()
        self.server, self.thread = pc.start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, family: str, total: float, **labels: str) -> None:
        child = self.counters[family].labels(**labels)
        current = child._value.get()  # noqa: SLF001 - the test owns these counters
        if total > current:
            child.inc(total - current)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def llm_labels(agent: str, namespace: str, model: str = "gpt-4o-mini") -> dict[str, str]:
    return {"agent": agent, "namespace": namespace, "workflow": "support", "step": "answer", "model": model}


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    try:
        yield e
    finally:
        e.stop()


def deployment(name: str, namespace: str, replicas: int = 3, model: str = "gpt-4o-mini",
               app: str = "support") -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"agent": name}},
                 "template": {"metadata": {"labels": {"agent": name}},
                              "spec": {"containers": [{"name": "agent", "image": f"example.com/{name}:1.0",
                                                       "env": [{"name": "MODEL", "value": model}]}]}}},
    })


def budget(namespace: str, hour_cap: float = 1.0, **spec: Any) -> str:
    body = {"selector": {"matchLabels": {"app": "support"}}, "limits": [{"window": "hour", "amountUSD": hour_cap}],
            "killSwitch": {"window": "hour", "thresholdPercent": 150}}
    body.update(spec)
    return json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                       "metadata": {"name": "support", "namespace": namespace}, "spec": body})


def status(cluster: Any, namespace: str) -> dict[str, Any]:
    return dict(cluster.get_json("agentbudget", "support", "-n", namespace).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def metrics_unavailable(st: dict[str, Any]) -> dict[str, Any] | None:
    return st if condition(st, "MetricsAvailable").get("status") == "False" else None


def replicas(cluster: Any, namespace: str, name: str = "bot") -> int:
    return int(cluster.get_json("deployment", name, "-n", namespace)["spec"]["replicas"])


def events(cluster: Any, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = cluster.get_json("events", "-n", namespace)["items"]
    return [e for e in items if e.get("reason") == reason]


def scrape(prometheus: Any, exporter: Exporter, namespace: str) -> str:
    job = f"agents-{namespace}"
    prometheus.add_target(job, exporter.address)
    prometheus.wait_for_target_up(job, timeout=30)
    return job


@pytest.fixture
def fleet(cluster: Any, namespace: str, crds_installed: list[str], prometheus: Any,  # noqa: F811
          exporter: Exporter) -> Iterator[dict[str, Any]]:
    """Two agent Deployments (bot: 3 replicas, helper: 2) whose counters Prometheus scrapes."""
    for name, count in (("bot", 3), ("helper", 2)):
        exporter.set("llm_cost", 0.0, **llm_labels(name, namespace))
        cluster.apply(deployment(name, namespace, count))
    job = scrape(prometheus, exporter, namespace)
    prometheus.wait_for_query(f'fleetwarden_llm_cost_usd_total{{namespace="{namespace}"}}',
                              lambda r: len(r) == 2, timeout=30)
    try:
        yield {"namespace": namespace}
    finally:
        prometheus.remove_target(job)


# ---------------------------------------------------------------- tests


def test_status_fills_in_and_kubectl_shows_it(cluster: Any, namespace: str, fleet: dict[str, Any],
                                              prometheus: Any, exporter: Exporter, workdir: Path,
                                              request: pytest.FixtureRequest) -> None:
    """Spend from Prometheus lands in status (spend, % of cap, Ready and MetricsAvailable) and kubectl get."""
    cluster.apply(budget(namespace, hour_cap=10.0))
    op = start_operator(cluster, prometheus.url, namespace, workdir, request)
    exporter.set("llm_cost", 3.0, **llm_labels("bot", namespace))
    exporter.set("llm_cost", 1.0, **llm_labels("helper", namespace))

    def filled() -> dict[str, Any] | None:
        st = status(cluster, namespace)
        return st if (st.get("summary") or {}).get("spendUSD", 0) >= 3.9 else None

    st = cluster.wait_for(filled, 60, "status.summary with the spend")
    # 4 USD of 10, exactly: series only seconds old are counted from zero, not extrapolated
    assert st["summary"]["spendUSD"] == pytest.approx(4.0, abs=0.01)
    assert st["summary"]["percentUsed"] == pytest.approx(10 * st["summary"]["spendUSD"], abs=0.1)
    assert st["spend"]["hour"] == st["summary"]["spendUSD"]
    assert st["summary"]["window"] == "hour" and st["summary"]["capUSD"] == 10
    assert st["state"] == "Active"
    assert condition(st, "Ready")["status"] == "True"
    assert condition(st, "MetricsAvailable")["status"] == "True"
    # the test Prometheus keeps 1 day: the operator said at start that month budgets need more
    assert "has a 1-day retention; month budgets need" in op.tail(100_000)
    assert condition(st, "KillSwitchEngaged")["status"] == "False"
    assert {m["agent"]: m["model"] for m in st["models"]} == {"bot": "gpt-4o-mini", "helper": "gpt-4o-mini"}
    table = cluster.kubectl("get", "agentbudgets", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "WINDOW", "SPEND", "CAP", "USED%", "STATE"]
    assert row.split()[0:2] == ["support", "hour"] and row.split()[5] == "Active"


@pytest.mark.parametrize("evaluation", ["timers", "fleet"])
def test_kill_switch_scales_to_zero_holds_and_resumes_exactly(cluster: Any, namespace: str, fleet: dict[str, Any],
                                                              prometheus: Any, exporter: Exporter, workdir: Path,
                                                              request: pytest.FixtureRequest, evaluation: str) -> None:
    """Spend past 150% of the hourly cap: scale to 0, hold against a scale-up, restore on acknowledge
    (with a kopf timer per budget, and with the fleet loop and its own indexes)."""
    cluster.apply(budget(namespace, hour_cap=1.0))
    op = start_operator(cluster, prometheus.url, namespace, workdir, request, extra=("--evaluation", evaluation))
    cluster.wait_for(lambda: condition(status(cluster, namespace), "Ready").get("status") == "True", 60,
                     "budget Ready")
    assert replicas(cluster, namespace, "bot") == 3

    exporter.set("llm_cost", 2.0, **llm_labels("bot", namespace))  # 200% of the 1 USD hourly cap
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0 and replicas(cluster, namespace, "helper") == 0,
                     60, "both agents scaled to zero")
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("state") == "Killed" and s, 30, "Killed")
    incident = st["killSwitch"]["incident"]
    assert st["killSwitch"]["engaged"] is True
    assert st["killSwitch"]["replicas"] == {"bot": 3, "helper": 2}
    assert condition(st, "KillSwitchEngaged")["status"] == "True"
    bot = cluster.get_json("deployment", "bot", "-n", namespace)
    assert bot["metadata"]["annotations"]["fleetwarden.dev/replicas-before-kill"] == "3"
    warnings = events(cluster, namespace, "KillSwitchEngaged")
    assert any(e["type"] == "Warning" and incident in e["message"] for e in warnings)

    # a person (or Argo CD self-heal) scales the agent back up: the operator scales it down again
    cluster.kubectl("scale", "deployment", "bot", "-n", namespace, "--replicas=4")
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0, 30, "bot scaled down again")
    assert status(cluster, namespace)["killSwitch"]["replicas"] == {"bot": 3, "helper": 2}

    # an acknowledgement of another incident does not resume
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"killSwitch": {"acknowledge": "inc-0000000000"}}}))
    op.wait_evaluations(cluster, 3)
    assert replicas(cluster, namespace, "bot") == 0

    # the right one restores exactly the replicas recorded at kill time
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"killSwitch": {"acknowledge": incident}}}))
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 3 and replicas(cluster, namespace, "helper") == 2,
                     30, "replicas restored")
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("killSwitch", {}).get("resumedAt") and s, 30,
                          "resumedAt")
    assert st["killSwitch"]["engaged"] is False
    assert st["killSwitch"]["spendAtResumeUSD"] >= 1.9  # declared in the CRD: the API server keeps it
    # spend before the resume no longer counts: the agents keep running
    op.wait_evaluations(cluster, 4)
    assert replicas(cluster, namespace, "bot") == 3
    assert status(cluster, namespace)["state"] != "Killed"


def test_prometheus_outage_reports_unknown_and_never_kills(cluster: Any, namespace: str, crds_installed: list[str],  # noqa: F811
                                                           exporter: Exporter, workdir: Path,
                                                           request: pytest.FixtureRequest) -> None:
    """Prometheus down: first bridged by the last good data for ``--prometheus-grace`` (the status
    unchanged, no event: a blip changes nothing), then MetricsAvailable=False with a reason, a
    Warning event, no scaling; back: work resumes."""
    prom = monitoring.Prometheus(workdir / "prometheus", scrape_interval=SCRAPE, tie_to_parent=True)
    prom.start()
    request.addfinalizer(prom.stop)
    exporter.set("llm_cost", 0.2, **llm_labels("bot", namespace))
    cluster.apply(deployment("bot", namespace, 3))
    prom.add_target("agents", exporter.address)
    prom.wait_for_target_up("agents", timeout=30)
    cluster.apply(budget(namespace, hour_cap=1.0))
    op = start_operator(cluster, prom.url, namespace, workdir, request, extra=("--prometheus-grace", "20"))
    cluster.wait_for(lambda: condition(status(cluster, namespace), "MetricsAvailable").get("status") == "True",
                     60, "MetricsAvailable=True")

    prom.stop()
    exporter.set("llm_cost", 5.0, **llm_labels("bot", namespace))  # would trip the kill switch if seen
    cluster.wait_for(lambda: op.metric("fleetwarden_operator_prometheus_bridged_total") >= 1, 30,
                     "a failed fetch bridged by the last good one")
    assert op.metric("fleetwarden_operator_prometheus_fetches_total", result="error") >= 1
    bridged = status(cluster, namespace)  # within the grace (20 s after the last good fetch, 2 s before)
    assert condition(bridged, "MetricsAvailable")["status"] == "True" and bridged["state"] != "Unknown"
    assert not events(cluster, namespace, "MetricsUnavailable")
    st = cluster.wait_for(
        lambda: metrics_unavailable(status(cluster, namespace)),
        60, "MetricsAvailable=False")
    reason = condition(st, "MetricsAvailable")
    assert reason["reason"] == "MetricsUnavailable" and "Prometheus" in reason["message"]
    assert st["state"] == "Unknown"
    assert any(e["type"] == "Warning" for e in events(cluster, namespace, "MetricsUnavailable"))
    op.wait_evaluations(cluster, 3)
    assert replicas(cluster, namespace, "bot") == 3

    prom.start()  # same port and data: Prometheus is back, scrapes the 5 USD
    cluster.wait_for(lambda: condition(status(cluster, namespace), "MetricsAvailable").get("status") == "True",
                     60, "MetricsAvailable=True again")
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0, 60, "the kill switch acting on known data")


def test_a_dead_prometheus_url_is_unknown_not_zero(cluster: Any, namespace: str, crds_installed: list[str],  # noqa: F811
                                                   workdir: Path, request: pytest.FixtureRequest) -> None:
    """An operator pointed at a closed port reports MetricsAvailable=False and leaves the agents alone."""
    cluster.apply(deployment("bot", namespace, 2))
    cluster.apply(budget(namespace))
    dead = f"http://127.0.0.1:{procs.free_port()}"
    op = start_operator(cluster, dead, namespace, workdir, request)
    st = cluster.wait_for(
        lambda: metrics_unavailable(status(cluster, namespace)),
        60, "MetricsAvailable=False")
    assert "spend" not in st
    op.wait_evaluations(cluster, 2)
    assert replicas(cluster, namespace, "bot") == 2
    assert os.path.exists(op.log_path)


APPROVALS_CRD = "costapprovals.fleetwarden.dev"


def test_the_fleet_loop_goes_on_when_a_crd_of_ours_is_not_installed(cluster: Any, namespace: str, fleet: dict[str, Any],
                                                                    prometheus: Any, exporter: Exporter, workdir: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    """The CostApproval CRD not installed (a Helm upgrade never installs a chart's new CRDs): the
    fleet loop, whose own indexes wait for every kind's listing, is told the kind is not served,
    takes it as none, evaluates and says why in its log; once the CRD is installed, kopf watches
    the kind and a CostApproval reaches the budget's status; the kill switch still acts."""
    def install() -> None:
        cluster.kubectl("apply", "-f", str(CRDS / "costapprovals.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{APPROVALS_CRD}", timeout=90)

    # a CostApproval left with a finalizer by an operator stopped earlier would hold the CRD's deletion
    for item in cluster.get_json("costapprovals", "--all-namespaces")["items"]:
        meta = item["metadata"]
        cluster.kubectl("patch", "costapproval", meta["name"], "-n", meta["namespace"], "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)
    cluster.kubectl("delete", "crd", APPROVALS_CRD, "--wait=true", "--timeout=60s", timeout=90)
    request.addfinalizer(install)  # whatever happens, the session's other tests find it
    cluster.apply(budget(namespace, hour_cap=1.0))
    op = start_operator(cluster, prometheus.url, namespace, workdir, request, extra=("--evaluation", "fleet"))
    cluster.wait_for(lambda: condition(status(cluster, namespace), "Ready").get("status") == "True", 60,
                     "budget Ready without the CostApproval CRD")
    log = op.tail(100_000)
    assert "costapprovals.fleetwarden.dev/v1alpha1 is not served by the API server" in log, log[-5000:]
    assert "the indexes are complete" in log, log[-5000:]

    install()
    agent = agent_identity(cluster, namespace, "bot", workdir)  # the agent asks, as its ServiceAccount
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
    created = subprocess.run([cluster.kubectl_path, f"--kubeconfig={agent.kubeconfig}", "create", "-f", "-"],
                             input=json.dumps({
                                 "apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostApproval",
                                 "metadata": {"name": "bot-refund", "namespace": namespace},
                                 "spec": {"agent": "bot", "requester": agent.username, "amountUSD": 120.0,
                                          "reason": "refund above 100 USD", "expiresAt": expires}}),
                             capture_output=True, text=True, timeout=30, check=False, env=cluster.env)
    assert created.returncode == 0, created.stderr
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)) and
                          condition(s, "ApprovalPending").get("status") == "True" and s, 90,
                          "ApprovalPending=True once the CRD is back")
    assert "bot-refund" in condition(st, "ApprovalPending")["message"]

    exporter.set("llm_cost", 2.0, **llm_labels("bot", namespace))  # 200% of the 1 USD hourly cap
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0, 60, "the kill switch scaling bot to 0")
    assert op.proc.poll() is None
