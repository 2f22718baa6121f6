"""The operator end to end on anomalies: model rollback (and roll forward), tool-call explosion.

Anomalies need history (a baseline of tens of minutes). Rather than wait for it, each test
writes the history as OpenMetrics samples, turns them into TSDB blocks with ``promtool tsdb
create-blocks-from openmetrics`` (Prometheus' own backfill), starts a real Prometheus on
them, and lets the controlled exporter carry the same counters on live from where the
history ends. The operator sees a real Prometheus answering real PromQL over 40 minutes.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, start_operator  # noqa: F401 - fixture
from test_operator_budget import (
    FAMILIES,
    SCRAPE,
    Exporter,
    condition,
    deployment,
    events,
    exporter,  # noqa: F401 - fixture
    status,
)

from fleetwarden.devcluster import monitoring

STEP = 15  # seconds between backfilled samples
HISTORY_MINUTES = 40

# per-minute rates of one minute of history: family -> list of (labels, increment)
Minute = dict[str, list[tuple[dict[str, str], float]]]


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


def backfill(directory: Path, minutes: list[Minute], end: int) -> dict[tuple[str, str], float]:
    """Write ``minutes`` (oldest first, the last ending at ``end``) as TSDB blocks in ``directory``.

    Counters grow linearly within each minute, sampled every ``STEP`` s. Returns the final
    total of each series (family, labels text), where the live exporter carries on."""
    start = end - 60 * len(minutes)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    totals: dict[tuple[str, str], float] = {}
    keys: dict[tuple[str, str], dict[str, str]] = {}
    for minute in minutes:
        for family, rows in minute.items():
            for labels, _ in rows:
                key = (family, _labels_text(labels))
                keys[key] = labels
                totals.setdefault(key, 0.0)
    for i, minute in enumerate(minutes):
        rate = {(family, _labels_text(labels)): inc for family, rows in minute.items() for labels, inc in rows}
        t0 = start + 60 * i
        for key in keys:
            inc = rate.get(key, 0.0)
            for k in range(60 // STEP):
                ts = t0 + k * STEP
                value = totals[key] + inc * k * STEP / 60
                series.setdefault(key, []).append((ts, value))
            totals[key] += inc
    for key in keys:
        series[key].append((end, totals[key]))
    lines = []
    for family, (name, _) in FAMILIES.items():
        mine = [key for key in series if key[0] == family]
        if not mine:
            continue
        lines.append(f"# TYPE {name} counter")
        for key in mine:
            for ts, value in series[key]:
                lines.append(f"{name}_total{{{key[1]}}} {value:.6f} {ts}")
    lines.append("# EOF")
    directory.mkdir(parents=True, exist_ok=True)
    text = directory / "history.om"
    text.write_text("\n".join(lines) + "\n")
    tsdb = directory / "tsdb"
    tsdb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(text), str(tsdb)],
                   check=True, capture_output=True, text=True, timeout=120)
    return {key: totals[key] for key in keys}


def carry_on(exporter: Exporter, minutes: list[Minute], totals: dict[tuple[str, str], float]) -> None:  # noqa: F811
    """Start the live counters at the totals the history ended with."""
    for minute in minutes:
        for family, rows in minute.items():
            for labels, _ in rows:
                exporter.set(family, totals[(family, _labels_text(labels))], **labels)


def prometheus_with_history(workdir: Path, exporter: Exporter, minutes: list[Minute],  # noqa: F811
                            request: pytest.FixtureRequest) -> monitoring.Prometheus:
    end = int(time.time() // 60) * 60
    directory = workdir / "prometheus"
    totals = backfill(directory, minutes, end)
    carry_on(exporter, minutes, totals)
    prom = monitoring.Prometheus(directory, scrape_interval=SCRAPE, tie_to_parent=True)
    prom.start()
    request.addfinalizer(prom.stop)
    prom.add_target("agents", exporter.address)
    prom.wait_for_target_up("agents", timeout=30)
    return prom


def budget(namespace: str, **spec: Any) -> str:
    body = {"selector": {"matchLabels": {"app": "support"}}, "limits": [{"window": "day", "amountUSD": 1000}],
            "killSwitch": {"window": "day"}}
    body.update(spec)
    return json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                       "metadata": {"name": "support", "namespace": namespace}, "spec": body})


def policy(namespace: str, anomalies: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy",
                       "metadata": {"name": "anomalies", "namespace": namespace},
                       "spec": {"anomalies": anomalies}})


def model_env(cluster: Any, namespace: str, name: str = "bot") -> str | None:
    d = cluster.get_json("deployment", name, "-n", namespace)
    for env in d["spec"]["template"]["spec"]["containers"][0].get("env") or []:
        if env["name"] == "MODEL":
            return str(env["value"])
    return None


def test_model_update_spike_rolls_back_then_a_person_rolls_forward(
        cluster: Any, namespace: str, crds_installed: list[str], exporter: Exporter,  # noqa: F811
        workdir: Path, request: pytest.FixtureRequest) -> None:  # noqa: F811
    """Cost per task triples after MODEL changes: MODEL set back; spec.model.desired then rolls it forward."""
    def minute(model: str, cost: float) -> Minute:
        llm = {"agent": "bot", "namespace": namespace, "workflow": "support", "step": "answer", "model": model}
        task = {"agent": "bot", "namespace": namespace, "workflow": "support", "status": "completed"}
        return {"llm_cost": [(llm, cost)], "llm_calls": [({**llm, "status": "ok"}, 4.0)], "tasks": [(task, 2.0)]}

    history = [minute("gpt-4o-mini", 0.02)] * 30 + [minute("gpt-4o", 0.06)] * 10  # 0.01 -> 0.03 USD a task
    prom = prometheus_with_history(workdir, exporter, history, request)
    cluster.apply(deployment("bot", namespace, 2, model="gpt-4o-mini"))
    cluster.kubectl("set", "env", "deployment/bot", "-n", namespace, "MODEL=gpt-4o")  # the update
    cluster.apply(policy(namespace, {"modelUpdateSpike": {"minTasks": 5, "baselineTasks": 40, "ratio": 1.8}}))
    cluster.apply(budget(namespace))
    start_operator(cluster, prom.url, namespace, workdir, request)

    cluster.wait_for(lambda: model_env(cluster, namespace) == "gpt-4o-mini", 60, "MODEL rolled back")
    st = cluster.wait_for(lambda: (status(cluster, namespace).get("model") or {}).get("rollbacks"), 30,
                          "status.model.rollbacks")
    rollback = st[-1]
    assert (rollback["agent"], rollback["from"], rollback["to"]) == ("bot", "gpt-4o", "gpt-4o-mini")
    assert rollback["incident"].startswith("inc-")
    assert condition(status(cluster, namespace), "AnomalyDetected")["reason"] == "ModelUpdateSpike"
    assert any(e["type"] == "Warning" and rollback["incident"] in e["message"]
               for e in events(cluster, namespace, "ModelRolledBack"))

    # a person decides the new model is worth it: roll forward
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"model": {"desired": "gpt-4o"}}}))
    cluster.wait_for(lambda: model_env(cluster, namespace) == "gpt-4o", 60, "MODEL rolled forward")
    model = cluster.wait_for(lambda: (m := status(cluster, namespace).get("model") or {}).get("specDesired") and m,
                             30, "status.model.specDesired")
    assert model["specDesired"] == "gpt-4o"
    assert model["rollbacks"][-1]["reason"] == "spec.model.desired"


def test_tool_call_explosion_is_reported(cluster: Any, namespace: str, crds_installed: list[str],  # noqa: F811
                                         exporter: Exporter, workdir: Path,  # noqa: F811
                                         request: pytest.FixtureRequest) -> None:
    """Calls to one tool jump fiftyfold: AnomalyDetected=True (ToolCallExplosion) and a Warning event."""
    def minute(calls: float) -> Minute:
        llm = {"agent": "bot", "namespace": namespace, "workflow": "support", "step": "answer",
               "model": "gpt-4o-mini"}
        tool = {"agent": "bot", "namespace": namespace, "workflow": "support", "step": "lookup",
                "tool": "crm.search", "status": "ok"}
        task = {"agent": "bot", "namespace": namespace, "workflow": "support", "status": "completed"}
        return {"llm_cost": [(llm, 0.01)], "llm_calls": [({**llm, "status": "ok"}, 10.0)],
                "tool_calls": [(tool, calls)], "tasks": [(task, 2.0)]}

    history = [minute(3.0)] * 37 + [minute(150.0)] * 3
    prom = prometheus_with_history(workdir, exporter, history, request)
    cluster.apply(deployment("bot", namespace, 1))
    cluster.apply(policy(namespace, {"toolCallExplosion": {"baselineMinutes": 20, "windowMinutes": 3}}))
    cluster.apply(budget(namespace))
    start_operator(cluster, prom.url, namespace, workdir, request)

    def anomalous() -> dict[str, Any] | None:
        st = status(cluster, namespace)
        return st if condition(st, "AnomalyDetected").get("status") == "True" else None

    st = cluster.wait_for(anomalous, 60, "AnomalyDetected=True")
    anomaly = condition(st, "AnomalyDetected")
    assert anomaly["reason"] == "ToolCallExplosion"
    assert "crm.search" in anomaly["message"]
    assert any(e["type"] == "Warning" and "crm.search" in e["message"]
               for e in events(cluster, namespace, "ToolCallExplosion"))
    assert st["topTools"][0]["name"] == "crm.search"
    assert [i["kind"] for i in st["incidents"]] == ["tool_call_explosion"]
    assert cluster.get_json("deployment", "bot", "-n", namespace)["spec"]["replicas"] == 1
