"""The digest model, and how it is composed from two reports of the same length.

``fleetwarden digest`` builds a :class:`~fleetwarden.views.model.Report` for the current
period and one for the period before (offline from one fold of the usage events, live from
Prometheus) and hands them to :func:`compose`, which calls the pure comparisons of
``fleetwarden.core.digest``. Renderers: ``views.digest_render`` (Markdown, HTML, JSON).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetwarden.adapters import prometheus_report
from fleetwarden.core import digest as core
from fleetwarden.core import findings, governance, spec, timefmt, windows
from fleetwarden.core import metricnames as names
from fleetwarden.views import model, offline

SPEND_DIMENSIONS = ("team", "project", "cost_center")
MOVER_DIMENSIONS = ("agent", "tool", "model")
DIMENSIONS = ("agent", "tool", "model", "team", "project", "cost_center", "workflow")

# Postmortem status of an incident.
POSTMORTEM_WRITTEN = "written"
POSTMORTEM_MISSING = "missing"
POSTMORTEM_UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class OutcomeCost:
    """Cost per outcome of one workflow in this period and the ones before (oldest first)."""

    namespace: str
    workflow: str
    outcome: str
    delta: core.Delta
    target_usd: float | None
    human_baseline_usd: float | None
    trend: tuple[float | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "workflow": self.workflow, "outcome": self.outcome,
                "cost_per_outcome_usd": self.delta.to_dict(), "target_usd": self.target_usd,
                "human_baseline_usd": self.human_baseline_usd, "trend": list(self.trend)}


@dataclasses.dataclass(frozen=True)
class Recommendation:
    workflow: str  # namespace/workflow/outcome
    recommendation: str | None
    reason: str | None
    previous: str | None
    previous_known: bool = True

    @property
    def changed(self) -> bool | None:
        """Whether it differs from the previous period's (None: that period is unknown)."""
        return self.previous != self.recommendation if self.previous_known else None

    def to_dict(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "recommendation": self.recommendation, "reason": self.reason,
                "previous": self.previous, "changed": self.changed}


@dataclasses.dataclass(frozen=True)
class IncidentEntry:
    id: str
    title: str
    kind: str
    agent: str
    namespace: str
    opened: float
    actions: tuple[str, ...]
    postmortem: str  # written | missing | unknown
    impact: core.CostImpact | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "kind": self.kind, "agent": self.agent,
                "namespace": self.namespace, "opened": timefmt.rfc3339(self.opened), "actions": list(self.actions),
                "postmortem": self.postmortem, "impact": self.impact.to_dict() if self.impact else None}


@dataclasses.dataclass(frozen=True)
class GapEntry:
    gap: governance.Gap
    new: bool | None  # first seen in this period (None: the previous period is unknown)

    def to_dict(self) -> dict[str, Any]:
        return {**self.gap.to_dict(), "new": self.new}


@dataclasses.dataclass(frozen=True)
class Digest:
    title: str
    source: str
    period_seconds: float
    start: float
    end: float
    previous_known: bool
    total: core.Delta
    spend: tuple[core.Row, ...]  # by team, project and cost center
    movers: tuple[core.Mover, ...]
    outcomes: tuple[OutcomeCost, ...]
    budgets: tuple[core.BudgetOutlook, ...]
    recommendations: tuple[Recommendation, ...]
    incidents: tuple[IncidentEntry, ...]
    gaps: tuple[GapEntry, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "source": self.source,
            "period": {"seconds": self.period_seconds, "start": timefmt.rfc3339(self.start),
                       "end": timefmt.rfc3339(self.end),
                       "previous_start": timefmt.rfc3339(self.start - self.period_seconds)},
            "previous_known": self.previous_known,
            "total_cost_usd": self.total.to_dict(),
            "spend": [r.to_dict() for r in self.spend],
            "top_movers": [m.to_dict() for m in self.movers],
            "cost_per_outcome": [o.to_dict() for o in self.outcomes],
            "budgets": [b.to_dict() for b in self.budgets],
            "recommendations": [r.to_dict() for r in self.recommendations],
            "incidents": [i.to_dict() for i in self.incidents],
            "incidents_without_postmortem": [i.id for i in self.incidents if i.postmortem == POSTMORTEM_MISSING],
            "governance_gaps": [g.to_dict() for g in self.gaps],
            "notes": list(self.notes),
        }


