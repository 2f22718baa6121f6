"""Guardrail findings in the operator: the SDK's guardrail decisions and calls to tools outside the
allowlist become token_cap_exceeded, rate_limit_exceeded, tool_not_allowed and approval_required
findings, one per problem, with the CostPolicy's action. Fake clock, hand-written inputs."""

from __future__ import annotations

from typing import Any

import pytest

from fleetwarden.adapters import prometheus
from fleetwarden.core import decision, evaluate, findings, guardrails, policies, spec, status
from fleetwarden.core.series import AgentMinute

NOW = 1_800_000_000.0
NS = "shop"
START = int(NOW // 60) * 60 - 30 * 60  # the lookback: 30 complete minutes


def policy(**spec_fields: Any) -> spec.CostPolicy:
    return spec.CostPolicy.model_validate({"metadata": {"name": "guard", "namespace": NS}, "spec": spec_fields})


BOT = decision.AgentDeployment("bot", NS, {"team": "cx"}, 2, model="gpt-4o-mini")


def minutes(tool_calls: dict[int, dict[str, float]] | None = None) -> list[AgentMinute]:
    """30 quiet minutes; ``tool_calls``: minute index -> tool -> calls."""
    calls = tool_calls or {}
    return [AgentMinute("bot", NS, START + 60 * i, inference_cost_usd=0.01, llm_calls=2, tasks_completed=1,
                        tool_calls=calls.get(i, {}), workflow="support") for i in range(30)]


def decisions(rows: dict[int, dict[tuple[str, str], float]]) -> dict[int, dict[tuple[str, str], float]]:
    """minute index -> (status, tool) -> decisions, keyed by the minute's start."""
    return {START + 60 * i: counts for i, counts in rows.items()}


@pytest.mark.parametrize(("status", "tool", "spec_fields", "kind", "action", "policy_name"), [
    ("token_cap_exceeded", "", {"tokenCaps": {"perTask": 5000, "action": "alert"}},
     findings.TOKEN_CAP_EXCEEDED, "alert", "guard"),
    ("rate_limit_exceeded", "crm.search", {"rateLimits": {"perTool": {"crm.search": 10}, "action": "throttle"}},
     findings.RATE_LIMIT_EXCEEDED, "throttle", "guard"),
    ("tool_not_allowed", "shell.exec", {"tools": {"allow": ["crm.*"], "action": "deny"}},
     findings.TOOL_NOT_ALLOWED, "deny", "guard"),
    ("approval_required", "payments.refund",
     {"approvals": [{"name": "big-refunds", "tool": "payments.*", "amountAboveUSD": 100}]},
     findings.APPROVAL_REQUIRED, "deny", "big-refunds"),
    ("token_cap_exceeded", "", {"tokenCaps": {"perTask": 5000, "action": "kill"}},
     findings.TOKEN_CAP_EXCEEDED, "kill", "guard"),
])
def test_each_guardrail_status_is_its_finding_with_the_policy_action(
        status: str, tool: str, spec_fields: dict[str, Any], kind: str, action: str, policy_name: str) -> None:
    """A guardrail decision of each finding status is one finding of that kind, action and policy (rule)."""
    found = guardrails.guardrail_findings(BOT, minutes(), decisions({12: {(status, tool): 3.0}}),
                                        [policy(**spec_fields)])
    assert [(f.kind, f.action, f.policy, f.tool) for f in found] == [(kind, action, policy_name, tool or None)]
    (f,) = found
    assert f.onset == START + 12 * 60 and f.time == START + 13 * 60  # seen when the minute completed
    assert f.workflow == "support" and f.evidence["decisions_in_minute"] == 3.0


@pytest.mark.parametrize("status", ["allowed", "approved", "denied", "halted"])
def test_decisions_that_are_not_problems_make_no_finding(status: str) -> None:
    """allowed, approved, denied and halted decisions are not findings."""
    assert guardrails.guardrail_findings(BOT, minutes(), decisions({5: {(status, "crm.search"): 9.0}}), []) == []


@pytest.mark.parametrize(("active", "expected_onsets"), [
    ([3, 4, 5, 6], [3]),  # a lasting problem is one finding
    ([3, 8, 12], [3]),  # gaps shorter than the quiet period: still one
    ([3, 3 + guardrails.GUARDRAIL_QUIET_MINUTES + 1], [3, 3 + guardrails.GUARDRAIL_QUIET_MINUTES + 1]),  # ended, began again
])
def test_one_finding_per_problem(active: list[int], expected_onsets: list[int]) -> None:
    """Decisions less than GUARDRAIL_QUIET_MINUTES apart are one problem; a quieter stretch ends it."""
    rows = {i: {("token_cap_exceeded", ""): 1.0} for i in active}
    found = guardrails.guardrail_findings(BOT, minutes(), decisions(rows), [policy(tokenCaps={"perTask": 100})])
    assert [f.onset for f in found] == [START + 60 * i for i in expected_onsets]


def test_a_tool_outside_the_allowlist_in_tool_calls_is_tool_not_allowed() -> None:
    """An agent without the SDK guardrails calls a tool its CostPolicy does not allow: the same finding
    policies.tool_not_allowed makes in replay, once per tool however many minutes it goes on."""
    p = policy(tools={"allow": ["crm.*"], "action": "alert"})
    ms = minutes({i: {"crm.search": 2.0, "shell.exec": 1.0} for i in (4, 5, 20, 29)})
    found = guardrails.guardrail_findings(BOT, ms, {}, [p])
    assert [(f.kind, f.tool, f.action, f.policy) for f in found] == [
        (findings.TOOL_NOT_ALLOWED, "shell.exec", "alert", "guard")]
    replay_view = policies.tool_not_allowed(policies.ToolInput(
        policies.Subject("bot", NS, START + 5 * 60.0, "support"), "guard", p.spec.tools, "shell.exec"))
    assert replay_view is not None
    assert found[0].message == replay_view.message and found[0].onset == START + 4 * 60
    assert found[0].evidence["calls_in_minute"] == 1.0


def test_sdk_decision_and_tool_calls_for_one_tool_are_one_finding() -> None:
    """The SDK reports tool_not_allowed (action alert lets the call through) and the call is counted too:
    one finding, not two."""
    p = policy(tools={"deny": ["shell.*"], "action": "alert"})
    ms = minutes({7: {"shell.exec": 1.0}})
    found = guardrails.guardrail_findings(BOT, ms, decisions({7: {("tool_not_allowed", "shell.exec"): 1.0}}), [p])
    assert len(found) == 1
    assert found[0].evidence["decisions_in_minute"] == 1.0 and found[0].evidence["calls_in_minute"] == 1.0


def test_allowed_tools_and_agents_without_a_policy_are_not_flagged_from_tool_calls() -> None:
    """Tool calls alone never make a finding without an allowlist or denylist that refuses the tool."""
    ms = minutes({3: {"crm.search": 5.0}})
    assert guardrails.guardrail_findings(BOT, ms, {}, [policy(tools={"allow": ["crm.*"]})]) == []
    assert guardrails.guardrail_findings(BOT, ms, {}, []) == []
    other = spec.CostPolicy.model_validate({"metadata": {"name": "x", "namespace": NS},
                                            "spec": {"selector": {"matchLabels": {"team": "other"}},
                                                     "tools": {"allow": []}}})
    assert guardrails.guardrail_findings(BOT, ms, {}, [other]) == []


def test_a_rate_limit_already_found_from_tool_calls_is_not_repeated() -> None:
    """When rate_findings reports the episode from the call counts, the SDK's rate-limit decisions add none."""
    p = policy(rateLimits={"toolCallsPerMinute": 5, "action": "alert"})
    ms = minutes({10: {"crm.search": 9.0}, 11: {"crm.search": 9.0}})
    rate = guardrails.rate_findings(BOT, ms, [p])
    assert [f.kind for f in rate] == [findings.RATE_LIMIT_EXCEEDED]
    rows = decisions({10: {("rate_limit_exceeded", "crm.search"): 4.0}, 11: {("rate_limit_exceeded", "crm.search"): 4.0}})
    assert guardrails.guardrail_findings(BOT, ms, rows, [p], rate) == []
    assert len(guardrails.guardrail_findings(BOT, ms, rows, [p], ())) == 1


def test_guardrail_findings_flow_into_events_incidents_and_notifications() -> None:
    """The evaluator reports a guardrail finding like any other: an Event with its reason, a Notify,
    a status.incidents entry naming the tool, once (not again next cycle)."""
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": NS},
                                             "spec": {"limits": [{"window": "hour", "amountUSD": 10}]}})
    p = policy(tools={"allow": ["crm.*"]})

    def run(now: float, previous: dict[str, Any]) -> decision.Decision:
        return evaluate.evaluate(decision.EvaluationInput(
            budget=budget, agents=[BOT], minutes={"bot": minutes()},
            spend={w: 1.0 for w in spec.Window}, now=now, previous=previous, policies=[p],
            guardrails={"bot": decisions({20: {("tool_not_allowed", "shell.exec"): 2.0}})},
            lookback_start=float(START)))

    first = run(NOW, {})
    assert [e.reason for e in first.events if e.agent == "bot"] == [policies.REASON_TOOL_NOT_ALLOWED]
    notified = [a for a in first.actions if isinstance(a, decision.Notify)]
    assert [n.finding.kind for n in notified] == [findings.TOOL_NOT_ALLOWED]
    (incident,) = first.status.body()["incidents"]
    assert incident["tool"] == "shell.exec" and incident["id"] == notified[0].incident
    second = run(NOW + 15, first.status.body())
    assert second.new_findings == () and len(second.status.body()["incidents"]) == 1


