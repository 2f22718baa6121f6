# ruff: noqa: F811 - pytest fixtures imported from test_operator_budget are parameters here
"""Actions the real API server refuses are never shown as done: 403, 404, 409 and 422, each produced
on the real control plane, with the operator's own permissions (manifests/rbac.yaml, through a
ServiceAccount token) and the real Prometheus.

The evaluation runs in this process (``handlers.runtime.Runtime``: the operator's own code without
kopf's loop) so that each failure can be set up exactly: a ClusterRole without the scale verb
(403), a Deployment deleted after it was observed (404), a competing writer between observation and
action (409), a ValidatingAdmissionPolicy that refuses scaling to zero (422). After each, the
status written to the API server says the kill did not happen (``KillSwitchEngaged=False``,
``ScaleFailed``, the API's reason), a Warning Event says why, on-call is paged through the real
Alertmanager, and the agent is still running; once the cause is gone the retry completes the kill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faults
import pytest
from fixtures_fleetwarden import crds_installed, operator_identity, operator_rules, without_verb  # noqa: F401
from test_operator_budget import (  # noqa: F401 - fixtures
    SCRAPE,
    Exporter,
    budget,
    condition,
    events,
    exporter,
    fleet,
    llm_labels,
    replicas,
    status,
)

from fleetwarden.adapters import alertmanager as am_adapter
from fleetwarden.adapters import kube, prometheus
from fleetwarden.handlers import runtime


def operator_runtime(prometheus_url: str, kubeconfig: Path) -> runtime.Runtime:
    """The operator's evaluation loop (without kopf's) with ``kubeconfig``'s identity."""
    fetcher = prometheus.Fetcher(prometheus.connect(prometheus_url), lookback_minutes=30, scrape_interval=SCRAPE)
    return runtime.Runtime(interval=2.0, fetcher=fetcher, kube_client=kube.Kube(kube.load_config(str(kubeconfig))))


def operator(cluster: Any, prometheus_url: str, workdir: Path, request: pytest.FixtureRequest) -> runtime.Runtime:
    """The runtime as the shipped ServiceAccount fleetwarden-system/fleetwarden-operator."""
    return operator_runtime(prometheus_url, operator_identity(cluster, workdir, request).kubeconfig)


