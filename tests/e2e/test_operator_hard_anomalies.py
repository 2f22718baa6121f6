"""The operator end to end on the hard shapes: a loop inside one task (it kills), a model-update
spike on a slow agent (it rolls back), and replay agreeing with it on both.

Each test takes a labelled fleet of the independent generator (``core/fleetgen.py``, a tuning
seed: held-out seeds are for the benchmark's figures only), buckets its events as replay does,
and writes those minutes as the SDK's metrics would have left them in Prometheus: the counters,
and the open-task gauges that carry the per-task signals (docs/metrics.md). ``promtool tsdb
create-blocks-from openmetrics`` turns them into blocks for a real Prometheus (as
test_operator_anomalies.py does); a controlled exporter carries the series on live. The
operator then reads real PromQL over its lookback and must find what replay found, with the
same incident id (kind, agent, onset minute), and act.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Any

import prometheus_client as pc
import pytest
from fixtures_fleetwarden import crds_installed, start_operator  # noqa: F401 - fixture
from test_operator_anomalies import STEP, _labels_text, budget, model_env
from test_operator_budget import (
    FAMILIES,
    Exporter,
    deployment,
    exporter,  # noqa: F401 - fixture
    status,
)

from fleetwarden.adapters import prometheus as prom_adapter
from fleetwarden.core import buckets, detectors, events, findings, fleetgen, pricing, series, spec
from fleetwarden.devcluster import monitoring

# The agent's baseline before the shape starts (the detectors look back an hour at most).
BASELINE_MINUTES = 70
LOOKBACK = 150  # the operator's lookback (minutes): the whole history written
GAUGE_LABELS = ["agent", "namespace"]


def fleet_minutes(seed: int, shape: str, name: str, namespace: str
                  ) -> tuple[list[series.AgentMinute], list[findings.Finding], fleetgen.Agent]:
    """Replay's minutes of a one-agent fleet with ``shape`` (renamed ``namespace/name``), from
    BASELINE_MINUTES before its onset to two minutes after replay's first finding, and replay's
    findings over exactly those minutes."""
    evs, fleet = fleetgen.build(seed, agents=1, hours=2.5, shapes=(shape,))
    agent = fleet.agents[0]
    bucketer = buckets.Bucketer(pricing.PriceTable())
    minutes: list[series.AgentMinute] = []
    for ev in evs:
        bucketer.add(events.from_obj({**ev, "agent": name, "namespace": namespace}))
        minutes.extend(bucketer.close())
    minutes.extend(bucketer.finish())
    first = series.minute_of(agent.at) - BASELINE_MINUTES * 60
    minutes = [m for m in minutes if m.minute >= first]
    found = _detect(minutes)
    assert found, f"replay finds nothing in fleet {seed}: pick another tuning seed"
    cut = found[0].time + 120
    minutes = [m for m in minutes if m.minute < cut]
    return minutes, _detect(minutes), agent


def _detect(minutes: list[series.AgentMinute]) -> list[findings.Finding]:
    ds = detectors.DetectorSet(spec.AnomalyParams(), minutes[0].agent, minutes[0].namespace)
    return [f for m in minutes for f in ds.step(m)]


def as_metrics(minutes: list[series.AgentMinute]) -> tuple[list[dict[str, list[tuple[dict[str, str], float]]]],
                                                              list[dict[str, float]]]:
    """Each minute (gaps filled) as counter increments per family and the gauges at its end."""
    by_minute = {m.minute: m for m in minutes}
    out: list[dict[str, list[tuple[dict[str, str], float]]]] = []
    gauges: list[dict[str, float]] = []
    model = next(m.model for m in minutes if m.model is not None)
    reading = {key: 0.0 for key in prom_adapter.OPEN_TASK_GAUGES}
    for t in range(minutes[0].minute, minutes[-1].minute + 60, 60):
        m = by_minute.get(t) or series.AgentMinute(agent=minutes[0].agent, namespace=minutes[0].namespace, minute=t)
        model = m.model or model
        base = {"agent": m.agent, "namespace": m.namespace}
        llm = {**base, "workflow": "work", "step": "work", "model": model}
        rows: dict[str, list[tuple[dict[str, str], float]]] = {
            "llm_cost": [(llm, m.inference_cost_usd)],
            "llm_calls": [({**llm, "status": "ok"}, float(m.llm_calls))],
            "input_tokens": [(llm, float(m.tokens - m.output_tokens))],
            "output_tokens": [(llm, float(m.output_tokens))],
            "tasks": [({**base, "workflow": "work", "status": status}, float(n)) for status, n in
                      (("completed", m.tasks_completed), ("failed", m.tasks_failed), ("abandoned", m.tasks_abandoned))],
            "outcomes": [({**base, "workflow": "work", "outcome": "done"}, m.outcomes)],
        }
        out.append(rows)
        if m.open_tasks is not None:
            reading = {"open": float(m.open_tasks), "largest_tokens": float(m.largest_task_tokens or 0),
                       "largest_age": float(m.largest_task_age or 0.0), "oldest_tokens": float(m.oldest_task_tokens or 0),
                       "oldest_age": float(m.oldest_task_age or 0.0)}
        gauges.append(dict(reading))
    return out, gauges


def backfill(directory: Path, minutes: list[dict[str, list[tuple[dict[str, str], float]]]],
             gauges: list[dict[str, float]], labels: dict[str, str], end: int
             ) -> dict[tuple[str, str], tuple[dict[str, str], float]]:
    """Counters growing linearly within each minute and the open-task gauges (each minute's reading
    from its end on) as TSDB blocks, the last minute ending at ``end``; each counter's labels and total."""
    start = end - 60 * len(minutes)
    totals: dict[tuple[str, str], float] = {}
    keys: dict[tuple[str, str], dict[str, str]] = {}
    samples: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for i, minute in enumerate(minutes):
        for family, rows in minute.items():
            for row_labels, inc in rows:
                key = (family, _labels_text(row_labels))
                keys[key] = row_labels
                before = totals.get(key, 0.0)
                for k in range(60 // STEP):
                    samples.setdefault(key, []).append((start + 60 * i + k * STEP, before + inc * k * STEP / 60))
                totals[key] = before + inc
    lines = []
    for family, (name, _) in FAMILIES.items():
        mine = sorted(key for key in samples if key[0] == family)
        if mine:
            lines.append(f"# TYPE {name} counter")
            lines += [f"{name}_total{{{key[1]}}} {v:.6f} {ts}" for key in mine for ts, v in [*samples[key],
                                                                                           (end, totals[key])]]
    text_labels = _labels_text(labels)
    for which, name in prom_adapter.OPEN_TASK_GAUGES.items():
        lines.append(f"# TYPE {name} gauge")
        previous = 0.0
        for i, reading in enumerate(gauges):
            for k in range(60 // STEP):  # the reading at a minute's start is the one at the last one's end
                lines.append(f"{name}{{{text_labels}}} {previous if k == 0 else reading[which]} {start + 60 * i + k * STEP}")
            previous = reading[which]
        lines.append(f"{name}{{{text_labels}}} {previous} {end}")
    lines.append("# EOF")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "history.om").write_text("\n".join(lines) + "\n")
    (directory / "tsdb").mkdir(exist_ok=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(directory / "history.om"),
                    str(directory / "tsdb")], check=True, capture_output=True, text=True, timeout=120)
    return {key: (keys[key], total) for key, total in totals.items()}


