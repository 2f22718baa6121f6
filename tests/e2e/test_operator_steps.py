# ruff: noqa: F811 - pytest fixtures imported from test_operator_budget are parameters here
"""The graduated response on the real stack: a budget walks up its steps as spend rises (a cheaper
model on the Deployments, an output-token cap and no new tasks in the policy ConfigMap the SDK
reads, then scale to zero), a person acknowledges, a higher step engages again, and a raised cap
undoes every step, restoring the models and replicas the steps replaced.

Real parts only, as in test_operator_budget: the operator as its own ServiceAccount, a real
Prometheus scraping a controlled exporter, the SDK reading the ConfigMap the operator published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, start_operator  # noqa: F401 - fixture
from test_operator_budget import (  # noqa: F401 - fixtures
    Exporter,
    condition,
    events,
    exporter,
    fleet,
    llm_labels,
    replicas,
    status,
)

from fleetwarden import sdk

STEPS = [{"atPercent": 50, "action": "CheaperModel", "model": "gpt-4.1-nano"},
         {"atPercent": 70, "action": "CapOutputTokens", "maxOutputTokens": 256},
         {"atPercent": 90, "action": "StopNewTasks"},
         {"atPercent": 100, "action": "ScaleToZero", "name": "stop"}]


def stepped_budget(namespace: str, hour_cap: float) -> str:
    return json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                       "metadata": {"name": "support", "namespace": namespace},
                       "spec": {"selector": {"matchLabels": {"app": "support"}},
                                "limits": [{"window": "hour", "amountUSD": hour_cap}],
                                "killSwitch": {"window": "hour", "thresholdPercent": 400}, "steps": STEPS}})


def model(cluster: Any, namespace: str, name: str) -> str:
    dep = cluster.get_json("deployment", name, "-n", namespace)
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    return str(next(e["value"] for e in env if e["name"] == "MODEL"))


def active(cluster: Any, namespace: str) -> list[str]:
    return [a["name"] for a in (status(cluster, namespace).get("steps") or {}).get("active") or ()]


def sdk_steps(cluster: Any, namespace: str, tmp: Path) -> sdk.GuardrailPolicy:
    """The SDK's view of the policy ConfigMap: its files written as the kubelet mounts them."""
    cm = cluster.get_json("configmap", "fleetwarden-policy-support", "-n", namespace)
    tmp.mkdir(exist_ok=True)
    for key, value in cm["data"].items():
        (tmp / key).write_text(value)
    return sdk.GuardrailPolicy.from_dir(tmp)