def test_a_problem_older_than_the_lookback_keeps_its_incident() -> None:
    """As the lookback slides past the start of a lasting problem, its finding keeps the first onset
    (the same incident id), so it is not reported again."""
    p = policy(tokenCaps={"perTask": 100})
    old_onset = START - 20 * 60  # began before this lookback
    previous = [status.Incident(id="inc-x", kind=findings.TOKEN_CAP_EXCEEDED, agent="bot",
                                time=status.at(old_onset))]
    found = guardrails.guardrail_findings(BOT, minutes(), decisions({0: {("token_cap_exceeded", ""): 1.0},
                                                                   1: {("token_cap_exceeded", ""): 1.0}}), [p])
    kept = guardrails.keep_onsets(found, previous, float(START))
    assert [f.onset for f in kept] == [old_onset]
    # a new problem well inside the lookback is new
    fresh = guardrails.guardrail_findings(BOT, minutes(), decisions({25: {("token_cap_exceeded", ""): 1.0}}), [p])
    assert [f.onset for f in guardrails.keep_onsets(fresh, previous, float(START))] == [START + 25 * 60]


def test_the_adapter_reads_guardrail_decisions_from_the_tool_call_query() -> None:
    """The guardrail series ride on the tool-call range query (no query of their own), told apart by a
    label; they never count as tool calls."""
    query = prometheus.family_query("tool_calls")
    assert prometheus.GUARDRAIL_METRIC in query and "sum by (namespace, agent, tool, status)" in query
    results: dict[str, list[dict[str, Any]]] = {family: [] for family in prometheus.RANGE_FAMILIES}
    results["tool_calls"] = [
        {"metric": {"namespace": NS, "agent": "bot", "tool": "crm.search"}, "values": [[1200, "4"]]},
        {"metric": {"namespace": NS, "agent": "bot", "tool": "shell.exec", "status": "tool_not_allowed",
                    prometheus.GUARDRAIL_MARK: "guardrails"}, "values": [[1200, "2"], [1260, "0"]]},
    ]
    assert prometheus.build_guardrails(results, 0, 3600) == {(NS, "bot"): {1140: {("tool_not_allowed", "shell.exec"): 2.0}}}
    (minute,) = prometheus.build_minutes(results, 0, 3600)[(NS, "bot")]
    assert dict(minute.tool_calls) == {"crm.search": 4.0}


