"""The Prometheus rule file, its PrometheusRule twin and the agents' PodMonitor."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "manifests" / "prometheus"
PROMTOOL = shutil.which("promtool") or "promtool"  # scripts/setup installs it; missing, these tests fail


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_prometheusrule", ROOT / "scripts" / "gen-prometheusrule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_promtool_accepts_the_rule_file():
    """`promtool check rules` accepts manifests/prometheus/rules.yaml."""
    result = subprocess.run([PROMTOOL, "check", "rules", str(PROM / "rules.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass():
    """Every promtool unit test in manifests/prometheus/tests/ passes."""
    tests = sorted(str(p) for p in (PROM / "tests").glob("*.yaml"))
    assert tests, "no promtool unit tests found"
    result = subprocess.run([PROMTOOL, "test", "rules", *tests], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheusrule_is_generated_from_the_rule_file():
    """prometheusrule.yaml is exactly what scripts/gen-prometheusrule.py makes of rules.yaml."""
    gen = _gen_module()
    expected = gen.render((PROM / "rules.yaml").read_text(encoding="utf-8"))
    assert (PROM / "prometheusrule.yaml").read_text(encoding="utf-8") == expected


def test_prometheusrule_carries_the_same_groups():
    """The PrometheusRule's spec.groups equal the rule file's groups, rule for rule."""
    plain = yaml.safe_load((PROM / "rules.yaml").read_text(encoding="utf-8"))
    wrapped = yaml.safe_load((PROM / "prometheusrule.yaml").read_text(encoding="utf-8"))
    assert wrapped["kind"] == "PrometheusRule"
    assert wrapped["spec"]["groups"] == plain["groups"]


def test_every_alert_has_severity_summary_and_description():
    """Each alert names a severity and says what happened and what to do."""
    plain = yaml.safe_load((PROM / "rules.yaml").read_text(encoding="utf-8"))
    alerts = [r for g in plain["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "FleetwardenBudgetExceeded", "FleetwardenKillSwitchEngaged", "FleetwardenToolCallExplosion",
        "FleetwardenRunawayLoop", "FleetwardenAgentMetricsAbsent",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


def test_podmonitor_selects_agents_and_relabels_owner_labels():
    """The PodMonitor scrapes pods labelled as agents and maps pod team/project/cost-center labels."""
    pm = yaml.safe_load((PROM / "podmonitor.yaml").read_text(encoding="utf-8"))
    assert pm["kind"] == "PodMonitor"
    assert pm["spec"]["selector"]["matchLabels"] == {"fleetwarden.dev/agent": "true"}
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets["team"] == ["__meta_kubernetes_pod_label_team"]
    assert targets["project"] == ["__meta_kubernetes_pod_label_project"]
    assert targets["cost_center"] == ["__meta_kubernetes_pod_label_cost_center"]
