"""`fleetwarden report --prometheus` against the real Prometheus scraping the simulator."""

from __future__ import annotations

import json

import pytest
import views_fleet

from fleetwarden import cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(prometheus, tmp_path_factory):
    with views_fleet.running_fleet(prometheus, tmp_path_factory.mktemp("views-live")) as running:
        # two scrapes of growing counters make increase() positive, for every agent
        views_fleet.wait_for_data(
            prometheus,
            f'sum by (agent) (increase(fleetwarden_llm_cost_usd_total{{namespace="{running.namespace}"}}[5m])) > 0',
            until=lambda res: {r["metric"]["agent"] for r in res} >= set(running.agents))
        views_fleet.wait_for_data(
            prometheus, f'sum(increase(fleetwarden_findings_total{{namespace="{running.namespace}"}}[5m])) > 0')
        yield running


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
    assert (ns, "tool_call_explosion") in kinds
