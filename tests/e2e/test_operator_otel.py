"""The operator governs an agent that knows nothing of Fleetwarden: OpenTelemetry GenAI metrics.

The agent (``otel_agent.py``) is instrumented with the real OpenTelemetry SDK and its Prometheus
exporter only: its resource attributes (k8s.namespace.name, k8s.deployment.name) are on
``target_info`` alone, joined by job and instance. The real Prometheus scrapes it; the operator
reads it (``spec.source.type: OpenTelemetry``), prices its tokens with genai-prices, shows the
spend and the source's health in status, engages the kill switch, says which models it cannot
price, and rolls a model change back when the cost per agent invocation jumps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, start_operator  # noqa: F401 - fixtures
from test_operator_anomalies import model_env, policy
from test_operator_budget import (
    condition,
    deployment,
    events,
    replicas,
    status,
)

from fleetwarden.core import detectors
from fleetwarden.devcluster import procs

AGENT = Path(__file__).with_name("otel_agent.py")


class OtelAgent:
    """otel_agent.py in a subprocess: ``task(model, input, output, count)`` records agent invocations."""

    def __init__(self, namespace: str, name: str = "bot", promoted: bool = False) -> None:
        self.port = procs.free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(AGENT), "--port", str(self.port), "--namespace", namespace, "--deployment", name,
             *(["--promoted"] if promoted else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def task(self, model: str, input_tokens: int, output_tokens: int, count: int = 1) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"task {model} {input_tokens} {output_tokens} {count}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        procs.end(self.proc, grace=10)


@pytest.fixture
def agent(cluster: Any, namespace: str, crds_installed: list[str], prometheus: Any,  # noqa: F811
          request: pytest.FixtureRequest) -> Iterator[OtelAgent]:
    """The agent, scraped; parametrized ``True`` (indirect): the k8s attributes promoted onto its series."""
    a = OtelAgent(namespace, promoted=getattr(request, "param", False))
    job = f"otel-{namespace}"
    prometheus.add_target(job, a.address)
    try:
        prometheus.wait_for_target_up(job, timeout=30)
        yield a
    finally:
        prometheus.remove_target(job)
        a.stop()


def minute_now() -> int:
    return int(time.time() // 60)


def otel_budget(namespace: str, hour_cap: float, **spec: Any) -> str:
    body = {"selector": {"matchLabels": {"app": "support"}}, "source": {"type": "OpenTelemetry"},
            "limits": [{"window": "hour", "amountUSD": hour_cap}],
            "killSwitch": {"window": "hour", "thresholdPercent": 150}}
    body.update(spec)
    return json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                       "metadata": {"name": "support", "namespace": namespace}, "spec": body})


def test_otel_agent_spend_unpriced_models_and_kill_switch(cluster: Any, namespace: str, agent: OtelAgent,
                                                          prometheus: Any, workdir: Path,  # noqa: F811
                                                          request: pytest.FixtureRequest) -> None:
    """Priced spend in status, status.source healthy, an unpriced model named (never 0), then the kill switch."""
    cluster.apply(deployment("bot", namespace, 3))
    agent.task("gpt-4o-mini", 1000, 100)
    cluster.apply(otel_budget(namespace, hour_cap=0.01))
    op = start_operator(cluster, prometheus.url, namespace, workdir, request)
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("spend", {}).get("hour") and s, 60,
                          "spend from the OTel agent")
    assert 0 < st["spend"]["hour"] < 0.01 and st["state"] == "Active"
    source = st["source"]
    assert source["type"] == "OpenTelemetry" and {"tokens", "calls", "tasks"} <= set(source["families"])
    assert "tasks" not in source.get("unknown", []) and "outcomes" in source["unknown"] and source["lastSample"]
    assert condition(st, "PricesKnown")["status"] == "True"
    described = cluster.kubectl("describe", "agentbudget", "support", "-n", namespace).stdout
    assert "Source:" in described and "OpenTelemetry" in described

    agent.task("acme-private-llm", 5000, 0)  # no price anywhere: named, never 0ドル
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("source", {}).get("unpricedModels") and s,
                          60, "the unpriced model in status.source")
    assert st["source"]["unpricedModels"] == [{"model": "acme-private-llm", "tokens": 5000}]
    prices = condition(st, "PricesKnown")
    assert prices["status"] == "False" and "acme-private-llm" in prices["message"]
    cluster.wait_for(lambda: op.metric("fleetwarden_unpriced_tokens") == 5000, 30, "fleetwarden_unpriced_tokens")

    agent.task("gpt-4o-mini", 100_000, 10_000, count=2)  # ~0.04 USD: past 150% of 0.01
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0, 60, "bot scaled to zero")
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("state") == "Killed" and s, 30, "Killed")
    assert st["killSwitch"]["replicas"] == {"bot": 3} and st["spend"]["hour"] > 0.015
    assert events(cluster, namespace, "KillSwitchEngaged")


@pytest.mark.parametrize("agent", [True], ids=["promoted"], indirect=True)
def test_otel_promoted_labels_spend_in_status(cluster: Any, namespace: str, agent: OtelAgent, prometheus: Any,
                                             workdir: Path, request: pytest.FixtureRequest) -> None:  # noqa: F811
    """A Collector's shape: the k8s attributes are labels of the gen_ai series (none on target_info).
    The spend is the tokens' price, once: 100k input + 10k output tokens of gpt-4o-mini."""
    cluster.apply(deployment("bot", namespace, 2))
    agent.task("gpt-4o-mini", 100_000, 10_000)
    prometheus.wait_for_query(
        f'gen_ai_client_token_usage_sum{{k8s_namespace_name="{namespace}", k8s_deployment_name="bot"}}',
        lambda r: len(r) == 2, timeout=30)
    assert not prometheus.query(f'target_info{{job="otel-{namespace}", k8s_namespace_name!=""}}')
    cluster.apply(otel_budget(namespace, hour_cap=1.0))
    start_operator(cluster, prometheus.url, namespace, workdir, request)
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("spend", {}).get("hour") and s, 60,
                          "spend from the promoted series")
    assert st["spend"]["hour"] == pytest.approx(100_000 * 0.15e-6 + 10_000 * 0.6e-6, rel=0.01)
    assert {"tokens", "calls", "tasks"} <= set(st["source"]["families"]) and st["source"]["lastSample"]
    assert condition(st, "PricesKnown")["status"] == "True"


