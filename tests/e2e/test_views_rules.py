"""The Prometheus rules on the real Prometheus: recordings from the simulator's metrics,
alerts from what the real operator exports (tests/e2e/views_fleet.py)."""

from __future__ import annotations

import pytest
import views_fleet
from fixtures_fleetwarden import crds_installed  # noqa: F401 - fixture
from views_fleet import views_fleet_session  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def fleet(views_fleet_session):  # noqa: F811
    return views_fleet_session


def test_rule_groups_load(prometheus, fleet):
    """Prometheus loads both rule groups with every rule healthy."""
    groups = {g["name"]: g for g in prometheus.rules()}
    assert {"fleetwarden.recording", "fleetwarden.alerts"} <= set(groups)
    views_fleet.wait_for_data(prometheus, 'fleetwarden:agent_cost_usd_per_hour:rate5m', timeout=120)
    for group in (groups["fleetwarden.recording"], groups["fleetwarden.alerts"]):
        for rule in group["rules"]:
            assert rule.get("health") in ("ok", "unknown"), (rule["name"], rule.get("lastError"))


def test_cost_rate_recorded_per_agent_and_team(prometheus, fleet):
    """The cost-rate recordings cover every simulated agent and every owner team, with positive values."""
    ns = fleet.namespace
    per_agent = views_fleet.wait_for_data(
        prometheus, f'fleetwarden:agent_cost_usd_per_hour:rate5m{{namespace="{ns}"}} > 0', timeout=120,
        until=lambda res: {r["metric"]["agent"] for r in res} >= set(fleet.agents))
    assert {r["metric"]["agent"] for r in per_agent} == set(fleet.agents)
    teams = set(fleet.teams.values())
    per_owner = views_fleet.wait_for_data(
        prometheus, f'fleetwarden:owner_cost_usd_per_hour:rate5m{{team=~"{"|".join(teams)}"}} > 0', timeout=120,
        until=lambda res: {r["metric"]["team"] for r in res} >= teams)
    assert {r["metric"]["team"] for r in per_owner} == teams


def test_budget_ratio_and_alerts_fire(prometheus, fleet):
    """Budget use is recorded from the operator's gauges; the kill-switch alert fires for the budget
    whose kill switch the operator engaged, the anomaly alert for the finding it reported."""
    ns = fleet.namespace
    teams = set(fleet.teams.values())
    ratio = views_fleet.wait_for_data(prometheus, f'fleetwarden:budget_used:ratio{{namespace="{ns}", window="hour"}}',
                                      until=lambda res: {r["metric"]["budget"] for r in res} >= teams)
    by_budget = {r["metric"]["budget"]: float(r["value"][1]) for r in ratio}
    assert all(0 < by_budget[t] < 1 for t in teams - {views_fleet.KILLED_TEAM}), by_budget
    assert by_budget[views_fleet.KILLED_TEAM] >= 1.5, by_budget  # past its kill threshold
    killed = views_fleet.wait_for_data(
        prometheus, f'ALERTS{{alertname="FleetwardenKillSwitchEngaged", alertstate="firing", namespace="{ns}"}}',
        until=lambda res: views_fleet.KILLED_TEAM in {r["metric"]["budget"] for r in res})
    assert {r["metric"]["budget"] for r in killed} == {views_fleet.KILLED_TEAM}
    anomalies = views_fleet.wait_for_data(
        prometheus, f'ALERTS{{alertname="FleetwardenAnomalyDetected", alertstate="firing", namespace="{ns}"}}',
        timeout=240, until=lambda res: "tool_not_allowed" in {r["metric"]["kind"] for r in res})
    assert {(r["metric"]["kind"], r["metric"]["action"]) for r in anomalies} >= {("tool_not_allowed", "alert")}
