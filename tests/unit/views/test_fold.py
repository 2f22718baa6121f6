"""views.offline.Fold: cost by dimension, trends, window cut, economics, model changes, incidents."""

from __future__ import annotations

import pytest

from fleetwarden import errors
from fleetwarden.core import events, findings, pricing, spec
from fleetwarden.views import model, offline

T0 = 1_800_000_000.0  # a whole minute


def ev(t: float, type_: str, agent: str = "bot", **fields) -> events.Event:
    obj = {"time": T0 + t, "type": type_, "agent": agent, "namespace": fields.pop("namespace", "ns"), **fields}
    if type_ in ("llm", "tool", "task", "outcome"):
        obj.setdefault("task_id", "t1")
    return events.from_obj(obj)


def llm(t: float, cost: float, **kw) -> events.Event:
    kw.setdefault("model", "m1")
    return ev(t, "llm", input_tokens=100, output_tokens=10, cost_usd=cost, **kw)


def fold_of(evs, dims=model.DIMENSIONS) -> offline.Fold:
    fold = offline.Fold(pricing.PriceTable(), dims)
    for e in evs:
        fold.add(e)
    return fold


def test_costs_group_by_each_dimension_with_none_for_missing_labels():
    """Each dimension sums the cost of its events; missing labels and steps count under (none)."""
    labels = {"team": "cx", "project": "help", "cost_center": "CC-1"}
    fold = fold_of([
        llm(0, 1.0, step="plan", labels=labels, workflow="refund"),
        ev(10, "tool", tool="crm.search", cost_usd=0.5, step="lookup", labels=labels, workflow="refund"),
        llm(20, 2.0, agent="other", namespace="ns2", model="m2"),
    ])
    r = fold.report(window_seconds=3600)
    by = {b.dimension: {row.key: row.cost_usd for row in b.rows} for b in r.breakdowns}
    assert r.total_cost_usd == pytest.approx(3.5)
    assert by["agent"] == {"ns/bot": pytest.approx(1.5), "ns2/other": pytest.approx(2.0)}
    assert by["tool"] == {"crm.search": pytest.approx(0.5)}
    assert by["step"] == {"plan": pytest.approx(1.0), "lookup": pytest.approx(0.5), model.NONE_KEY: pytest.approx(2.0)}
    assert by["team"] == {"cx": pytest.approx(1.5), model.NONE_KEY: pytest.approx(2.0)}
    assert by["cost_center"] == {"CC-1": pytest.approx(1.5), model.NONE_KEY: pytest.approx(2.0)}
    assert by["model"] == {"m1": pytest.approx(1.0), "m2": pytest.approx(2.0)}
    agent_rows = r.breakdown("agent").rows
    assert [row.key for row in agent_rows] == ["ns2/other", "ns/bot"]  # most expensive first
    assert agent_rows[0].share == pytest.approx(2.0 / 3.5)
    assert agent_rows[1].calls == 2 and agent_rows[1].tokens == 110


def test_window_ends_after_last_event_and_drops_older_spend():
    """The window ends at the minute after the last event; spend before it is left out."""
    fold = fold_of([llm(0, 5.0), llm(7200, 1.0), llm(7260, 2.0)])
    r = fold.report(window_seconds=3600, steps=6)
    assert r.window_end == T0 + 7320
    assert r.window_start == T0 + 7320 - 3600
    assert r.total_cost_usd == pytest.approx(3.0)
    assert len(r.total_trend) == 6 and r.step_seconds == 600
    assert r.total_trend[-1] == pytest.approx(3.0) and sum(r.total_trend[:-1]) == 0