def test_otel_model_change_spike_rolls_back(cluster: Any, namespace: str, agent: OtelAgent, prometheus: Any,
                                           workdir: Path, request: pytest.FixtureRequest) -> None:  # noqa: F811
    """Cost per invocation jumps after MODEL changes (gpt-4o-mini -> gpt-4o): MODEL is set back."""
    cluster.apply(deployment("bot", namespace, 2, model="gpt-4o-mini"))
    cluster.apply(policy(namespace, {"modelUpdateSpike": {"minTasks": 5, "baselineTasks": 10, "ratio": 1.8}}))
    cluster.apply(otel_budget(namespace, hour_cap=1000.0))
    start_operator(cluster, prometheus.url, namespace, workdir, request)
    def batch(model: str) -> None:
        """13 invocations within one minute: one, scraped (the model's series now exists in
        Prometheus), then 12 more."""
        start = minute_now()
        cluster.wait_for(lambda: minute_now() > start, 70, "a new minute")
        agent.task(model, 2000, 200)
        # the series exists in Prometheus (scraped) before the counted invocations
        prometheus.wait_for_query(
            f'gen_ai_client_operation_duration_seconds_count{{gen_ai_request_model="{model}"}}',
            lambda r: bool(r) and float(r[0]["value"][1]) >= 1, timeout=30)
        agent.task(model, 2000, 200, count=12)

    batch("gpt-4o-mini")  # the baseline: the spike detector judges a change only against
    for _ in range(detectors.MIN_BASELINE_MINUTES):  # MIN_BASELINE_MINUTES active minutes of it
        start = minute_now()
        cluster.wait_for(lambda: minute_now() > start, 70, "a new minute")  # noqa: B023 - called at once
        agent.task("gpt-4o-mini", 2000, 200, count=3)
    cluster.kubectl("set", "env", "deployment/bot", "-n", namespace, "MODEL=gpt-4o")  # the update
    batch("gpt-4o")  # ~16x the cost per invocation
    cluster.wait_for(lambda: model_env(cluster, namespace) == "gpt-4o-mini", 150, "MODEL rolled back")
    rollback = cluster.wait_for(lambda: (status(cluster, namespace).get("model") or {}).get("rollbacks"), 30,
                                "status.model.rollbacks")[-1]
    assert (rollback["agent"], rollback["from"], rollback["to"]) == ("bot", "gpt-4o", "gpt-4o-mini")
    assert condition(status(cluster, namespace), "AnomalyDetected")["reason"] == "ModelUpdateSpike"
