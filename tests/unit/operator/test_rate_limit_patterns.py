"""A perTool rate limit on a pattern (``crm.*``) is one limit for every tool it matches, in the agent (the
SDK's guardrail), in replay and in the operator: one matcher (policies.rate_limit_key), calls counted together."""

from __future__ import annotations

import io
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import sdk
from fleetwarden.core import decision, evaluate, events, findings, pricing, replay, spec
from fleetwarden.core.series import AgentMinute

NS = "support"
T0 = 1_800_000_000.0 // 60 * 60
# crm.search has a limit of its own; crm.update and crm.get share crm.*'s 3 calls a minute
RATES = {"perTool": {"crm.*": 3, "crm.search": 50}}


def cost_policy(action: str) -> spec.CostPolicy:
    return spec.CostPolicy.model_validate({"metadata": {"name": "crm-limits", "namespace": NS},
                                           "spec": {"rateLimits": {**RATES, "action": action}}})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def agent_calls(action: str, out: io.BytesIO | None = None) -> tuple[list[str], CollectorRegistry]:
    """The agent calls crm.update, crm.get, crm.search, crm.update, crm.get a second apart under the policy;
    returns the calls its guardrail refused."""
    clock, reg = Clock(), CollectorRegistry()
    tracker = sdk.Tracker("bot", namespace=NS, registry=reg, clock=clock,
                          policy=sdk.GuardrailPolicy(cost_policy(action).spec),
                          events=sdk.EventWriter(out) if out is not None else None)
    refused = []
    with tracker.task("triage") as task:
        for tool in ("crm.update", "crm.get", "crm.search", "crm.update", "crm.get"):
            clock.now += 1
            try:
                task.tool_call(tool)
            except sdk.RateLimited:
                refused.append(tool)
    return refused, reg


def test_the_agent_refuses_calls_past_a_pattern_limit() -> None:
    """The SDK's guardrail: the tools of crm.* share one bucket of 3; crm.search keeps its own limit."""
    refused, reg = agent_calls("deny")
    assert refused == ["crm.get"]  # the 4th call to a crm.* tool (crm.update, crm.get, crm.update, crm.get)
    assert reg.get_sample_value("fleetwarden_guardrail_decisions_total", dict(
        agent="bot", namespace=NS, workflow="triage", tool="crm.get", status="rate_limit_exceeded")) == 1.0


def test_replay_finds_a_pattern_limit_passed() -> None:
    """Replay of the same agent (action alert lets every call through): one rate_limit_exceeded for crm.*,
    at the call that passed it, naming the tools counted."""
    out = io.BytesIO()
    refused, _ = agent_calls("alert", out)
    assert refused == []
    table = pricing.PriceTable.from_config({"models": [], "genai_prices": False})
    found = list(replay.run(events.iter_events(out.getvalue().splitlines()), [], [cost_policy("alert")], table,
                            detect=False))
    assert [(f.kind, f.tool, f.time) for f in found] == [(findings.RATE_LIMIT_EXCEEDED, "crm.*", T0 + 5)]
    assert found[0].evidence["tools"] == {"crm.get": 2, "crm.update": 2}
    assert found[0].evidence["calls_per_minute"] == 4.0


def _evaluate(tool_calls: dict[int, dict[str, float]]) -> decision.Decision:
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": NS},
                                             "spec": {"limits": [{"window": "hour", "amountUSD": 100}]}})
    start = int(T0) - 30 * 60
    minutes = [AgentMinute("bot", NS, start + 60 * i, inference_cost_usd=0.01, llm_calls=1, tasks_completed=1,
                           tool_calls=tool_calls.get(i, {})) for i in range(30)]
    return evaluate.evaluate(decision.EvaluationInput(
        budget=budget, agents=[decision.AgentDeployment("bot", NS, {}, 1)], minutes={"bot": minutes},
        spend={w: 1.0 for w in spec.Window}, now=T0, previous={}, policies=[cost_policy("throttle")],
        lookback_start=float(start)))


@pytest.mark.parametrize(("calls", "expected"), [
    ({20: {"crm.update": 2.0, "crm.get": 2.0, "crm.search": 40.0}}, [("crm.*", 20)]),  # 4 > 3, together
    ({20: {"crm.update": 3.0, "crm.search": 40.0}}, []),  # 3: within; crm.search within its own 50
    ({20: {"crm.update": 2.0, "crm.get": 2.0}, 21: {"crm.get": 9.0}}, [("crm.*", 20), ("crm.*", 21)]),  # worse
])
def test_the_operator_finds_a_pattern_limit_passed(calls: dict[int, dict[str, float]],
                                                   expected: list[tuple[str, int]]) -> None:
    """evaluate() from AgentMinute buckets: the tools of crm.* counted together against its limit."""
    d = _evaluate(calls)
    rate: list[Any] = [f for f in d.findings if f.kind == findings.RATE_LIMIT_EXCEEDED]
    start = int(T0) - 30 * 60
    assert [(f.tool, int(f.time - start) // 60 - 1) for f in rate] == expected
    if rate:
        assert rate[0].evidence["tools"] == {"crm.get": 2.0, "crm.update": 2.0}
