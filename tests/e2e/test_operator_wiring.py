"""The operator end to end on its wiring: human cost in spend, unit costs by outcome and the
unit-economics gauge, a kill-switch alert reaching the real Alertmanager, guardrail findings from
the SDK's counters and from tool calls outside the allowlist, ApprovalPending from a real
CostApproval, and Ungoverned / NoUnitEconomics Events on the real API server.

Same real parts as ``test_operator_budget.py``: the operator as a subprocess, the real API
server, a real Prometheus scraping a controlled exporter. Per-minute figures need a complete
minute, so each test waits up to about two minutes for one.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import agent_identity, crds_installed, start_operator  # noqa: F401 - fixture
from test_operator_budget import (
    Exporter,
    budget,
    condition,
    deployment,
    events,
    exporter,  # noqa: F401 - fixture
    llm_labels,
    replicas,
    scrape,
    status,
)

MINUTE_WAIT = 150  # a counter change shows in a complete minute within this many seconds


def labelled_deployment(name: str, namespace: str, labels: dict[str, str], count: int = 1) -> str:
    body = json.loads(deployment(name, namespace, count))
    body["metadata"]["labels"] = labels
    return json.dumps(body)


def deployment_events(cluster: Any, namespace: str, reason: str, name: str) -> list[dict[str, Any]]:
    return [e for e in events(cluster, namespace, reason)
            if e["involvedObject"].get("kind") == "Deployment" and e["involvedObject"].get("name") == name]


def budget_events(cluster: Any, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in events(cluster, namespace, reason) if e["involvedObject"].get("kind") == "AgentBudget"]


def test_spend_unit_costs_targets_and_the_kill_alert(cluster: Any, namespace: str,
                                                     crds_installed: list[str],  # noqa: F811
                                                     prometheus: Any, alertmanager: Any, exporter: Exporter,  # noqa: F811
                                                     workdir: Path, request: pytest.FixtureRequest) -> None:  # noqa: F811
    """Human time counts in spend; costPerOutcomeUSD and the target gauge are filled; the kill switch's
    alert reaches the real Alertmanager through `--alertmanager-url`; the resume records spendAtResumeUSD."""
    wf = {"agent": "bot", "namespace": namespace, "workflow": "support"}
    exporter.set("llm_cost", 0.0, **llm_labels("bot", namespace))
    exporter.set("human_cost", 0.0, **wf)
    exporter.set("tasks", 0.0, **wf, status="completed")
    exporter.set("outcomes", 0.0, **wf, outcome="resolved_ticket")
    cluster.apply(deployment("bot", namespace, 3))
    cluster.apply(budget(namespace, hour_cap=1.0, unitEconomics=[
        {"outcome": "resolved_ticket", "workflow": "support", "targetCostUSD": 0.5, "humanBaselineUSD": 8.5}]))
    job = scrape(prometheus, exporter, namespace)
    request.addfinalizer(lambda: prometheus.remove_target(job))
    prometheus.wait_for_query(f'fleetwarden_outcomes_total{{namespace="{namespace}"}}', timeout=30)
    op = start_operator(cluster, prometheus.url, namespace, workdir, request,
                        extra=["--alertmanager-url", alertmanager.url])

    # 1: human time is spend: 0.2 + 0.6, exactly (series seconds old are not extrapolated).
    exporter.set("llm_cost", 0.2, **llm_labels("bot", namespace))
    exporter.set("human_cost", 0.6, **wf)
    exporter.set("tasks", 4.0, **wf, status="completed")
    exporter.set("outcomes", 4.0, **wf, outcome="resolved_ticket")
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("spend", {}).get("hour", 0) >= 0.75 and s,
                          60, "spend with the human cost")
    assert st["spend"]["hour"] == pytest.approx(0.8, abs=0.01) and st["state"] != "Killed"

    # 2: unit costs from the per-minute data (a complete minute), and the targets as a gauge
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("costPerOutcomeUSD") and s,
                          MINUTE_WAIT, "status.costPerOutcomeUSD")
    per_outcome = st["costPerOutcomeUSD"]["resolved_ticket"]
    assert per_outcome > 0
    assert st["costPerTaskUSD"] == pytest.approx(per_outcome, rel=0.2)  # 4 tasks, 4 outcomes, the same cost
    assert op.metric("fleetwarden_unit_economics_target_usd") == pytest.approx(0.5 + 8.5)

    # 3: past 150% of the cap on human time: killed, and the alert reaches Alertmanager's receiver
    exporter.set("human_cost", 2.0, **wf)
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0, 60, "the kill switch")
    incident = cluster.wait_for(lambda: status(cluster, namespace).get("killSwitch", {}).get("incident"), 30,
                                "the kill incident")

    def ours() -> dict[str, Any] | None:
        for alert in reversed(alertmanager.alerts()):
            labels = alert.get("labels", {})
            if labels.get("alertname") == "FleetwardenKillSwitch" and labels.get("namespace") == namespace:
                return alert  # type: ignore[no-any-return]
        return None

    alert = cluster.wait_for(ours, 60, "the operator's kill-switch alert at Alertmanager's receiver")
    assert alert["status"] == "firing"
    assert alert["labels"]["incident"] == incident and alert["labels"]["severity"] == "critical"
    assert alert["labels"]["budget"] == "support"

    # 4: the resume keeps spendAtResumeUSD (declared in the CRD, so not pruned)
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"killSwitch": {"acknowledge": incident}}}))
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("killSwitch", {}).get("resumedAt") and s,
                          30, "the resume")
    assert st["killSwitch"]["spendAtResumeUSD"] >= 2.0
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 3, 30, "replicas restored")


@pytest.mark.parametrize("evaluation", ["timers", "fleet"])
def test_guardrails_approvals_and_ungoverned_agents(cluster: Any, namespace: str,
                                                     crds_installed: list[str],  # noqa: F811
                                                     prometheus: Any, exporter: Exporter,  # noqa: F811
                                                     workdir: Path, request: pytest.FixtureRequest,
                                                     evaluation: str) -> None:
    """A pending CostApproval sets ApprovalPending; agents outside governance get one Warning Event each;
    the SDK's token-cap decisions and calls to a tool outside the allowlist become one finding each
    (Event, status.incidents). Every object exists before the operator starts: in ``fleet`` mode the
    operator's own indexes (handlers/store.py) must hold them all before the first evaluation, and the
    governance check of the listed Deployments runs once they do."""
    wf = {"agent": "bot", "namespace": namespace, "workflow": "support"}
    exporter.set("llm_cost", 0.0, **llm_labels("bot", namespace))
    exporter.set("guardrails", 0.0, **wf, tool="", status="token_cap_exceeded")
    # a replica whose SDK read the policy while it was in DryRun: it let the calls through
    exporter.set("guardrails", 0.0, **wf, tool="crm.search", status="would_rate_limit_exceeded")
    tool_labels = {**wf, "step": "act", "tool": "shell.exec", "status": "ok"}
    exporter.set("tool_calls", 0.0, **tool_labels)
    cluster.apply(labelled_deployment("bot", namespace, {"app": "support", "fleetwarden.dev/budget": "support"}, 2))
    cluster.apply(labelled_deployment("stray", namespace, {"app": "other", "fleetwarden.dev/agent": "true"}))
    cluster.apply(budget(namespace, hour_cap=10.0))  # selects app=support; no unitEconomics
    cluster.apply(json.dumps({
        "apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy",
        "metadata": {"name": "guard", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": "support"}}, "tools": {"allow": ["crm.*"], "action": "alert"},
                 "tokenCaps": {"perTask": 1000, "action": "alert"},
                 "rateLimits": {"perTool": {"crm.search": 10}, "action": "alert"}}}))
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
    agent = agent_identity(cluster, namespace, "bot", workdir)  # the agent asks, as its ServiceAccount
    created = subprocess.run([cluster.kubectl_path, f"--kubeconfig={agent.kubeconfig}", "create", "-f", "-"],
                             input=json.dumps({
                                 "apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostApproval",
                                 "metadata": {"name": "bot-refund", "namespace": namespace},
                                 "spec": {"agent": "bot", "requester": agent.username, "rule": "refunds",
                                          "tool": "payments.refund", "amountUSD": 120.0,
                                          "reason": "refund above 100 USD", "expiresAt": expires}}),
                             capture_output=True, text=True, timeout=30, check=False, env=cluster.env)
    assert created.returncode == 0, created.stderr
    job = scrape(prometheus, exporter, namespace)
    request.addfinalizer(lambda: prometheus.remove_target(job))
    prometheus.wait_for_query(f'fleetwarden_guardrail_decisions_total{{namespace="{namespace}"}}', timeout=30)
    op = start_operator(cluster, prometheus.url, namespace, workdir, request, extra=("--evaluation", evaluation))

    # ApprovalPending from the CostApproval index
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)) and
                          condition(s, "ApprovalPending").get("status") == "True" and s, 60, "ApprovalPending=True")
    assert "bot-refund" in condition(st, "ApprovalPending")["message"]

    # governance hygiene: one Warning Event per (deployment, problem)
    stray = cluster.wait_for(lambda: deployment_events(cluster, namespace, "Ungoverned", "stray"), 60,
                             "Ungoverned on stray")
    bot = cluster.wait_for(lambda: deployment_events(cluster, namespace, "NoUnitEconomics", "bot"), 60,
                           "NoUnitEconomics on bot")
    assert stray[0]["type"] == bot[0]["type"] == "Warning"
    assert deployment_events(cluster, namespace, "Ungoverned", "bot") == []

    # guardrail findings: the SDK's token-cap decisions; a tool call outside the allowlist; what the SDK
    # would have refused under a DryRun policy (would_*) is the same finding
    exporter.set("guardrails", 3.0, **wf, tool="", status="token_cap_exceeded")
    exporter.set("guardrails", 4.0, **wf, tool="crm.search", status="would_rate_limit_exceeded")
    exporter.set("tool_calls", 2.0, **tool_labels)
    cluster.wait_for(lambda: budget_events(cluster, namespace, "TokenCapExceeded")
                     and budget_events(cluster, namespace, "ToolNotAllowed")
                     and budget_events(cluster, namespace, "RateLimitExceeded"), MINUTE_WAIT,
                     "TokenCapExceeded, ToolNotAllowed and RateLimitExceeded events")
    st = status(cluster, namespace)
    kinds = {(i["kind"], i.get("tool")) for i in st["incidents"]}
    assert {("token_cap_exceeded", None), ("tool_not_allowed", "shell.exec"),
            ("rate_limit_exceeded", "crm.search")} <= kinds
    op.wait_evaluations(cluster, 4)
    assert len(budget_events(cluster, namespace, "ToolNotAllowed")) == 1  # one problem, one finding
    assert len(budget_events(cluster, namespace, "TokenCapExceeded")) == 1
    assert len(deployment_events(cluster, namespace, "Ungoverned", "stray")) == 1
    assert replicas(cluster, namespace, "bot") == 2  # action alert: nothing stopped
    if evaluation == "fleet":  # the operator's own indexes hold what the API server does, and follow it
        indexed = {kind: op.metric("fleetwarden_operator_indexed_objects", kind=kind)
                   for kind in ("agentbudgets", "deployments", "costpolicies", "costapprovals")}
        assert indexed == {"agentbudgets": 1, "deployments": 2, "costpolicies": 1, "costapprovals": 1}
        assert op.metric("fleetwarden_operator_indexes_complete") == 1
        # the detectors folded the agent's window from its anchor (the minute's later evaluations take
        # it from the memo: within a minute nothing is restored)
        folds = {how: op.metric("fleetwarden_operator_detector_folds_total", how=how)
                 for how in ("anchor", "restored", "unchanged", "ahead")}
        assert folds["anchor"] >= 1, folds
        assert "Handler 'keep_" not in op.log_path.read_text()  # kopf's line for each event, dropped
        cluster.kubectl("delete", "deployment", "stray", "-n", namespace)
        cluster.wait_for(lambda: op.metric("fleetwarden_operator_indexed_objects", kind="deployments") == 1, 30,
                         "the deleted Deployment gone from the index")
