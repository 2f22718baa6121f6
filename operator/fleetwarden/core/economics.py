"""Unit economics: what a task and an outcome cost, against a target and a human baseline.

    acc = EconomicsAccumulator()
    acc.add(time=..., agent=..., workflow=..., model=..., inference_cost_usd=..., tasks_completed=1,
            outcomes={"resolved_ticket": 1})     # per task, or
    acc.add_minute(agent_minute, outcomes={...})  # per AgentMinute (replay, Prometheus adapter)
    rep = report(acc, start=..., end=..., budget=agent_budget_spec)
    rep.to_dict()

Pure: the accumulator is a plain fold (sums per agent, workflow, model and hour; order of
adds does not matter) and ``report`` is a function of it, the period and the AgentBudget.
Nothing reads a clock.

What the report counts:

- cost = inference + tools + human time + the AgentBudget's ``fixedMonthlyCostsUSD``
  prorated to the period (a month is 30 days), allocated to workflows in proportion to
  their variable cost;
- cost per task (per ended task) and per outcome; success rate = completed / ended tasks;
- per workflow, against its ``unitEconomics`` entry: cost per outcome vs ``targetCostUSD``
  and ``humanBaselineUSD``; savings = baseline x outcomes - cost; ROI = savings / cost;
- the trend per hour or day bucket, with least-squares slopes (USD per day);
- by model: each model change of an agent, with cost per outcome and success rate before
  and after, so the extra cost of an upgrade can be weighed against its quality;
- a recommendation per workflow (``recommend``): ``more_budget``, ``hold``, ``optimise`` or
  ``retire``, with the reason as a sentence.

``fleetwarden report`` (``views.offline`` from events, ``views.live`` from Prometheus) judges
each workflow's outcome with the same pieces: ``pick_target`` (the budget and target that
apply), ``limit_use`` (how near each cap the period came), ``roi`` and ``savings``.

Missing data is ``None`` (a cost per outcome with no outcome is unknown, not 0 or infinite).
Spend is summed per hour bucket, so a limit's window is judged at hour resolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetwarden.core import series, spec, timefmt, windows

HOUR = 3600
DAY = 86400
MONTH = spec.WINDOW_SECONDS[spec.Window.month]
UNNAMED = "*"  # outcomes counted without a name (AgentMinute.outcomes)

# success rate (completed / ended tasks) under POOR retires a workflow; more budget needs FINE
SUCCESS_POOR = 0.5
SUCCESS_FINE = 0.8

MORE_BUDGET = "more_budget"
HOLD = "hold"
OPTIMISE = "optimise"
RETIRE = "retire"


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def _asdict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _asdict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, (list, tuple)):
        return [_asdict(x) for x in obj]
    if isinstance(obj, Mapping):
        return {k: _asdict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- the accumulator


class _Cell:
    __slots__ = ("inference", "tool", "human", "completed", "failed", "abandoned", "outcomes", "value")

    def __init__(self) -> None:
        self.inference = 0.0
        self.tool = 0.0
        self.human = 0.0
        self.completed = 0
        self.failed = 0
        self.abandoned = 0
        self.outcomes: dict[str, float] = {}
        self.value = 0.0


_Key = tuple[str, str, str, int]  # agent, workflow ("" none), model ("" none), hour start


class EconomicsAccumulator:
    """Sums of cost, tasks and outcomes per (agent, workflow, model, hour)."""

    def __init__(self) -> None:
        self._cells: dict[_Key, _Cell] = {}
        self._seen: dict[tuple[str, str], tuple[float, float]] = {}  # (agent, model) -> first, last time

    def add(self, *, time: float, agent: str, workflow: str | None = None, model: str | None = None,
            inference_cost_usd: float = 0.0, tool_cost_usd: float = 0.0, human_cost_usd: float = 0.0,
            tasks_completed: int = 0, tasks_failed: int = 0, tasks_abandoned: int = 0,
            outcomes: Mapping[str, float] | None = None, outcome_value_usd: float = 0.0) -> None:
        """Count one task's (or one period's) cost, ended tasks and outcomes at ``time``."""
        self._count(time, agent, workflow, model, inference_cost_usd, tool_cost_usd, human_cost_usd,
                    tasks_completed, tasks_failed, tasks_abandoned, outcomes, outcome_value_usd)

    def add_minute(self, m: series.AgentMinute, outcomes: Mapping[str, float] | None = None) -> None:
        """Count one AgentMinute (its workflow and main model). Its outcomes are counted by name
        when ``outcomes`` names them, else as unnamed outcomes. (Positional, not through
        :meth:`add`'s keywords: the status figures count an hour of minutes per budget.)"""
        named = outcomes if outcomes is not None else ({UNNAMED: m.outcomes} if m.outcomes else None)
        self._count(m.minute, m.agent, m.workflow, m.model, m.inference_cost_usd, m.tool_cost_usd,
                    m.human_cost_usd, m.tasks_completed, m.tasks_failed, m.tasks_abandoned, named, 0.0)

    def _count(self, time: float, agent: str, workflow: str | None, model: str | None, inference: float,
               tool: float, human: float, completed: int, failed: int, abandoned: int,
               outcomes: Mapping[str, float] | None, value: float) -> None:
        key = (agent, workflow or "", model or "", int(time // HOUR) * HOUR)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell()
        cell.inference += inference
        cell.tool += tool
        cell.human += human
        cell.completed += completed
        cell.failed += failed
        cell.abandoned += abandoned
        if outcomes:
            counts = cell.outcomes
            for name, n in outcomes.items():
                counts[name] = counts.get(name, 0.0) + n
        cell.value += value
        if model is not None:
            seen = self._seen.get((agent, model))
            self._seen[(agent, model)] = (time, time) if seen is None else (min(seen[0], time), max(seen[1], time))

    def cells(self, start: float, end: float) -> Iterable[tuple[_Key, _Cell]]:
        """The cells whose hour starts within ``[start, end)``, in key order."""
        lo = int(start // HOUR) * HOUR
        for key in sorted(self._cells):
            if lo <= key[3] < end:
                yield key, self._cells[key]

    def seen(self, agent: str, model: str) -> tuple[float, float] | None:
        return self._seen.get((agent, model))


# ---------------------------------------------------------------- results


@dataclasses.dataclass
class Totals:
    inference_usd: float = 0.0
    tool_usd: float = 0.0
    human_usd: float = 0.0
    fixed_usd: float = 0.0
    tasks_completed: int = 0
    tasks_failed: int = 0
    tasks_abandoned: int = 0
    outcomes: dict[str, float] = dataclasses.field(default_factory=dict)
    outcome_value_usd: float = 0.0

    def add(self, c: _Cell) -> None:
        self.inference_usd += c.inference
        self.tool_usd += c.tool
        self.human_usd += c.human
        self.tasks_completed += c.completed
        self.tasks_failed += c.failed
        self.tasks_abandoned += c.abandoned
        for k, v in c.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0.0) + v
        self.outcome_value_usd += c.value

    @property
    def variable_usd(self) -> float:
        return self.inference_usd + self.tool_usd + self.human_usd

    @property
    def total_usd(self) -> float:
        return self.variable_usd + self.fixed_usd

    @property
    def tasks_ended(self) -> int:
        return self.tasks_completed + self.tasks_failed + self.tasks_abandoned

    @property
    def outcomes_total(self) -> float:
        return sum(self.outcomes.values())

    @property
    def cost_per_task_usd(self) -> float | None:
        return _div(self.total_usd, self.tasks_ended)

    @property
    def cost_per_outcome_usd(self) -> float | None:
        return _div(self.total_usd, self.outcomes_total)

    @property
    def success_rate(self) -> float | None:
        return _div(self.tasks_completed, self.tasks_ended)

    def outcome_count(self, name: str | None) -> float:
        """Outcomes named ``name`` (all when None); unnamed outcomes stand in when none has a name."""
        if name is None:
            return self.outcomes_total
        if name in self.outcomes:
            return self.outcomes[name]
        if set(self.outcomes) == {UNNAMED}:
            return self.outcomes[UNNAMED]
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "inference_usd": _r(self.inference_usd), "tool_usd": _r(self.tool_usd),
            "human_usd": _r(self.human_usd), "fixed_usd": _r(self.fixed_usd), "total_usd": _r(self.total_usd),
            "tasks_completed": self.tasks_completed, "tasks_failed": self.tasks_failed,
            "tasks_abandoned": self.tasks_abandoned, "tasks_ended": self.tasks_ended,
            "outcomes": {k: _r(v) for k, v in sorted(self.outcomes.items())},
            "outcome_value_usd": _r(self.outcome_value_usd),
            "cost_per_task_usd": _r(self.cost_per_task_usd),
            "cost_per_outcome_usd": _r(self.cost_per_outcome_usd),
            "success_rate": _r(self.success_rate, 4),
        }


@dataclasses.dataclass
class WorkflowEconomics:
    workflow: str | None
    totals: Totals
    outcome: str | None  # the outcome judged (the unitEconomics entry's), None: all outcomes
    outcomes: float
    cost_per_outcome_usd: float | None
    target_cost_usd: float | None
    human_baseline_usd: float | None
    savings_usd: float | None  # human baseline x outcomes - cost
    roi: float | None  # savings / cost
    recommendation: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        out = _asdict(self)
        out["totals"] = self.totals.to_dict()
        return dict(out)


@dataclasses.dataclass
class TrendPoint:
    start: float
    cost_usd: float
    tasks_ended: int
    outcomes: float
    cost_per_task_usd: float | None
    cost_per_outcome_usd: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(_asdict(self))


@dataclasses.dataclass
class Trend:
    bucket: str  # "hour" or "day"
    points: list[TrendPoint]
    cost_usd_per_day_slope: float | None  # change of the bucket's cost, USD per bucket per day
    cost_per_outcome_usd_per_day_slope: float | None  # change of the cost per outcome, USD per day

    def to_dict(self) -> dict[str, Any]:
        return dict(_asdict(self))


@dataclasses.dataclass
class ModelSegment:
    agent: str
    model: str
    first_seen: float
    last_seen: float
    cost_usd: float
    tasks_ended: int
    tasks_completed: int
    outcomes: float
    cost_per_task_usd: float | None
    cost_per_outcome_usd: float | None
    success_rate: float | None


@dataclasses.dataclass
class ModelChange:
    """An agent's change of model: before and after, side by side."""

    agent: str
    previous_model: str
    model: str
    at: float  # when the new model was first seen
    before: ModelSegment
    after: ModelSegment
    cost_per_outcome_ratio: float | None
    cost_per_task_ratio: float | None
    success_rate_change: float | None  # after - before, in points of rate (0.05 = +5 points)
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return dict(_asdict(self))


@dataclasses.dataclass
class LimitUse:
    window: str
    spend_usd: float
    cap_usd: float
    percent: float
    warning_percent: float

    def to_dict(self) -> dict[str, Any]:
        return dict(_asdict(self))


@dataclasses.dataclass
class EconomicsReport:
    start: float
    end: float
    totals: Totals
    workflows: list[WorkflowEconomics]
    trend: Trend
    model_changes: list[ModelChange]
    limits: list[LimitUse]
    savings_usd: float | None  # over the workflows with a human baseline
    roi: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": timefmt.rfc3339(self.start), "end": timefmt.rfc3339(self.end),
            "totals": self.totals.to_dict(),
            "workflows": [w.to_dict() for w in self.workflows],
            "trend": self.trend.to_dict(),
            "model_changes": [c.to_dict() for c in self.model_changes],
            "limits": [u.to_dict() for u in self.limits],
            "savings_usd": _r(self.savings_usd), "roi": _r(self.roi, 4),
        }


# ---------------------------------------------------------------- the recommendation


def cap_state(limits: Sequence[LimitUse]) -> tuple[bool | None, str]:
    """Whether a budget is near its cap (any limit at or past its warning percentage; None:
    no limit known), and the note naming the limit nearest to its warning."""
    if not limits:
        return None, ""
    near = max(limits, key=lambda u: u.percent / u.warning_percent)
    return any(u.percent >= u.warning_percent for u in limits), f" ({near.percent:.0f}% of the {near.window} cap)"


def recommend(*, workflow: str | None, outcome: str | None, cost_per_outcome: float | None,
              target: float | None, human_baseline: float | None, success_rate: float | None,
              tasks_ended: int, capped: bool | None, cap_note: str = "") -> tuple[str, str]:
    """``(recommendation, reason)`` for one workflow. Checked in order: nothing ended (hold);
    success rate under SUCCESS_POOR (retire); cost per outcome above the human baseline
    (retire); above the target (optimise); below the baseline with the budget near its cap
    and success at least SUCCESS_FINE (more_budget); otherwise hold."""
    name = workflow or "(no workflow)"
    what = outcome if outcome not in (None, UNNAMED) else "outcome"
    if tasks_ended == 0 or success_rate is None:
        return HOLD, f"No task of {name} ended in the period; nothing to judge yet."
    if success_rate < SUCCESS_POOR:
        return RETIRE, (f"Only {success_rate:.0%} of {name} tasks complete (under {SUCCESS_POOR:.0%}); "
                        f"fix or retire it.")
    if cost_per_outcome is None:
        return HOLD, f"No {what} recorded for {name}; its cost per {what} is unknown."
    if human_baseline is not None and cost_per_outcome > human_baseline:
        return RETIRE, (f"{name} costs {cost_per_outcome:.2f} USD per {what}, above the human baseline of "
                        f"{human_baseline:.2f} USD.")
    if target is not None and cost_per_outcome > target:
        base = f" (human baseline {human_baseline:.2f} USD)" if human_baseline is not None else ""
        return OPTIMISE, (f"{name} costs {cost_per_outcome:.2f} USD per {what}, above its target of "
                          f"{target:.2f} USD{base}.")
    if (human_baseline is not None and capped and success_rate >= SUCCESS_FINE):
        return MORE_BUDGET, (f"{name} costs {cost_per_outcome:.2f} USD per {what}, "
                             f"{cost_per_outcome / human_baseline:.0%} of the human baseline, completes "
                             f"{success_rate:.0%} of tasks, and its budget is near its cap{cap_note}.")
    if human_baseline is None and target is None:
        return HOLD, f"{name} costs {cost_per_outcome:.2f} USD per {what}; no target or human baseline to judge by."
    return HOLD, (f"{name} costs {cost_per_outcome:.2f} USD per {what}, within "
                  f"{'its target' if target is not None else 'the human baseline'}; "
                  f"{_room(capped, success_rate)}.")


def _room(capped: bool | None, success_rate: float) -> str:
    if capped is None:
        return "no budget use known to judge more budget by"
    return "budget has room" if not capped else f"success rate {success_rate:.0%}"


# ---------------------------------------------------------------- the reports' unit economics
# ``fleetwarden report`` (offline from events, live from Prometheus) judges each workflow's
# outcome with these, so both views pick the same target and compute the same ROI.


def pick_target(budgets: Iterable[spec.AgentBudget], workflow: str, outcome: str
                ) -> tuple[spec.AgentBudget, spec.UnitEconomicsTarget] | None:
    """The unit-economics target for ``outcome`` of ``workflow`` among ``budgets``, with its
    budget: one naming the workflow wins over one for every workflow; ties go to the budget's
    name. None: no budget has a target for that outcome."""
    found = [(b, t) for b in budgets for t in b.spec.unit_economics
             if t.outcome == outcome and t.workflow in (None, workflow)]
    found.sort(key=lambda bt: (bt[1].workflow is None, bt[0].metadata.name))
    return found[0] if found else None


def limit_use(budget: spec.AgentBudget | None, peak: Mapping[tuple[str, str, str], float]) -> list[LimitUse]:
    """A budget's limits with the highest share of each cap reached in the period, from ``peak``
    ((namespace, budget, window) -> spend / cap); limits with no peak known are left out."""
    if budget is None:
        return []
    ns, name = budget.metadata.namespace, budget.metadata.name
    out = []
    for limit in budget.spec.limits:
        ratio = peak.get((ns, name, limit.window.value))
        if ratio is not None:
            out.append(LimitUse(limit.window.value, ratio * limit.amount_usd, limit.amount_usd, 100.0 * ratio,
                                limit.warning_percent))
    return out


def roi(human_baseline: float | None, cost_per_outcome: float | None) -> float | None:
    """Return on investment of one outcome against a person doing it:
    ``(human baseline - cost per outcome) / cost per outcome``. None (unknown) without a
    baseline, or without a positive cost per outcome."""
    if human_baseline is None or cost_per_outcome is None or cost_per_outcome <= 0:
        return None
    return (human_baseline - cost_per_outcome) / cost_per_outcome


def savings(human_baseline: float | None, cost_per_outcome: float | None, outcomes: float) -> float | None:
    """What ``outcomes`` saved against a person doing them:
    ``(human baseline - cost per outcome) x outcomes``. None (unknown) without a baseline or a
    cost per outcome."""
    if human_baseline is None or cost_per_outcome is None:
        return None
    return (human_baseline - cost_per_outcome) * outcomes


# ---------------------------------------------------------------- the report


def _target(budget: spec.AgentBudgetSpec | None, workflow: str | None) -> spec.UnitEconomicsTarget | None:
    if budget is None:
        return None
    for entry in budget.unit_economics:
        if entry.workflow is not None and entry.workflow == workflow:
            return entry
    for entry in budget.unit_economics:
        if entry.workflow is None:
            return entry
    return None


def _slope(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def _limit_uses(acc: EconomicsAccumulator, budget: spec.AgentBudgetSpec | None, end: float) -> list[LimitUse]:
    """Each limit of ``budget`` with the spend of its window ending at ``end`` (fixed costs prorated)."""
    limits: list[LimitUse] = []
    for limit in (budget.limits if budget else []):
        lo = windows.window_start(limit.window, end, calendar=limit.calendar)
        spend = sum(c.inference + c.tool + c.human for (_, _, _, hour), c in acc.cells(lo, end))
        spend += sum(budget.fixed_monthly_costs_usd.values()) * (end - lo) / MONTH if budget else 0.0
        limits.append(LimitUse(limit.window.value, spend, limit.amount_usd, 100 * spend / limit.amount_usd,
                               limit.warning_percent))
    return limits


def report(acc: EconomicsAccumulator, *, start: float, end: float,
           budget: spec.AgentBudgetSpec | None = None, bucket: str = "hour") -> EconomicsReport:
    """The unit economics of everything in ``acc`` between ``start`` and ``end`` (hour resolution)."""
    if end <= start:
        raise ValueError("end must be after start")
    if bucket not in ("hour", "day"):
        raise ValueError("bucket must be 'hour' or 'day'")
    step = HOUR if bucket == "hour" else DAY
    total = Totals()
    by_wf: dict[str, Totals] = {}
    by_bucket: dict[int, Totals] = {}
    by_model: dict[tuple[str, str], Totals] = {}
    for (agent, wf, model, hour), cell in acc.cells(start, end):
        total.add(cell)
        by_wf.setdefault(wf, Totals()).add(cell)
        by_bucket.setdefault(int(hour // step) * step, Totals()).add(cell)
        if model:
            by_model.setdefault((agent, model), Totals()).add(cell)

    # 1. fixed costs, prorated to the period and spread over workflows by variable cost
    fixed = sum(budget.fixed_monthly_costs_usd.values()) * (end - start) / MONTH if budget else 0.0
    total.fixed_usd = fixed
    variable = total.variable_usd
    for t in by_wf.values():
        t.fixed_usd = fixed * (t.variable_usd / variable if variable else 1 / len(by_wf))

    # 2. how close the budget's limits are to their caps
    limits = _limit_uses(acc, budget, end)
    capped, cap_note = cap_state(limits)

    # 3. per workflow: against its target and the human baseline
    workflows: list[WorkflowEconomics] = []
    savings_sum = cost_sum = 0.0
    any_baseline = False
    for wf in sorted(by_wf):
        t = by_wf[wf]
        name = wf or None
        entry = _target(budget, name)
        outcome = entry.outcome if entry is not None else None
        n = t.outcome_count(outcome)
        cpo = _div(t.total_usd, n)
        baseline = entry.human_baseline_usd if entry is not None else None
        savings = roi = None
        if baseline is not None:
            savings = baseline * n - t.total_usd
            roi = _div(savings, t.total_usd)
            savings_sum += savings
            cost_sum += t.total_usd
            any_baseline = True
        rec, reason = recommend(workflow=name, outcome=outcome, cost_per_outcome=cpo,
                                target=entry.target_cost_usd if entry is not None else None,
                                human_baseline=baseline, success_rate=t.success_rate,
                                tasks_ended=t.tasks_ended, capped=capped, cap_note=cap_note)
        workflows.append(WorkflowEconomics(
            workflow=name, totals=t, outcome=outcome, outcomes=n, cost_per_outcome_usd=cpo,
            target_cost_usd=entry.target_cost_usd if entry is not None else None,
            human_baseline_usd=baseline, savings_usd=savings, roi=roi, recommendation=rec, reason=reason))

    # 4. the trend
    points = []
    for b in sorted(by_bucket):
        t = by_bucket[b]
        t.fixed_usd = fixed * min(step, end - b) / (end - start)
        points.append(TrendPoint(start=float(b), cost_usd=t.total_usd, tasks_ended=t.tasks_ended,
                                 outcomes=t.outcomes_total, cost_per_task_usd=t.cost_per_task_usd,
                                 cost_per_outcome_usd=t.cost_per_outcome_usd))
    days = [p.start / DAY for p in points]
    with_cpo = [(p.start / DAY, p.cost_per_outcome_usd) for p in points if p.cost_per_outcome_usd is not None]
    trend = Trend(bucket=bucket, points=points,
                  cost_usd_per_day_slope=_slope(days, [p.cost_usd for p in points]),
                  cost_per_outcome_usd_per_day_slope=_slope([x for x, _ in with_cpo],
                                                            [y for _, y in with_cpo if y is not None]))

    return EconomicsReport(start=start, end=end, totals=total, workflows=workflows, trend=trend,
                           model_changes=_model_changes(acc, by_model), limits=limits,
                           savings_usd=savings_sum if any_baseline else None,
                           roi=_div(savings_sum, cost_sum) if any_baseline else None)


def _segment(acc: EconomicsAccumulator, agent: str, model: str, t: Totals) -> ModelSegment:
    first, last = acc.seen(agent, model) or (0.0, 0.0)
    return ModelSegment(agent=agent, model=model, first_seen=first, last_seen=last, cost_usd=t.variable_usd,
                        tasks_ended=t.tasks_ended, tasks_completed=t.tasks_completed,
                        outcomes=t.outcomes_total, cost_per_task_usd=_div(t.variable_usd, t.tasks_ended),
                        cost_per_outcome_usd=_div(t.variable_usd, t.outcomes_total),
                        success_rate=t.success_rate)


def _model_changes(acc: EconomicsAccumulator, by_model: dict[tuple[str, str], Totals]) -> list[ModelChange]:
    """Each agent's models in order of first use; one change per consecutive pair."""
    out: list[ModelChange] = []
    agents = sorted({a for a, _ in by_model})
    for agent in agents:
        segs = sorted((_segment(acc, agent, m, t) for (a, m), t in by_model.items() if a == agent),
                      key=lambda s: (s.first_seen, s.model))
        for before, after in zip(segs, segs[1:], strict=False):
            cpo = (after.cost_per_outcome_usd / before.cost_per_outcome_usd
                   if after.cost_per_outcome_usd is not None and before.cost_per_outcome_usd else None)
            cpt = (after.cost_per_task_usd / before.cost_per_task_usd
                   if after.cost_per_task_usd is not None and before.cost_per_task_usd else None)
            ds = (after.success_rate - before.success_rate
                  if after.success_rate is not None and before.success_rate is not None else None)
            parts = [f"{agent}: {before.model} -> {after.model}"]
            parts.append(f"cost per outcome x{cpo:.2f}" if cpo is not None else "cost per outcome unknown")
            parts.append(f"success rate {ds * 100:+.1f} points" if ds is not None else "success rate unknown")
            if cpo is not None and ds is not None:
                if cpo > 1 and ds <= 0:
                    parts.append("costs more for no better results")
                elif cpo > 1:
                    parts.append("costs more for better results: weigh the two")
                elif ds >= 0:
                    parts.append("cheaper and no worse")
                else:
                    parts.append("cheaper but worse")
            out.append(ModelChange(agent=agent, previous_model=before.model, model=after.model,
                                   at=after.first_seen, before=before, after=after,
                                   cost_per_outcome_ratio=cpo, cost_per_task_ratio=cpt,
                                   success_rate_change=ds, summary="; ".join(parts) + "."))
    return out
