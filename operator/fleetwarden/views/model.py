"""The report model: what `fleetwarden report` shows, whatever the source and the format.

Builders fill a :class:`Report` from usage events (``views.offline``) or from Prometheus
(``views.live``); renderers (``views.text``, ``views.tabular``, ``views.html``) turn one
into a terminal table, JSON, CSV or a self-contained HTML page. Values a source cannot
know are ``None`` and are shown as "unknown" (never as 0).

Times are Unix seconds; money is USD.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fleetwarden.core import governance, incidents, timefmt

# The dimensions a cost breakdown can group by.
DIMENSIONS = ("agent", "tool", "step", "team", "project", "cost_center", "workflow", "model")
DEFAULT_DIMENSIONS = ("agent", "tool", "step", "team", "project", "cost_center")
# A row for events that carry no value of the dimension (no label, no step).
NONE_KEY = "(none)"

Trend = tuple[float | None, ...]


def _t(ts: float | None) -> str | None:
    return None if ts is None else timefmt.rfc3339_ms(ts)


@dataclasses.dataclass(frozen=True)
class CostRow:
    """Spend of one value of a dimension (one agent, one tool, one team, ...)."""

    key: str
    cost_usd: float | None
    share: float | None = None  # fraction of the report's total cost
    tokens: int | None = None
    calls: int | None = None  # model calls plus tool calls counted under this key
    trend: Trend = ()  # cost per trend step, oldest first
    anomalous: bool = False  # an anomaly names this key (agent or tool)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "cost_usd": self.cost_usd, "share": self.share, "tokens": self.tokens,
                "calls": self.calls, "trend": list(self.trend), "anomalous": self.anomalous}


@dataclasses.dataclass(frozen=True)
class Breakdown:
    dimension: str
    rows: tuple[CostRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "rows": [r.to_dict() for r in self.rows]}


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """One finding (offline: from replay; live: an operator finding or a firing alert)."""

    time: float
    kind: str
    agent: str
    namespace: str
    action: str
    message: str
    workflow: str | None = None
    tool: str | None = None
    model: str | None = None
    previous_model: str | None = None
    incident: str | None = None
    source: str = "replay"  # "replay", "operator" or "alert"

    def to_dict(self) -> dict[str, Any]:
        return {"time": _t(self.time), "kind": self.kind, "agent": self.agent, "namespace": self.namespace,
                "action": self.action, "message": self.message, "workflow": self.workflow, "tool": self.tool,
                "model": self.model, "previous_model": self.previous_model, "incident": self.incident,
                "source": self.source}


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Cost per outcome of one workflow under one model (model-version comparison)."""

    model: str
    cost_per_outcome_usd: float | None
    outcomes: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "cost_per_outcome_usd": self.cost_per_outcome_usd, "outcomes": self.outcomes}


@dataclasses.dataclass(frozen=True)
class EconomicsRow:
    """Unit economics of one workflow's outcome against its target and the human baseline."""

    namespace: str
    workflow: str
    outcome: str
    outcomes: float
    cost_usd: float | None
    cost_per_outcome_usd: float | None
    target_cost_usd: float | None = None
    human_baseline_usd: float | None = None
    roi: float | None = None  # (human baseline - cost per outcome) / cost per outcome
    savings_usd: float | None = None  # (human baseline - cost per outcome) * outcomes
    trend: Trend = ()  # cost per outcome per trend step
    recommendation: str | None = None  # more_budget | hold | optimise | retire
    reason: str | None = None
    models: tuple[ModelCost, ...] = ()
    budget: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "workflow": self.workflow, "outcome": self.outcome,
                "outcomes": self.outcomes, "cost_usd": self.cost_usd,
                "cost_per_outcome_usd": self.cost_per_outcome_usd, "target_cost_usd": self.target_cost_usd,
                "human_baseline_usd": self.human_baseline_usd, "roi": self.roi, "savings_usd": self.savings_usd,
                "trend": list(self.trend), "recommendation": self.recommendation, "reason": self.reason,
                "models": [m.to_dict() for m in self.models], "budget": self.budget}


# A governance gap is the core's value (``core.governance.Gap``): one definition.
GovernanceGap = governance.Gap


# A model change is the core's value (``core.incidents.ModelChange``): one definition.
ModelChange = incidents.ModelChange


@dataclasses.dataclass(frozen=True)
class IncidentRow:
    """An incident: the anomaly, its agent and workflow, the model change before it, actions."""

    id: str
    kind: str
    title: str
    agent: str
    namespace: str
    opened: float
    message: str
    actions: tuple[str, ...]
    workflow: str | None = None
    model_change: ModelChange | None = None
    findings: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "agent": self.agent,
                "namespace": self.namespace, "opened": _t(self.opened), "message": self.message,
                "actions": list(self.actions), "workflow": self.workflow,
                "model_change": self.model_change.to_dict() if self.model_change else None,
                "findings": self.findings}


@dataclasses.dataclass(frozen=True)
class Report:
    title: str
    source: str  # "events: FILE" or "prometheus: URL"
    window_start: float
    window_end: float
    step_seconds: int  # width of one trend step
    total_cost_usd: float | None
    total_trend: Trend
    breakdowns: tuple[Breakdown, ...]
    anomalies: tuple[Anomaly, ...] = ()
    economics: tuple[EconomicsRow, ...] = ()
    governance: tuple[GovernanceGap, ...] = ()
    incidents: tuple[IncidentRow, ...] = ()
    model_changes: tuple[ModelChange, ...] = ()
    notes: tuple[str, ...] = ()  # what the report could not know, said plainly

    def breakdown(self, dimension: str) -> Breakdown | None:
        return next((b for b in self.breakdowns if b.dimension == dimension), None)

    def trend_times(self) -> list[float]:
        """The start time of each trend step."""
        return [self.window_start + i * self.step_seconds for i in range(len(self.total_trend))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "source": self.source,
            "window": {"start": _t(self.window_start), "end": _t(self.window_end),
                       "seconds": self.window_end - self.window_start},
            "step_seconds": self.step_seconds,
            "total_cost_usd": self.total_cost_usd,
            "total_trend": list(self.total_trend),
            "breakdowns": [b.to_dict() for b in self.breakdowns],
            "anomalies": [a.to_dict() for a in self.anomalies],
            "economics": [e.to_dict() for e in self.economics],
            "governance": [g.to_dict() for g in self.governance],
            "incidents": [i.to_dict() for i in self.incidents],
            "model_changes": [m.to_dict() for m in self.model_changes],
            "notes": list(self.notes),
        }


def parse_dimensions(text: str) -> tuple[str, ...]:
    """``"agent,tool"`` -> ("agent", "tool"); raises ValueError naming an unknown dimension."""
    dims = tuple(d.strip() for d in text.split(",") if d.strip())
    for d in dims:
        if d not in DIMENSIONS:
            raise ValueError(f"unknown dimension {d!r} (choose from {', '.join(DIMENSIONS)})")
    if not dims:
        raise ValueError("no dimension given")
    return dims


def shares(rows: Sequence[CostRow], total: float | None) -> tuple[CostRow, ...]:
    """Rows with ``share`` filled in against ``total`` (unknown when the total is unknown or 0)."""
    if total is None or total <= 0:
        return tuple(rows)
    return tuple(dataclasses.replace(r, share=None if r.cost_usd is None else r.cost_usd / total) for r in rows)