def test_events_without_cost_are_priced_and_unknown_models_refused():
    """An llm event without cost_usd is priced by the table; an unknown model raises PricingError."""
    table = pricing.PriceTable.from_config({"models": [
        {"model": "house-model", "input_per_mtok": 1.0, "output_per_mtok": 2.0}]})
    fold = offline.Fold(table, ("agent",))
    fold.add(ev(0, "llm", model="house-model", input_tokens=1_000_000, output_tokens=1_000_000))
    assert fold.report().total_cost_usd == pytest.approx(3.0)
    with pytest.raises(errors.PricingError):
        fold.add(ev(1, "llm", model="no-such-model-xyz", input_tokens=10, output_tokens=1))


def test_unit_economics_against_target_and_human_baseline():
    """Cost per outcome is the workflow's cost over its outcomes, judged by the governing budget's target."""
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "cx", "namespace": "ns"}, "spec": {
        "unitEconomics": [{"outcome": "resolved", "workflow": "refund", "targetCostUSD": 0.5,
                           "humanBaselineUSD": 4.0}]}})
    evs = [llm(0, 1.0, workflow="refund", task_id="a"), ev(5, "outcome", outcome="resolved", workflow="refund",
                                                          task_id="a"),
           llm(10, 2.0, workflow="refund", task_id="b"), ev(15, "outcome", outcome="resolved", workflow="refund",
                                                           task_id="b", count=2),
           ev(16, "task", status="completed", workflow="refund", task_id="a"),
           ev(17, "task", status="completed", workflow="refund", task_id="b")]
    r = fold_of(evs).report(budgets=[budget])
    (row,) = r.economics
    assert (row.workflow, row.outcome, row.outcomes) == ("refund", "resolved", 3)
    assert row.cost_per_outcome_usd == pytest.approx(1.0)
    assert row.target_cost_usd == 0.5 and row.human_baseline_usd == 4.0
    assert row.roi == pytest.approx(3.0)
    assert row.savings_usd == pytest.approx(9.0)
    assert row.budget == "cx"
    assert row.recommendation == "optimise" and "above its target" in row.reason
    assert r.governance == ()


def test_model_change_is_seen_and_linked_to_the_incident():
    """A model first used after the grace period is a change; the incident after it names it."""
    evs = [llm(t, 0.1, model="old") for t in range(0, 1200, 60)] + [llm(t, 0.5, model="new")
                                                                     for t in range(1200, 1800, 60)]
    found = [findings.Finding(kind="runaway_loop", agent="bot", namespace="ns", time=T0 + 1500, action="kill",
                              message="loop", onset=T0 + 1300)]
    r = fold_of(evs).report(found=found)
    assert [(c.previous_model, c.model, c.time) for c in r.model_changes] == [("old", "new", T0 + 1200)]
    (inc,) = r.incidents
    assert inc.id == findings.incident_id(found[0])
    assert inc.model_change is not None and inc.model_change.model == "new"
    assert inc.actions == ("kill",) and inc.opened == T0 + 1300
    (anomaly,) = r.anomalies
    assert anomaly.incident == inc.id
    assert r.breakdown("agent").rows[0].anomalous


def test_models_used_from_the_start_are_not_changes():
    """Two models used side by side from the first minutes are a mix, not a change."""
    evs = [llm(t, 0.1, model="big" if t % 120 else "small") for t in range(0, 3600, 60)]
    assert fold_of(evs).report().model_changes == ()


def test_findings_of_one_problem_make_one_incident_with_every_action():
    """Findings with the same incident id merge; the incident lists each distinct action once."""
    f1 = findings.Finding(kind="tool_call_explosion", agent="bot", namespace="ns", time=T0 + 300, action="alert",
                          message="first", onset=T0 + 120, tool="web.search")
    f2 = findings.Finding(kind="tool_call_explosion", agent="bot", namespace="ns", time=T0 + 600, action="throttle",
                          message="worse", onset=T0 + 130, tool="web.search")
    r = fold_of([llm(0, 1.0), llm(700, 1.0)]).report(found=[f2, f1])
    (inc,) = r.incidents
    assert inc.findings == 2 and inc.actions == ("alert", "throttle") and inc.message == "worse"
    assert [a.message for a in r.anomalies] == ["first", "worse"]


