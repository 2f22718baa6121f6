"""The operator through faults, on the real API server, as its own ServiceAccount:

- two replicas under leader election; the leader SIGKILLed in the middle of a kill switch: the
  standby takes the Lease over and finishes the kill, exactly once;
- the status write denied by RBAC (the scale lands, its status does not), the operator SIGKILLed in
  that window, RBAC restored, the operator started again: it converges from what is stored.

Each records a row of the fault table (tests/e2e/faults.py, benchmarks/faults.py).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faults
import pytest
from fixtures_fleetwarden import (
    LEASE_FLAGS,
    crds_installed,  # noqa: F401 - fixture
    operator_identity,
    operator_rules,
    start_operator,
    without_verb,
)
from kubernetes import client, watch
from test_operator_budget import (
    Exporter,
    budget,
    deployment,
    exporter,  # noqa: F401 - fixture
    llm_labels,
    scrape,
)

from fleetwarden.adapters import kube
from fleetwarden.devcluster import procs

pytestmark = pytest.mark.faults
# how a fault row names the mode: as before for kopf's timers, and the fleet loop's own indexes
MODE = {"timers": "", "fleet": "; fleet mode"}

LEASE_DURATION = float(LEASE_FLAGS[LEASE_FLAGS.index("--lease-duration") + 1])
RETRY_PERIOD = float(LEASE_FLAGS[LEASE_FLAGS.index("--retry-period") + 1])
AGENTS = {"a0": 2, "a1": 1, "a2": 1, "a3": 1, "a4": 1}  # budget-wide kill: five scales, so one can be cut


def _api(cluster: Any) -> client.ApiClient:
    return kube.load_config(cluster.kubeconfig, guarded=False)


def _replicas(apps: client.AppsV1Api, namespace: str) -> dict[str, int]:
    items = apps.list_namespaced_deployment(namespace).items
    return {d.metadata.name: int(d.spec.replicas or 0) for d in items}


def _status(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    body = custom.get_namespaced_custom_object("fleetwarden.dev", "v1alpha1", namespace, "agentbudgets", "support")
    return dict(body.get("status") or {})


def _fleet(cluster: Any, namespace: str, prometheus: Any, exporter: Exporter, request: pytest.FixtureRequest,  # noqa: F811
           agents: Mapping[str, int]) -> None:
    for name, count in agents.items():  # every running agent has fresh series (else its data is unknown)
        exporter.set("llm_cost", 0.0, **llm_labels(name, namespace))
        cluster.apply(deployment(name, namespace, count))
    job = scrape(prometheus, exporter, namespace)
    request.addfinalizer(lambda: prometheus.remove_target(job))
    prometheus.wait_for_query(f'fleetwarden_llm_cost_usd_total{{namespace="{namespace}"}}',
                              lambda r: len(r) == len(agents), timeout=30)
    cluster.apply(budget(namespace, hour_cap=1.0))


def _ours(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    """The operator's Events in ``namespace``."""
    return [e for e in cluster.get_json("events", "-n", namespace)["items"]
            if (e.get("source") or {}).get("component") == "fleetwarden"]


