# ruff: noqa: F811 - pytest fixtures imported from test_operator_budget are parameters here
"""spec.enforcement on the real stack: a budget in DryRun finds the breach and says what it would
do, acts on nothing; switched to Enforce (a spec edit, as in Git) it acts at once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, start_operator  # noqa: F401 - fixture
from test_operator_budget import (  # noqa: F401 - fixtures
    Exporter,
    budget,
    condition,
    events,
    exporter,
    fleet,
    llm_labels,
    replicas,
    status,
)

from fleetwarden.handlers import fleet as fleet_loop
from fleetwarden.handlers import heap


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child_running(pid: int, parent: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rpartition(")")[2].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return ppid == parent and marker in f.read()
    except OSError:  # it ended meanwhile
        return False


def test_dry_run_says_what_it_would_do_and_enforce_does_it(cluster: Any, namespace: str, fleet: dict[str, Any],
                                                           prometheus: Any, exporter: Exporter, workdir: Path,
                                                           request: pytest.FixtureRequest) -> None:
    """DryRun: past the kill threshold, no agent is scaled; a WouldKill Event names them, the status is
    Exceeded with KillSwitchEngaged=False (reason DryRun), and kubectl get shows the mode. Enforce: killed."""
    cluster.apply(budget(namespace, hour_cap=1.0, enforcement="DryRun"))
    op = start_operator(cluster, prometheus.url, namespace, workdir, request,  # the fleet-wide loop on the real stack,
                        extra=("--evaluation", "fleet", "--prometheus-reader", "process"))  # its queries read by a reader
    exporter.set("llm_cost", 2.0, **llm_labels("bot", namespace))  # 200% of the 1 USD hourly cap

    def exceeded() -> dict[str, Any] | None:
        st = status(cluster, namespace)
        return st if st.get("state") == "Exceeded" and events(cluster, namespace, "WouldKill") else None

    st = cluster.wait_for(exceeded, 60, "Exceeded with a WouldKill Event")
    ks = condition(st, "KillSwitchEngaged")
    assert (ks["status"], ks["reason"]) == ("False", "DryRun") and "bot" in ks["message"]
    (would,) = events(cluster, namespace, "WouldKill")
    assert "bot (was 3)" in would["message"] and "helper (was 2)" in would["message"]
    op.wait_evaluations(cluster, 3)
    # the pace (FLEETWARDEN_PACE, on by default): every cycle says how early the next starts, and
    # the loop read a cycle's data before it began (as the cycle before ended), not in it
    cycles = [m for m in map(fleet_loop.CYCLE_LINE.search, op.log_path.read_text().splitlines()) if m]
    assert len(cycles) >= 3 and all(m["early"] is not None for m in cycles)
    assert any(m["ahead"] is not None for m in cycles[1:]), [m.group(0) for m in cycles]
    # the fetch's queries went through the reader (--prometheus-reader process): a child of the
    # operator, whose queries the operator timed as its own
    readers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _child_running(
        pid, op.proc.pid, b"fleetwarden.adapters.reader")]
    assert len(readers) == 1, readers
    assert op.metric("fleetwarden_operator_prometheus_query_seconds_count", query="inference_cost") >= 3
    # the loop settled its heap after its first cycle (handlers/heap.py): frozen, and counted
    assert op.metric("fleetwarden_operator_gc_frozen_objects") > 0
    assert op.metric("fleetwarden_operator_gc_collections_total", generation="2") >= 1
    assert op.metric("fleetwarden_operator_malloc_arenas") == heap.MALLOC_ARENAS  # glibc's arenas capped
    # glibc's account of what malloc holds: the operator's heap is in use, and well under its RSS
    in_use = op.metric("fleetwarden_operator_malloc_bytes", part="in_use")
    assert 1_000_000 < in_use < rss_bytes(op.proc.pid)
    assert replicas(cluster, namespace, "bot") == 3 and replicas(cluster, namespace, "helper") == 2
    assert len(events(cluster, namespace, "WouldKill")) == 1  # said once, not every cycle
    header, row = cluster.kubectl("get", "agentbudgets", "-n", namespace).stdout.splitlines()[:2]
    assert header.split()[6] == "MODE" and row.split()[6] == "DryRun"

    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"enforcement": "Enforce"}}))
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0 and replicas(cluster, namespace, "helper") == 0,
                     60, "Enforce scales both agents to zero")
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("state") == "Killed" and s, 30, "Killed")
    assert st["killSwitch"]["replicas"] == {"bot": 3, "helper": 2}
