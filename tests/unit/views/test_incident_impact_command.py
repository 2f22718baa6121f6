"""`fleetwarden incident postmortem --prometheus`: the cost impact from the agent's spend series."""

from __future__ import annotations

from fleetwarden.adapters import prometheus_report
from fleetwarden.commands import incident as incident_cmd
from fleetwarden.core import incidents, timefmt

ONSET = 1767571200.0  # 2026-01-05T00:00:00Z


class _Source:
    """Spend of 1ドル a minute before onset, 6ドル a minute for 10 minutes after; only the LLM counter has data."""

    def __init__(self, url: str) -> None:
        self.queries: list[str] = []

    def range(self, promql: str, start: float, end: float, step: int) -> list[tuple[dict, dict[float, float]]]:
        if "fleetwarden_llm_cost_usd_total" not in promql:
            return []  # no tool or human spend series: no data, not 0
        points = {}
        t = start
        while t <= end:
            minute = t - 60
            points[t] = 6.0 if ONSET <= minute < ONSET + 600 else 1.0 if minute < ONSET else 0.0
            t += step
        return [({}, points)]


def test_postmortem_impact_from_the_spend_series(monkeypatch):
    """A kill 10 minutes after onset: 50ドル above a 1ドル/min baseline; 6ドル/min prevented to the end of the day."""
    monkeypatch.setattr(prometheus_report, "ReportSource", _Source)
    record = incidents.open_incident("inc-k", {
        "time": timefmt.rfc3339(ONSET + 600), "onset": timefmt.rfc3339(ONSET), "kind": "runaway_loop",
        "agent": "bot", "namespace": "shop", "action": "kill", "message": "loop"},
        [incidents.ActionTaken(timefmt.rfc3339(ONSET + 600), "kill")])
    record = incidents.resolve(record, ONSET + 600, "killed")
    impact = incident_cmd._impact("http://prometheus", record, now=ONSET + 700)
    assert impact.baseline_usd_per_hour == 60.0
    assert impact.above_baseline_usd == 50.0
    assert impact.burn_usd_per_hour == 360.0
    day_left = 86400 - 600
    assert impact.prevented_usd == 6.0 / 60 * day_left
    text = incidents.render_postmortem(record, now=ONSET + 700, impact=impact)
    assert "Spend above baseline (onset to resolution): $50.00" in text
