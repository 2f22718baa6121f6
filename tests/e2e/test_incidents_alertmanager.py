"""Incident records on the real API server, read back by `fleetwarden incident`, and the alert
reaching a real Alertmanager and its webhook receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed  # noqa: F401 - fixture

from fleetwarden.adapters import alertmanager as am
from fleetwarden.adapters import kube
from fleetwarden.core import decision, findings
from fleetwarden.handlers import incidents as recorder

T0 = float(int(time.time() // 60 * 60))


def _kill(namespace: str) -> findings.Finding:
    return findings.Finding(kind=findings.KILL_SWITCH, agent="support-bot", namespace=namespace, time=T0,
                            action=findings.KILL, budget="support", onset=T0 - 240,
                            message="spend passed 150% of the hourly cap; agents scaled to zero",
                            evidence={"spend_usd": 31.5, "cap_usd": 20.0, "threshold_percent": 150})


def _spike(namespace: str) -> findings.Finding:
    return findings.Finding(kind=findings.MODEL_UPDATE_SPIKE, agent="support-bot", namespace=namespace,
                            time=T0 - 60, action=findings.ROLLBACK, budget="support", onset=T0 - 900,
                            model="gpt-5", previous_model="gpt-4o",
                            message="cost per task rose 2.4x after the model changed to gpt-5",
                            evidence={"ratio": 2.4, "cost_per_task_usd": 0.84})


@pytest.fixture
def agent_and_budget(cluster: Any, namespace: str, crds_installed: list[str]) -> dict[str, Any]:  # noqa: F811
    """A Deployment support-bot and the AgentBudget support over it; returns the budget body."""
    cluster.apply(json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "support-bot", "namespace": namespace, "labels": {"team": "support"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "support-bot"}},
                 "template": {"metadata": {"labels": {"app": "support-bot"}},
                              "spec": {"containers": [{"name": "agent", "image": "example.invalid/agent:1"}]}}},
    }))
    cluster.apply(json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                              "metadata": {"name": "support", "namespace": namespace},
                              "spec": {"selector": {"matchLabels": {"team": "support"}},
                                       "limits": [{"window": "hour", "amountUSD": 20}]}}))
    return cluster.get_json("agentbudget", "support", "-n", namespace)  # type: ignore[no-any-return]


def _fleetwarden(cluster: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    return subprocess.run([sys.executable, "-m", "fleetwarden", *argv], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def test_recorder_is_idempotent_and_the_cli_reads_it_back(cluster: Any, namespace: str,
                                                          agent_and_budget: dict[str, Any], tmp_path: Path) -> None:
    """Two identical evaluations write one record per incident; list/show/postmortem read them back."""
    k = kube.Kube(kube.load_config(cluster.kubeconfig))
    kill, spike = _kill(namespace), _spike(namespace)
    actions = [decision.ScaleToZero(agent="support-bot", replicas_to_remember=3, reason="kill"),
               decision.SetModel(agent="support-bot", model="gpt-4o", previous="gpt-5", reason="rollback",
                                 incident=findings.incident_id(spike))]
    rec = recorder.Recorder(clock=lambda: T0 + 5)
    rec.record(agent_and_budget, [kill, spike], actions, k)
    cm = cluster.get_json("configmap", recorder.CONFIGMAP, "-n", namespace)
    ids = sorted([findings.incident_id(kill), findings.incident_id(spike)])
    assert sorted(cm["data"]) == ids

    # The same evaluation again (a refold, a restart): nothing is written at all.
    recorder.Recorder(clock=lambda: T0 + 65).record(agent_and_budget, [kill, spike], actions, k)
    again = cluster.get_json("configmap", recorder.CONFIGMAP, "-n", namespace)
    assert again["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]
    kill_record = json.loads(again["data"][findings.incident_id(kill)])
    assert [a["action"] for a in kill_record["actions"]] == ["kill"]

    for kind, name in (("deployment", "support-bot"), ("agentbudget", "support")):
        annotation = cluster.get_json(kind, name, "-n", namespace)["metadata"]["annotations"][recorder.ANNOTATION]
        assert sorted(e["id"] for e in json.loads(annotation)) == ids

    listed = _fleetwarden(cluster, "incident", "list", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    assert all(i in listed.stdout for i in ids)
    everywhere = _fleetwarden(cluster, "incident", "list", "-A", "-o", "json")
    assert everywhere.returncode == 0, everywhere.stderr
    assert set(ids) <= {r["id"] for r in json.loads(everywhere.stdout)}

    shown = _fleetwarden(cluster, "incident", "show", findings.incident_id(spike))
    assert shown.returncode == 0, shown.stderr
    assert "gpt-4o -> gpt-5" in shown.stdout and "rollback" in shown.stdout

    out = tmp_path / "postmortem.md"
    drafted = _fleetwarden(cluster, "incident", "postmortem", findings.incident_id(kill), "-n", namespace,
                           "-o", str(out))
    assert drafted.returncode == 0, drafted.stderr
    text = out.read_text()
    assert "## Timeline (UTC)" in text and "$31.50" in text and "scaled support-bot from 3 to 0" in text

    missing = _fleetwarden(cluster, "incident", "show", "inc-0000000000", "-n", namespace)
    assert missing.returncode == 2 and "no incident inc-0000000000" in missing.stderr


def test_notifier_alert_reaches_alertmanager_and_its_receiver(cluster: Any, namespace: str,
                                                              agent_and_budget: dict[str, Any],
                                                              alertmanager: Any) -> None:
    """The hook posts to Alertmanager's v2 API; the webhook receiver gets FleetwardenKillSwitch."""
    notifier = am.configure(alertmanager.url)
    assert notifier is not None
    try:
        kill = _kill(namespace)
        recorder.notify_alertmanager(agent_and_budget, [kill], [], None)
        assert notifier.flush(10)
        assert notifier.sent == 1 and notifier.failed == 0

        def ours() -> dict[str, Any] | None:
            for alert in reversed(alertmanager.alerts()):
                labels = alert.get("labels", {})
                if labels.get("alertname") == "FleetwardenKillSwitch" and labels.get("namespace") == namespace:
                    return alert  # type: ignore[no-any-return]
            return None

        alert = cluster.wait_for(ours, 60, "the kill-switch alert at the webhook receiver")
        assert alert["status"] == "firing"
        assert alert["labels"]["incident"] == findings.incident_id(kill)
        assert alert["labels"]["severity"] == "critical"
        assert (alert["labels"]["agent"], alert["labels"]["budget"]) == ("support-bot", "support")
        assert "150%" in alert["annotations"]["summary"] + alert["annotations"]["description"]
    finally:
        am.configure(None)