def test_a_budget_walks_up_its_steps_and_back_down(cluster: Any, namespace: str, fleet: dict[str, Any],
                                                   prometheus: Any, exporter: Exporter, workdir: Path,
                                                   request: pytest.FixtureRequest) -> None:
    cluster.apply(json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy",
                              "metadata": {"name": "support", "namespace": namespace},
                              "spec": {"selector": {"matchLabels": {"app": "support"}}}}))
    cluster.apply(stepped_budget(namespace, hour_cap=1.0))
    op = start_operator(cluster, prometheus.url, namespace, workdir, request)
    cluster.wait_for(lambda: condition(status(cluster, namespace), "StepActive").get("reason") == "NoStepActive",
                     60, "StepActive=False before any spend")

    # 1: 60% of the cap -> CheaperModel: both Deployments run the cheaper model, recorded like a rollback
    exporter.set("llm_cost", 0.6, **llm_labels("bot", namespace))
    cluster.wait_for(lambda: {model(cluster, namespace, n) for n in ("bot", "helper")} == {"gpt-4.1-nano"},
                     60, "CheaperModel sets the cheaper model")
    st = status(cluster, namespace)
    assert [a["name"] for a in st["steps"]["active"]] == ["CheaperModel-50"]
    assert st["steps"]["models"] == {"bot": "gpt-4o-mini", "helper": "gpt-4o-mini"}
    assert {(r["agent"], r["to"]) for r in st["model"]["rollbacks"]} == {("bot", "gpt-4.1-nano"),
                                                                        ("helper", "gpt-4.1-nano")}
    described = cluster.kubectl("describe", "agentbudget", "support", "-n", namespace).stdout
    assert "StepActive" in described and "CheaperModel-50 since" in described and "60% of the 1 USD cap" in described

    # 2: 95% -> CapOutputTokens and StopNewTasks reach the SDK through the policy ConfigMap
    exporter.set("llm_cost", 0.95, **llm_labels("bot", namespace))
    cluster.wait_for(lambda: json.loads(cluster.get_json("configmap", "fleetwarden-policy-support", "-n", namespace)
                                        ["data"]["steps.json"])["stopNewTasks"], 60, "StopNewTasks in the ConfigMap")
    assert active(cluster, namespace) == ["CheaperModel-50", "CapOutputTokens-70", "StopNewTasks-90"]
    policy = sdk_steps(cluster, namespace, workdir / "policy-1")
    tracker = sdk.Tracker("bot", namespace=namespace, policy=policy)
    with pytest.raises(sdk.TasksStopped, match="support/StopNewTasks-90"):
        tracker.start_task("support")
    assert policy.steps.max_output_tokens == 256 and tracker.max_output_tokens(4096) == 256
    assert replicas(cluster, namespace, "bot") == 3 and len(events(cluster, namespace, "StepEngaged")) == 3

    # 3: a person acknowledges: every step undone (the model restored, the SDK free again)
    engagement = status(cluster, namespace)["steps"]["engagement"]
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"acknowledgeSteps": engagement}}))
    cluster.wait_for(lambda: condition(status(cluster, namespace), "StepActive").get("reason") == "StepAcknowledged",
                     60, "StepAcknowledged")
    cluster.wait_for(lambda: not json.loads(cluster.get_json("configmap", "fleetwarden-policy-support", "-n",
                                                             namespace)["data"]["steps.json"])["stopNewTasks"],
                     60, "StopNewTasks gone from the ConfigMap")
    assert {model(cluster, namespace, n) for n in ("bot", "helper")} == {"gpt-4o-mini"}
    with sdk.Tracker("bot", namespace=namespace, policy=sdk_steps(cluster, namespace, workdir / "policy-2")
                     ).task("support"):
        pass
    op.wait_evaluations(cluster, 3)
    assert active(cluster, namespace) == []  # stays undone while spend stays where it was

    # 4: 110% -> ScaleToZero engages; the acknowledgements below it lapse: every step in force again
    exporter.set("llm_cost", 1.1, **llm_labels("bot", namespace))
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0 and replicas(cluster, namespace, "helper") == 0,
                     60, "ScaleToZero stops both agents")
    cluster.wait_for(lambda: active(cluster, namespace) == ["CheaperModel-50", "CapOutputTokens-70",
                                                            "StopNewTasks-90", "stop"], 30, "every step in force")
    assert status(cluster, namespace)["steps"]["replicas"] == {"bot": 3, "helper": 2}
    assert {model(cluster, namespace, n) for n in ("bot", "helper")} == {"gpt-4.1-nano"}

    # 5: the cap raised to 10 USD (spend is 11% of it): every step undone, replicas and models restored
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"limits": [{"window": "hour", "amountUSD": 10}]}}))
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 3 and replicas(cluster, namespace, "helper") == 2,
                     60, "the replicas from before the step restored")
    cluster.wait_for(lambda: {model(cluster, namespace, n) for n in ("bot", "helper")} == {"gpt-4o-mini"},
                     30, "the model from before the step restored")
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("steps") is None and s, 30, "no step")
    assert (condition(st, "StepActive")["status"], condition(st, "StepActive")["reason"]) == ("False", "NoStepActive")
    cluster.wait_for(lambda: json.loads(cluster.get_json("configmap", "fleetwarden-policy-support", "-n", namespace)
                                        ["data"]["steps.json"]) == {"maxOutputTokens": None, "stopNewTasks": False,
                                                                   "steps": []}, 60, "the ConfigMap cleared")
    assert len(events(cluster, namespace, "StepUndone")) >= 7  # 3 acknowledged, then 4 under the raised cap
