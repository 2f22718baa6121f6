"""The Prometheus rules on the real Prometheus: recordings from the simulator's metrics,
alerts from the operator-side metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import views_fleet

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[2] / "manifests" / "prometheus" / "rules.yaml"


@pytest.fixture(scope="module")
def fleet(prometheus, tmp_path_factory):
    prometheus.load_rules([RULES])
    try:
        with views_fleet.running_fleet(prometheus, tmp_path_factory.mktemp("views-rules")) as running:
            yield running
    finally:
        prometheus.load_rules([])


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
    """Budget use is recorded; the kill-switch and anomaly alerts fire for the exporter's state."""
    ns = fleet.namespace
    ratio = views_fleet.wait_for_data(prometheus, f'fleetwarden:budget_used:ratio{{namespace="{ns}"}}')
    assert all(0 < float(r["value"][1]) < 1 for r in ratio)
    killed = views_fleet.wait_for_data(
        prometheus, f'ALERTS{{alertname="FleetwardenKillSwitchEngaged", alertstate="firing", namespace="{ns}"}}',
        until=lambda res: "growth" in {r["metric"]["budget"] for r in res})
    assert {r["metric"]["budget"] for r in killed} == {"growth"}
    anomalies = views_fleet.wait_for_data(
        prometheus, f'ALERTS{{alertname="FleetwardenAnomalyDetected", alertstate="firing", namespace="{ns}"}}',
        until=lambda res: "tool_call_explosion" in {r["metric"]["kind"] for r in res})
    assert {r["metric"]["kind"] for r in anomalies} >= {"tool_call_explosion"}
