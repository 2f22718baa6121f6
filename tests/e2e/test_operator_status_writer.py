# ruff: noqa: F811 - pytest fixtures imported from test_operator_budget are parameters here
"""A large fleet's figure writes go out from the status writer's own threads (runtime.StatusWriter),
on the real control plane, with the operator's own permissions (manifests/rbac.yaml, through a
ServiceAccount token) and the real Prometheus.

The fleet is made "large" by lowering the fleet-wide figure-write rate, so that one budget's
figures wait for their turn as each of 10,000 budgets' would (``figure_seconds`` > the interval).
Its figures then reach the API server from a writer thread, not from the evaluation; while the
evaluations run behind, they wait and are counted as held past their turn until written, and
the fleet loop takes that budget first; a
decision that follows is written at once, after them, over what they wrote.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, operator_identity, operator_rules  # noqa: F401
from test_operator_action_failures import observe, operator
from test_operator_budget import (  # noqa: F401 - fixtures
    Exporter,
    budget,
    exporter,
    fleet,
    llm_labels,
    status,
)

from fleetwarden.handlers import fleet as fleet_loop
from fleetwarden.handlers import runtime

WAIT = 120.0


def _cost(prometheus: Any, namespace: str, at_least: float) -> None:
    prometheus.wait_for_query(f'sum(fleetwarden_llm_cost_usd_total{{namespace="{namespace}"}})',
                              lambda r: bool(r) and float(r[0]["value"][1]) >= at_least, timeout=60)


def test_a_large_fleets_figures_are_written_by_the_writer_and_a_decision_after_them(
        cluster: Any, namespace: str, fleet: dict[str, Any], prometheus: Any, exporter: Exporter,  # noqa: F811
        workdir: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "MAX_FIGURE_WRITES_PER_SECOND", 0.05)  # one budget: a turn every 20 s
    cluster.apply(budget(namespace, hour_cap=100.0))
    exporter.set("llm_cost", 2.0, **llm_labels("bot", namespace))
    _cost(prometheus, namespace, 2.0)
    rt = operator(cluster, prometheus.url, workdir, request)
    rt.reconcile(*observe(cluster, namespace))  # the first status: a change of state, written at once
    first = status(cluster, namespace)
    uid = cluster.get_json("agentbudget", "support", "-n", namespace)["metadata"]["uid"]
    assert first["state"] == "Active" and rt.figure_seconds() > rt.interval  # figures wait for their turn
    assert rt.writer.pending() == 0

    exporter.set("llm_cost", 30.0, **llm_labels("bot", namespace))
    _cost(prometheus, namespace, 30.0)
    deadline = time.monotonic() + WAIT
    spend = first["spend"]["hour"]
    while spend < 30.0 and time.monotonic() < deadline:  # until the fetched minutes hold the new cost
        rt._written_at[uid] -= rt.figure_seconds() + 1  # noqa: SLF001 - its turn has come
        rt.new_cycle()
        spend = rt.reconcile(*observe(cluster, namespace)).status.body().get("spend", {}).get("hour", spend)
        assert rt.writer.drain(WAIT)
        time.sleep(2.0)
    assert spend >= 30.0
    writers = [t.name for t in threading.enumerate() if t.name.startswith("fleetwarden-status-writer")]
    assert writers  # the figures went out from the writer's threads
    written = status(cluster, namespace)
    assert written["state"] == "Active" and written["spend"]["hour"] == spend  # its figures, on the API server
    assert rt.previous_status({"metadata": {"uid": uid}})["spend"]["hour"] == spend

    # while the evaluations run behind, figures whose turn has come are held, and counted
    # (..._figures_overdue_seconds and ..._budgets) until written
    behind = True
    rt.behind = lambda: behind
    exporter.set("llm_cost", 60.0, **llm_labels("bot", namespace))
    _cost(prometheus, namespace, 60.0)
    rt._written_at[uid] -= rt.figure_seconds() + 1  # noqa: SLF001 - its turn has come
    rt.new_cycle()
    rt.reconcile(*observe(cluster, namespace))
    assert rt.figures_held() == 1
    time.sleep(1.0)
    assert rt.figures_overdue() >= 1.0
    # the fleet loop takes the budget held longest first (fleet_loop.HELD_FIRST; a share of a cycle of one)
    monkeypatch.setattr(fleet_loop, "HELD_FIRST_SHARE", 1.0)
    held_budget = fleet_loop.Item(observe(cluster, namespace)[0], [], [], [])
    others = [fleet_loop.Item({"metadata": {"namespace": namespace, "name": f"b{i}", "uid": f"u{i}"}}, [], [], [])
              for i in range(3)]
    loop = fleet_loop.FleetLoop(lambda it: None, interval=rt.interval, workers=1, new_cycle=lambda: None,
                           ready=threading.Event(), pace=0.7, last_evaluated=lambda it: 0.0,
                           held_since=lambda it: rt.held_since(str(it.budget["metadata"]["uid"])))
    try:
        assert loop.order([*others, held_budget]) == ([held_budget, *others], 0)
    finally:
        loop.stopping.set()
        loop.pool.shutdown()
        loop.driver.shutdown()
    assert rt.writer.drain(WAIT) and status(cluster, namespace)["spend"]["hour"] == spend  # not written
    behind = False
    deadline = time.monotonic() + WAIT
    while spend < 60.0 and time.monotonic() < deadline:  # (the fleet's figure writes at their rate: 1 in 20 s)
        rt.new_cycle()
        rt.reconcile(*observe(cluster, namespace))
        assert rt.writer.drain(WAIT)
        spend = status(cluster, namespace)["spend"]["hour"]
        if spend < 60.0:  # held (its write at the rate), or the fetched minutes not yet holding the cost
            rt._written_at[uid] = min(rt._written_at[uid], time.monotonic() - rt.figure_seconds() - 1)  # noqa: SLF001
            time.sleep(2.0)
    assert spend >= 60.0 and (rt.figures_held(), rt.figures_overdue()) == (0, 0.0)

    exporter.set("llm_cost", 120.0, **llm_labels("bot", namespace))  # over the cap: a decision
    _cost(prometheus, namespace, 120.0)
    deadline = time.monotonic() + WAIT
    state = written["state"]
    while state == "Active" and time.monotonic() < deadline:
        rt.new_cycle()
        state = rt.reconcile(*observe(cluster, namespace)).status.body()["state"]
        time.sleep(2.0)
    decided = status(cluster, namespace)
    assert state != "Active" and decided["state"] == state  # written at once, by the evaluation
    assert decided["spend"]["hour"] >= 100.0  # with the figures beside it
