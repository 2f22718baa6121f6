"""The Grafana dashboards: structure, variables, datasource, and ConfigMaps in step with the JSON."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "manifests" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_both_dashboards_exist():
    """There is a platform and a governance dashboard."""
    assert {p.stem for p in DASHBOARDS} == {"platform", "governance"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_variables_and_datasource(path):
    """Schema ~39, a datasource variable and namespace/agent/team variables; every query uses ${datasource}."""
    d = _load(path)
    assert 36 <= d["schemaVersion"] <= 41
    names = [v["name"] for v in d["templating"]["list"]]
    assert names[0] == "datasource" and {"namespace", "agent", "team"} <= set(names)
    for panel in d["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_have_unique_ids_and_do_not_overlap(path):
    """Panel ids are unique and no two panels share a grid cell."""
    d = _load(path)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= mine


def test_metric_names_are_the_documented_ones():
    """Every fleetwarden_* name a dashboard queries is one docs/design.md documents."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"fleetwarden_[a-z_]+", design))
    for path in DASHBOARDS:
        used = set(re.findall(r"fleetwarden_[a-z_]+", path.read_text(encoding="utf-8")))
        for name in used:
            base = re.sub(r"_(sum|count|bucket)$", "", name)
            assert name in documented or base in documented, f"{path.name}: {name}"


def test_governance_joins_owner_info_and_reads_budget_metrics():
    """The governance dashboard groups spend through owner_info and shows budget burn and kill switch."""
    text = (GRAFANA / "governance.json").read_text(encoding="utf-8")
    assert "group_left (team) max by (namespace, agent, team) (fleetwarden_agent_owner_info" in text
    for name in ("fleetwarden_budget_spend_usd", "fleetwarden_budget_limit_usd",
                 "fleetwarden_budget_kill_switch_engaged", "fleetwarden_findings_total", "ALERTS"):
        assert name in text


def test_configmaps_are_generated_from_the_json():
    """configmaps.yaml is exactly what scripts/gen-grafana-configmaps.py makes of the JSON files."""
    spec = importlib.util.spec_from_file_location("gen_cm", ROOT / "scripts" / "gen-grafana-configmaps.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (GRAFANA / "configmaps.yaml").read_text(encoding="utf-8") == gen.render(GRAFANA)


def test_configmaps_carry_the_sidecar_label_and_the_same_dashboards():
    """Each ConfigMap is labelled grafana_dashboard: "1" and holds one dashboard equal to its JSON file."""
    docs = list(yaml.safe_load_all((GRAFANA / "configmaps.yaml").read_text(encoding="utf-8")))
    assert len(docs) == len(DASHBOARDS)
    for doc in docs:
        assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, body),) = doc["data"].items()
        assert json.loads(body) == _load(GRAFANA / name)
