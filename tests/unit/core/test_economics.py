"""Unit economics: costs per task and outcome, ROI, trend, model comparison and recommendations."""

from __future__ import annotations

import pytest

from fleetwarden.core import economics, series, spec

H = 3600
T0 = 1_800_000_000 - 1_800_000_000 % 86400  # midnight UTC


def budget(**kw: object) -> spec.AgentBudgetSpec:
    return spec.AgentBudgetSpec.model_validate(kw)


def test_cost_per_task_and_outcome_count_every_cost() -> None:
    """Inference, tools, human time and prorated fixed costs all count in cost per task and outcome."""
    acc = economics.EconomicsAccumulator()
    for i in range(10):
        acc.add(time=T0 + i * 60, agent="a", workflow="refund", model="gpt-4o", inference_cost_usd=0.5,
                tool_cost_usd=0.25, human_cost_usd=0.25, tasks_completed=1, outcomes={"resolved_ticket": 1})
    b = budget(fixedMonthlyCostsUSD={"vector-db": 300.0, "hosting": 420.0})  # 720 a month: 1 USD an hour
    rep = economics.report(acc, start=T0, end=T0 + 10 * H, budget=b)
    assert rep.totals.fixed_usd == pytest.approx(10.0)
    assert rep.totals.total_usd == pytest.approx(20.0)
    assert rep.totals.cost_per_task_usd == pytest.approx(2.0)
    assert rep.totals.cost_per_outcome_usd == pytest.approx(2.0)
    assert rep.totals.success_rate == 1.0


def test_no_outcome_means_unknown_cost_per_outcome() -> None:
    """Without outcomes, cost per outcome is None (unknown), never 0."""
    acc = economics.EconomicsAccumulator()
    acc.add(time=T0, agent="a", workflow="w", inference_cost_usd=1.0, tasks_completed=1)
    rep = economics.report(acc, start=T0, end=T0 + H)
    assert rep.totals.cost_per_outcome_usd is None
    assert rep.workflows[0].recommendation == "hold"


def test_roi_and_savings_against_the_human_baseline() -> None:
    """ROI is (baseline x outcomes - cost) / cost; savings the numerator."""
    acc = economics.EconomicsAccumulator()
    for i in range(20):
        acc.add(time=T0 + i * 60, agent="a", workflow="refund", inference_cost_usd=1.0, tasks_completed=1,
                outcomes={"resolved_ticket": 1})
    b = budget(unitEconomics=[{"outcome": "resolved_ticket", "workflow": "refund", "targetCostUSD": 2.0,
                               "humanBaselineUSD": 5.0}])
    rep = economics.report(acc, start=T0, end=T0 + H, budget=b)
    w = rep.workflows[0]
    assert w.savings_usd == pytest.approx(5.0 * 20 - 20.0)
    assert w.roi == pytest.approx(4.0)
    assert rep.roi == pytest.approx(4.0)


def test_fixed_costs_spread_by_variable_cost() -> None:
    """Fixed costs go to workflows in proportion to their variable cost."""
    acc = economics.EconomicsAccumulator()
    acc.add(time=T0, agent="a", workflow="big", inference_cost_usd=3.0, tasks_completed=1)
    acc.add(time=T0, agent="a", workflow="small", inference_cost_usd=1.0, tasks_completed=1)
    rep = economics.report(acc, start=T0, end=T0 + 30 * 86400, budget=budget(fixedMonthlyCostsUSD={"x": 100.0}))
    fixed = {w.workflow: w.totals.fixed_usd for w in rep.workflows}
    assert fixed == {"big": pytest.approx(75.0), "small": pytest.approx(25.0)}


def test_named_outcome_is_the_one_judged() -> None:
    """The unitEconomics outcome is counted, not other outcomes of the workflow."""
    acc = economics.EconomicsAccumulator()
    acc.add(time=T0, agent="a", workflow="w", inference_cost_usd=4.0, tasks_completed=4,
            outcomes={"qualified_lead": 2, "contacted": 8})
    b = budget(unitEconomics=[{"outcome": "qualified_lead", "humanBaselineUSD": 10.0}])
    w = economics.report(acc, start=T0, end=T0 + H, budget=b).workflows[0]
    assert w.outcomes == 2 and w.cost_per_outcome_usd == pytest.approx(2.0)