def _kill_events(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    """KillSwitchEngaged on the AgentBudget: one kill says it twice (the finding, then the engagement)."""
    return [e for e in _ours(cluster, namespace)
            if e["reason"] == "KillSwitchEngaged" and e["involvedObject"].get("kind") == "AgentBudget"]


def _repeats(evts: list[dict[str, Any]]) -> int:
    """How many times something was said again: an Event counted past 1, or a second object."""
    seen: dict[tuple[str, str, str], int] = {}
    for e in evts:
        key = (e["reason"], e["involvedObject"].get("name", ""), e["message"])
        seen[key] = seen.get(key, 0) + 1
    return sum(int(e.get("count") or 1) - 1 for e in evts) + sum(n - 1 for n in seen.values())


def _engagements(evts: list[dict[str, Any]]) -> int:
    return sum(1 for e in evts if e["message"].startswith("kill switch engaged ("))


def _incident_records(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    result = cluster.kubectl("get", "configmap", "fleetwarden-incidents", "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return []
    return [json.loads(v) for v in (json.loads(result.stdout).get("data") or {}).values()]


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode() or "{}"
        return dict(json.loads(text))


@pytest.mark.parametrize("evaluation", ["timers", "fleet"])
def test_leader_sigkilled_mid_kill_the_standby_finishes_it_exactly_once(
        cluster: Any, namespace: str, crds_installed: list[str], prometheus: Any,  # noqa: F811
        alertmanager: Any, exporter: Exporter, workdir: Path, request: pytest.FixtureRequest,  # noqa: F811
        evaluation: str) -> None:
    """Two replicas, one Lease: only the leader acts; SIGKILLed as the first agent reaches zero, the
    standby takes over within the lease duration (plus one retry) and completes the kill: one
    incident, one alert, one KillSwitchEngaged Event, every agent at zero, a true status. In
    ``fleet`` mode the new leader first lists the fleet into its own indexes (handlers/store.py)."""
    _fleet(cluster, namespace, prometheus, exporter, request, AGENTS)
    identity = operator_identity(cluster, workdir, request)
    am = ["--alertmanager-url", alertmanager.url, "--evaluation", evaluation]
    a = start_operator(cluster, prometheus.url, namespace, workdir, request, am, identity=identity, name="leader")
    api = _api(cluster)
    apps, custom, leases = client.AppsV1Api(api), client.CustomObjectsApi(api), client.CoordinationV1Api(api)
    lease_name = f"fleetwarden-{namespace}"

    def holder() -> str:
        return str(leases.read_namespaced_lease(lease_name, identity.lease_namespace).spec.holder_identity or "")

    cluster.wait_for(lambda: _status(custom, namespace).get("state") == "Active", 60, "the leader's first status")
    first = holder()
    standby_port = procs.free_port()
    b = start_operator(cluster, prometheus.url, namespace, workdir, request,
                       [*am, "--liveness", f"http://127.0.0.1:{standby_port}/healthz"], identity=identity,
                       name="standby")
    cluster.wait_for(lambda: "standing by" in b.tail(), 60, "the second replica standing by")
    assert _healthz(standby_port) == {"leader": False, "standby": True}
    a.wait_evaluations(cluster, 2)
    assert holder() == first and "leads" not in b.tail(1000)
    with pytest.raises(OSError):  # the standby serves no /metrics: it evaluates nothing
        b.metric("fleetwarden_evaluation_seconds_count")

    # the breach; SIGKILL the leader as soon as a watch sees the first agent at zero
    before = _replicas(apps, namespace)
    stream = watch.Watch()
    exporter.set("llm_cost", 2.0, **llm_labels("a0", namespace))  # 200% of the hourly cap
    killed_at = None
    for event in stream.stream(apps.list_namespaced_deployment, namespace, timeout_seconds=90):
        if event["type"] == "MODIFIED" and int(event["object"].spec.replicas or 0) == 0:
            killed_at = a.kill()
            stream.stop()
    assert killed_at is not None, "the leader never scaled an agent"
    cut = {n: r for n, r in _replicas(apps, namespace).items() if r > 0}
    written = _status(custom, namespace)
    print(f"leader SIGKILLed with {len(cut)} of {len(AGENTS)} agents still running; status then: "
          f"{written.get('state')}")

    with faults.ClaimSampler(lambda: (_status(custom, namespace), _replicas(apps, namespace)), before) as sampler:
        cluster.wait_for(lambda: holder() not in ("", first), LEASE_DURATION + 10, "the standby taking the Lease")
        took_over = time.monotonic() - killed_at

        def evaluated() -> bool:
            try:
                return b.metric("fleetwarden_evaluation_seconds_count") > 0
            except OSError:
                return False  # kopf not started yet: no /metrics

        cluster.wait_for(evaluated, 30, "the new leader's first evaluation", interval=0.1)
        first_evaluation = time.monotonic() - killed_at
        seen = written.get("lastEvaluated")
        cluster.wait_for(lambda: _status(custom, namespace).get("lastEvaluated") != seen, 30,
                         "the new leader's first status write", interval=0.1)
        first_write = time.monotonic() - killed_at
        st = cluster.wait_for(lambda: (s := _status(custom, namespace)).get("state") == "Killed" and s, 30, "Killed")
        cluster.wait_for(lambda: not any(_replicas(apps, namespace).values()), 30, "every agent at zero")
        b.wait_evaluations(cluster, 3)
    print(f"failover: Lease taken over {took_over:.1f}s after SIGKILL, first evaluation {first_evaluation:.1f}s, "
          f"first status write {first_write:.1f}s "
          f"(lease duration {LEASE_DURATION:g}s, retry period {RETRY_PERIOD:g}s)")
    assert took_over <= LEASE_DURATION + 1.2 * RETRY_PERIOD + 2.0, took_over
    _healthz(standby_port)  # 200 from kopf's liveness endpoint, now that the standby leads

    # exactly once
    st = _status(custom, namespace)
    incident = st["killSwitch"]["incident"]
    assert st["killSwitch"]["replicas"] == before
    kill_incidents = [i for i in st.get("incidents") or [] if i["kind"] == "kill_switch"]
    records = [r for r in _incident_records(cluster, namespace) if r.get("kind") == "kill_switch"]
    kill_events = _kill_events(cluster, namespace)

    def ours() -> list[dict[str, Any]]:
        return [x for x in alertmanager.alerts() if x["labels"].get("alertname") == "FleetwardenKillSwitch"
                and x["labels"].get("namespace") == namespace]

    cluster.wait_for(ours, 30, "the kill alert at Alertmanager's receiver")
    fingerprints = {x.get("fingerprint") or json.dumps(x["labels"], sort_keys=True) for x in ours()}
    assert [i["id"] for i in kill_incidents] == [incident]
    assert [r["id"] for r in records] == [incident]
    assert _engagements(kill_events) == 1 and _repeats(kill_events) == 0, kill_events
    assert len(fingerprints) == 1 and {x["labels"]["incident"] for x in ours()} == {incident}
    assert sampler.claims == [], sampler.claims
    scales = b.metric("fleetwarden_operator_actions_total", action="ScaleToZero")
    assert scales == len(cut), (scales, cut)  # the new leader scaled exactly the agents still running
    faults.record(f"leader SIGKILL mid-kill (2 replicas{MODE[evaluation]})", injected=1, survived=1,
                  duplicated=(len(kill_incidents) - 1) + (len(records) - 1) + (_engagements(kill_events) - 1)
                  + _repeats(kill_events) + (len(fingerprints) - 1) + int(scales - len(cut)),
                  lost=sum(1 for r in _replicas(apps, namespace).values() if r > 0), false_claims=len(sampler.claims),
                  note=f"{len(cut)} of {len(AGENTS)} agents running at SIGKILL; takeover {took_over:.1f}s, "
                       f"first write {first_write:.1f}s")


STATUS_PATCH = ("patch", "agentbudgets.fleetwarden.dev", "--subresource=status")


@pytest.mark.parametrize("evaluation", ["timers", "fleet"])
def test_sigkill_between_the_scale_and_its_status_write_converges_on_restart(
        cluster: Any, namespace: str, crds_installed: list[str], prometheus: Any,  # noqa: F811
        exporter: Exporter, workdir: Path, request: pytest.FixtureRequest, evaluation: str) -> None:  # noqa: F811
    """RBAC without `patch agentbudgets/status`: the scale lands, the status write is refused (the
    ClusterRole bites). SIGKILL there, restore RBAC, start again: Killed with the exact replicas, one
    incident, no repeated Events; the acknowledgement restores exactly what ran (with a kopf timer per
    budget, and with the fleet loop and its own indexes)."""
    mode = ("--evaluation", evaluation)
    agents = {"bot": 3, "helper": 2}
    _fleet(cluster, namespace, prometheus, exporter, request, agents)
    rules = operator_rules()
    identity = operator_identity(cluster, workdir, request, namespace=namespace,
                                 rules=without_verb(rules, "fleetwarden.dev", "agentbudgets/status", "patch"))
    assert not identity.can(cluster, *STATUS_PATCH, "-n", namespace)
    api = _api(cluster)
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    op = start_operator(cluster, prometheus.url, namespace, workdir, request, mode, identity=identity, name="first")
    before = _replicas(apps, namespace)

    with faults.ClaimSampler(lambda: (_status(custom, namespace), _replicas(apps, namespace)), before) as denied:
        exporter.set("llm_cost", 2.0, **llm_labels("bot", namespace))
        cluster.wait_for(lambda: not any(_replicas(apps, namespace).values()), 60, "the kill switch's scale to zero")
        cluster.wait_for(lambda: op.tail(5000).count("patch status of agentbudget") >= 3, 30,
                         "the status write refused three times (in the operator's log)")
    assert "forbidden" in op.tail(5000).lower()
    assert _status(custom, namespace).get("state") != "Killed"  # nothing claimed: it could not be written
    scales = op.metric("fleetwarden_operator_actions_total", action="ScaleToZero")
    assert scales == len(agents), scales  # each agent scaled once, not again at each refused write
    assert denied.claims == [], denied.claims
    faults.record(f"status write denied (403 on agentbudgets/status{MODE[evaluation]})", injected=1, survived=1,
                  duplicated=int(scales - len(agents)), lost=sum(1 for n in _replicas(apps, namespace).values() if n),
                  false_claims=len(denied.claims))
    op.kill()

    identity.set_rules(cluster, rules, until=(*STATUS_PATCH, "-n", namespace), allowed=True)
    with faults.ClaimSampler(lambda: (_status(custom, namespace), _replicas(apps, namespace)), before) as sampler:
        again = start_operator(cluster, prometheus.url, namespace, workdir, request, mode, identity=identity,
                               name="again")
        st = cluster.wait_for(lambda: (s := _status(custom, namespace)).get("state") == "Killed" and s, 60,
                              "Killed after the restart")
        again.wait_evaluations(cluster, 4)
    assert st["killSwitch"]["replicas"] == before
    incident = st["killSwitch"]["incident"]
    kill_incidents = [i["id"] for i in _status(custom, namespace).get("incidents") or [] if i["kind"] == "kill_switch"]
    records = [r["id"] for r in _incident_records(cluster, namespace) if r.get("kind") == "kill_switch"]
    assert kill_incidents == [incident] and records == [incident]
    ours = _ours(cluster, namespace)
    kill_events = _kill_events(cluster, namespace)
    assert _engagements(kill_events) == 1, kill_events
    assert _repeats(ours) == 0, [(e["reason"], e.get("count"), e["message"]) for e in ours]  # no storm

    # the resume restores exactly what ran before the kill, from what the cluster kept
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"killSwitch": {"acknowledge": incident}}}))
    cluster.wait_for(lambda: _replicas(apps, namespace) == before, 60, "the exact replicas restored")
    assert sampler.claims == [], sampler.claims
    lost = sum(1 for name, n in _replicas(apps, namespace).items() if n != before[name])
    faults.record(f"SIGKILL between scale and status write (status write denied, then restart{MODE[evaluation]})",
                  injected=1,
                  survived=1, duplicated=(len(kill_incidents) - 1) + (len(records) - 1)
                  + (_engagements(kill_events) - 1) + _repeats(ours),
                  lost=lost, false_claims=len(sampler.claims))
