"""What the SDK costs an agent: time per recorded model call, per tool call and per
guardrail check, side by side in one run with a bare prometheus-client ``Counter.inc()``;
and memory with 1,000 tasks open at once.

    python benchmarks/sdk_overhead.py [--calls 200000]

Targets: under 5 us a call, within 3x of a bare labelled counter increment.
"""

from __future__ import annotations

import argparse
import gc
import timeit
import tracemalloc

from prometheus_client import CollectorRegistry, Counter

from fleetwarden import sdk
from fleetwarden.core import pricing, spec


def per_call_us(stmt: object, number: int, repeat: int = 5) -> float:
    """Best of ``repeat`` runs, microseconds per call."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    n = parser.parse_args().calls

    reg = CollectorRegistry()
    bare = Counter("bare_calls", "bare", registry=reg)
    labelled = Counter("bare_labelled_calls", "bare", ["agent", "namespace", "workflow", "step", "model"],
                       registry=reg)
    child = labelled.labels("bot", "ns", "w", "s", "gpt-4o")

    tracker = sdk.Tracker("bot", namespace="ns", registry=CollectorRegistry())
    task = tracker.start_task("w")
    policy = sdk.GuardrailPolicy(spec.CostPolicySpec.model_validate({
        "tokenCaps": {"perTask": 10**12},
        "rateLimits": {"toolCallsPerMinute": 1e12, "perTool": {"crm.*": 1e12}},
        "tools": {"allow": ["crm.*", "kb.*"], "deny": ["purchase.*"]},
        "approvals": [{"name": "big", "tool": "purchase.create", "amountAboveUSD": 1000}],
    }))
    guarded = sdk.Tracker("bot-guarded", namespace="ns", registry=CollectorRegistry(), policy=policy)
    gtask = guarded.start_task("w")
    table = pricing.PriceTable()

    rows = [
        ("bare Counter.inc() (no labels)", per_call_us(bare.inc, n)),
        ("bare Counter.labels(...).inc()", per_call_us(
            lambda: labelled.labels("bot", "ns", "w", "s", "gpt-4o").inc(), n)),
        ("bare cached child .inc()", per_call_us(child.inc, n)),
        ("PriceTable.llm_cost (cached)", per_call_us(
            lambda: table.llm_cost("gpt-4o", input_tokens=1200, output_tokens=300), n)),
        ("task.llm_call, priced by the table", per_call_us(
            lambda: task.llm_call("gpt-4o", input_tokens=1200, output_tokens=300), n)),
        ("task.llm_call, cost given", per_call_us(
            lambda: task.llm_call("gpt-4o", input_tokens=1200, output_tokens=300, cost_usd=0.006), n)),
        ("task.tool_call (no policy)", per_call_us(lambda: task.tool_call("crm.search", cost_usd=0.001), n)),
        ("task.check_llm (token cap)", per_call_us(lambda: gtask.check_llm(2000), n)),
        ("task.check_tool (list, rates, approvals)", per_call_us(lambda: gtask.check_tool("crm.search"), n)),
        ("task.tool_call with all guardrails", per_call_us(
            lambda: gtask.tool_call("crm.search", cost_usd=0.001), n)),
    ]
    reference = rows[2][1]
    print(f"{'operation':45} {'us/call':>8} {'x cached child':>15} {'x labels().inc()':>17}")
    for name, us in rows:
        print(f"{name:45} {us:8.3f} {us / reference:15.2f} {us / rows[1][1]:17.2f}")

    # Memory: 1,000 tasks open at once, each with a few calls recorded.
    mem_tracker = sdk.Tracker("bot-mem", namespace="ns", registry=CollectorRegistry())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tasks = []
    for i in range(1000):
        t = mem_tracker.start_task("w")
        t.llm_call("gpt-4o", input_tokens=1000 + i, output_tokens=100)
        t.tool_call("crm.search")
        tasks.append(t)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"\nmemory with 1,000 open tasks: {grown / 1024:.0f} KiB ({grown / 1000:.0f} bytes a task)")
    for t in tasks:
        t.end()


if __name__ == "__main__":
    main()
