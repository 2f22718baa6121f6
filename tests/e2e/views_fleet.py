"""A fleet for the views' end-to-end tests: the real simulator and an operator-side exporter,
both scraped by the real Prometheus of the ``prometheus`` fixture.

- The simulator (``python -m fleetwarden simulate``, real-time mode, sped up) serves the
  agents' metrics, with a guardrail policy so guardrail decisions are counted.
- The operator-side exporter (prometheus_client) serves what the operator exports when it
  runs: ``fleetwarden_budget_*``, ``fleetwarden_agent_owner_info`` for the simulated agents,
  and a ``fleetwarden_findings_total`` that grows, as in a cluster with anomalies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from fleetwarden.devcluster import procs

ROOT = Path(__file__).resolve().parents[2]
TEAMS = {"support": ("cx", "helpdesk", "CC-1042"), "procurement": ("finance-ops", "sourcing", "CC-2001"),
         "leadgen": ("growth", "pipeline", "CC-3003")}


@dataclasses.dataclass
class Fleet:
    namespace: str
    agents: list[str]
    teams: dict[str, str]  # agent -> team
    sim_job: str
    ops_job: str


def _owner(agent: str) -> tuple[str, str, str]:
    for prefix, owner in TEAMS.items():
        if agent.startswith(prefix):
            return owner
    return ("platform", "misc", "CC-9999")


@contextlib.contextmanager
def running_fleet(prometheus, tmp_path: Path, *, speed: float = 30.0) -> Iterator[Fleet]:
    """Start the simulator and the exporter, scrape both, wait until Prometheus has both."""
    namespace = f"views-{uuid.uuid4().hex[:6]}"
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "policy.json").write_text(json.dumps(
        {"tools": {"deny": ["never.*"]}, "rateLimits": {"toolCallsPerMinute": 100000}}))
    sim_port, ops_port = procs.free_ports(2)
    log = (tmp_path / "simulate.log").open("wb")
    sim = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "simulate", "--port", str(sim_port), "--speed", str(speed),
         "--agents", "1", "--namespace", namespace, "--policy-dir", str(policy_dir), "--duration", "24h",
         "--seed", "3"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    registry = CollectorRegistry()
    spend = Gauge("fleetwarden_budget_spend_usd", "spend", ["budget", "namespace", "window"], registry=registry)
    limit = Gauge("fleetwarden_budget_limit_usd", "cap", ["budget", "namespace", "window"], registry=registry)
    kill = Gauge("fleetwarden_budget_kill_switch_engaged", "kill", ["budget", "namespace"], registry=registry)
    owner = Gauge("fleetwarden_agent_owner_info", "owner",
                  ["agent", "namespace", "budget", "team", "project", "cost_center"], registry=registry)
    found = Counter("fleetwarden_findings", "findings", ["namespace", "kind", "action"], registry=registry)
    evaluation = Gauge("fleetwarden_evaluation_seconds", "evaluation", registry=registry)
    server, _thread = start_http_server(ops_port, addr=procs.LOOPBACK, registry=registry)
    stop = threading.Event()
    sim_job = f"{namespace}-agents"
    ops_job = f"{namespace}-operator"
    try:
        prometheus.add_target(sim_job, f"{procs.LOOPBACK}:{sim_port}")
        prometheus.wait_for_target_up(sim_job, timeout=60)
        result = prometheus.wait_for_query(
            f'count by (agent) (fleetwarden_agent_model_info{{namespace="{namespace}"}})', timeout=60)
        agents = sorted(r["metric"]["agent"] for r in result)
        teams = {}
        for agent in agents:
            team, project, cost_center = _owner(agent)
            teams[agent] = team
            owner.labels(agent, namespace, team, team, project, cost_center).set(1)
        for team, _project, _cc in TEAMS.values():
            limit.labels(team, namespace, "hour").set(20.0)
            limit.labels(team, namespace, "day").set(300.0)
            kill.labels(team, namespace).set(1 if team == "growth" else 0)
        evaluation.set(0.05)

        def tick() -> None:
            n = 0
            while not stop.wait(1.0):
                n += 1
                for i, (team, _p, _c) in enumerate(TEAMS.values()):
                    spend.labels(team, namespace, "hour").set(4.0 * (i + 1) + 0.1 * n)
                    spend.labels(team, namespace, "day").set(40.0 * (i + 1) + n)
                found.labels(namespace, "tool_call_explosion", "alert").inc()
                if n % 3 == 0:
                    found.labels(namespace, "runaway_loop", "kill").inc()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        prometheus.add_target(ops_job, f"{procs.LOOPBACK}:{ops_port}")
        prometheus.wait_for_target_up(ops_job, timeout=60)
        yield Fleet(namespace, agents, teams, sim_job, ops_job)
    finally:
        stop.set()
        prometheus.remove_target(sim_job)
        prometheus.remove_target(ops_job)
        server.shutdown()
        sim.terminate()
        try:
            sim.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        log.close()


def wait_for_data(prometheus, promql: str, timeout: float = 90.0, until=None) -> list[dict]:
    """Poll an instant query until it returns at least one series (and, given ``until``, until
    ``until(result)`` holds: series of a rule appear one evaluation apart, so a set compared
    at the first answer may still be filling); AssertionError naming the last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(promql)
        if result and (until is None or until(result)):
            return result
        if time.monotonic() > deadline:
            seen = sorted(str(r.get("metric")) for r in result)
            raise AssertionError(f"no data for {promql!r} after {timeout:.0f}s" if not result else
                                 f"{promql!r} after {timeout:.0f}s still answers only {seen}")
        time.sleep(1.0)