RECOMMEND_TABLE = [
    # (name, cost/outcome, target, baseline, success, ended, capped, expected)
    ("nothing ended", None, 1.0, 5.0, None, 0, True, "hold"),
    ("poor success", 1.0, 2.0, 5.0, 0.4, 10, True, "retire"),
    ("success exactly at poor is not poor", 1.0, 2.0, 5.0, 0.5, 10, False, "hold"),
    ("above human baseline", 6.0, 2.0, 5.0, 0.9, 10, True, "retire"),
    ("exactly the human baseline is not above", 5.0, None, 5.0, 0.9, 10, False, "hold"),
    ("above target below baseline", 3.0, 2.0, 5.0, 0.9, 10, False, "optimise"),
    ("cheap, capped, good", 1.0, 2.0, 5.0, 0.9, 10, True, "more_budget"),
    ("cheap, capped, success just under fine", 1.0, 2.0, 5.0, 0.79, 10, True, "hold"),
    ("cheap, not capped", 1.0, 2.0, 5.0, 0.9, 10, False, "hold"),
    ("cheap, caps unknown", 1.0, 2.0, 5.0, 0.9, 10, None, "hold"),
    ("no outcomes", None, 2.0, 5.0, 0.9, 10, True, "hold"),
    ("target of 0 is a target", 0.5, 0.0, 5.0, 0.9, 10, True, "optimise"),
    ("no target or baseline", 1.0, None, None, 0.9, 10, True, "hold"),
]


@pytest.mark.parametrize(("name", "cpo", "target", "baseline", "success", "ended", "capped", "expected"),
                         RECOMMEND_TABLE, ids=[r[0] for r in RECOMMEND_TABLE])
def test_recommendation_table(name: str, cpo: float | None, target: float | None, baseline: float | None,
                              success: float | None, ended: int, capped: bool | None, expected: str) -> None:
    """Each workflow gets the recommendation its numbers call for, with a reason sentence."""
    rec, reason = economics.recommend(workflow="w", outcome="o", cost_per_outcome=cpo, target=target,
                                      human_baseline=baseline, success_rate=success, tasks_ended=ended,
                                      capped=capped)
    assert rec == expected
    assert reason.endswith(".") and "w" in reason


def test_more_budget_when_the_cap_is_near() -> None:
    """A cheap, successful workflow whose budget is past its warning threshold should get more budget."""
    acc = economics.EconomicsAccumulator()
    for i in range(30):
        acc.add(time=T0 + 23 * H + i * 60, agent="a", workflow="refund", inference_cost_usd=1.0,
                tasks_completed=1, outcomes={"resolved_ticket": 1})
    b = budget(limits=[{"window": "day", "amountUSD": 32.0}], killSwitch={"window": "day"},
               unitEconomics=[{"outcome": "resolved_ticket", "targetCostUSD": 2.0, "humanBaselineUSD": 6.0}])
    rep = economics.report(acc, start=T0, end=T0 + 24 * H, budget=b)
    assert rep.limits[0].percent == pytest.approx(100 * 30 / 32)
    assert rep.workflows[0].recommendation == "more_budget"
    assert "day cap" in rep.workflows[0].reason


def test_trend_slope_per_day() -> None:
    """Cost per outcome rising by 0.1 USD each day gives a slope of 0.1 USD/day."""
    acc = economics.EconomicsAccumulator()
    for d in range(5):
        acc.add(time=T0 + d * 86400, agent="a", workflow="w", inference_cost_usd=10 * (1 + 0.1 * d),
                tasks_completed=10, outcomes={"o": 10})
    rep = economics.report(acc, start=T0, end=T0 + 5 * 86400, bucket="day")
    assert [p.start for p in rep.trend.points] == [T0 + d * 86400 for d in range(5)]
    assert rep.trend.cost_per_outcome_usd_per_day_slope == pytest.approx(0.1)
    assert rep.trend.cost_usd_per_day_slope == pytest.approx(1.0)


def test_model_change_compares_cost_and_quality() -> None:
    """A model upgrade shows cost per outcome and success rate before and after."""
    acc = economics.EconomicsAccumulator()
    for i in range(10):
        acc.add(time=T0 + i * 60, agent="a", workflow="w", model="gpt-4o-mini", inference_cost_usd=0.1,
                tasks_completed=1 if i < 7 else 0, tasks_failed=0 if i < 7 else 1, outcomes={"o": 1})
    for i in range(10):
        acc.add(time=T0 + H + i * 60, agent="a", workflow="w", model="gpt-4o", inference_cost_usd=0.3,
                tasks_completed=1 if i < 9 else 0, tasks_failed=0 if i < 9 else 1, outcomes={"o": 1})
    rep = economics.report(acc, start=T0, end=T0 + 2 * H)
    [change] = rep.model_changes
    assert (change.previous_model, change.model, change.at) == ("gpt-4o-mini", "gpt-4o", T0 + H)
    assert change.cost_per_outcome_ratio == pytest.approx(3.0)
    assert change.success_rate_change == pytest.approx(0.2)
    assert "weigh" in change.summary


