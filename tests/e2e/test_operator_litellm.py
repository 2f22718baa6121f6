"""The operator governs agents that call models through the real LiteLLM proxy.

The proxy (``litellm[proxy]``, installed by scripts/setup in a virtualenv of its own) runs
offline: its one model answers with ``mock_response``, priced by the model config's own
per-token prices, and its Prometheus callback serves ``/metrics``. The real Prometheus scrapes
it; the operator reads it (``spec.source: {type: LiteLLM, agentLabel: end_user}``: each agent
sends its Deployment name as the OpenAI ``user`` field), keeps LiteLLM's dollars as counted,
shows them in status and engages the kill switch on the mapped Deployment.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, start_operator  # noqa: F401 - fixtures
from test_operator_budget import (
    condition,
    deployment,
    events,
    replicas,
    status,
)

from fleetwarden.devcluster import layout, procs

# LiteLLM's own price for the mocked model; a mocked answer counts 10 prompt + 20 completion tokens
INPUT_USD, OUTPUT_USD = 0.0001, 0.0002
CALL_USD = 10 * INPUT_USD + 20 * OUTPUT_USD  # 0.005


def proxy_binary() -> Path:
    """The ``litellm`` command scripts/setup installed (``$FLEETWARDEN_CACHE/litellm-<version>``)."""
    found = sorted(layout.cache_dir().glob("litellm-*/.installed"))
    if not found:
        raise AssertionError(f"the LiteLLM proxy is not installed in {layout.cache_dir()}/litellm-<version>: "
                             "run scripts/setup")
    return found[-1].parent / "bin" / "litellm"


class LiteLLMProxy:
    """``litellm --config`` on a loopback port; ``chat(user)`` makes one mocked call as that end user."""

    def __init__(self, directory: Path) -> None:
        self.port = procs.free_port()
        self.key = "sk-" + secrets.token_hex(16)
        config = {
            "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_key": "sk-not-used", "mock_response": "mocked",
                "input_cost_per_token": INPUT_USD, "output_cost_per_token": OUTPUT_USD}}],
            "litellm_settings": {"callbacks": ["prometheus"], "require_auth_for_metrics_endpoint": False,
                                 "enable_end_user_cost_tracking_prometheus_only": True},
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
        }
        path = directory / "litellm.json"
        path.write_text(json.dumps(config))
        env = {**os.environ, "LITELLM_MASTER_KEY": self.key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.log = open(directory / "litellm.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(proxy_binary()), "--config", str(path), "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=directory)
        self.log_path = directory / "litellm.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"litellm exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{self.address}/health/liveliness", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def chat(self, user: str, count: int = 1) -> None:
        body = json.dumps({"model": "gpt-4o-mini", "user": user,
                           "messages": [{"role": "user", "content": "hello"}]}).encode()
        for _ in range(count):
            request = urllib.request.Request(
                f"http://{self.address}/v1/chat/completions", data=body, method="POST",
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as resp:
                answer = json.load(resp)
            assert answer["usage"] == {"completion_tokens": 20, "prompt_tokens": 10, "total_tokens": 30}, answer

    def stop(self) -> None:
        procs.end(self.proc)
        self.log.close()


@pytest.fixture
def proxy(cluster: Any, namespace: str, crds_installed: list[str], prometheus: Any,  # noqa: F811
          workdir: Path) -> Iterator[LiteLLMProxy]:  # noqa: F811
    p = LiteLLMProxy(workdir)
    job = f"litellm-{namespace}"
    try:
        cluster.wait_for(p.ready, 120, "the LiteLLM proxy up")
        prometheus.add_target(job, p.address, {"__metrics_path__": "/metrics/"})
        prometheus.wait_for_target_up(job, timeout=30)
        yield p
    finally:
        prometheus.remove_target(job)
        p.stop()


def litellm_budget(namespace: str, hour_cap: float) -> str:
    body = {"selector": {"matchLabels": {"app": "support"}},
            "source": {"type": "LiteLLM", "agentLabel": "end_user"},
            "limits": [{"window": "hour", "amountUSD": hour_cap}],
            "killSwitch": {"window": "hour", "thresholdPercent": 150}}
    return json.dumps({"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
                       "metadata": {"name": "support", "namespace": namespace}, "spec": body})


def test_litellm_proxy_spend_in_status_and_kill_switch(cluster: Any, namespace: str, proxy: LiteLLMProxy,
                                                       prometheus: Any, workdir: Path,  # noqa: F811
                                                       request: pytest.FixtureRequest) -> None:
    """LiteLLM's dollars for end_user=bot in status (another end user's not), then past 150% of the cap
    the kill switch scales the bot Deployment to zero and leaves the other agent alone."""
    cluster.apply(deployment("bot", namespace, 3))
    cluster.apply(deployment("other", namespace, 2, app="other"))
    proxy.chat("bot")
    proxy.chat("other", count=10)  # another agent, not under this budget: never counted for it
    prometheus.wait_for_query(f'litellm_spend_metric_total{{job="litellm-{namespace}", end_user="other"}}',
                              lambda r: bool(r) and float(r[0]["value"][1]) >= 10 * CALL_USD - 1e-9, timeout=30)
    cluster.apply(litellm_budget(namespace, hour_cap=0.02))
    start_operator(cluster, prometheus.url, namespace, workdir, request)
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("spend", {}).get("hour") and s, 60,
                          "spend from the LiteLLM proxy")
    # LiteLLM's own price (the model config's), kept as counted: not re-priced from genai-prices
    assert st["spend"]["hour"] == pytest.approx(CALL_USD, rel=0.01) and st["state"] == "Active"
    source = st["source"]
    assert source["type"] == "LiteLLM" and {"spend", "input_tokens", "output_tokens"} <= set(source["families"])
    assert source["lastSample"] and {"tasks", "outcomes"} <= set(source["unknown"])
    assert condition(st, "PricesKnown")["status"] == "True"
    described = cluster.kubectl("describe", "agentbudget", "support", "-n", namespace).stdout
    assert "Source:" in described and "LiteLLM" in described

    proxy.chat("bot", count=6)  # 7 calls: 0.035 USD, past 150% of 0.02
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 0, 60, "bot scaled to zero")
    st = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("state") == "Killed" and s, 30, "Killed")
    assert st["killSwitch"]["replicas"] == {"bot": 3}
    # the switch may fire on six of the seven calls (0.03 is already 150%); the seventh reaches the status
    # with the next scrape, and the status never counts more than the proxy's own dollars for bot
    st = cluster.wait_for(lambda: (s := status(cluster, namespace))["spend"]["hour"] >= 7 * CALL_USD - 1e-9 and s,
                          60, "all seven calls in the status")
    assert st["spend"]["hour"] == pytest.approx(7 * CALL_USD, rel=0.01) and st["state"] == "Killed"
    assert events(cluster, namespace, "KillSwitchEngaged")
    assert replicas(cluster, namespace, "other") == 2