def steps_for(period_seconds: float, most: int = 24) -> int:
    """Trend steps of whole minutes that divide the period exactly (so the report's window is
    the period, not a rounded-up one); 1 when none does."""
    minutes = int(period_seconds // 60)
    return next((n for n in range(most, 1, -1) if minutes % n == 0 and period_seconds % 60 == 0), 1)


def _costs(report: model.Report | None, dim: str) -> dict[str, float | None] | None:
    if report is None:
        return None
    b = report.breakdown(dim)
    return {r.key: r.cost_usd for r in b.rows} if b is not None else {}


def explanations(report: model.Report, agent_models: Mapping[str, Iterable[str]] | None = None
                 ) -> list[core.Explanation]:
    """What names an agent, a tool or a model in the period: its incidents and model changes;
    a model is also explained by the incidents of the agents that used it (``agent_models``:
    agent key -> models)."""
    out = []
    for inc in report.incidents:
        agent = f"{inc.namespace}/{inc.agent}"
        text = f"{inc.title} (incident {inc.id}, {timefmt.rfc3339(inc.opened)})"
        out.append(core.Explanation("agent", agent, text))
        for used in (agent_models or {}).get(agent, ()):
            out.append(core.Explanation("model", used, f"used by {agent}: {text}"))
    for a in report.anomalies:
        if a.tool:
            out.append(core.Explanation("tool", a.tool, f"{a.kind.replace('_', ' ')} on {a.namespace}/{a.agent}"))
    for c in report.model_changes:
        text = f"model change {c.previous_model or '?'} -> {c.model} on {c.namespace}/{c.agent} ({timefmt.rfc3339(c.time)})"
        out.append(core.Explanation("agent", f"{c.namespace}/{c.agent}", text))
        out.append(core.Explanation("model", c.model, text))
        if c.previous_model:
            out.append(core.Explanation("model", c.previous_model, text))
    return out


def _econ_key(e: model.EconomicsRow) -> str:
    return f"{e.namespace}/{e.workflow}/{e.outcome}"


def _outcomes(current: model.Report, previous: model.Report | None,
              older: Sequence[model.Report | None]) -> tuple[OutcomeCost, ...]:
    def cpo(report: model.Report | None) -> dict[str, float | None] | None:
        return None if report is None else {_econ_key(e): e.cost_per_outcome_usd for e in report.economics}

    before = cpo(previous)
    history = [cpo(r) for r in older]
    rows = []
    for e in current.economics:
        key = _econ_key(e)
        trend = tuple(None if h is None else h.get(key) for h in [*history, before]) + (e.cost_per_outcome_usd,)
        rows.append(OutcomeCost(e.namespace, e.workflow, e.outcome,
                                core.Delta(e.cost_per_outcome_usd, None if before is None else before.get(key)),
                                e.target_cost_usd, e.human_baseline_usd, trend))
    return tuple(rows)


def _recommendations(current: model.Report, previous: model.Report | None) -> tuple[Recommendation, ...]:
    now = {_econ_key(e): e for e in current.economics}
    before = None if previous is None else {_econ_key(e): e.recommendation for e in previous.economics}
    changed = {c.workflow: c for c in core.recommendation_changes(
        before, {k: e.recommendation for k, e in now.items()})}
    rows = [Recommendation(k, e.recommendation, e.reason, (before or {}).get(k), before is not None)
            for k, e in sorted(now.items())]
    rows += [Recommendation(k, None, "no outcome in this period", c.previous)
             for k, c in sorted(changed.items()) if k not in now]
    return tuple(rows)


def compose(current: model.Report, previous: model.Report | None, *, period_seconds: float, title: str,
            notes: Iterable[str] = (), older: Sequence[model.Report | None] = (),
            budgets: Sequence[core.BudgetOutlook] = (),
            impacts: Mapping[str, core.CostImpact | None] | None = None,
            postmortems: Mapping[str, bool] | None = None, movers: int = 5,
            agent_models: Mapping[str, Iterable[str]] | None = None) -> Digest:
    """The digest of ``current`` against ``previous`` (None: unknown, no deltas)."""
    spend: list[core.Row] = []
    rows: list[core.Row] = []
    for dim in DIMENSIONS:
        compared = core.compare(dim, _costs(current, dim) or {}, _costs(previous, dim))
        rows += compared
        if dim in SPEND_DIMENSIONS:
            spend += compared
    previous_agents = set(_costs(previous, "agent") or {})
    gaps = tuple(GapEntry(g, None if previous is None else f"{g.namespace}/{g.agent}" not in previous_agents)
                 for g in current.governance)
    incidents = tuple(IncidentEntry(
        id=i.id, title=i.title, kind=i.kind, agent=i.agent, namespace=i.namespace, opened=i.opened,
        actions=i.actions,
        postmortem=(POSTMORTEM_UNKNOWN if postmortems is None
                    else POSTMORTEM_WRITTEN if postmortems.get(i.id) else POSTMORTEM_MISSING),
        impact=(impacts or {}).get(i.id)) for i in current.incidents)
    return Digest(
        title=title, source=current.source, period_seconds=period_seconds, start=current.window_start,
        end=current.window_end, previous_known=previous is not None,
        total=core.Delta(current.total_cost_usd, None if previous is None else previous.total_cost_usd),
        spend=tuple(spend), movers=tuple(core.top_movers(rows, explanations(current, agent_models), limit=movers,
                                                         dimensions=MOVER_DIMENSIONS)),
        outcomes=_outcomes(current, previous, older), budgets=tuple(budgets),
        recommendations=_recommendations(current, previous), incidents=incidents, gaps=gaps,
        notes=tuple(dict.fromkeys([*notes, *current.notes])))


# ---------------------------------------------------------------- offline, from one fold of the events


def _per_minute(fold: offline.Fold, agent_key: str) -> dict[int, float]:
    return {m: c.cost for m, c in fold.cells.get(("agent", agent_key), {}).items()}


def offline_impacts(fold: offline.Fold, found: Sequence[findings.Finding], report: model.Report
                    ) -> dict[str, core.CostImpact | None]:
    """Each incident's cost impact from the agent's spend per minute: resolution is the
    incident's last finding, the action the first one that stops spend (else the latest),
    and the window the calendar day (UTC) of the action."""
    by_incident: dict[str, list[findings.Finding]] = {}
    for f in found:
        by_incident.setdefault(findings.incident_id(f), []).append(f)
    out: dict[str, core.CostImpact | None] = {}
    for inc in report.incidents:
        group = sorted(by_incident.get(inc.id, []), key=lambda f: f.time)
        if not group:
            out[inc.id] = None
            continue
        acting = next((f for f in group if f.action in core.STOPPING_ACTIONS | core.CORRECTING_ACTIONS), group[-1])
        out[inc.id] = core.cost_impact(
            _per_minute(fold, f"{inc.namespace}/{inc.agent}"), onset=inc.opened, resolved=group[-1].time,
            action=acting.action, action_time=acting.time,
            window_end=windows.calendar_end(spec.Window.day, acting.time), known_from=fold.first)
    return out


def offline_budgets(fold: offline.Fold, budgets: Sequence[spec.AgentBudget], report: model.Report,
                    period_seconds: float) -> list[core.BudgetOutlook]:
    """Each budget's outlook: its agents' spend in the period, and month to date (unknown
    when the events start after the month's first day)."""
    end = report.window_end
    month_start = windows.calendar_start(spec.Window.month, end - 1)
    agent_rows = report.breakdown("agent")
    period_cost = {r.key: r.cost_usd for r in agent_rows.rows} if agent_rows else {}
    out = []
    for b in budgets:
        keys = [f"{ns}/{name}" for (ns, name), labels in fold.agents.items()
                if governance.governing(governance.Agent(name, ns, labels), [b])]
        spent = sum(period_cost.get(k) or 0.0 for k in keys)
        mtd = None
        if fold.first is not None and fold.first <= month_start:
            mtd = sum(v for k in keys for m, v in _per_minute(fold, k).items() if month_start <= m < end)
        cap = b.spec.limit_for(spec.Window.month)
        out.append(core.budget_outlook(
            b.metadata.namespace, b.metadata.name, period_spend_usd=spent, period_seconds=period_seconds,
            month_to_date_usd=mtd, month_cap_usd=cap.amount_usd if cap else None,
            seconds_to_month_end=windows.calendar_end(spec.Window.month, end - 1) - end))
    return out


def offline_reports(fold: offline.Fold, found: Sequence[findings.Finding], budgets: Sequence[spec.AgentBudget],
                    *, period_seconds: float, end: float, periods: int, steps: int
                    ) -> tuple[core.PeriodCheck, list[model.Report | None]]:
    """The reports of the current period and the ``periods - 1`` before it (newest first;
    None for a period the events do not cover)."""
    check = core.check_periods(period_seconds=period_seconds, end=end, first_data=fold.first)
    reports: list[model.Report | None] = []
    for i in range(periods):
        stop = end - i * period_seconds
        if i > 0 and (fold.first is None or fold.first > stop - period_seconds or (i == 1 and not check.previous_known)):
            reports.append(None)
            continue
        reports.append(fold.report(window_seconds=period_seconds, end=stop, steps=steps, found=found,
                                   budgets=budgets, replayed=True))
    return check, reports


# ---------------------------------------------------------------- live, from Prometheus

_PRESENCE = f"count({names.LLM_COST_USD})"


def live_first_data(src: prometheus_report.ReportSource, *, period_seconds: float, end: float) -> float | None:
    """When the fleet's cost series begin, as far as the digest needs to know: at or before
    the previous period's start, at or before the current period's start, inside the
    current period, or never (None)."""
    start = end - period_seconds
    for at in (start - period_seconds, start):
        if src.instant(_PRESENCE, at):
            return at
    rng = f"{int(period_seconds)}s"
    if src.instant(f"count(count_over_time({names.LLM_COST_USD}[{rng}]))", end):
        return end - 1.0
    return None


def live_budgets(src: prometheus_report.ReportSource, report: model.Report, period_seconds: float
                 ) -> list[core.BudgetOutlook]:
    """Each budget the operator reports: month to date and cap from its gauges, the burn
    rate from its agents' spend in the period (agents by ``fleetwarden_agent_owner_info``)."""
    end = report.window_end
    month: dict[tuple[str, str], dict[str, float]] = {}
    for metric, field in ((names.BUDGET_SPEND_USD, "spend"), (names.BUDGET_LIMIT_USD, "cap")):
        for labels, value in src.instant(f'{metric}{{window="month"}}', end):
            month.setdefault((labels.get("namespace", "default"), labels.get("budget", "")), {})[field] = value
    owners = {(lb.get("namespace", "default"), lb.get("agent", "")): lb.get("budget", "")
              for lb, _ in src.instant(names.AGENT_OWNER_INFO, end)}
    agent_rows = report.breakdown("agent")
    spent: dict[tuple[str, str], float] = {}
    for row in agent_rows.rows if agent_rows else ():
        ns, _, agent = row.key.partition("/")
        budget = owners.get((ns, agent))
        if budget:
            spent[(ns, budget)] = spent.get((ns, budget), 0.0) + (row.cost_usd or 0.0)
    out = []
    for (ns, budget) in sorted(set(month) | set(spent)):
        figures = month.get((ns, budget), {})
        out.append(core.budget_outlook(
            ns, budget, period_spend_usd=spent.get((ns, budget), 0.0), period_seconds=period_seconds,
            month_to_date_usd=figures.get("spend"), month_cap_usd=figures.get("cap"),
            seconds_to_month_end=windows.calendar_end(spec.Window.month, end - 1) - end))
    return out