def prometheus_with(workdir: Path, exporter: Exporter, minutes: list[series.AgentMinute],  # noqa: F811
                    request: pytest.FixtureRequest) -> tuple[monitoring.Prometheus, int]:
    """A real Prometheus holding ``minutes`` as history up to now, the exporter carrying it on;
    and the offset (seconds) from the generator's clock to the history's."""
    end = int(time.time() // 60) * 60
    counters, gauges = as_metrics(minutes)
    labels = {"agent": minutes[0].agent, "namespace": minutes[0].namespace}
    totals = backfill(workdir / "prometheus", counters, gauges, labels, end)
    for (family, _), (row_labels, total) in totals.items():
        exporter.set(family, total, **row_labels)
    for which, name in prom_adapter.OPEN_TASK_GAUGES.items():
        pc.Gauge(name, name, GAUGE_LABELS, registry=exporter.registry).labels(**labels).set(gauges[-1][which])
    prom = monitoring.Prometheus(workdir / "prometheus", scrape_interval=2.0, tie_to_parent=True)
    prom.start()
    request.addfinalizer(prom.stop)
    prom.add_target("agents", exporter.address)
    prom.wait_for_target_up("agents", timeout=30)
    return prom, end - (minutes[-1].minute + 60)


def shifted(f: findings.Finding, offset: int) -> findings.Finding:
    return dataclasses.replace(f, time=f.time + offset, onset=None if f.onset is None else f.onset + offset)


def incidents(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    return list(status(cluster, namespace).get("incidents") or [])


def test_a_loop_inside_one_task_is_killed_as_replay_finds_it(
        cluster: Any, namespace: str, crds_installed: list[str], exporter: Exporter,  # noqa: F811
        workdir: Path, request: pytest.FixtureRequest) -> None:  # noqa: F811
    """One task loops while the agent's other tasks complete: the operator, reading the open-task
    gauges from Prometheus, finds the runaway loop replay finds (same incident) and scales it to zero."""
    minutes, found, _ = fleet_minutes(1, "task_loop", "loop-bot", namespace)
    expected = found[0]
    assert expected.kind == "runaway_loop" and expected.evidence.get("found_by") in ("size", "length")
    assert any(m.tasks_completed for m in minutes if m.minute >= expected.onset), "other tasks complete meanwhile"
    prom, offset = prometheus_with(workdir, exporter, minutes, request)
    cluster.apply(deployment("loop-bot", namespace, 2))
    cluster.apply(budget(namespace))
    start_operator(cluster, prom.url, namespace, workdir, request, extra=("--lookback-minutes", str(LOOKBACK)))

    cluster.wait_for(lambda: cluster.get_json("deployment", "loop-bot", "-n", namespace)["spec"]["replicas"] == 0,
                     90, "loop-bot scaled to zero")
    incident = findings.incident_id(shifted(expected, offset))
    # the scale comes first, the status that records it right after
    def recorded() -> dict[str, Any] | None:
        by_id = {i["id"]: i for i in incidents(cluster, namespace)}
        return by_id if incident in by_id else None

    seen = cluster.wait_for(recorded, 30, f"incident {incident} in the status")
    assert seen[incident]["kind"] == "runaway_loop" and seen[incident]["action"] == "kill"
    assert status(cluster, namespace)["killSwitch"]["incident"] == incident


def test_a_slow_agents_model_update_spike_is_rolled_back_as_replay_finds_it(
        cluster: Any, namespace: str, crds_installed: list[str], exporter: Exporter,  # noqa: F811
        workdir: Path, request: pytest.FixtureRequest) -> None:  # noqa: F811
    """A model update on an agent with a task every few minutes: the sequential test decides within
    a few tasks, replay and the operator agree on the incident, and the operator rolls MODEL back."""
    minutes, found, agent = fleet_minutes(5, "spike_slow", "slow-bot", namespace)
    expected = next(f for f in found if f.kind == "model_update_spike")
    assert agent.rate < 0.5 and expected.evidence["tasks_after"] <= 15
    assert (expected.model, expected.previous_model) == (agent.new_model, agent.model)
    prom, offset = prometheus_with(workdir, exporter, minutes, request)
    cluster.apply(deployment("slow-bot", namespace, 1, model=str(agent.new_model)))
    cluster.apply(budget(namespace))
    start_operator(cluster, prom.url, namespace, workdir, request, extra=("--lookback-minutes", str(LOOKBACK)))

    cluster.wait_for(lambda: model_env(cluster, namespace, "slow-bot") == agent.model, 90, "MODEL rolled back")
    rollback = cluster.wait_for(lambda: (status(cluster, namespace).get("model") or {}).get("rollbacks"), 30,
                                "status.model.rollbacks")[-1]  # the patch comes first, the status right after
    assert (rollback["agent"], rollback["from"], rollback["to"]) == ("slow-bot", agent.new_model, agent.model)
    assert rollback["incident"] == findings.incident_id(shifted(expected, offset))