def test_add_minute_counts_an_agent_minute() -> None:
    """An AgentMinute feeds the same sums as a per-task record (outcomes unnamed unless named)."""
    m = series.AgentMinute(agent="a", namespace="n", minute=T0, inference_cost_usd=0.2, tool_cost_usd=0.1,
                           tasks_completed=2, tasks_failed=1, outcomes=2, model="m", workflow="w")
    acc = economics.EconomicsAccumulator()
    acc.add_minute(m)
    b = budget(unitEconomics=[{"outcome": "resolved_ticket", "humanBaselineUSD": 1.0}])
    rep = economics.report(acc, start=T0, end=T0 + H, budget=b)
    w = rep.workflows[0]
    assert w.outcomes == 2 and w.totals.tasks_ended == 3
    assert w.cost_per_outcome_usd == pytest.approx(0.15)


def test_report_is_order_independent_and_serialisable() -> None:
    """Adding the same records in another order gives the same report; to_dict is plain data."""
    import json

    recs = [dict(time=T0 + i * 600, agent="a" if i % 2 else "b", workflow="w", model="m",
                 inference_cost_usd=0.1 * i, tasks_completed=1, outcomes={"o": 1}) for i in range(12)]
    a, b = economics.EconomicsAccumulator(), economics.EconomicsAccumulator()
    for r in recs:
        a.add(**r)
    for r in reversed(recs):
        b.add(**r)
    ra = economics.report(a, start=T0, end=T0 + 2 * H).to_dict()
    rb = economics.report(b, start=T0, end=T0 + 2 * H).to_dict()
    assert ra == rb
    assert json.loads(json.dumps(ra)) == ra


def test_period_excludes_other_hours() -> None:
    """Only hours within the period are counted."""
    acc = economics.EconomicsAccumulator()
    acc.add(time=T0 - H, agent="a", inference_cost_usd=5.0, tasks_completed=1)
    acc.add(time=T0, agent="a", inference_cost_usd=1.0, tasks_completed=1)
    assert economics.report(acc, start=T0, end=T0 + H).totals.total_usd == pytest.approx(1.0)
    with pytest.raises(ValueError):
        economics.report(acc, start=T0, end=T0)


# ---------------------------------------------------------------- the reports' unit economics


def agent_budget(name: str, *targets: dict[str, object], limits: tuple[dict[str, object], ...] = (),
                 namespace: str = "shop") -> spec.AgentBudget:
    return spec.AgentBudget.model_validate({"metadata": {"name": name, "namespace": namespace},
                                            "spec": {"unitEconomics": list(targets), "limits": list(limits),
                                                     "killSwitch": {"window": "day"}}})


ANY_WF = agent_budget("a-any", {"outcome": "resolved", "targetCostUSD": 1.0})
REFUND = agent_budget("z-refund", {"outcome": "resolved", "workflow": "refund", "targetCostUSD": 2.0})
B_ANY = agent_budget("b-any", {"outcome": "resolved", "humanBaselineUSD": 5.0})
OTHER_OUTCOME = agent_budget("c-other", {"outcome": "escalated", "workflow": "refund"})


@pytest.mark.parametrize(("budgets", "workflow", "outcome", "expected"), [
    ([], "refund", "resolved", None),
    ([OTHER_OUTCOME], "refund", "resolved", None),  # the outcome must match
    ([ANY_WF], "refund", "resolved", ("a-any", None)),  # a target for every workflow applies
    ([ANY_WF, REFUND], "refund", "resolved", ("z-refund", "refund")),  # naming the workflow wins over the name
    ([REFUND, ANY_WF], "billing", "resolved", ("a-any", None)),  # a target for another workflow does not apply
    ([B_ANY, ANY_WF], "refund", "resolved", ("a-any", None)),  # a tie goes to the budget's name
    ([agent_budget("d", {"outcome": "resolved"}, {"outcome": "resolved", "workflow": "refund"})],
     "refund", "resolved", ("d", "refund")),  # within one budget too
])
def test_pick_target(budgets: list[spec.AgentBudget], workflow: str, outcome: str,
                     expected: tuple[str, str | None] | None) -> None:
    """The target for a workflow's outcome: the one naming the workflow, else the first budget's by name."""
    got = economics.pick_target(budgets, workflow, outcome)
    assert (None if got is None else (got[0].metadata.name, got[1].workflow)) == expected
    if got is not None:
        assert got[1].outcome == outcome and got[1] in got[0].spec.unit_economics


CAPPED = agent_budget("capped", limits=({"window": "day", "amountUSD": 100.0, "warningPercent": 80.0},
                                        {"window": "month", "amountUSD": 1000.0}))


