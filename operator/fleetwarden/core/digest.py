"""The sprint-review digest: what changed since the period before, and why.

Pure: the caller (``views.digest``) reads two periods of the same length, the current one
and the one before it, from usage events or from Prometheus, and this module compares
them. Nothing here reads a clock, a file or the network.

Unknown is never 0: a delta against an unknown value is unknown (``None``), a percentage
against a previous value of 0 is unknown (the key is new), and a projection without a burn
rate is unknown.

- :func:`compare` pairs the spend of each key of one dimension over the two periods.
- :func:`top_movers` ranks the keys of every dimension by the size of their move and
  attaches the finding or model change that explains each move, where there is one.
- :func:`budget_outlook` projects a budget's month-end spend and the days left at the
  current burn rate.
- :func:`cost_impact` is what an incident cost: the spend above the agent's baseline
  from onset to resolution, and the spend the action prevented.
- :func:`recommendation_changes` says which workflow's recommendation changed.
- :func:`check_periods` turns "no data", "the previous period starts before the first
  data" and "retention shorter than two periods" into plain messages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DAY = 86400.0
HOUR = 3600.0
MINUTE = 60
DEFAULT_PERIOD_SECONDS = 14 * DAY
# Incident impact: the agent's baseline rate is its mean spend over this long before onset;
# the burn rate at the action is its mean spend over this long up to the action.
BASELINE_SECONDS = 3600.0
BURN_SECONDS = 300.0
# Actions that stop an agent's spend (all of it) or its excess (a rollback).
STOPPING_ACTIONS = frozenset({"kill", "pause", "scale_down"})
CORRECTING_ACTIONS = frozenset({"rollback"})


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


@dataclasses.dataclass(frozen=True)
class Delta:
    """A value in the current and the previous period; ``None`` is unknown."""

    current: float | None
    previous: float | None

    @property
    def change(self) -> float | None:
        if self.current is None or self.previous is None:
            return None
        return self.current - self.previous

    @property
    def percent(self) -> float | None:
        """Change in percent of the previous value; unknown when that is unknown or 0 (new)."""
        change = self.change
        if change is None or self.previous is None or self.previous == 0:
            return None
        return 100.0 * change / self.previous

    def to_dict(self) -> dict[str, Any]:
        return {"current": _r(self.current), "previous": _r(self.previous), "change": _r(self.change),
                "percent": _r(self.percent, 2)}


@dataclasses.dataclass(frozen=True)
class Row:
    dimension: str
    key: str
    delta: Delta

    def to_dict(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "key": self.key, **self.delta.to_dict()}


def compare(dimension: str, current: Mapping[str, float | None],
            previous: Mapping[str, float | None] | None) -> list[Row]:
    """One row per key seen in either period, largest current spend first.

    ``previous`` is None when the previous period is unknown (no data for it): every
    previous value is then unknown. When it is known, a key absent from it spent nothing
    then (0.0), and a key absent from ``current`` spends nothing now."""
    keys = set(current) | set(previous or {})
    rows = []
    for key in keys:
        now = current.get(key, 0.0)
        before = None if previous is None else previous.get(key, 0.0)
        rows.append(Row(dimension, key, Delta(now, before)))
    rows.sort(key=lambda r: (-(r.delta.current or 0.0), r.key))
    return rows


@dataclasses.dataclass(frozen=True)
class Explanation:
    """A finding or a model change that names a key of a dimension."""

    dimension: str  # agent, tool or model
    key: str
    text: str


@dataclasses.dataclass(frozen=True)
class Mover:
    dimension: str
    key: str
    delta: Delta
    explanation: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "key": self.key, **self.delta.to_dict(),
                "explanation": self.explanation}


def _joined(texts: Sequence[str], most: int) -> str:
    shown = "; ".join(texts[:most])
    return shown + (f"; and {len(texts) - most} more" if len(texts) > most else "")


def top_movers(rows: Iterable[Row], explanations: Iterable[Explanation], *, limit: int = 5,
               dimensions: Sequence[str] = ("agent", "tool", "model"), most: int = 2) -> list[Mover]:
    """The ``limit`` rows of ``dimensions`` with the largest absolute change (unknown changes
    and no change are not moves), each with the first ``most`` explanations that name it, in
    the order given (and how many more there are)."""
    said: dict[tuple[str, str], list[str]] = {}
    for e in explanations:
        texts = said.setdefault((e.dimension, e.key), [])
        if e.text not in texts:
            texts.append(e.text)
    moved = [r for r in rows if r.dimension in dimensions and r.delta.change is not None and r.delta.change != 0]
    moved.sort(key=lambda r: (-abs(r.delta.change or 0.0), r.dimension, r.key))
    return [Mover(r.dimension, r.key, r.delta, _joined(said[(r.dimension, r.key)], most)
                  if (r.dimension, r.key) in said else None) for r in moved[:limit]]


@dataclasses.dataclass(frozen=True)
class BudgetOutlook:
    """A budget at the end of the current period."""

    namespace: str
    budget: str
    month_to_date_usd: float | None
    month_cap_usd: float | None
    burn_usd_per_day: float | None
    projected_month_end_usd: float | None
    days_left: float | None  # at the burn rate, until the month cap is reached; None: unknown or no cap
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "budget": self.budget,
                "month_to_date_usd": _r(self.month_to_date_usd), "month_cap_usd": self.month_cap_usd,
                "burn_usd_per_day": _r(self.burn_usd_per_day), "projected_month_end_usd": _r(self.projected_month_end_usd),
                "days_left": _r(self.days_left, 2), "note": self.note}


def budget_outlook(namespace: str, budget: str, *, period_spend_usd: float | None, period_seconds: float,
                   month_to_date_usd: float | None, month_cap_usd: float | None,
                   seconds_to_month_end: float) -> BudgetOutlook:
    """Burn rate = the period's spend over its length; projected month-end = month-to-date
    spend + burn rate x the time left in the month; days left = (cap - month-to-date) / burn
    rate, 0 once the cap is reached, unknown with no burn (it never runs out) or no cap."""
    burn = None if period_spend_usd is None else period_spend_usd / (period_seconds / DAY)
    projected = None
    if burn is not None and month_to_date_usd is not None:
        projected = month_to_date_usd + burn * seconds_to_month_end / DAY
    days_left = None
    if month_cap_usd is None:
        note = "no monthly cap: no days left to count"
    elif month_to_date_usd is None:
        note = "month-to-date spend unknown (no data since the month's first day)"
    elif burn is None:
        note = "burn rate unknown (the period's spend is unknown)"
    elif month_to_date_usd >= month_cap_usd:
        days_left, note = 0.0, "the monthly cap is reached"
    elif burn <= 0:
        note = "no spend in the period: the cap is not being approached"
    else:
        days_left = (month_cap_usd - month_to_date_usd) / burn
        note = ("the cap is reached before the month ends" if days_left * DAY < seconds_to_month_end
                else "on track to stay under the cap")
    return BudgetOutlook(namespace, budget, month_to_date_usd, month_cap_usd, burn, projected, days_left, note)


@dataclasses.dataclass(frozen=True)
class CostImpact:
    """What an incident cost, and what its action saved."""

    above_baseline_usd: float | None  # spend above the agent's baseline from onset to resolution
    prevented_usd: float | None  # the burn rate at the action projected to the end of the window
    baseline_usd_per_hour: float | None
    burn_usd_per_hour: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"above_baseline_usd": _r(self.above_baseline_usd), "prevented_usd": _r(self.prevented_usd),
                "baseline_usd_per_hour": _r(self.baseline_usd_per_hour),
                "burn_usd_per_hour": _r(self.burn_usd_per_hour), "note": self.note}


def _mean_rate(per_minute: Mapping[int, float], start: float, end: float, known_from: float | None) -> float | None:
    """Mean spend per second over ``[start, end)``; unknown when no data covers its start."""
    if end <= start or known_from is None or known_from > start:
        return None
    total = sum(v for m, v in per_minute.items() if start <= m < end)
    return total / (end - start)


def cost_impact(per_minute: Mapping[int, float], *, onset: float, resolved: float, action: str,
                action_time: float | None, window_end: float, known_from: float | None) -> CostImpact:
    """The impact of an incident on one agent whose spend per minute (minute start -> USD) is
    ``per_minute``, known from ``known_from`` on.

    - baseline: the agent's mean rate over the hour before onset (unknown without data there);
    - above baseline: the spend from onset to ``resolved`` minus the baseline rate x that time;
    - burn at the action: the mean rate over the 5 minutes up to ``action_time``;
    - prevented: for an action that stops the agent (kill, pause, scale_down) the burn rate,
      for a rollback the burn above the baseline, x the time from the action to
      ``window_end`` (the end of the budget window or period); 0 for an alert, which stops
      nothing; unknown when a rate is unknown."""
    baseline = _mean_rate(per_minute, onset - BASELINE_SECONDS, onset, known_from)
    first_minute = math.floor(onset / MINUTE) * MINUTE
    spent = sum(v for m, v in per_minute.items() if first_minute <= m < max(resolved, onset + MINUTE))
    above = None if baseline is None else max(0.0, spent - baseline * max(MINUTE, resolved - onset))
    burn = None
    if action_time is not None:
        burn = _mean_rate(per_minute, action_time - BURN_SECONDS, action_time, known_from)
    left = max(0.0, window_end - (action_time or window_end))
    if action in STOPPING_ACTIONS:
        prevented = None if burn is None else burn * left
        note = f"{action} stopped the agent; prevented = burn rate at the action x time left in the window"
    elif action in CORRECTING_ACTIONS:
        prevented = None if burn is None or baseline is None else max(0.0, burn - baseline) * left
        note = "rollback; prevented = burn above baseline at the action x time left in the window"
    else:
        prevented = 0.0
        note = f"action {action} does not stop spend: nothing prevented"
    if baseline is None:
        note += "; no data in the hour before onset: the baseline is unknown"
    return CostImpact(above, prevented, None if baseline is None else baseline * HOUR,
                      None if burn is None else burn * HOUR, note)


@dataclasses.dataclass(frozen=True)
class RecommendationChange:
    workflow: str
    previous: str | None
    current: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "previous": self.previous, "current": self.current}


def recommendation_changes(previous: Mapping[str, str | None] | None, current: Mapping[str, str | None]
                           ) -> list[RecommendationChange]:
    """Workflows whose recommendation differs from the previous period's (new and gone ones
    included); none when the previous period is unknown."""
    if previous is None:
        return []
    out = [RecommendationChange(k, previous.get(k), current.get(k))
           for k in sorted(set(previous) | set(current)) if previous.get(k) != current.get(k)]
    return out


class PeriodError(ValueError):
    """The periods cannot be compared at all (the caller turns it into a clear error)."""


@dataclasses.dataclass(frozen=True)
class PeriodCheck:
    previous_known: bool  # False: the previous period's values are unknown (no deltas)
    notes: tuple[str, ...]


def check_periods(*, period_seconds: float, end: float, first_data: float | None,
                  retention_seconds: float | None = None) -> PeriodCheck:
    """Raise :class:`PeriodError` when the current period holds no data; say (in notes) when
    the data or the retention does not cover the previous period (its values are then unknown)."""
    start = end - period_seconds
    previous_start = start - period_seconds
    if first_data is None or first_data >= end:
        raise PeriodError("no data in the period (nothing before its end)")
    notes = []
    known = True
    if retention_seconds is not None and retention_seconds < 2 * period_seconds:
        known = False
        notes.append(f"the Prometheus retention ({retention_seconds / DAY:g} d) is shorter than two periods "
                     f"({2 * period_seconds / DAY:g} d): the previous period is unknown, no delta is shown")
    elif first_data > previous_start:
        known = False
        notes.append("the previous period starts before the first data: its spend is unknown, "
                     "so no period-over-period delta is shown")
    if first_data > start:
        notes.append("the current period starts before the first data: it covers less than a full period")
    return PeriodCheck(known, tuple(notes))