def test_empty_input_says_so():
    """A report over no events has an unknown total and a note, not a total of 0."""
    r = offline.Fold(pricing.PriceTable()).report(window_seconds=3600, end=T0)
    assert r.total_cost_usd is None
    assert "no events" in r.notes[0]


def _capped_fleet() -> tuple[spec.AgentBudget, list[events.Event]]:
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "cx", "namespace": "ns"}, "spec": {
        "limits": [{"window": "hour", "amountUSD": 10, "warningPercent": 80}],
        "unitEconomics": [{"outcome": "resolved", "workflow": "refund", "targetCostUSD": 2.0,
                           "humanBaselineUSD": 4.0}]}})
    evs = []
    for i in range(4):
        task = f"t{i}"
        evs += [llm(60 * i, 1.0, workflow="refund", task_id=task),
                ev(60 * i + 5, "outcome", outcome="resolved", workflow="refund", task_id=task),
                ev(60 * i + 6, "task", status="completed", workflow="refund", task_id=task)]
    return budget, evs


def test_a_cheap_workflow_whose_budget_neared_its_cap_gets_more_budget():
    """Below target and baseline, every task completed, and replay warned the budget was at 85% of its
    hour cap: more_budget, naming the cap; replayed with no budget finding: hold, the budget has room;
    not replayed: hold (near the cap or not is unknown)."""
    from fleetwarden.core import policies

    budget, evs = _capped_fleet()
    warning = policies.budget_warning(policies.LimitInput(
        subject=policies.Subject(agent="bot", namespace="ns", now=T0 + 200, workflow="refund"), budget="cx",
        limit=budget.spec.limits[0], spend_usd=8.5))
    assert warning is not None
    (row,) = fold_of(evs).report(budgets=[budget], found=[warning], replayed=True).economics
    assert row.recommendation == "more_budget" and "85% of the hour cap" in row.reason
    (row,) = fold_of(evs).report(budgets=[budget], found=[], replayed=True).economics
    assert row.recommendation == "hold" and "budget has room" in row.reason
    (row,) = fold_of(evs).report(budgets=[budget], found=[]).economics
    assert row.recommendation == "hold" and "budget has room" not in row.reason


def test_tool_and_human_prices_apply_per_agent_as_in_replay():
    """Each agent's tool calls are priced by the CostPolicies that select it (the first by name wins),
    its human minutes at the rate of its AgentBudget; an agent governed by neither gets the table's."""
    def policy(name, team, price):
        return spec.CostPolicy.model_validate({"metadata": {"name": name, "namespace": "ns"}, "spec": {
            "selector": {"matchLabels": {"team": team}}, "toolPricesUSD": {"kb.search": price}}})

    pols = [policy("b-cx", "cx", 0.02), policy("a-cx", "cx", 0.01), policy("ops", "ops", 0.05)]
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "cx", "namespace": "ns"}, "spec": {
        "selector": {"matchLabels": {"team": "cx"}}, "humanHourlyRateUSD": 30}})
    table = pricing.PriceTable()
    fold = offline.Fold(table, ("agent",), budgets=[budget], cost_policies=pols)
    for agent, team in (("a", "cx"), ("b", "ops"), ("c", None)):
        labels = {"team": team} if team else {}
        fold.add(ev(0, "tool", agent=agent, tool="kb.search", labels=labels))
        fold.add(ev(1, "human", agent=agent, minutes=10, labels=labels))
    by = {row.key: row.cost_usd for row in fold.report().breakdown("agent").rows}
    assert by["ns/a"] == pytest.approx(0.01 + 10 / 60 * 30)
    assert by["ns/b"] == pytest.approx(0.05 + table.human_cost(10))
    assert by["ns/c"] == pytest.approx(table.tool_cost("kb.search") + table.human_cost(10))