def observe(cluster: Any, namespace: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The budget and the Deployments as the operator observes them (their resourceVersions included)."""
    return (cluster.get_json("agentbudget", "support", "-n", namespace),
            cluster.get_json("deployments", "-n", namespace)["items"])


@pytest.fixture
def breached(cluster: Any, namespace: str, fleet: dict[str, Any], prometheus: Any,  # noqa: F811
             exporter: Exporter) -> str:  # noqa: F811
    """The fleet's budget, spent to 200% of its 1 USD hourly cap, as Prometheus sees it."""
    cluster.apply(budget(namespace, hour_cap=1.0))
    exporter.set("llm_cost", 2.0, **llm_labels("bot", namespace))
    prometheus.wait_for_query(f'sum(fleetwarden_llm_cost_usd_total{{namespace="{namespace}"}})',
                              lambda r: bool(r) and float(r[0]["value"][1]) >= 2.0, timeout=30)
    return namespace


@pytest.fixture
def paging(alertmanager: Any) -> Any:
    notifier = am_adapter.configure(alertmanager.url)
    alertmanager.clear()
    yield alertmanager
    if notifier is not None:
        notifier.flush()
    am_adapter.configure(None)


def running(cluster: Any, namespace: str) -> dict[str, int]:
    """Each agent Deployment's replicas now."""
    return {d["metadata"]["name"]: int(d["spec"].get("replicas") or 0)
            for d in cluster.get_json("deployments", "-n", namespace)["items"]}


def record_row(fault: str, cluster: Any, namespace: str, claims: list[str], before: dict[str, int]) -> None:
    """The fault table's row: the claims the status made while the action failed, and at the end
    whether the kill completed once (one kill incident), stopped every agent and remembered what ran."""
    st = status(cluster, namespace)
    now = running(cluster, namespace)
    kills = [i for i in st.get("incidents") or [] if i.get("kind") == "kill_switch"]
    lost = [a for a, n in now.items() if n > 0]
    claims = claims + faults.false_claims(st, now, before)
    faults.record(fault, injected=1, survived=int(not lost and not claims and len(kills) == 1),
                  duplicated=max(len(kills) - 1, 0), lost=len(lost), false_claims=len(claims),
                  note="; ".join(claims + [f"{a} still running" for a in lost]))


def assert_not_killed(cluster: Any, namespace: str, reason: str, code: int) -> dict[str, Any]:
    """The stored status says the kill did not happen, with the API's reason; a Warning Event says why."""
    st = status(cluster, namespace)
    assert st["state"] != "Killed" or condition(st, "KillSwitchEngaged")["status"] != "True"
    ks = condition(st, "KillSwitchEngaged")
    assert (ks["status"], ks["reason"]) == ("False", "ScaleFailed"), ks
    assert f"{code} {reason}" in ks["message"], ks["message"]
    assert condition(st, "Ready")["status"] == "False"
    assert any(e["type"] == "Warning" and str(code) in e["message"] for e in events(cluster, namespace, "ScaleFailed"))
    return st


@pytest.mark.faults
def test_a_forbidden_scale_is_reported_paged_and_retried(cluster: Any, breached: str, prometheus: Any,
                                                         workdir: Path, paging: Any,
                                                         request: pytest.FixtureRequest) -> None:
    """403: the operator's role without deployments/scale: not Killed, ScaleFailed Forbidden, paged;
    with the full role the retry completes the kill."""
    namespace = breached
    before = running(cluster, namespace)
    rules = without_verb(operator_rules(), "apps", "deployments/scale", "patch")
    noscale = operator_identity(cluster, workdir, request, namespace=namespace, rules=rules)
    verdict = operator_runtime(prometheus.url, noscale.kubeconfig).reconcile(*observe(cluster, namespace))
    assert {(f.status, f.reason) for f in verdict.failures} == {(403, "Forbidden")}
    claims = faults.false_claims(assert_not_killed(cluster, namespace, "Forbidden", 403), running(cluster, namespace),
                                 before)
    assert replicas(cluster, namespace, "bot") == 3 and replicas(cluster, namespace, "helper") == 2
    alert = paging.wait_for_alert(am_adapter.ACTION_FAILED)
    assert alert["labels"]["reason"] == "Forbidden" and alert["labels"]["namespace"] == namespace

    verdict = operator(cluster, prometheus.url, workdir, request).reconcile(*observe(cluster, namespace))
    assert verdict.failures == ()
    st = status(cluster, namespace)
    assert st["state"] == "Killed" and condition(st, "KillSwitchEngaged")["status"] == "True"
    assert replicas(cluster, namespace, "bot") == 0 and replicas(cluster, namespace, "helper") == 0
    assert st["killSwitch"]["replicas"] == {"bot": 3, "helper": 2}
    assert len([i for i in st["incidents"] if i["kind"] == "kill_switch"]) == 1
    record_row("scale refused: 403 (RBAC without the scale verb)", cluster, namespace, claims, before)


@pytest.mark.faults
def test_a_deployment_deleted_after_it_was_observed(cluster: Any, breached: str, prometheus: Any,
                                                    workdir: Path, request: pytest.FixtureRequest) -> None:
    """404: the agents still there are stopped (engaged, held); the deleted one is reported, not claimed."""
    namespace = breached
    budget_body, deployments = observe(cluster, namespace)
    before = running(cluster, namespace)
    cluster.kubectl("delete", "deployment", "helper", "-n", namespace, "--wait=true")
    rt = operator(cluster, prometheus.url, workdir, request)
    verdict = rt.reconcile(budget_body, deployments)
    assert [(f.action.agent, f.status, f.reason) for f in verdict.failures] == [("helper", 404, "NotFound")]
    st = status(cluster, namespace)
    assert replicas(cluster, namespace, "bot") == 0
    ks = condition(st, "KillSwitchEngaged")
    assert (ks["status"], ks["reason"]) == ("False", "ScaleFailed") and "404 NotFound" in ks["message"]
    assert st["state"] != "Killed"
    claims = faults.false_claims(st, running(cluster, namespace), before)
    # the next evaluation observes the cluster as it is: one agent, stopped; the kill holds
    rt.backoff.succeeded((namespace, "ScaleToZero", "helper"))
    rt.reconcile(*observe(cluster, namespace))
    st = status(cluster, namespace)
    assert st["state"] == "Killed" and condition(st, "KillSwitchEngaged")["status"] == "True"
    record_row("scale refused: 404 (Deployment deleted after it was observed)", cluster, namespace, claims,
               {"bot": before["bot"]})


@pytest.mark.faults
def test_a_competing_writer_between_observation_and_action(cluster: Any, breached: str, prometheus: Any,
                                                           workdir: Path, request: pytest.FixtureRequest) -> None:
    """409: bot changed after it was observed (scaled to 5 by someone): the stale decision is refused;
    the next evaluation remembers the 5 replicas the writer set, not the 3 observed before."""
    namespace = breached
    budget_body, deployments = observe(cluster, namespace)
    cluster.kubectl("scale", "deployment", "bot", "-n", namespace, "--replicas=5")
    rt = operator(cluster, prometheus.url, workdir, request)
    verdict = rt.reconcile(budget_body, deployments)
    assert [(f.action.agent, f.status, f.reason) for f in verdict.failures] == [("bot", 409, "Conflict")]
    assert replicas(cluster, namespace, "bot") == 5
    ks = condition(status(cluster, namespace), "KillSwitchEngaged")
    assert (ks["status"], ks["reason"]) == ("False", "ScaleFailed") and "409 Conflict" in ks["message"]
    claims = faults.false_claims(status(cluster, namespace), running(cluster, namespace), {})
    rt.backoff.succeeded((namespace, "ScaleToZero", "bot"))
    rt.reconcile(*observe(cluster, namespace))
    st = status(cluster, namespace)
    assert replicas(cluster, namespace, "bot") == 0 and st["state"] == "Killed"
    assert st["killSwitch"]["replicas"] == {"bot": 5, "helper": 2}
    record_row("scale refused: 409 (a competing writer after observation)", cluster, namespace, claims,
               {"bot": 5, "helper": 2})


@pytest.mark.faults
def test_an_admission_policy_that_refuses_the_scale(cluster: Any, breached: str, prometheus: Any,
                                                    workdir: Path, request: pytest.FixtureRequest) -> None:
    """422: a ValidatingAdmissionPolicy refuses scaling bot to zero: reported as Invalid, bot runs;
    the rest of the fleet is stopped and held; once the policy is gone the retry stops bot too."""
    namespace = breached
    name = f"fw-e2e-no-zero-{namespace}"[:63]
    cluster.apply(json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                         "operations": ["UPDATE"],
                                                         "resources": ["deployments/scale"]}]},
                 "validations": [{"expression": "request.name != 'bot' || (has(object.spec.replicas) && object.spec.replicas > 0)",
                                  "reason": "Invalid", "message": "bot must keep running (test policy)"}]}}))
    cluster.apply(json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}}}}}))
    try:
        rt = operator(cluster, prometheus.url, workdir, request)

        def refused() -> Any:
            verdict = rt.reconcile(*observe(cluster, namespace))
            rt.backoff.succeeded((namespace, "ScaleToZero", "bot"))  # the policy takes a moment to bind
            return verdict if verdict.failures else None

        verdict = cluster.wait_for(refused, 30, "the scale of bot refused by the admission policy")
        assert [(f.action.agent, f.status, f.reason) for f in verdict.failures] == [("bot", 422, "Invalid")]
        assert "bot must keep running" in verdict.failures[0].message
        assert replicas(cluster, namespace, "bot") == 3 and replicas(cluster, namespace, "helper") == 0
        ks = condition(status(cluster, namespace), "KillSwitchEngaged")
        assert (ks["status"], ks["reason"]) == ("False", "ScaleFailed") and "422 Invalid" in ks["message"]
        claims = faults.false_claims(status(cluster, namespace), running(cluster, namespace), {"bot": 3, "helper": 2})
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", name, "--ignore-not-found")
        cluster.kubectl("delete", "validatingadmissionpolicy", name, "--ignore-not-found")

    def stopped() -> bool:
        rt.backoff.succeeded((namespace, "ScaleToZero", "bot"))
        rt.reconcile(*observe(cluster, namespace))
        return replicas(cluster, namespace, "bot") == 0

    cluster.wait_for(stopped, 30, "bot stopped once the policy is gone")
    st = status(cluster, namespace)
    assert st["state"] == "Killed" and st["killSwitch"]["replicas"] == {"bot": 3, "helper": 2}
    record_row("scale refused: 422 (an admission policy)", cluster, namespace, claims, {"bot": 3, "helper": 2})
