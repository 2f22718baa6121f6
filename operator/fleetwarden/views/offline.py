"""Build a :class:`~fleetwarden.views.model.Report` from usage events (offline).

One pass over the events folds them into per-minute sums per dimension value; the report
window (ending at the last event, or at ``end``) is cut from those sums at the end, so the
events are streamed, never held. Costs are the events' ``cost_usd``, else the price table's
(a model with no known price raises :class:`~fleetwarden.errors.PricingError`, never a
silent 0ドル). Findings come from ``fleetwarden.core.replay`` (the caller runs it); this
module turns them into anomalies and incidents, and links each incident to the model
change before it.

team, project and cost_center come from the events' ``labels`` (as on the agent's
Deployment); an event without one counts under ``(none)``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from fleetwarden.core import economics, governance, incidents, policies, pricing, spec
from fleetwarden.core import events as events_mod
from fleetwarden.core import findings as findings_mod
from fleetwarden.views import model

MINUTE = 60
# A model an agent first uses this long after its first event is a model change (before
# that, it is part of the agent's mix from the start).
MODEL_CHANGE_GRACE_SECONDS = 10 * MINUTE
DEFAULT_STEPS = 24


@dataclasses.dataclass
class _Cell:
    cost: float = 0.0
    tokens: int = 0
    calls: int = 0


class Fold:
    """Per-minute sums of the events, by dimension value. ``add`` each event, then ``report``."""

    def __init__(self, price_table: pricing.PriceTable, dimensions: Sequence[str] = model.DEFAULT_DIMENSIONS,
                 *, budgets: Sequence[spec.AgentBudget] = (), cost_policies: Sequence[spec.CostPolicy] = ()
                 ) -> None:
        self.price_table = price_table
        # priced per agent as replay prices it: the tool prices of the CostPolicies that apply
        # (the first by name wins) and the human rate of the first AgentBudget that applies
        self._budgets = list(budgets)
        self._policies = list(cost_policies)
        self._pricing: dict[tuple[str, str], tuple[dict[str, str], dict[str, float], float | None]] = {}
        self.dimensions = tuple(dimensions)
        # (dimension, key) -> minute -> cell
        self.cells: dict[tuple[str, str], dict[int, _Cell]] = collections.defaultdict(dict)
        self.total: dict[int, float] = collections.defaultdict(float)
        # (namespace, workflow) -> minute -> cost; (namespace, workflow, outcome) -> minute -> count
        self.workflow_cost: dict[tuple[str, str], dict[int, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float))
        self.outcomes: dict[tuple[str, str, str], dict[int, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float))
        # model comparison: (ns, workflow, model) -> minute -> cost; (ns, workflow, outcome, model) -> count
        self.model_cost: dict[tuple[str, str, str], dict[int, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float))
        self.model_outcomes: dict[tuple[str, str, str, str], dict[int, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float))
        # (ns, workflow) -> minute -> [completed, ended] tasks
        self.tasks: dict[tuple[str, str], dict[int, list[int]]] = collections.defaultdict(dict)
        self.task_model: dict[tuple[str, str, str], str] = {}  # (ns, agent, task) -> last model
        self.agents: dict[tuple[str, str], dict[str, str]] = {}  # (ns, agent) -> labels
        self.workflow_agents: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        self.first_seen: dict[tuple[str, str], float] = {}
        # (ns, agent) -> model -> (first time, calls before it); for model changes
        self.models: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
        self.model_calls: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
            collections.Counter)
        self.changes: list[model.ModelChange] = []
        self.first: float | None = None
        self.last: float | None = None

    # ------------------------------------------------------------ folding

    def _cost(self, ev: events_mod.Event) -> float:
        given = ev.cost_usd
        if given is not None:
            return given
        if ev.type == "llm":
            raw = ev.raw
            return self.price_table.llm_cost(
                raw["model"], input_tokens=int(raw["input_tokens"]), output_tokens=int(raw["output_tokens"]),
                cache_read_tokens=int(raw.get("cache_read_tokens", 0)),
                cache_write_tokens=int(raw.get("cache_write_tokens", 0)),
                reasoning_tokens=int(raw.get("reasoning_tokens", 0)), provider=raw.get("provider"), at=ev.time)
        if ev.type == "tool":
            tool = ev.raw["tool"]
            price = self._agent_pricing(ev)[0].get(tool)
            return price if price is not None else self.price_table.tool_cost(tool)
        if ev.type == "human":
            return self.price_table.human_cost(float(ev.raw["minutes"]), self._agent_pricing(ev)[1])
        return 0.0

    def _agent_pricing(self, ev: events_mod.Event) -> tuple[dict[str, float], float | None]:
        """(tool prices, human hourly rate) of the event's agent, from the labels seen so far."""
        who = (ev.namespace, ev.agent)
        entry = self._pricing.get(who)
        labels = ev.labels
        if entry is not None and (not labels or labels.items() <= entry[0].items()):
            return entry[1], entry[2]
        merged = {**(entry[0] if entry is not None else {}), **labels}
        tool_prices, rate = policies.agent_prices(policies.applicable(self._budgets, ev.namespace, merged),
                                                  policies.applicable(self._policies, ev.namespace, merged))
        self._pricing[who] = (merged, tool_prices, rate)
        return tool_prices, rate

    def _keys(self, ev: events_mod.Event) -> dict[str, str | None]:
        labels = ev.labels
        raw = ev.raw
        return {
            "agent": f"{ev.namespace}/{ev.agent}",
            "tool": raw.get("tool") if ev.type == "tool" else None,
            "step": (raw.get("step") or model.NONE_KEY) if ev.type in ("llm", "tool") else None,
            "team": labels.get("team") or model.NONE_KEY,
            "project": labels.get("project") or model.NONE_KEY,
            "cost_center": labels.get("cost_center") or labels.get("cost-center") or model.NONE_KEY,
            "workflow": raw.get("workflow") or model.NONE_KEY,
            "model": raw.get("model") if ev.type == "llm" else None,
        }

    def add(self, ev: events_mod.Event) -> None:
        t = ev.time
        minute = int(t // MINUTE) * MINUTE
        self.first = t if self.first is None or t < self.first else self.first
        self.last = t if self.last is None or t > self.last else self.last
        who = (ev.namespace, ev.agent)
        if ev.labels or who not in self.agents:
            self.agents[who] = dict(ev.labels)
        self.first_seen.setdefault(who, t)
        cost = self._cost(ev)
        tokens = ev.tokens if ev.type == "llm" else 0
        calls = 1 if ev.type in ("llm", "tool") else 0
        keys = self._keys(ev)
        for dim in self.dimensions:
            key = keys.get(dim)
            if key is None:
                continue
            cell = self.cells[(dim, key)].get(minute)
            if cell is None:
                cell = self.cells[(dim, key)][minute] = _Cell()
            cell.cost += cost
            cell.tokens += tokens
            cell.calls += calls
        self.total[minute] += cost
        workflow = ev.workflow or model.NONE_KEY
        self.workflow_agents[(ev.namespace, workflow)].add(ev.agent)
        self.workflow_cost[(ev.namespace, workflow)][minute] += cost
        if ev.type == "llm":
            name = ev.raw["model"]
            self._see_model(who, name, t)
            if ev.task_id is not None:
                self.task_model[(ev.namespace, ev.agent, ev.task_id)] = name
            self.model_cost[(ev.namespace, workflow, name)][minute] += cost
        elif ev.task_id is not None and cost:
            used = self.task_model.get((ev.namespace, ev.agent, ev.task_id))
            if used is not None:
                self.model_cost[(ev.namespace, workflow, used)][minute] += cost
        if ev.type == "task":
            counts = self.tasks[(ev.namespace, workflow)].setdefault(minute, [0, 0])
            counts[0] += 1 if ev.raw.get("status") == "completed" else 0
            counts[1] += 1
        if ev.type == "outcome":
            count = float(ev.raw.get("count", 1))
            outcome = ev.raw["outcome"]
            self.outcomes[(ev.namespace, workflow, outcome)][minute] += count
            used = self.task_model.get((ev.namespace, ev.agent, ev.task_id or ""))
            if used is not None:
                self.model_outcomes[(ev.namespace, workflow, outcome, used)][minute] += count

    def _see_model(self, who: tuple[str, str], name: str, t: float) -> None:
        seen = self.models[who]
        if name not in seen:
            seen[name] = t
            if t - self.first_seen[who] >= MODEL_CHANGE_GRACE_SECONDS and self.model_calls[who]:
                previous = self.model_calls[who].most_common(1)[0][0]
                self.changes.append(model.ModelChange(who[1], who[0], t, name, previous))
        self.model_calls[who][name] += 1

    # ------------------------------------------------------------ the report

    def report(self, *, window_seconds: float | None = None, end: float | None = None,
               steps: int = DEFAULT_STEPS, found: Sequence[findings_mod.Finding] = (),
               budgets: Sequence[spec.AgentBudget] = (), title: str = "Fleetwarden cost report",
               source: str = "events", notes: Sequence[str] = (), replayed: bool = False) -> model.Report:
        """The report over ``[end - window_seconds, end)``; ``end`` defaults to just after the last event.
        ``replayed``: ``found`` is what replay found with ``budgets`` (so no budget finding means
        no limit reached its warning percentage)."""
        if self.last is None or self.first is None:
            now = end if end is not None else 0.0
            span = window_seconds or 3600.0
            return model.Report(title=title, source=source, window_start=now - span, window_end=now,
                                step_seconds=int(span // steps) or MINUTE, total_cost_usd=None,
                                total_trend=(), breakdowns=(), notes=(*notes, "no events in the input"))
        stop = end if end is not None else (int(self.last // MINUTE) + 1) * MINUTE
        span = window_seconds if window_seconds is not None else max(MINUTE, stop - int(self.first // MINUTE) * MINUTE)
        step = max(MINUTE, int(math.ceil(span / steps / MINUTE)) * MINUTE)
        n = int(math.ceil(span / step))
        start = stop - n * step

        def series(per_minute: dict[int, float]) -> tuple[float, ...]:
            out = [0.0] * n
            for minute, value in per_minute.items():
                if start <= minute < stop:
                    out[int((minute - start) // step)] += value
            return tuple(out)

        window_found = [f for f in found if start <= f.time <= stop]
        flagged_agents = {f"{f.namespace}/{f.agent}" for f in window_found}
        flagged_tools = {f.tool for f in window_found if f.tool is not None}

        total_trend = series(self.total)
        total = sum(total_trend)
        breakdowns = []
        for dim in self.dimensions:
            rows = []
            for (d, key), minutes in self.cells.items():
                if d != dim:
                    continue
                inside = [c for m, c in minutes.items() if start <= m < stop]
                if not inside:
                    continue
                trend = series({m: c.cost for m, c in minutes.items()})
                anomalous = (dim == "agent" and key in flagged_agents) or (dim == "tool" and key in flagged_tools)
                rows.append(model.CostRow(key=key, cost_usd=sum(trend), tokens=sum(c.tokens for c in inside),
                                          calls=sum(c.calls for c in inside), trend=trend, anomalous=anomalous))
            rows.sort(key=lambda r: (-(r.cost_usd or 0.0), r.key))
            breakdowns.append(model.Breakdown(dim, model.shares(rows, total)))

        agents = [governance.Agent(name, ns, labels) for (ns, name), labels in self.agents.items()]
        gaps = tuple(governance.ungoverned(agents, budgets))
        changes = tuple(c for c in self.changes if start <= c.time <= stop)
        anomalies, incident_rows = _anomalies_and_incidents(window_found, self.changes)
        return model.Report(
            title=title, source=source, window_start=float(start), window_end=float(stop), step_seconds=step,
            total_cost_usd=total, total_trend=total_trend, breakdowns=tuple(breakdowns),
            anomalies=anomalies, economics=self._economics(series, budgets, peaks_from_findings(window_found), replayed),
            governance=gaps,
            incidents=incident_rows, model_changes=changes, notes=tuple(notes))

    def _economics(self, series: Callable[[dict[int, float]], tuple[float, ...]],
                   budgets: Sequence[spec.AgentBudget], peaks: Mapping[tuple[str, str, str], float],
                   replayed: bool) -> tuple[model.EconomicsRow, ...]:
        rows = []
        for (ns, workflow, outcome), per_minute in sorted(self.outcomes.items()):
            counts = series(per_minute)
            outcomes = sum(counts)
            if outcomes <= 0:
                continue
            costs = series(self.workflow_cost[(ns, workflow)])
            cost = sum(costs)
            cpo = cost / outcomes
            match = _matching(ns, workflow, outcome, self.workflow_agents[(ns, workflow)], self.agents, budgets)
            target = match[1] if match else None
            baseline = target.human_baseline_usd if target else None
            trend = tuple(c / k if k > 0 else None for c, k in zip(costs, counts, strict=True))
            task_cells = self.tasks.get((ns, workflow), {})
            completed = sum(series({m: float(c[0]) for m, c in task_cells.items()}))
            ended = int(sum(series({m: float(c[1]) for m, c in task_cells.items()})))
            # near its cap: replay warns at each limit's warning percentage, so with the budget
            # replayed and no budget finding for it, no limit got there
            uses = economics.limit_use(match[0] if match else None, peaks)
            capped, cap_note = economics.cap_state(uses)
            if capped is None and match is not None and match[0].spec.limits and replayed:
                capped = False
            recommendation, reason = economics.recommend(
                workflow=workflow, outcome=outcome, cost_per_outcome=cpo,
                target=target.target_cost_usd if target else None, human_baseline=baseline,
                success_rate=completed / ended if ended else None, tasks_ended=ended, capped=capped,
                cap_note=cap_note)
            models = []
            for (mns, mwf, mname), mcost in sorted(self.model_cost.items()):
                if (mns, mwf) != (ns, workflow):
                    continue
                mout = sum(series(self.model_outcomes.get((ns, workflow, outcome, mname), {})))
                mc = sum(series(mcost))
                if mc > 0 or mout > 0:
                    models.append(model.ModelCost(mname, mc / mout if mout > 0 else None, mout))
            rows.append(model.EconomicsRow(
                namespace=ns, workflow=workflow, outcome=outcome, outcomes=outcomes, cost_usd=cost,
                cost_per_outcome_usd=cpo, target_cost_usd=target.target_cost_usd if target else None,
                human_baseline_usd=baseline, roi=economics.roi(baseline, cpo),
                savings_usd=economics.savings(baseline, cpo, outcomes), trend=trend,
                recommendation=recommendation, reason=reason,
                models=tuple(models), budget=match[0].metadata.name if match else None))
        return tuple(rows)


def peaks_from_findings(found: Iterable[findings_mod.Finding]) -> dict[tuple[str, str, str], float]:
    """(namespace, budget, window) -> the highest spend / cap that budget findings reported."""
    peak: dict[tuple[str, str, str], float] = {}
    for f in found:
        if f.kind in (findings_mod.BUDGET_WARNING, findings_mod.BUDGET_EXCEEDED) and f.budget is not None:
            ev = f.evidence or {}
            spend, cap, window = ev.get("spend_usd"), ev.get("limit_usd"), ev.get("window")
            if isinstance(spend, (int, float)) and isinstance(cap, (int, float)) and cap > 0 and window:
                key = (f.namespace, f.budget, str(window))
                peak[key] = max(peak.get(key, 0.0), spend / cap)
    return peak


def _matching(ns: str, workflow: str, outcome: str, agent_names: Iterable[str],
              agents: dict[tuple[str, str], dict[str, str]], budgets: Sequence[spec.AgentBudget]
              ) -> tuple[spec.AgentBudget, spec.UnitEconomicsTarget] | None:
    """The target of the budgets that govern any of the agents running ``workflow``."""
    governing: dict[str, spec.AgentBudget] = {}
    for name in sorted(agent_names):
        agent = governance.Agent(name, ns, agents.get((ns, name), {}))
        for budget in governance.governing(agent, budgets):
            governing[budget.metadata.name] = budget
    return economics.pick_target(governing.values(), workflow, outcome)


def _anomalies_and_incidents(found: Sequence[findings_mod.Finding], changes: Sequence[model.ModelChange]
                             ) -> tuple[tuple[model.Anomaly, ...], tuple[model.IncidentRow, ...]]:
    anomalies = []
    grouped: dict[str, list[findings_mod.Finding]] = collections.defaultdict(list)
    for f in sorted(found, key=findings_mod.sort_key):
        inc = findings_mod.incident_id(f)
        grouped[inc].append(f)
        anomalies.append(model.Anomaly(time=f.time, kind=f.kind, agent=f.agent, namespace=f.namespace,
                                       action=f.action, message=f.message, workflow=f.workflow, tool=f.tool,
                                       model=f.model, previous_model=f.previous_model, incident=inc))
    rows = []
    for inc, group in grouped.items():
        first = group[0]
        opened = min((f.onset if f.onset is not None else f.time) for f in group)
        # a finding naming both models (a spike after a model update) names the change itself
        named = first.model if first.previous_model is not None else None
        change = incidents.incident_model_change(changes, first.namespace, first.agent, group[-1].time,
                                                 named=named, previous=first.previous_model, opened=opened)
        actions = tuple(dict.fromkeys(f.action for f in group))
        rows.append(model.IncidentRow(
            id=inc, kind=first.kind, title=incidents.KIND_TITLES.get(first.kind, first.kind), agent=first.agent,
            namespace=first.namespace, opened=opened, message=group[-1].message, actions=actions,
            workflow=next((f.workflow for f in group if f.workflow), None), model_change=change,
            findings=len(group)))
    rows.sort(key=lambda r: (r.opened, r.namespace, r.agent))
    return tuple(anomalies), tuple(rows)
