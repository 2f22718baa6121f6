"""One evaluation cycle over 10,000 AgentBudgets on a real API server: time and memory.

Creates N AgentBudgets (default 10,000) in 100 namespaces with one agent Deployment per
budget on the local control plane (or $KUBECONFIG), then runs the operator's own
evaluation (``fleetwarden.handlers.runtime.Runtime.reconcile``, exactly what the kopf timer
calls) over all of them with a thread pool like the operator's, against a fixed Prometheus
answer (one fleet-wide snapshot, as the operator shares one per cycle). Prints:

- the first cycle (every budget's status written: one PATCH each; each agent's detectors
  refolded),
- a second cycle (nothing changed: the operator's clock stays at the snapshot's time; the
  refolds come from the per-minute memo; statuses are written again only for the
  lastEvaluated heartbeat, when the first cycle took longer than it), with the number of
  status PATCHes of each cycle,
- the number of Prometheus fetches (1 per cycle) and the process's peak RSS.

    python benchmarks/operator_scale.py [--budgets 10000] [--workers 16]

The Deployments have 0 replicas so that the control plane does not run 10,000 pods on a
2-core machine; the evaluation reads and decides the same either way.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from fleetwarden.adapters import kube, prometheus
from fleetwarden.core import series, spec
from fleetwarden.devcluster import cluster as devcluster
from fleetwarden.handlers import runtime

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = 100


class FixedFetcher:
    """A Prometheus answer fixed in advance: every agent spent a little, every minute."""

    def __init__(self, agents: list[tuple[str, str]], now: float) -> None:
        self.agents = agents
        self.now = now
        self.fetches = 0

    def fetch(self, now: float | None = None) -> prometheus.FleetSnapshot:
        self.fetches += 1
        end = series.minute_of(self.now)
        start = end - 90 * 60
        minutes = {(ns, a): [series.AgentMinute(a, ns, m, inference_cost_usd=0.001, llm_calls=2, tasks_completed=1,
                                                tokens=800, model="gpt-4o-mini")
                             for m in range(start, end, 60)] for ns, a in self.agents}
        spend = {(ns, a): {(w, c): 0.09 * (1 if w is spec.Window.hour else 5) for w in spec.Window
                           for c in (False, True)} for ns, a in self.agents}
        return prometheus.FleetSnapshot(fetched_at=self.now, start=start, end=end, minutes=minutes, spend=spend,
                                        last_sample={k: self.now for k in self.agents}, stale_after=45.0,
                                        queries=prometheus.QUERIES_PER_CYCLE)


def create_all(k: kube.Kube, budgets: int, workers: int) -> None:
    per_ns = budgets // NAMESPACES
    for n in range(NAMESPACES):
        body = {"metadata": {"name": f"scale-{n:03d}"}}
        try:
            k.core.create_namespace(cast(Any, body))  # the client takes plain dicts too
        except Exception as exc:  # noqa: BLE001 - already there on a rerun
            if "AlreadyExists" not in str(exc):
                raise

    def one(i: int) -> None:
        ns, name = f"scale-{i % NAMESPACES:03d}", f"agent-{i // NAMESPACES:05d}"
        k.apps.create_namespaced_deployment(ns, cast(Any, {
            "metadata": {"name": name, "labels": {"agent": name}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"agent": name}},
                     "template": {"metadata": {"labels": {"agent": name}},
                                  "spec": {"containers": [{"name": "agent", "image": "example.com/a:1",
                                                           "env": [{"name": "MODEL", "value": "gpt-4o-mini"}]}]}}}}))
        k.custom.create_namespaced_custom_object(spec.GROUP, spec.VERSION, ns, "agentbudgets", {
            "apiVersion": spec.API_VERSION, "kind": "AgentBudget", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"agent": name}},
                     "limits": [{"window": "hour", "amountUSD": 10}, {"window": "day", "amountUSD": 100}]}})

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(per_ns * NAMESPACES)))
    print(f"created {per_ns * NAMESPACES} budgets + deployments in {time.perf_counter() - started:.1f}s", flush=True)


class CountingKube(kube.Kube):
    """The real client, counting status PATCHes."""

    patches = 0

    def patch_budget_status(self, namespace: str, name: str, patch: Any) -> None:
        super().patch_budget_status(namespace, name, patch)
        type(self).patches += 1


def cycle(rt: runtime.Runtime, k: kube.Kube, workers: int) -> tuple[float, int]:
    """List once (the operator's indexes come from watches), then evaluate every budget."""
    rt.new_cycle()
    CountingKube.patches = 0
    started = time.perf_counter()
    budgets = k.list_budgets(None)
    deployments: dict[str, list[dict[str, Any]]] = {}
    for d in k.list_deployments(None):
        deployments.setdefault(d["metadata"]["namespace"], []).append(d)

    def one(body: dict[str, Any]) -> None:
        rt.reconcile(body, deployments.get(body["metadata"]["namespace"], []), ())

    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, budgets))
    return time.perf_counter() - started, len(budgets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleetwarden-scale-"))
    local = None
    try:
        env_kubeconfig = os.environ.get("KUBECONFIG")
        if env_kubeconfig is None:
            local = devcluster.LocalCluster(work / "cluster", tie_to_parent=True)
            info = local.up(timeout=240)
            env_kubeconfig = str(info["kubeconfig"])
            import subprocess

            subprocess.run([str(info["kubectl"]), f"--kubeconfig={env_kubeconfig}", "apply", "-f", str(ROOT / "crds")],
                           check=True, capture_output=True)
            subprocess.run([str(info["kubectl"]), f"--kubeconfig={env_kubeconfig}", "wait",
                            "--for=condition=Established", "--timeout=60s", "crd/agentbudgets.fleetwarden.dev"],
                           check=True, capture_output=True)
        k = CountingKube(kube.load_config(env_kubeconfig))
        create_all(k, args.budgets, args.workers)
        per_ns = args.budgets // NAMESPACES
        agents = [(f"scale-{i % NAMESPACES:03d}", f"agent-{i // NAMESPACES:05d}") for i in range(per_ns * NAMESPACES)]
        fetcher = FixedFetcher(agents, time.time())
        # the operator's clock stays at the snapshot's time: the data is fixed, so nothing changes
        # between the cycles but the wall clock (the status heartbeat still follows it)
        rt = runtime.Runtime(interval=3600.0, fetcher=fetcher, kube_client=k,  # type: ignore[arg-type]
                             clock=lambda: fetcher.now)
        first, n = cycle(rt, k, args.workers)
        print(f"cycle 1 (every status written): {n} budgets in {first:.1f}s "
              f"({first / n * 1000:.2f} ms per budget), {CountingKube.patches} status patches", flush=True)
        second, n = cycle(rt, k, args.workers)
        print(f"cycle 2 (nothing changed but the heartbeat): {n} budgets in {second:.1f}s "
              f"({second / n * 1000:.2f} ms per budget), {CountingKube.patches} status patches", flush=True)
        memo = getattr(rt, "memo", None)
        if memo is not None:
            print(f"detector/figure memo: {memo.misses} computed, {memo.hits} reused", flush=True)
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"Prometheus fetches: {fetcher.fetches} for 2 cycles ({prometheus.QUERIES_PER_CYCLE} queries each)")
        print(f"peak RSS of the evaluating process: {rss_mib:.0f} MiB")
        return 0
    finally:
        if local is not None:
            local.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
