"""core.counterfactual: pairing two finding streams, what they block, and the spend a kill saves."""

from __future__ import annotations

import pytest

from fleetwarden.core import counterfactual, events, findings, pricing, spec

LABELS = {"team": "a"}
T0 = 1_767_571_200.0


def budget(name: str = "b", **s: object) -> spec.AgentBudget:
    return spec.AgentBudget.model_validate({"metadata": {"name": name, "namespace": "ns"},
                                            "spec": {"selector": {"matchLabels": LABELS}, **s}})


def policy(**s: object) -> spec.CostPolicy:
    return spec.CostPolicy.model_validate({"metadata": {"name": "p", "namespace": "ns"},
                                           "spec": {"selector": {"matchLabels": LABELS}, **s}})


def finding(kind: str, t: float, action: str = findings.DENY, agent: str = "a1", **kw: object) -> findings.Finding:
    return findings.Finding(kind=kind, agent=agent, namespace="ns", time=t, action=action, message="m",
                            **kw)  # type: ignore[arg-type]


def event(t: float, agent: str = "a1", **raw: object) -> events.Event:
    body = {k: v for k, v in {"type": "tool", "tool": "t", "cost_usd": 1.0, "labels": LABELS, **raw}.items()
            if v is not None}  # cost_usd=None: no cost in the event, priced
    return events.Event(t, str(body["type"]), agent, "ns", {"agent": agent, "namespace": "ns", **body})


def test_a_finding_that_only_moved_in_time_is_paired_not_added_and_removed() -> None:
    cap = findings.TOKEN_CAP_EXCEEDED
    current = [finding(cap, 50, task_id="t1"), finding(cap, 60, task_id="t2")]
    proposed = [finding(cap, 10, task_id="t1"), finding(cap, 20, task_id="t2"), finding(cap, 30, task_id="t3")]
    added, removed = counterfactual.diff(current, proposed)
    assert [f.task_id for f in added] == ["t3"] and removed == []
    added, removed = counterfactual.diff(proposed, current)
    assert added == [] and [f.task_id for f in removed] == ["t3"]


@pytest.mark.parametrize("f, tasks, calls", [
    (finding(findings.TOKEN_CAP_EXCEEDED, 0, task_id="t1"), 1, 0),
    (finding(findings.TOKEN_CAP_EXCEEDED, 0, action=findings.ALERT, task_id="t1"), 0, 0),
    (finding(findings.RATE_LIMIT_EXCEEDED, 0, action=findings.THROTTLE,
             evidence={"calls_per_minute": 13.0, "limit_per_minute": 10}), 0, 3),
    (finding(findings.RATE_LIMIT_EXCEEDED, 0, action=findings.THROTTLE), 0, 1),  # no numbers: at least one
    (finding(findings.TOOL_NOT_ALLOWED, 0, tool="x"), 0, 1),
    (finding(findings.APPROVAL_REQUIRED, 0, tool="x"), 0, 1),
    (finding(findings.BUDGET_EXCEEDED, 0, action=findings.ALERT), 0, 0),
])
def test_what_a_finding_blocks(f: findings.Finding, tasks: int, calls: int) -> None:
    got = counterfactual.blocked([f])
    assert (len(got.tasks), got.calls_at_least) == (tasks, calls)


def _run(fs: list[findings.Finding], *budgets: spec.AgentBudget) -> counterfactual.Run:
    return counterfactual.Run(fs, budgets, [policy(toolPricesUSD={"priced": 0.5})])


def test_an_earlier_kill_switch_saves_the_spend_of_every_agent_of_its_budget_until_the_current_kill() -> None:
    """The proposed kill switch at T0+100 stops a1 and a2 (both in the budget) until the current kill
    at T0+300; a tool call without cost_usd is priced as the current policy prices it; a model
    with no known price is counted apart, never as 0ドル."""
    b = budget()
    ks = findings.KILL_SWITCH
    current = _run([finding(ks, T0 + 300, action=findings.KILL, budget="b")], b)
    proposed = _run([finding(ks, T0 + 100, action=findings.KILL, agent="a2", budget="b")], b)
    items = [event(T0 + 50), event(T0 + 100), event(T0 + 150, agent="a2", tool="priced", cost_usd=None),
             event(T0 + 200, type="llm", model="no-such-model", input_tokens=1, output_tokens=1, cost_usd=None),
             event(T0 + 300), event(T0 + 301, agent="a2")]
    kills = counterfactual.kill_spend(current, proposed, items, pricing.PriceTable.from_config(None))
    by = {k.agent: (k.spend_usd, k.events, k.unpriced_events) for k in kills}
    assert by == {"a1": (1.0, 2, 1), "a2": (0.5, 1, 0)}
    assert all(k.current == T0 + 300 and k.proposed == T0 + 100 for k in kills)


def test_a_kill_switch_of_a_budget_that_does_not_enforce_kills_nobody() -> None:
    ks = findings.KILL_SWITCH
    dry = budget(enforcement="DryRun")
    proposed = _run([finding(ks, T0 + 100, action=findings.KILL, budget="b")], dry)
    kills = counterfactual.kill_spend(_run([], dry), proposed, [event(T0 + 200)], pricing.PriceTable.from_config(None))
    assert kills == []
    proposed = _run([finding(ks, T0 + 100, action=findings.KILL, budget="b")], budget())
    kills = counterfactual.kill_spend(_run([], budget()), proposed, [event(T0 + 200)],
                                      pricing.PriceTable.from_config(None))
    assert [(k.agent, k.spend_usd, k.current) for k in kills] == [("a1", 1.0, float("inf"))]
