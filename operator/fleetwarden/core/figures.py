"""The figures of a budget's status: burn rate, month-end projection, unit costs, top agents and tools.

They are worked out from the complete minutes of the last hour, as ``fleetwarden report``
counts them (:mod:`fleetwarden.core.economics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetwarden.core import decision, economics, series, spec, windows
from fleetwarden.core import status as st

TOP_N = 5
# Burn rate: the spend of this many most recent complete minutes, per hour.
BURN_MINUTES = 10


def money(x: float) -> float:
    return round(x, 4)


def figures(minutes: Mapping[str, Sequence[series.AgentMinute]], now: float,
             spend: Mapping[spec.Window, float | None],
             outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None,
             budget_spec: spec.AgentBudgetSpec | None = None, memo: decision.Memo | None = None) -> dict[str, Any]:
    """Burn rate, projection, unit costs and the top agents and tools over the last hour.

    All but the projection depend only on complete minutes: with a ``memo`` they are worked
    out once per minute for a given set of agents."""
    end = series.minute_of(now)
    if memo is None:
        fig = _minute_figures(minutes, end, outcomes, budget_spec)
    else:
        covered = tuple(sorted((ms[0].namespace, agent, ms[0].minute, ms[-1].minute, len(ms)) if ms
                               else ("", agent, 0, 0, 0) for agent, ms in minutes.items()))
        fixed = tuple(sorted(budget_spec.fixed_monthly_costs_usd.items())) if budget_spec is not None else ()
        # like the detectors' memo: the same complete minutes (and outcomes) within a minute
        named = tuple(sorted(outcomes)) if outcomes is not None else None
        key = ("figures", covered, fixed, named)
        fig = memo.get(end, key, lambda: _minute_figures(minutes, end, outcomes, budget_spec))
    burn = fig["burn_rate_usd_per_hour"]
    out: dict[str, Any] = dict(fig)
    month_spend = spend.get(spec.Window.month)
    if month_spend is not None:
        next_month = windows.calendar_end(spec.Window.month, now)
        out["projected_month_usd"] = round(month_spend + burn * (next_month - now) / 3600.0, 2)
    return out


def _minute_figures(minutes: Mapping[str, Sequence[series.AgentMinute]], end: int,
                    outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None,
                    budget_spec: spec.AgentBudgetSpec | None) -> dict[str, Any]:
    """The figures of the hour of complete minutes ending at ``end``."""
    hour = [m for ms in minutes.values() for m in series.since(ms, end - 3600)]
    recent = [m for m in hour if m.minute >= end - BURN_MINUTES * series.MINUTE]
    out: dict[str, Any] = {}
    out["burn_rate_usd_per_hour"] = money(sum(m.cost_usd for m in recent) * 60.0 / BURN_MINUTES)
    out.update(unit_costs(hour, outcomes, end - 3600, end, budget_spec))
    per_agent: dict[str, float] = {}
    tool_cost: dict[str, float] = {}
    tool_calls: dict[str, float] = {}
    for m in hour:
        per_agent[m.agent] = per_agent.get(m.agent, 0.0) + m.cost_usd
        for tool, c in m.tool_costs.items():
            tool_cost[tool] = tool_cost.get(tool, 0.0) + c
        for tool, n in m.tool_calls.items():
            tool_calls[tool] = tool_calls.get(tool, 0.0) + n
    out["top_agents"] = [st.TopAgent(name=a, cost_usd=money(c))
                        for a, c in sorted(per_agent.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N] if c > 0]
    tools = sorted(set(tool_cost) | set(tool_calls), key=lambda t: (-tool_cost.get(t, 0.0), -tool_calls.get(t, 0.0), t))
    out["top_tools"] = [st.TopTool(name=t, cost_usd=money(tool_cost.get(t, 0.0)), calls=round(tool_calls.get(t, 0.0), 1))
                       for t in tools[:TOP_N] if tool_calls.get(t, 0.0) > 0 or tool_cost.get(t, 0.0) > 0]
    return out


def unit_costs(hour: Sequence[series.AgentMinute], outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None,
               start: float, end: float, budget_spec: spec.AgentBudgetSpec | None) -> dict[str, Any]:
    """``cost_per_task_usd`` and ``cost_per_outcome_usd`` of the minutes in ``[start, end)``, as
    ``fleetwarden report`` counts them (:mod:`fleetwarden.core.economics`): inference + tools +
    human time + the budget's fixed monthly costs prorated, per ended task and per outcome of
    each name. Absent when there is no task (or no outcome of that name): unknown, not 0."""
    if not hour or end <= start:
        return {}
    acc = economics.EconomicsAccumulator()
    named_by_agent = outcomes or {}
    for m in hour:
        named = named_by_agent.get(m.agent)
        acc.add_minute(m, outcomes=(named.get(m.minute) or None) if named else None)
    # what economics.report totals (without its trend, workflow and model breakdowns)
    totals = economics.Totals()
    for _, cell in acc.cells(start, end):
        totals.add(cell)
    if budget_spec is not None:
        totals.fixed_usd = sum(budget_spec.fixed_monthly_costs_usd.values()) * (end - start) / economics.MONTH
    out: dict[str, Any] = {}
    per_task = totals.cost_per_task_usd
    if per_task is not None:
        out["cost_per_task_usd"] = money(per_task)
    per_outcome = {name: money(totals.total_usd / n) for name, n in sorted(totals.outcomes.items())
                   if name != economics.UNNAMED and n > 0}
    if per_outcome:
        out["cost_per_outcome_usd"] = per_outcome
    return out
