"""A fleet for the views' end-to-end tests, every part real: the simulator, the operator, the
cluster and the Prometheus of the ``prometheus`` fixture.

- The simulator (``python -m fleetwarden simulate``, real-time mode, sped up) serves the agents'
  metrics, with a guardrail policy so guardrail decisions are counted.
- Each simulated agent has its Deployment in a real namespace; each team has an AgentBudget (owner,
  caps: the ``growth`` team's hourly cap is so small that its kill switch engages) and the support
  agents a CostPolicy whose tool allowlist misses a tool they call (a ``tool_not_allowed`` finding).
- The real operator (as its ServiceAccount, tests/e2e/fixtures_fleetwarden.py) evaluates them on
  the simulator's metrics, and Prometheus scrapes the operator's own /metrics: the
  ``fleetwarden_budget_*``, ``fleetwarden_agent_owner_info`` and ``fleetwarden_findings_total``
  series the views read are the ones the operator exports; none is written by the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import Operator, start_operator

from fleetwarden.devcluster import procs

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "manifests" / "prometheus" / "rules.yaml"
# profile prefix -> (team, project, cost center, hourly cap USD); the simulator at 30x spends
# roughly 0.4 (support), 2 (procurement) and 1 (leadgen) USD a real minute.
TEAMS = {"support": ("cx", "helpdesk", "CC-1042", 200.0), "procurement": ("finance-ops", "sourcing", "CC-2001", 600.0),
         "leadgen": ("growth", "pipeline", "CC-3003", 0.05)}
KILLED_TEAM = "growth"
SUPPORT_TOOLS_ALLOWED = ["crm.*", "kb.*"]  # the support agents also call ticket.update: not allowed


@dataclasses.dataclass
class Fleet:
    namespace: str
    agents: list[str]
    teams: dict[str, str]  # agent -> team
    sim_job: str
    ops_job: str
    operator: Operator | None = None


def _owner(agent: str) -> tuple[str, str, str, float]:
    for prefix, owner in TEAMS.items():
        if agent.startswith(prefix):
            return owner
    return ("platform", "misc", "CC-9999", 100.0)


def _deployment(name: str, namespace: str, team: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"team": team, "fleetwarden.dev/budget": team}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"agent": name}},
                     "template": {"metadata": {"labels": {"agent": name}},
                                  "spec": {"containers": [{"name": "agent", "image": f"example.com/{name}:1.0"}]}}}}


def _budget(namespace: str, team: str, project: str, cost_center: str, hour_cap: float) -> dict[str, Any]:
    kill = {"window": "hour", "thresholdPercent": 150} if team == KILLED_TEAM else {"enabled": False}
    return {"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
            "metadata": {"name": team, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"team": team}},
                     "owner": {"team": team, "project": project, "costCenter": cost_center},
                     "limits": [{"window": "hour", "amountUSD": hour_cap}, {"window": "day", "amountUSD": 3000}],
                     "killSwitch": kill}}


@contextlib.contextmanager
def running_fleet(prometheus: Any, cluster: Any, tmp_path: Path, request: Any, *, speed: float = 30.0
                  ) -> Iterator[Fleet]:
    """Start the simulator and the operator for a new namespace; Prometheus scrapes both; wait until
    the operator's own series for every team are in Prometheus."""
    namespace = f"views-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "policy.json").write_text(json.dumps(
        {"tools": {"deny": ["never.*"]}, "rateLimits": {"toolCallsPerMinute": 100000}}))
    sim_port = procs.free_port()
    log = (tmp_path / "simulate.log").open("wb")
    sim = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "simulate", "--port", str(sim_port), "--speed", str(speed),
         "--agents", "1", "--namespace", namespace, "--policy-dir", str(policy_dir), "--duration", "24h",
         "--seed", "3"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    sim_job = f"{namespace}-agents"
    ops_job = f"{namespace}-operator"
    try:
        prometheus.add_target(sim_job, f"{procs.LOOPBACK}:{sim_port}")
        prometheus.wait_for_target_up(sim_job, timeout=60)
        result = prometheus.wait_for_query(
            f'count by (agent) (fleetwarden_agent_model_info{{namespace="{namespace}"}})', timeout=60)
        agents = sorted(r["metric"]["agent"] for r in result)
        teams = {agent: _owner(agent)[0] for agent in agents}
        objects: list[dict[str, Any]] = [_deployment(a, namespace, teams[a]) for a in agents]
        objects += [_budget(namespace, *owner) for owner in {_owner(a) for a in agents}]
        objects.append({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy",
                        "metadata": {"name": "support-tools", "namespace": namespace},
                        "spec": {"selector": {"matchLabels": {"team": TEAMS["support"][0]}},
                                 "tools": {"allow": SUPPORT_TOOLS_ALLOWED, "action": "alert"}}})
        cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        op = start_operator(cluster, prometheus.url, namespace, tmp_path, request)
        prometheus.add_target(ops_job, f"{procs.LOOPBACK}:{op.metrics_port}")
        prometheus.wait_for_target_up(ops_job, timeout=60)
        prometheus.wait_for_query(f'fleetwarden_budget_limit_usd{{namespace="{namespace}", window="hour"}}',
                                  lambda r: len(r) == len(set(teams.values())), timeout=90)
        yield Fleet(namespace, agents, teams, sim_job, ops_job, op)
    finally:
        prometheus.remove_target(sim_job)
        prometheus.remove_target(ops_job)
        procs.end(sim)
        log.close()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def views_fleet_session(prometheus: Any, cluster: Any, crds_installed: list[str], tmp_path_factory: Any,
                        request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """One running fleet for every views module (dashboards, rules, live report), started on first
    use with manifests/prometheus/rules.yaml loaded; stopped at the end of the session."""
    del crds_installed
    prometheus.load_rules([RULES])
    try:
        with running_fleet(prometheus, cluster, tmp_path_factory.mktemp("views-fleet"), request) as running:
            yield running
    finally:
        prometheus.load_rules([])


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
