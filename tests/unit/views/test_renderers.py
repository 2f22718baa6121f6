"""The renderers: sparklines, terminal table, JSON, CSV and the self-contained HTML page."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from fleetwarden.core import governance
from fleetwarden.views import html, model, tabular, text

T0 = 1_800_000_000.0


def _report(**overrides) -> model.Report:
    rows = (model.CostRow("ns/<script>bot</script>", 3.0, 0.75, 1000, 10, (1.0, None, 2.0), anomalous=True),
            model.CostRow("ns/quiet", 1.0, 0.25, 10, 1, (0.5, 0.5, 0.0)))
    base = dict(
        title="Test report", source="events: x.jsonl", window_start=T0, window_end=T0 + 180, step_seconds=60,
        total_cost_usd=4.0, total_trend=(1.5, 0.5, 2.0), breakdowns=(model.Breakdown("agent", rows),),
        anomalies=(model.Anomaly(time=T0 + 120, kind="runaway_loop", agent="bot", namespace="ns", action="kill",
                                 message="tokens accelerate, no output", workflow="triage", incident="inc-1"),),
        economics=(model.EconomicsRow("ns", "triage", "resolved", 4, 4.0, 1.0, 0.5, 4.0, 3.0, 12.0,
                                      (1.0, None, 1.0), "optimise", "cost per outcome is twice the target"),),
        governance=(governance.Gap("stray", "ns", governance.NO_BUDGET, "no AgentBudget selects it"),),
        incidents=(model.IncidentRow("inc-1", "runaway_loop", "Runaway agent loop", "bot", "ns", T0 + 60,
                                     "tokens accelerate", ("kill",), "triage",
                                     model.ModelChange("bot", "ns", T0 + 30, "new", "old")),),
        model_changes=(model.ModelChange("bot", "ns", T0 + 30, "new", "old"),),
    )
    base.update(overrides)
    return model.Report(**base)


@pytest.mark.parametrize(("values", "expected"), [
    ((0.0, 1.0, 2.0, 4.0), "▁▃▅█"),
    ((1.0, None, 1.0), "█ █"),
    ((0.0, 0.0), "▁▁"),
    ((None, None), "  "),
    ((), ""),
])
def test_sparkline(values, expected):
    """A sparkline scales values to eight bars between 0 and the maximum; unknown is a gap."""
    assert text.sparkline(values) == expected


def test_table_marks_anomalies_and_shows_unknown():
    """The terminal table marks anomalous rows with '!', lists gaps and incidents, says unknown for None."""
    out = text.render(_report(total_cost_usd=None))
    assert "total cost: unknown" in out
    assert "! ns/<script>bot</script>" in out
    assert "runaway_loop" in out and "inc-1" in out
    assert "ns/stray" in out and "no_budget" in out
    assert "model change: old -> new" in out
    assert "optimise" in out and "3.0x" in out


def test_json_is_the_whole_model():
    """JSON output parses and carries every section with RFC 3339 times and null for unknown."""
    data = json.loads(tabular.render_json(_report(total_cost_usd=None)))
    assert data["total_cost_usd"] is None
    assert data["window"]["start"] == "2027-01-15T08:00:00Z"
    assert data["breakdowns"][0]["rows"][0]["trend"] == [1.0, None, 2.0]
    assert data["anomalies"][0]["kind"] == "runaway_loop"
    assert data["economics"][0]["recommendation"] == "optimise"
    assert data["governance"][0]["problem"] == "no_budget"
    assert data["incidents"][0]["model_change"]["previous_model"] == "old"


def test_csv_has_one_row_per_fact_and_empty_cells_for_unknown():
    """CSV lists total, cost rows, economics, anomalies and gaps in sections; unknown is empty."""
    rows = list(csv.DictReader(io.StringIO(tabular.render_csv(_report()))))
    sections = [r["section"] for r in rows]
    assert sections == ["cost", "cost", "cost", "economics", "anomaly", "governance"]
    assert rows[1]["key"] == "ns/<script>bot</script>" and float(rows[1]["cost_usd"]) == 3.0
    assert rows[1]["trend"] == "1.0  2.0"
    assert rows[3]["recommendation"] == "optimise"
    assert rows[4]["kind"] == "runaway_loop" and rows[4]["action"] == "kill"


def test_html_is_self_contained_and_escapes_names():
    """The page references nothing outside itself and escapes every name it shows."""
    page = html.render(_report())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert "&lt;script&gt;bot&lt;/script&gt;" in page


def test_html_draws_the_trend_marks_anomalies_and_links_incidents():
    """The chart has a line path, an anomaly marker and a model-change line; anomaly rows link the incident."""
    page = html.render(_report())
    assert re.search(r'<path class="cost-line" d="M[0-9.]+,[0-9.]+ L', page)
    assert page.count('class="anomaly-marker"') == 1
    assert page.count('class="model-change"') == 1
    assert '<tr class="anomaly" data-kind="runaway_loop">' in page
    assert '<a href="#inc-1">inc-1</a>' in page and 'id="inc-1"' in page
    assert 'class="badge rec-optimise"' in page


def test_html_path_breaks_at_unknown_points():
    """An unknown point in a trend starts a new segment of the line instead of drawing through zero."""
    svg = html.spark_svg([1.0, None, 2.0])
    d = re.search(r'd="([^"]+)"', svg).group(1)
    assert d.count("M") == 2 and "L" not in d
