# ruff: noqa: F811 - pytest fixtures imported from other modules are parameters here
"""Two operator shards on disjoint namespaces, on the real stack (docs/scaling.md).

Each shard is ``fleetwarden operator --namespace <its namespace> --leader-elect`` as the
operator's own ServiceAccount, with no ``--lease-name``: each takes its shard's default Lease
and leads it. The agents are real SDK Trackers (``fleetwarden.sdk``) whose /metrics the real
Prometheus scrapes. Shard A reads Prometheus through a loopback proxy that records every query
and answer, so the test sees what the shard asked and what it was told.

Asserted: each shard holds its own Lease; a breach in A is acted on by shard A only (A's
Events name A's leader as ``reportingInstance``; shard B's log never names A's namespace) and
vice versa; a budget in a namespace neither shard serves (its agent far over its cap) gets no
status, no finalizer, no Event and keeps its replicas; every query of shard A carries A's
namespace matcher and its tenant header, and no answer holds a series of another namespace.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, operator_identity, start_operator  # noqa: F401 - fixture
from prometheus_client import CollectorRegistry
from test_operator_budget import budget, deployment, replicas, status

from fleetwarden import sdk


class Agents:
    """The SDK Trackers of one namespace on one /metrics endpoint, scraped by the real Prometheus."""

    def __init__(self, namespace: str, names: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        self.trackers = {n: sdk.Tracker(n, namespace=namespace, registry=self.registry, model="gpt-4o-mini")
                         for n in names}
        self.server = sdk.start_metrics_server(0, registry=self.registry)
        for name in names:
            self.spend(name, 0.0)  # every running agent has fresh series (else its data is unknown)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_port}"

    def spend(self, agent: str, usd: float) -> None:
        """One task of ``agent`` with one model call costing ``usd``."""
        with self.trackers[agent].task(workflow="support") as task:
            task.llm_call("gpt-4o-mini", input_tokens=100, output_tokens=20, cost_usd=usd)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RecordingProxy(ThreadingHTTPServer):
    """Prometheus' HTTP API on loopback, forwarded to the real one; keeps (query, headers, answer)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with urllib.request.urlopen(upstream.rstrip("/") + self.path, timeout=30) as resp:  # noqa: S310
                    body, status = resp.read(), resp.status
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
                if self.path.startswith("/api/v1/query"):
                    outer.seen.append((query, dict(self.headers.items()), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature
                del format, args

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def proxy(prometheus: Any) -> Iterator[RecordingProxy]:
    p = RecordingProxy(prometheus.url)
    try:
        yield p
    finally:
        p.shutdown()
        p.server_close()


def _namespace(cluster: Any, request: pytest.FixtureRequest, role: str) -> str:
    name = f"e2e-shard-{role}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    request.addfinalizer(lambda: cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found",
                                                 check=False))
    cluster.wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name,
                                             check=False).returncode == 0, 30, f"ServiceAccount default in {name}")
    return name


def _fleet(cluster: Any, prometheus: Any, request: pytest.FixtureRequest, namespace: str, bot_usd: float) -> Agents:
    """Agent ``bot`` (2 replicas, real SDK series in Prometheus) under AgentBudget ``support`` (1 USD an hour)."""
    agents = Agents(namespace, ("bot",))
    request.addfinalizer(agents.stop)
    if bot_usd:
        agents.spend("bot", bot_usd)
    cluster.apply(deployment("bot", namespace, 2))
    job = f"agents-{namespace}"
    prometheus.add_target(job, agents.address)
    request.addfinalizer(lambda: prometheus.remove_target(job))
    prometheus.wait_for_target_up(job, timeout=30)
    prometheus.wait_for_query(f'fleetwarden_llm_cost_usd_total{{namespace="{namespace}"}}',
                              lambda r: len(r) == 1 and float(r[0]["value"][1]) == bot_usd, timeout=30)
    cluster.apply(budget(namespace, hour_cap=1.0))
    return agents