@pytest.mark.parametrize(("budget", "peaks", "expected"), [
    (None, {("shop", "capped", "day"): 0.9}, []),
    (CAPPED, {}, []),  # no peak known: left out, not 0
    (CAPPED, {("shop", "capped", "day"): 0.5}, [("day", 50.0, 100.0, 50.0, 80.0)]),
    (CAPPED, {("shop", "capped", "day"): 0.9, ("shop", "capped", "month"): 0.25},
     [("day", 90.0, 100.0, 90.0, 80.0), ("month", 250.0, 1000.0, 25.0, 80.0)]),
    (CAPPED, {("other", "capped", "day"): 0.9, ("shop", "other", "day"): 0.9, ("shop", "capped", "hour"): 0.9},
     []),  # another namespace, budget or window
])
def test_limit_use(budget: spec.AgentBudget | None, peaks: dict[tuple[str, str, str], float],
                   expected: list[tuple[str, float, float, float, float]]) -> None:
    """Each limit with a known peak share of its cap, as spend, cap, percent and warning percent."""
    got = [(u.window, round(u.spend_usd, 6), u.cap_usd, round(u.percent, 6), u.warning_percent)
           for u in economics.limit_use(budget, peaks)]
    assert got == expected


@pytest.mark.parametrize(("baseline", "cpo", "outcomes", "roi", "savings"), [
    (10.0, 2.0, 3.0, 4.0, 24.0),
    (2.0, 2.0, 3.0, 0.0, 0.0),  # break-even is 0, not unknown
    (1.0, 2.0, 4.0, -0.5, -4.0),  # dearer than a person
    (0.0, 2.0, 1.0, -1.0, -2.0),  # a baseline of 0 is a baseline
    (None, 2.0, 3.0, None, None),  # no baseline: unknown
    (10.0, None, 0.0, None, None),  # no cost per outcome: unknown
    (10.0, 0.0, 3.0, None, 30.0),  # free outcomes: no finite ROI
])
def test_roi_and_savings(baseline: float | None, cpo: float | None, outcomes: float, roi: float | None,
                         savings: float | None) -> None:
    """ROI = (baseline - cost per outcome) / cost per outcome; savings = the difference x outcomes."""
    assert economics.roi(baseline, cpo) == (pytest.approx(roi) if roi is not None else None)
    assert economics.savings(baseline, cpo, outcomes) == (pytest.approx(savings) if savings is not None else None)


def test_add_minute_counts_what_add_counts_of_its_fields() -> None:
    """add_minute is add() of the minute's fields written out (the status figures count an hour of
    minutes per budget every minute): the same cells, to the last bit, and the same first and last
    time per model, for minutes with and without a model, workflow, named or unnamed outcomes."""
    import random

    rng = random.Random(11)
    by_minute, by_fields = economics.EconomicsAccumulator(), economics.EconomicsAccumulator()
    times: dict[tuple[str, str], list[int]] = {}
    for _ in range(3000):
        m = series.AgentMinute(
            agent=rng.choice(["a", "b"]), namespace="ns", minute=1_800_000_000 + 60 * rng.randrange(200),
            inference_cost_usd=rng.random(), tool_cost_usd=rng.choice([0.0, rng.random()]),
            human_cost_usd=rng.choice([0.0, 0.0, rng.random()]), tasks_completed=rng.randrange(3),
            tasks_failed=rng.randrange(2), tasks_abandoned=rng.randrange(2), outcomes=rng.choice([0.0, 1.0, 2.5]),
            model=rng.choice([None, "m1", "m2"]), workflow=rng.choice([None, "", "w"]))
        named = rng.choice([None, {}, {"resolved": rng.random()}, {"resolved": 1.0, "lead": 2.0}])
        if m.model is not None:
            times.setdefault((m.agent, m.model), []).append(m.minute)
        by_minute.add_minute(m, outcomes=named)
        by_fields.add(time=m.minute, agent=m.agent, workflow=m.workflow, model=m.model,
                      inference_cost_usd=m.inference_cost_usd, tool_cost_usd=m.tool_cost_usd,
                      human_cost_usd=m.human_cost_usd, tasks_completed=m.tasks_completed,
                      tasks_failed=m.tasks_failed, tasks_abandoned=m.tasks_abandoned,
                      outcomes=named if named is not None else ({economics.UNNAMED: m.outcomes} if m.outcomes else None))
    cells = list(by_minute.cells(0, 2e9))
    assert [k for k, _ in cells] == [k for k, _ in by_fields.cells(0, 2e9)]
    for (_, a), (_, b) in zip(cells, by_fields.cells(0, 2e9), strict=True):
        assert [getattr(a, f) for f in a.__slots__] == [getattr(b, f) for f in b.__slots__]
    for agent in ("a", "b"):
        for model in ("m1", "m2"):
            assert by_minute.seen(agent, model) == by_fields.seen(agent, model) is not None
            assert by_minute.seen(agent, model) == (min(times[(agent, model)]), max(times[(agent, model)]))
