"""How long from the onset of a budget breach to the operator's action (kill switch: scale to 0).

Real parts: a local control plane (or $KUBECONFIG), a real Prometheus scraping a
controlled /metrics endpoint, and ``python -m fleetwarden operator`` as a subprocess.
Each round moves one agent's cost counter past 150% of its hourly cap at a known instant
and polls the Deployment's ``spec.replicas`` until it is 0; the operator is then
resumed (acknowledge) for the next round. Target: at most two evaluation intervals plus
one scrape interval.

    python benchmarks/operator_latency.py [--rounds 5] [--interval 2] [--scrape-interval 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import prometheus_client as pc

from fleetwarden.core import metricnames
from fleetwarden.devcluster import cluster as devcluster
from fleetwarden.devcluster import monitoring, procs

ROOT = Path(__file__).resolve().parents[1]
NS = "latency"


def kubectl(env: dict[str, str], *args: str, input: str | None = None) -> str:
    result = subprocess.run([env.get("FLEETWARDEN_KUBECTL", "kubectl"), *args], input=input, env=env,
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def wait(fn: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="operator evaluation interval (s)")
    parser.add_argument("--scrape-interval", type=float, default=2.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fleetwarden-latency-"))
    local = None
    try:
        env = dict(os.environ)
        if "KUBECONFIG" not in env:
            local = devcluster.LocalCluster(work / "cluster", tie_to_parent=True)
            info = local.up(timeout=240)
            env["KUBECONFIG"], env["FLEETWARDEN_KUBECTL"] = str(info["kubeconfig"]), str(info["kubectl"])
        kubectl(env, "apply", "-f", str(ROOT / "crds"))
        kubectl(env, "wait", "--for=condition=Established", "--timeout=60s", "crd/agentbudgets.fleetwarden.dev")
        kubectl(env, "create", "namespace", NS)

        registry = pc.CollectorRegistry()
        cost = pc.Counter(metricnames.LLM_COST_USD, "cost", ["agent", "namespace", "model"], registry=registry)
        child = cost.labels("bot", NS, "gpt-4o-mini")
        child.inc(0)
        port = procs.free_port()
        server, _ = pc.start_http_server(port, addr="127.0.0.1", registry=registry)
        prom = monitoring.Prometheus(work / "prometheus", scrape_interval=args.scrape_interval, tie_to_parent=True)
        prom.start()
        prom.add_target("agents", f"127.0.0.1:{port}")
        prom.wait_for_target_up("agents")

        kubectl(env, "apply", "-f", "-", input=json.dumps({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bot", "namespace": NS, "labels": {"app": "bot"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"agent": "bot"}},
                     "template": {"metadata": {"labels": {"agent": "bot"}},
                                  "spec": {"containers": [{"name": "agent", "image": "example.com/bot:1"}]}}}}))
        kubectl(env, "apply", "-f", "-", input=json.dumps({
            "apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
            "metadata": {"name": "bot", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "bot"}}, "limits": [{"window": "hour", "amountUSD": 1}]}}))
        log = open(work / "operator.log", "w")  # noqa: SIM115
        operator = subprocess.Popen(
            [sys.executable, "-m", "fleetwarden", "operator", "--interval", str(args.interval),
             "--prometheus-url", prom.url, "--scrape-interval", str(args.scrape_interval),
             "--metrics-port", "0", "--namespace", NS], env=env, stdout=log, stderr=subprocess.STDOUT)

        def budget_status() -> dict[str, Any]:
            return json.loads(kubectl(env, "get", "agentbudget", "bot", "-n", NS, "-o", "json")).get("status") or {}

        def replicas() -> int:
            return int(kubectl(env, "get", "deployment", "bot", "-n", NS, "-o", "jsonpath={.spec.replicas}"))

        wait(lambda: budget_status().get("state") == "Active", 60, "budget Active", 0.5)
        latencies = []
        for round_ in range(args.rounds):
            # 200% of the 1 USD hourly cap since the last resume
            onset = time.monotonic()
            child.inc(2.0)
            wait(lambda: replicas() == 0, 120, "scale to zero")
            latencies.append(time.monotonic() - onset)
            print(f"round {round_ + 1}: breach -> scaled to 0 in {latencies[-1]:.2f}s", flush=True)
            incident = wait(lambda: (budget_status().get("killSwitch") or {}).get("incident"), 30, "incident")
            kubectl(env, "patch", "agentbudget", "bot", "-n", NS, "--type=merge",
                    "-p", json.dumps({"spec": {"killSwitch": {"acknowledge": incident}}}))
            wait(lambda: replicas() == 2, 60, "resume", 0.2)
            wait(lambda: not (budget_status().get("killSwitch") or {}).get("engaged", True), 30, "resumed", 0.2)
        operator.terminate()
        operator.wait(timeout=15)
        server.shutdown()
        prom.stop()
        target = 2 * args.interval + args.scrape_interval
        print(f"\noperator latency over {len(latencies)} rounds (interval {args.interval}s, "
              f"scrape {args.scrape_interval}s):")
        print(f"  median {statistics.median(latencies):.2f}s  min {min(latencies):.2f}s  max {max(latencies):.2f}s")
        print(f"  target <= 2 x interval + scrape = {target:.1f}s: "
              f"{'met' if max(latencies) <= target else 'NOT met'} (max)")
        return 0
    finally:
        if local is not None:
            local.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
