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


def test_live_digest_reads_each_incidents_record_for_its_impact(monkeypatch):
    """Live with a kubeconfig, an incident of the period gets the impact of its record; without one, unknown."""
    import argparse

    from fleetwarden.commands import digest as digest_cmd
    from fleetwarden.views import model

    record = incidents.resolve(incidents.open_incident("inc-k", {
        "time": timefmt.rfc3339(ONSET + 600), "onset": timefmt.rfc3339(ONSET), "kind": "runaway_loop",
        "agent": "bot", "namespace": "shop", "action": "kill", "message": "loop"},
        [incidents.ActionTaken(timefmt.rfc3339(ONSET + 600), "kill")]), ONSET + 600, "killed")
    monkeypatch.setattr(incident_cmd, "_records", lambda args, namespace: [record])
    row = model.IncidentRow(id="inc-k", kind="runaway_loop", title="t", agent="bot", namespace="shop",
                            opened=ONSET, message="m", actions=("kill",))
    report = model.Report(title="t", source="s", window_start=ONSET - 3600, window_end=ONSET + 700,
                          step_seconds=60, total_cost_usd=1.0, total_trend=(), breakdowns=(), incidents=(row,))
    found = digest_cmd._live_impacts(argparse.Namespace(kubeconfig="kc"), _Source(""), report, ONSET + 700)
    assert found["inc-k"] is not None and found["inc-k"].above_baseline_usd == 50.0
    assert digest_cmd._live_impacts(argparse.Namespace(kubeconfig=None), _Source(""), report, ONSET + 700) == {
        "inc-k": None}