def test_rate_limit_decisions_for_the_tools_of_one_pattern_are_one_problem() -> None:
    """The SDK's rate-limit decisions for crm.search and crm.update under perTool crm.* are one finding, for crm.*."""
    p = policy(rateLimits={"perTool": {"crm.*": 5}, "action": "deny"})
    rows = decisions({7: {("rate_limit_exceeded", "crm.search"): 2.0, ("rate_limit_exceeded", "crm.update"): 1.0},
                      8: {("rate_limit_exceeded", "crm.update"): 1.0}})
    found = guardrails.guardrail_findings(BOT, minutes(), rows, [p])
    assert [(f.kind, f.tool, f.onset) for f in found] == [(findings.RATE_LIMIT_EXCEEDED, "crm.*", START + 7 * 60)]
    assert found[0].evidence["decisions_in_minute"] == 3.0 and found[0].evidence["limit_per_minute"] == 5


@pytest.mark.parametrize(("status", "tool", "spec_fields", "kind"), [
    ("would_token_cap_exceeded", "", {"tokenCaps": {"perTask": 5000}}, findings.TOKEN_CAP_EXCEEDED),
    ("would_rate_limit_exceeded", "crm.search", {"rateLimits": {"perTool": {"crm.search": 10}}},
     findings.RATE_LIMIT_EXCEEDED),
    ("would_tool_not_allowed", "shell.exec", {"tools": {"allow": ["crm.*"]}}, findings.TOOL_NOT_ALLOWED),
    ("would_approval_required", "payments.refund",
     {"approvals": [{"name": "big-refunds", "tool": "payments.*", "amountAboveUSD": 100}]}, findings.APPROVAL_REQUIRED),
])
@pytest.mark.parametrize("mode", ["DryRun", "Warn"])
def test_would_decisions_of_a_dry_run_or_warn_policy_are_findings(status: str, tool: str, spec_fields: dict[str, Any],
                                                                  kind: str, mode: str) -> None:
    """What the SDK let through under a CostPolicy in DryRun or Warn (``would_<status>``) is the same finding
    (its evidence says it was not blocked), read from Prometheus by the same query; DryRun alerts no one,
    Warn alerts on-call."""
    assert status in prometheus.family_query("tool_calls")
    p = policy(**spec_fields, enforcement=mode)
    found = guardrails.guardrail_findings(BOT, minutes(), decisions({12: {(status, tool): 3.0}}), [p])
    assert [(f.kind, f.tool) for f in found] == [(kind, tool or None)]
    assert found[0].evidence["not_blocked_in_minute"] == 3.0
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": NS},
                                             "spec": {"limits": [{"window": "hour", "amountUSD": 10}]}})
    verdict = evaluate.evaluate(decision.EvaluationInput(
        budget=budget, agents=[BOT], minutes={"bot": minutes()}, spend={w: 1.0 for w in spec.Window}, now=NOW,
        policies=[p], guardrails={"bot": decisions({12: {(status, tool): 3.0}})}, lookback_start=float(START)))
    assert [f.kind for f in verdict.new_findings] == [kind]
    notified = [a for a in verdict.actions if isinstance(a, decision.Notify)]
    assert len(notified) == (0 if mode == "DryRun" else 1)