def _ours(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    """The operator's Events in ``namespace``."""
    return [e for e in cluster.get_json("events", "-n", namespace)["items"]
            if (e.get("source") or {}).get("component") == "fleetwarden"]


def _leader(op: Any) -> tuple[str, str]:
    """(identity, Lease) from the shard's log line "leader election: <id> leads (Lease <ns>/<name>)"."""
    found = re.search(r"leader election: (\S+) leads \(Lease [^/]+/(\S+)\)", op.tail(100000))
    assert found, op.tail()
    return found.group(1), found.group(2)


def test_two_shards_on_disjoint_namespaces_each_act_only_on_their_own(
        cluster: Any, crds_installed: list[str], prometheus: Any, proxy: RecordingProxy, workdir: Path,
        request: pytest.FixtureRequest) -> None:
    """Shard A and shard B, each its own Lease and leader; a breach in A is acted on by A only, one in
    B by B only; the budget in C (served by neither, its agent at 300% of its cap) is untouched;
    shard A's queries carry A's matcher and tenant header and their answers hold only A's series."""
    a_ns, b_ns, c_ns = (_namespace(cluster, request, role) for role in ("a", "b", "c"))
    fleet = {ns: _fleet(cluster, prometheus, request, ns, 3.0 if ns == c_ns else 0.0) for ns in (a_ns, b_ns, c_ns)}
    identity = operator_identity(cluster, workdir, request)
    shard_a = start_operator(cluster, proxy.url, a_ns, workdir, request, ["--prometheus-headers", "X-Scope-OrgID=a"],
                             identity=identity, name="shard-a", shard_lease=True)
    shard_b = start_operator(cluster, prometheus.url, b_ns, workdir, request, identity=identity, name="shard-b",
                             shard_lease=True)

    # 1: each shard leads its own Lease, and evaluates its own budget
    for ns in (a_ns, b_ns):
        cluster.wait_for(lambda ns=ns: status(cluster, ns).get("state") == "Active", 90, f"budget in {ns} Active")
    (a_id, a_lease), (b_id, b_lease) = _leader(shard_a), _leader(shard_b)
    assert a_lease != b_lease and a_id != b_id
    leases = {item["metadata"]["name"]: item["spec"].get("holderIdentity")
              for item in cluster.get_json("leases", "-n", identity.lease_namespace)["items"]}
    assert leases[a_lease] == a_id and leases[b_lease] == b_id

    # 2: a breach in A (200% of the cap): shard A kills A's agent; B's keeps running
    fleet[a_ns].spend("bot", 2.0)
    cluster.wait_for(lambda: replicas(cluster, a_ns) == 0, 90, "shard A scales A's agent to zero")
    cluster.wait_for(lambda: status(cluster, a_ns).get("state") == "Killed", 30, "A Killed")
    shard_b.wait_evaluations(cluster, 2)
    assert replicas(cluster, b_ns) == 2 and status(cluster, b_ns).get("state") == "Active"
    a_events = _ours(cluster, a_ns)
    assert any(e["reason"] == "KillSwitchEngaged" for e in a_events)
    assert {e.get("reportingInstance") for e in a_events} == {a_id}

    # 3: a breach in B: shard B kills B's agent; A's Events stay A's leader's
    fleet[b_ns].spend("bot", 2.0)
    cluster.wait_for(lambda: replicas(cluster, b_ns) == 0, 90, "shard B scales B's agent to zero")
    cluster.wait_for(lambda: status(cluster, b_ns).get("state") == "Killed", 30, "B Killed")
    b_events = _ours(cluster, b_ns)
    assert any(e["reason"] == "KillSwitchEngaged" for e in b_events)
    assert {e.get("reportingInstance") for e in b_events} == {b_id}
    assert {e.get("reportingInstance") for e in _ours(cluster, a_ns)} == {a_id}
    assert b_ns not in shard_a.tail(100000) and a_ns not in shard_b.tail(100000)
    assert c_ns not in shard_a.tail(100000) + shard_b.tail(100000)

    # 4: the budget in C, served by neither shard: untouched though its agent spent 300% of its cap
    budget_c = cluster.get_json("agentbudget", "support", "-n", c_ns)
    assert "status" not in budget_c and "fleetwarden.dev/finalizer" not in budget_c["metadata"].get("finalizers", [])
    assert replicas(cluster, c_ns) == 2 and _ours(cluster, c_ns) == []

    # 5: what shard A asked Prometheus and was told: its namespace only, with its tenant header
    assert len(proxy.seen) >= 2 * 17, len(proxy.seen)  # two cycles at least
    for query, headers, answer in proxy.seen:
        assert f'namespace=~"{a_ns}"' in query, query
        assert headers.get("X-Scope-OrgID") == "a"
        assert answer["status"] == "success"
        assert {s["metric"].get("namespace") for s in answer["data"]["result"]} <= {a_ns}, query
    assert any(s["metric"].get("namespace") == a_ns for _, _, ans in proxy.seen for s in ans["data"]["result"])
