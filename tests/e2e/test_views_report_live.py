"""`fleetwarden report --prometheus` against the real Prometheus scraping the simulator and the real
operator (tests/e2e/views_fleet.py)."""

from __future__ import annotations

import json

import pytest
import views_fleet
from fixtures_fleetwarden import crds_installed  # noqa: F401 - fixture
from views_fleet import views_fleet_session  # noqa: F401 - fixture

from fleetwarden import cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(prometheus, views_fleet_session):  # noqa: F811
    running = views_fleet_session
    # two scrapes of growing counters make increase() positive, for every agent
    views_fleet.wait_for_data(
        prometheus,
        f'sum by (agent) (increase(fleetwarden_llm_cost_usd_total{{namespace="{running.namespace}"}}[5m])) > 0',
        until=lambda res: {r["metric"]["agent"] for r in res} >= set(running.agents))
    views_fleet.wait_for_data(  # the operator's finding (a complete minute of tool calls first)
        prometheus, f'fleetwarden_findings_total{{namespace="{running.namespace}", kind="tool_not_allowed"}}',
        timeout=240)
    return running


def test_live_report_breaks_cost_down_by_agent_team_and_tool(prometheus, fleet, tmp_path):
    """The live report lists every simulated agent and team with positive cost, and the budgets' anomalies."""
    out = tmp_path / "live.json"
    assert cli.main(["report", "--prometheus", prometheus.url, "--window", "10m", "--steps", "5",
                     "--by", "agent,team,tool", "--output", "json", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["source"] == f"prometheus: {prometheus.url}"
    rows = {b["dimension"]: {r["key"]: r for r in b["rows"]} for b in data["breakdowns"]}
    ns = fleet.namespace
    for agent in fleet.agents:
        assert rows["agent"][f"{ns}/{agent}"]["cost_usd"] > 0
        assert rows["agent"][f"{ns}/{agent}"]["calls"] > 0
    for team in set(fleet.teams.values()):
        assert rows["team"][team]["cost_usd"] > 0
    assert rows["tool"], "no tool rows"
    assert data["total_cost_usd"] >= sum(rows["agent"][f"{ns}/{a}"]["cost_usd"] for a in fleet.agents) * 0.999
    assert len(data["total_trend"]) == 5
    kinds = {(a["namespace"], a["kind"]) for a in data["anomalies"]}
    assert (ns, "tool_not_allowed") in kinds


def test_live_recommendation_knows_how_near_each_budget_came_to_its_cap(prometheus, fleet, tmp_path):
    """The cap-peak query, on the real Prometheus, reads each budget's highest spend / cap; the live
    report's recommendation follows it: a workflow cheap against its target and baseline, whose
    budget passed its warning percentage, gets more_budget when its tasks succeed; one whose budget
    stayed under it is held with room to spare."""
    from fleetwarden.views import live

    ns = fleet.namespace
    teams = set(fleet.teams.values())

    def hourly(res):
        return {r["metric"]["budget"]: float(r["value"][1]) for r in res
                if r["metric"].get("namespace") == ns and r["metric"].get("window") == "hour"}

    peaks = hourly(views_fleet.wait_for_data(prometheus, live.cap_peaks_query("600s"),
                                             until=lambda res: set(hourly(res)) >= teams))
    assert set(peaks) == teams
    current = {r["metric"]["budget"]: float(r["value"][1]) for r in prometheus.query(
        f'fleetwarden_budget_spend_usd{{namespace="{ns}", window="hour"}} / '
        f'fleetwarden_budget_limit_usd{{namespace="{ns}", window="hour"}}')}
    for team in teams:  # the operator's spend only grows here: the peak is (about) the latest value
        assert 0 < peaks[team] <= current[team] + 1e-9 and peaks[team] >= 0.9 * current[team] - 0.05, (
            team, peaks, current)

    # every team's budget: a generous target, warning at the midpoint of the teams' peaks
    warning = 100 * sorted(peaks.values())[len(peaks) // 2]
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("\n---\n".join(json.dumps({
        "apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget", "metadata": {"name": team, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"team": team}},
                 "limits": [{"window": "hour", "amountUSD": 20, "warningPercent": warning}],
                 "unitEconomics": [{"outcome": o, "targetCostUSD": 1000, "humanBaselineUSD": 1000}
                                   for o in ("resolved_ticket", "purchase_decision", "qualified_lead")]}})
        for team in sorted(teams)))
    out = tmp_path / "live-econ.json"
    assert cli.main(["report", "--prometheus", prometheus.url, "--window", "10m", "-f", str(budgets),
                     "--output", "json", "-o", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["economics"] if r["namespace"] == ns and r.get("budget")]
    assert rows, "no economics row with a budget"
    judged = 0
    for row in rows:
        if row["recommendation"] in ("retire", "optimise") or "ended" in row["reason"]:
            continue
        # the peak as the report read it: at or past the warning percentage (ties count as near)
        near = 100 * peaks[row["budget"]] >= warning - 1e-6
        if near:
            assert row["recommendation"] == "more_budget" or "success rate" in row["reason"], row
            assert "of the hour cap" in row["reason"] or row["recommendation"] != "more_budget", row
        else:
            assert row["recommendation"] == "hold" and "budget has room" in row["reason"], row
        judged += 1
    assert judged, rows
