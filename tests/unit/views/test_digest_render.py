"""The digest renderers: Markdown, HTML and JSON say "unknown" for what is not known."""

from __future__ import annotations

import json

from fleetwarden.core import digest as core
from fleetwarden.views import digest, digest_render, model


def _report(total: float | None, teams: dict[str, float], agents: dict[str, float], *, start: float,
            incidents: tuple[model.IncidentRow, ...] = ()) -> model.Report:
    return model.Report(
        title="t", source="events: x", window_start=start, window_end=start + 3600, step_seconds=300,
        total_cost_usd=total, total_trend=(),
        breakdowns=(model.Breakdown("team", tuple(model.CostRow(k, v) for k, v in teams.items())),
                    model.Breakdown("agent", tuple(model.CostRow(k, v) for k, v in agents.items()))),
        incidents=incidents)


INCIDENT = model.IncidentRow(id="inc-1", kind="runaway_loop", title="Runaway agent loop", agent="a",
                             namespace="ns", opened=3700.0, message="m", actions=("kill",))


def _digest(previous_known: bool = True) -> digest.Digest:
    current = _report(30.0, {"cx": 30.0}, {"ns/a": 25.0, "ns/b": 5.0}, start=3600, incidents=(INCIDENT,))
    previous = _report(10.0, {"cx": 10.0}, {"ns/a": 5.0, "ns/b": 5.0}, start=0) if previous_known else None
    impact = core.CostImpact(12.5, None, 1.0, 40.0, "kill")
    return digest.compose(current, previous, period_seconds=3600, title="Sprint 42", impacts={"inc-1": impact},
                          postmortems={}, notes=["a note"])


def test_markdown_has_every_section_deltas_and_unknowns():
    md = digest_render.render_markdown(_digest())
    for heading in ("Spend by team", "Top movers", "Cost per outcome", "Budgets", "Recommendations",
                    "Incidents", "Governance gaps"):
        assert f"## {heading}" in md
    assert "| team | cx | $30.00 | $10.00 | +$20.00 | +200% |" in md
    assert "| agent | ns/a | $25.00 | $5.00 | +$20.00 | +400% | Runaway agent loop (incident inc-1" in md
    assert "| $12.50 | unknown | missing |" in md  # spend prevented unknown, never $0
    assert "incidents with no postmortem: inc-1" in md and "> Note: a note" in md


def test_markdown_without_a_previous_period_shows_unknown_deltas():
    md = digest_render.render_markdown(_digest(previous_known=False))
    assert "| team | cx | $30.00 | unknown | unknown | unknown |" in md
    assert "+$" not in md


def test_json_and_html():
    data = json.loads(digest_render.render_json(_digest()))
    assert data["total_cost_usd"] == {"current": 30.0, "previous": 10.0, "change": 20.0, "percent": 200.0}
    assert data["incidents"][0]["impact"]["prevented_usd"] is None
    page = digest_render.render_html(_digest())
    assert page.startswith("<!doctype html>") and "<td>+$20.00</td>" in page and 'id="top-movers"' in page
    assert "<script" not in page and "http" not in page.split("<body>")[1]
