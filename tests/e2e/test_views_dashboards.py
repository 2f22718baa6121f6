"""Every PromQL query of the Grafana dashboards returns data from the real Prometheus,
scraping the real simulator and the real operator (tests/e2e/views_fleet.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import views_fleet
from fixtures_fleetwarden import crds_installed  # noqa: F401 - fixture
from views_fleet import views_fleet_session  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "manifests" / "grafana"


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables as Grafana would expand them for a 10-minute dashboard range."""
    out = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "10m")
    for name, value in values.items():
        out = re.sub(r"\$\{?" + name + r"\}?(?![A-Za-z0-9_])", value, out)
    assert "$" not in out.replace("$1", ""), out
    return out


@pytest.fixture(scope="module")
def fleet(views_fleet_session):  # noqa: F811
    return views_fleet_session


def _values(fleet) -> dict[str, str]:
    return {"namespace": fleet.namespace, "agent": "|".join(fleet.agents),
            "team": "|".join(sorted(set(fleet.teams.values()))), "datasource": "prometheus"}


def _targets(name: str):
    dashboard = json.loads((GRAFANA / name).read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["refId"], target["expr"]


@pytest.mark.parametrize("name", ["platform.json", "governance.json"])
def test_every_panel_query_returns_data(prometheus, fleet, name):
    """Each query of each panel, variables set to real values, returns at least one series."""
    values = _values(fleet)
    missing = []
    for title, ref, expr in _targets(name):
        promql = substitute(expr, values)
        try:
            views_fleet.wait_for_data(prometheus, promql, timeout=120)
        except AssertionError as exc:
            missing.append(f"{title} [{ref}]: {exc}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("name", ["platform.json", "governance.json"])
def test_variable_queries_list_the_fleet(prometheus, fleet, name):
    """The namespace, agent and team variables list the namespace, agents and teams of the fleet."""
    dashboard = json.loads((GRAFANA / name).read_text())
    values = _values(fleet)
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", var["query"]["query"])
        assert m, var["query"]["query"]
        selector = substitute(m.group(1), values)
        expected = {"namespace": {fleet.namespace}, "agent": set(fleet.agents),
                    "team": set(fleet.teams.values())}[var["name"]]
        label = m.group(2)
        # waits for the whole set (AssertionError naming what it saw if it never fills)
        views_fleet.wait_for_data(prometheus, f"count by ({label}) ({selector})",
                                  until=lambda res, label=label, expected=expected:
                                  expected <= {r["metric"][label] for r in res})


def test_owner_join_splits_spend_by_team(prometheus, fleet):
    """Governance spend by team sums exactly the spend of that team's agents."""
    dashboard = json.loads((GRAFANA / "governance.json").read_text())
    panel = next(p for p in dashboard["panels"] if p["title"] == "Spend by team (range)")
    values = _values(fleet)
    by_team = {r["metric"]["team"]: float(r["value"][1])
               for r in views_fleet.wait_for_data(
                   prometheus, substitute(panel["targets"][0]["expr"], values),
                   until=lambda res: {r["metric"]["team"] for r in res} >= set(fleet.teams.values()))}
    assert set(by_team) == set(fleet.teams.values())
    assert all(v > 0 for v in by_team.values())


def test_annotation_queries_run(prometheus, fleet):
    """The annotation queries (model changes, alerts, kill switch) are valid PromQL on the real server."""
    values = _values(fleet)
    for name in ("platform.json", "governance.json"):
        for ann in json.loads((GRAFANA / name).read_text())["annotations"]["list"]:
            if "expr" in ann:
                prometheus.query(substitute(ann["expr"], values))  # raises on a bad query
