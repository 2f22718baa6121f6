"""Build a :class:`~fleetwarden.views.model.Report` from live Prometheus metrics.

Cost per dimension is ``increase()`` of the cost counters (model calls, tools, human time)
over the window, one query per counter and dimension; trends are the same expressions over
one trend step, as a range query. team, project and cost_center come from the operator's
``fleetwarden_agent_owner_info`` (joined on namespace and agent); agents without it count
under ``(none)``. Anomalies are the firing ``Fleetwarden*`` alerts (manifests/prometheus)
and the operator's ``fleetwarden_findings_total``. With a kubeconfig, the agent
Deployments and AgentBudgets of the cluster say which agents are ungoverned, and the
budgets' ``status.incidents`` fill the incident section.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

from fleetwarden.adapters import prometheus_report
from fleetwarden.core import economics, governance, incidents, spec, timefmt
from fleetwarden.core import metricnames as names
from fleetwarden.views import model

COST_METRICS = names.SPEND
TOKEN_METRICS = names.LLM_TOKENS
CALL_METRICS = (names.LLM_CALLS, names.TOOL_CALLS)
OWNER_DIMS = ("team", "project", "cost_center")
# The metric labels each dimension reads, and which metrics carry them.
_DIM_LABELS = {"agent": ("namespace", "agent"), "tool": ("tool",), "step": ("step",), "workflow": ("workflow",),
               "model": ("model",)}
_HAS = {
    "tool": {names.TOOL_COST_USD, names.TOOL_CALLS},
    "step": {names.LLM_COST_USD, names.LLM_CALLS, names.TOOL_CALLS, *TOKEN_METRICS},
    "model": {names.LLM_COST_USD, names.LLM_CALLS, *TOKEN_METRICS},
}
AGENT_SELECTOR = "fleetwarden.dev/agent=true"


def _range(seconds: float) -> str:
    return f"{int(seconds)}s"


def expr(metric: str, dim: str, rng: str) -> str:
    """PromQL for the increase of ``metric`` over ``rng``, summed by ``dim``."""
    inner = f"increase({metric}[{rng}])"
    if dim in OWNER_DIMS:
        per_agent = f"sum by (namespace, agent) ({inner})"
        return (f"sum by ({dim}) ({per_agent} * on (namespace, agent) group_left ({dim}) "
                f"max by (namespace, agent, {dim}) (fleetwarden_agent_owner_info))")
    return f"sum by ({', '.join(_DIM_LABELS[dim])}) ({inner})"


def unowned_expr(metric: str, rng: str) -> str:
    """PromQL for the increase of ``metric`` of agents without owner info (the ``(none)`` row)."""
    return (f"sum(sum by (namespace, agent) (increase({metric}[{rng}])) "
            f"unless on (namespace, agent) fleetwarden_agent_owner_info)")


def _key(dim: str, labels: dict[str, str]) -> str:
    if dim == "agent":
        return f"{labels.get('namespace', 'default')}/{labels.get('agent', model.NONE_KEY)}"
    return labels.get(dim) or model.NONE_KEY


def _applies(dim: str, metric: str) -> bool:
    return metric in _HAS[dim] if dim in _HAS else True


class _Builder:
    def __init__(self, source: prometheus_report.ReportSource, start: float, end: float, step: int) -> None:
        self.src = source
        self.start = start
        self.end = end
        self.step = step
        self.n = int(round((end - start) / step))

    def totals(self, metrics: Sequence[str], dim: str) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        window = _range(self.end - self.start)
        for metric in metrics:
            if not _applies(dim, metric):
                continue
            for labels, value in self.src.instant(expr(metric, dim, window), self.end):
                out[_key(dim, labels)] += value
            if dim in OWNER_DIMS:
                for _labels, value in self.src.instant(unowned_expr(metric, window), self.end):
                    out[model.NONE_KEY] += value
        return dict(out)

    def trends(self, metrics: Sequence[str], dim: str) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        rng = _range(self.step)
        queries: list[tuple[str, str | None]] = []
        for metric in metrics:
            if not _applies(dim, metric):
                continue
            queries.append((expr(metric, dim, rng), dim))
            if dim in OWNER_DIMS:
                queries.append((unowned_expr(metric, rng), None))
        for promql, d in queries:
            for labels, points in self.src.range(promql, self.start + self.step, self.end, self.step):
                key = _key(d, labels) if d is not None else model.NONE_KEY
                row = out.setdefault(key, [None] * self.n)
                for ts, value in points.items():
                    i = int(round((ts - self.start) / self.step)) - 1
                    if 0 <= i < self.n:
                        row[i] = (row[i] or 0.0) + value
        return out


# Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS = 10000


def fine_step(start: float, end: float, step: int) -> int:
    """The step of the queries that find when something began (a model change, an alert):
    a minute, or the trend step if shorter, but coarse enough for Prometheus' point limit
    over a long window (14 days at one minute would be 20,160 points)."""
    return max(min(step, 60), int(math.ceil((end - start) / MAX_POINTS)))


def _model_changes(src: prometheus_report.ReportSource, start: float, end: float, step: int
                   ) -> list[model.ModelChange]:
    seen: dict[tuple[str, str], list[tuple[float, str]]] = collections.defaultdict(list)
    for labels, points in src.range("max by (namespace, agent, model) (fleetwarden_agent_model_info)",
                                    start, end, fine_step(start, end, step)):
        if points:
            seen[(labels.get("namespace", "default"), labels.get("agent", ""))].append(
                (min(points), labels.get("model", "")))
    changes = []
    for (ns, agent), firsts in seen.items():
        firsts.sort()
        for i, (t, name) in enumerate(firsts):
            if i > 0 and t > firsts[0][0]:
                changes.append(model.ModelChange(agent, ns, t, name, firsts[i - 1][1]))
    return sorted(changes, key=lambda c: c.time)


def _kind_of_alert(alertname: str) -> str:
    name = alertname.removeprefix("Fleetwarden")
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _anomalies(src: prometheus_report.ReportSource, start: float, end: float, step: int
               ) -> list[model.Anomaly]:
    out = []
    for labels, points in src.range('ALERTS{alertname=~"Fleetwarden.*", alertstate="firing"}', start, end,
                                    fine_step(start, end, step)):
        if not points:
            continue
        agent = labels.get("agent") or labels.get("budget") or "-"
        out.append(model.Anomaly(
            time=min(points), kind=_kind_of_alert(labels.get("alertname", "")), agent=agent,
            namespace=labels.get("namespace", "-"), action=labels.get("severity", "alert"),
            message=f"alert {labels.get('alertname')} fired" + (f" (tool {labels['tool']})" if "tool" in labels else ""),
            tool=labels.get("tool"), model=labels.get("model"), source="alert"))
    window = _range(end - start)
    # a series born in the window (it starts at its first finding, 1) counts with its value
    by = "sum by (namespace, kind, action)"
    for labels, value in src.instant(f"{by} (increase(fleetwarden_findings_total[{window}])) > 0 or "
                                     f"{by} (fleetwarden_findings_total unless fleetwarden_findings_total "
                                     f"offset {window}) > 0", end):
        out.append(model.Anomaly(
            time=end, kind=labels.get("kind", "unknown"), agent="-", namespace=labels.get("namespace", "-"),
            action=labels.get("action", "alert"),
            message=f"the operator recorded {value:.0f} {labels.get('kind')} finding(s) in the window",
            source="operator"))
    return sorted(out, key=lambda a: (a.time, a.namespace, a.agent))


def _cluster(kubeconfig: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from fleetwarden.adapters import kube

    client = kube.Kube(kube.load_config(kubeconfig))
    deployments = client.list_deployments(None)
    return deployments, client.list_budgets(None)


def _is_agent(deployment: dict[str, Any]) -> bool:
    """An agent Deployment: labelled fleetwarden.dev/agent=true."""
    return ((deployment.get("metadata") or {}).get("labels") or {}).get("fleetwarden.dev/agent") == "true"


def _incidents_from_status(budgets: Sequence[dict[str, Any]], start: float, end: float,
                           changes: Sequence[model.ModelChange] = ()) -> list[model.IncidentRow]:
    """The AgentBudgets' ``status.incidents`` opened in ``[start, end]``, each with the model
    change before it: the agent's latest one Prometheus saw (``changes``); for an incident
    that names a model Prometheus did not see the change to, the model it names and, when the
    operator rolled it back, the model it rolled back to (``status.model.rollbacks``)."""
    rows = []
    for b in budgets:
        status = b.get("status") or {}
        namespace = (b.get("metadata") or {}).get("namespace", "-")
        rollbacks = {r.get("incident"): r for r in (status.get("model") or {}).get("rollbacks") or []
                     if isinstance(r, dict)}
        for rec in status.get("incidents") or []:
            when = timefmt.parse_rfc3339(rec.get("time"))
            if when is None or not start <= when <= end:
                continue
            kind = rec.get("kind", "unknown")
            agent = rec.get("agent", "-")
            named = rec.get("model") or None
            rollback = rollbacks.get(rec.get("id")) or {}
            change = incidents.incident_model_change(
                changes, namespace, agent, when, named=named,
                previous=rollback.get("to") if named is not None and rollback.get("from") == named else None)
            rows.append(model.IncidentRow(
                id=rec.get("id", "-"), kind=kind, title=incidents.KIND_TITLES.get(kind, kind),
                agent=agent, namespace=namespace, opened=when, message=rec.get("message", ""),
                actions=tuple(a for a in [rec.get("action")] if a), workflow=rec.get("workflow"),
                model_change=change))
    return sorted(rows, key=lambda r: r.opened)


def build(url: str, *, dims: Sequence[str], window_seconds: float, steps: int, end: float,
          budgets: Sequence[spec.AgentBudget] = (), kubeconfig: str | None = None,
          title: str = "Fleetwarden cost report",
          source: prometheus_report.ReportSource | None = None) -> model.Report:
    src = source if source is not None else prometheus_report.ReportSource(url)
    step = max(60, int(math.ceil(window_seconds / steps / 60)) * 60)
    n = int(math.ceil(window_seconds / step))
    end = float(end)  # not rounded down: the newest samples count
    start = end - n * step
    b = _Builder(src, start, end, step)
    notes: list[str] = []

    agent_cost = b.totals(COST_METRICS, "agent")
    total = sum(agent_cost.values()) if agent_cost else None
    if total is None:
        notes.append(f"no fleetwarden cost metrics in Prometheus at {url} for this window: spend is unknown")
    total_trend: tuple[float | None, ...] = ()
    agent_trends = b.trends(COST_METRICS, "agent")
    if agent_trends:
        summed: list[float | None] = [None] * n
        for row in agent_trends.values():
            for i, v in enumerate(row):
                if v is not None:
                    summed[i] = (summed[i] or 0.0) + v
        total_trend = tuple(summed)

    anomalies = _anomalies(src, start, end, step)
    flagged_agents = {f"{a.namespace}/{a.agent}" for a in anomalies}
    flagged_tools = {a.tool for a in anomalies if a.tool}
    breakdowns = []
    for dim in dims:
        costs = agent_cost if dim == "agent" else b.totals(COST_METRICS, dim)
        trends = agent_trends if dim == "agent" else b.trends(COST_METRICS, dim)
        tokens = b.totals(TOKEN_METRICS, dim) if dim != "tool" else {}
        calls = b.totals(CALL_METRICS, dim)
        rows = [model.CostRow(key=k, cost_usd=v, tokens=int(tokens[k]) if k in tokens else None,
                              calls=int(round(calls[k])) if k in calls else None,
                              trend=tuple(trends.get(k, [None] * n)),
                              anomalous=(dim == "agent" and k in flagged_agents) or (dim == "tool" and k in flagged_tools))
                for k, v in costs.items()]
        rows.sort(key=lambda r: (-(r.cost_usd or 0.0), r.key))
        breakdowns.append(model.Breakdown(dim, model.shares(rows, total)))

    # Owner info: which budget governs each agent the operator knows.
    owner = {(lb.get("namespace", "default"), lb.get("agent", "")): lb
             for lb, _ in src.instant("fleetwarden_agent_owner_info", end)}
    cluster_budgets: list[dict[str, Any]] = []
    all_budgets = list(budgets)
    agents: list[governance.Agent] = []
    if kubeconfig is not None:
        deployments, cluster_budgets = _cluster(kubeconfig)
        for raw in cluster_budgets:
            try:
                all_budgets.append(spec.AgentBudget.model_validate(raw))
            except ValueError as exc:
                notes.append(f"AgentBudget {raw.get('metadata', {}).get('name')} could not be read: {exc}")
        for d in deployments:
            if _is_agent(d):
                meta = d["metadata"]
                agents.append(governance.Agent(meta["name"], meta.get("namespace", "default"),
                                               meta.get("labels") or {}))
    else:
        for key in agent_cost:
            ns, _, name = key.partition("/")
            agents.append(governance.Agent(name, ns, {}))
    gaps: list[governance.Gap] = []
    if kubeconfig is not None or all_budgets:
        gaps = governance.ungoverned(agents, all_budgets)
    else:
        for a in agents:
            if (a.namespace, a.name) not in owner:
                gaps.append(governance.Gap(a.name, a.namespace, governance.NO_BUDGET,
                                           "the operator reports no owner for this agent "
                                           "(no fleetwarden_agent_owner_info): no AgentBudget governs it"))
        notes.append("governance from fleetwarden_agent_owner_info only: pass --kubeconfig or -f for "
                     "budgets and unit-economics targets")

    economics = _economics(src, start, end, step, n, all_budgets, owner)
    changes = _model_changes(src, start, end, step)
    return model.Report(
        title=title, source=f"prometheus: {url}", window_start=start, window_end=end, step_seconds=step,
        total_cost_usd=total, total_trend=total_trend, breakdowns=tuple(breakdowns), anomalies=tuple(anomalies),
        economics=economics, governance=tuple(gaps),
        incidents=tuple(_incidents_from_status(cluster_budgets, start, end, changes)),
        model_changes=tuple(changes), notes=tuple(notes))


def cap_peaks_query(window: str) -> str:
    """The highest share of each budget's cap (by namespace, budget and window) the operator
    reported over ``window``: the highest spend sample over the latest cap (every sample
    counts, however young the series)."""
    return ("max by (namespace, budget, window) (max_over_time(fleetwarden_budget_spend_usd"
            f"[{window}]) / last_over_time(fleetwarden_budget_limit_usd[{window}]))")


def _economics(src: prometheus_report.ReportSource, start: float, end: float, step: int, n: int,
               budgets: Sequence[spec.AgentBudget], owner: dict[tuple[str, str], dict[str, str]]
               ) -> tuple[model.EconomicsRow, ...]:
    window = _range(end - start)
    cost: dict[tuple[str, str], float] = collections.defaultdict(float)
    wf_agents: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for metric in COST_METRICS:
        for lb, v in src.instant(f"sum by (namespace, workflow, agent) (increase({metric}[{window}]))", end):
            key = (lb.get("namespace", "default"), lb.get("workflow") or model.NONE_KEY)
            cost[key] += v
            wf_agents[key].add(lb.get("agent", ""))
    tasks: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for lb, v in src.instant(f"sum by (namespace, workflow, status) (increase(fleetwarden_tasks_total[{window}]))", end):
        cell = tasks[(lb.get("namespace", "default"), lb.get("workflow") or model.NONE_KEY)]
        cell[0] += v if lb.get("status") == "completed" else 0.0
        cell[1] += v
    by_name = {(b.metadata.namespace, b.metadata.name): b for b in budgets}
    # the highest share of each cap the operator reported in the period (none: not known)
    peaks = {(lb.get("namespace", "default"), lb.get("budget", ""), lb.get("window", "")): v
             for lb, v in src.instant(cap_peaks_query(window), end)}
    rows = []
    for lb, outcomes in src.instant(f"sum by (namespace, workflow, outcome) "
                                    f"(increase(fleetwarden_outcomes_total[{window}]))", end):
        if outcomes <= 0:
            continue
        ns, wf, outcome = lb.get("namespace", "default"), lb.get("workflow") or model.NONE_KEY, lb.get("outcome", "")
        c = cost.get((ns, wf))
        cpo = c / outcomes if c is not None else None
        # The budget of the workflow's agents: from the operator's owner info, else by selector.
        # The budgets of the workflow's agents, from the operator's owner info; without it,
        # every budget of the namespace.
        named = [by_name[(ns, owner[(ns, a)].get("budget", ""))] for a in sorted(wf_agents[(ns, wf)])
                 if (ns, a) in owner and (ns, owner[(ns, a)].get("budget", "")) in by_name]
        match = economics.pick_target(named or [b for b in budgets if b.metadata.namespace == ns], wf, outcome)
        target = match[1] if match else None
        baseline = target.human_baseline_usd if target else None
        completed, ended = tasks.get((ns, wf), [0.0, 0.0])
        capped, cap_note = economics.cap_state(economics.limit_use(match[0] if match else None, peaks))
        recommendation, reason = economics.recommend(
            workflow=wf, outcome=outcome, cost_per_outcome=cpo, target=target.target_cost_usd if target else None,
            human_baseline=baseline, success_rate=completed / ended if ended > 0 else None,
            tasks_ended=int(round(ended)), capped=capped, cap_note=cap_note)
        rows.append(model.EconomicsRow(
            recommendation=recommendation, reason=reason,
            namespace=ns, workflow=wf, outcome=outcome, outcomes=outcomes, cost_usd=c, cost_per_outcome_usd=cpo,
            target_cost_usd=target.target_cost_usd if target else None, human_baseline_usd=baseline,
            roi=economics.roi(baseline, cpo), savings_usd=economics.savings(baseline, cpo, outcomes),
            budget=match[0].metadata.name if match else None))
    return tuple(sorted(rows, key=lambda r: (r.namespace, r.workflow, r.outcome)))
