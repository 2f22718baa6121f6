"""Events -> per-agent minute buckets: sums, prices, lateness and unknown models."""

from __future__ import annotations

import pytest

from fleetwarden import errors
from fleetwarden.core import buckets, events, pricing

T0 = 1795860000.0  # 2026-11-28T10:00:00Z
TABLE = pricing.PriceTable.from_config({"models": [{"model": "m1", "input_per_mtok": 1, "output_per_mtok": 2}],
                                        "tools": {"crm.search": 0.01}, "human_hourly_rate_usd": 60})


def ev(t: float, type_: str, agent: str = "a", **fields: object) -> events.Event:
    raw = {"time": t, "type": type_, "agent": agent, **fields}
    if type_ != "human":
        raw.setdefault("task_id", "t1")
    return events.from_obj(raw)


def llm(t: float, agent: str = "a", **f: object) -> events.Event:
    return ev(t, "llm", agent, model=f.pop("model", "m1"), input_tokens=f.pop("input_tokens", 1_000_000),
              output_tokens=f.pop("output_tokens", 500_000), **f)


def test_one_minute_sums_everything_an_agent_did() -> None:
    """A closed minute carries costs, tokens, calls, tasks, outcomes, tools and the main model and workflow."""
    b = buckets.Bucketer(TABLE)
    for e in [llm(T0 + 1, workflow="refund"), llm(T0 + 2, cost_usd=0.5, reasoning_tokens=10, workflow="refund"),
              ev(T0 + 3, "tool", tool="crm.search"), ev(T0 + 4, "tool", tool="crm.search", cost_usd=1.0),
              ev(T0 + 5, "tool", tool="kb.search"), ev(T0 + 6, "task", status="completed"),
              ev(T0 + 7, "task", status="failed"), ev(T0 + 8, "outcome", outcome="resolved", count=2),
              ev(T0 + 9, "human", minutes=30, workflow="triage")]:
        b.add(e)
    (m,) = b.finish()
    assert m.minute == int(T0) and (m.agent, m.namespace) == ("a", "default")
    assert m.inference_cost_usd == pytest.approx(2.0 + 0.5)
    assert m.tool_cost_usd == pytest.approx(1.01) and m.human_cost_usd == pytest.approx(30.0)
    assert m.tokens == 2 * 1_500_000 + 10 and m.output_tokens == 1_000_000 and m.llm_calls == 2
    assert dict(m.tool_calls) == {"crm.search": 2, "kb.search": 1}
    assert dict(m.tool_costs) == pytest.approx({"crm.search": 1.01})
    assert (m.tasks_completed, m.tasks_failed, m.outcomes) == (1, 1, 2)
    assert (m.model, m.workflow) == ("m1", "refund")


def test_minutes_close_after_the_lateness_allowance_in_order() -> None:
    """A minute closes once events are LATENESS past its end; a slightly late event still lands in its minute."""
    b = buckets.Bucketer(TABLE)
    b.add(llm(T0 + 10))
    b.add(llm(T0 + 70, agent="b"))
    b.add(llm(T0 + 50))  # late by 20 s: still its own minute
    assert b.close() == []
    b.add(llm(T0 + 185))  # horizon T0+65: minute T0 is complete
    closed = b.close()
    assert [(m.agent, m.minute, m.llm_calls) for m in closed] == [("a", int(T0), 2)]
    rest = b.finish()
    assert [(m.agent, m.minute) for m in rest] == [("b", int(T0) + 60), ("a", int(T0) + 180)]


def test_very_late_event_is_counted_in_the_oldest_open_minute() -> None:
    """An event later than the allowance is not lost: it is counted in the oldest open minute and counted as late."""
    b = buckets.Bucketer(TABLE)
    b.add(llm(T0 + 600))
    b.close()
    b.add(llm(T0, cost_usd=7.0))
    assert b.late == 1
    minutes = b.finish()
    assert sum(m.inference_cost_usd for m in minutes) == pytest.approx(2.0 + 7.0)


def test_unknown_model_is_an_error_naming_the_model() -> None:
    """An llm call with no cost and no known price raises PricingError naming the model, and counts nothing."""
    b = buckets.Bucketer(pricing.PriceTable.from_config({"genai_prices": False}))
    with pytest.raises(errors.PricingError, match="mystery-model"):
        b.add(llm(T0, model="mystery-model"))
    assert b.finish() == []


def test_tool_and_human_prices_come_from_the_policy_and_budget() -> None:
    """Tool calls use the agent's CostPolicy toolPricesUSD, human minutes its budget's hourly rate."""
    b = buckets.Bucketer(TABLE)
    st = b.agent("default", "a")
    st.set_prices({"crm.search": 0.5}, 120.0)
    assert b.add(ev(T0, "tool", tool="crm.search")) == 0.5
    assert b.add(ev(T0, "tool", tool="other")) == 0.0
    assert b.add(ev(T0, "human", minutes=15)) == pytest.approx(30.0)


def test_open_tasks_and_the_largest_and_oldest_running_one() -> None:
    """Each minute says how many tasks are open and, of those with an event in the last five
    minutes, the largest and the oldest: tokens so far, age at the minute's end, id."""
    b = buckets.Bucketer(TABLE)
    for e in [llm(T0 + 10, task_id="old", input_tokens=100, output_tokens=0),
              llm(T0 + 20, task_id="big", input_tokens=900, output_tokens=100),
              llm(T0 + 70, task_id="big", input_tokens=2000, output_tokens=0),
              ev(T0 + 80, "task", task_id="old", status="completed"),
              ev(T0 + 85, "outcome", task_id="old", outcome="done"),  # an outcome after the end reopens nothing
              llm(T0 + 130, task_id="big", input_tokens=1, output_tokens=0),
              llm(T0 + 131, task_id="new", input_tokens=5, output_tokens=0),
              llm(T0 + 600, task_id="new", input_tokens=5, output_tokens=0)]:
        b.add(e)
    m0, m1, m2, m10 = b.finish()
    assert (m0.open_tasks, m0.largest_task_tokens, m0.largest_task_age, m0.largest_task_id) == (2, 1000, 40.0, "big")
    assert (m0.oldest_task_tokens, m0.oldest_task_age, m0.oldest_task_id) == (100, 50.0, "old")
    assert (m1.open_tasks, m1.largest_task_tokens, m1.largest_task_age, m1.oldest_task_id) == (1, 3000, 100.0, "big")
    assert (m2.open_tasks, m2.largest_task_id, m2.oldest_task_id) == (2, "big", "big")
    # ten minutes on, "big" has had no event for more than five: only "new" runs
    assert (m10.open_tasks, m10.largest_task_id, m10.largest_task_tokens, m10.oldest_task_id) == (2, "new", 10, "new")


def test_no_running_task_is_a_known_zero() -> None:
    """A minute whose tasks all ended says 0 open and 0 tokens (known), not unknown."""
    b = buckets.Bucketer(TABLE)
    b.add(llm(T0 + 1, task_id="t", input_tokens=10, output_tokens=0))
    b.add(ev(T0 + 2, "task", task_id="t", status="completed"))
    (m,) = b.finish()
    assert (m.open_tasks, m.largest_task_tokens, m.largest_task_age, m.largest_task_id) == (0, 0, 0.0, None)
