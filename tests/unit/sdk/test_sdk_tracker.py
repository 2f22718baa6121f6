"""The Tracker records model calls, tool calls, outcomes, human time and tasks as metrics."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import errors, sdk
from fleetwarden.sdk import _metrics

ALLOWED_LABELS = {"agent", "namespace", "workflow", "step", "model", "tool", "outcome", "status", "le"}


def _tracker(**kwargs: object) -> tuple[sdk.Tracker, CollectorRegistry]:
    reg = CollectorRegistry()
    return sdk.Tracker("bot", namespace="ns", registry=reg, clock=lambda: 1_800_000_000.0, **kwargs), reg  # type: ignore[arg-type]


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_llm_call_counts_tokens_and_prices_the_call() -> None:
    """A model call adds its tokens and its price-table cost under its labels."""
    tracker, reg = _tracker()
    with tracker.task(workflow="refund") as task, task.step("plan"):
        cost = task.llm_call("gpt-4o", input_tokens=1000, output_tokens=200, cache_read_tokens=300,
                             cache_write_tokens=0, reasoning_tokens=7)
    expected = sdk.PriceTable().llm_cost("gpt-4o", input_tokens=1000, output_tokens=200, cache_read_tokens=300,
                                         reasoning_tokens=7)
    assert cost == pytest.approx(expected)
    labels = dict(agent="bot", namespace="ns", workflow="refund", step="plan", model="gpt-4o")
    assert _value(reg, "fleetwarden_llm_calls_total", status="ok", **labels) == 1
    assert _value(reg, "fleetwarden_llm_cost_usd_total", **labels) == pytest.approx(expected)
    assert _value(reg, "fleetwarden_llm_input_tokens_total", **labels) == 1000
    assert _value(reg, "fleetwarden_llm_output_tokens_total", **labels) == 200
    assert _value(reg, "fleetwarden_llm_cache_read_tokens_total", **labels) == 300
    assert _value(reg, "fleetwarden_llm_reasoning_tokens_total", **labels) == 7


def test_explicit_cost_wins_over_the_price_table() -> None:
    """cost_usd given by the agent is recorded as is, even for a model with no known price."""
    tracker, reg = _tracker()
    with tracker.task("w") as task:
        task.llm_call("in-house-model", input_tokens=5, output_tokens=5, cost_usd=0.25, status="error")
    assert _value(reg, "fleetwarden_llm_cost_usd_total", agent="bot", namespace="ns", workflow="w", step="",
                  model="in-house-model") == 0.25
    assert _value(reg, "fleetwarden_llm_calls_total", agent="bot", namespace="ns", workflow="w", step="",
                  model="in-house-model", status="error") == 1


def test_unknown_model_raises_and_records_nothing() -> None:
    """A model with no price raises PricingError naming it; no call is counted."""
    tracker, reg = _tracker()
    with pytest.raises(errors.PricingError, match="in-house-model"), tracker.task("w") as task:
        task.llm_call("in-house-model", input_tokens=5, output_tokens=5)
    assert _value(reg, "fleetwarden_llm_calls_total", agent="bot", namespace="ns", workflow="w", step="",
                  model="in-house-model", status="ok") is None


@pytest.mark.parametrize(("body", "status"), [
    (lambda task: None, "completed"),
    (lambda task: task.abandon(), "abandoned"),
    (lambda task: 1 / 0, "failed"),
])
def test_task_status_and_histograms(body: object, status: str) -> None:
    """A task ends completed, abandoned when told, failed on an exception; its cost and tokens are observed."""
    tracker, reg = _tracker()
    with pytest.raises(ZeroDivisionError) if status == "failed" else _null(), tracker.task("refund") as task:
        task.llm_call("gpt-4o-mini", input_tokens=100, output_tokens=10, cost_usd=0.02)
        task.tool_call("crm.search", cost_usd=0.01)
        body(task)  # type: ignore[operator]
    key = dict(agent="bot", namespace="ns", workflow="refund")
    assert _value(reg, "fleetwarden_tasks_total", status=status, **key) == 1
    assert _value(reg, "fleetwarden_task_cost_usd_count", **key) == 1
    assert _value(reg, "fleetwarden_task_cost_usd_sum", **key) == pytest.approx(0.03)
    assert _value(reg, "fleetwarden_task_cost_usd_bucket", le="0.05", **key) == 1
    assert _value(reg, "fleetwarden_task_cost_usd_bucket", le="0.025", **key) == 0
    assert _value(reg, "fleetwarden_task_tokens_sum", **key) == 110
    assert task.status == status


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_tool_context_records_errors_and_reraises() -> None:
    """A tool block that raises is recorded with status error, and the exception propagates."""
    tracker, reg = _tracker(price_table=sdk.PriceTable.from_config({"tools": {"crm.*": 0.002}}))
    with tracker.task("triage") as task:
        with task.tool("crm.search"):
            pass
        with pytest.raises(KeyError), task.tool("crm.search"):
            raise KeyError("x")
    base = dict(agent="bot", namespace="ns", workflow="triage", step="", tool="crm.search")
    assert _value(reg, "fleetwarden_tool_calls_total", status="ok", **base) == 1
    assert _value(reg, "fleetwarden_tool_calls_total", status="error", **base) == 1
    assert _value(reg, "fleetwarden_tool_cost_usd_total", agent="bot", namespace="ns", workflow="triage",
                  tool="crm.search") == pytest.approx(0.004)


def test_traced_task_and_traced_tool_decorators() -> None:
    """@traced_task runs each call as a task; @traced_tool records calls in the current task."""
    tracker, reg = _tracker()

    @tracker.traced_tool("kb.lookup")
    def lookup(q: str) -> str:
        if q == "bad":
            raise ValueError(q)
        return q.upper()

    @tracker.traced_task(workflow="triage")
    def handle(q: str) -> str:
        assert sdk.current_task() is not None
        return lookup(q)

    assert handle("a") == "A"
    with pytest.raises(ValueError):
        handle("bad")
    key = dict(agent="bot", namespace="ns", workflow="triage")
    assert _value(reg, "fleetwarden_tasks_total", status="completed", **key) == 1
    assert _value(reg, "fleetwarden_tasks_total", status="failed", **key) == 1
    assert _value(reg, "fleetwarden_tool_calls_total", step="", tool="kb.lookup", status="error", **key) == 1
    assert sdk.current_task() is None


def test_traced_tool_outside_a_task_is_an_error() -> None:
    """A traced tool called outside any task raises instead of dropping the record."""
    tracker, _ = _tracker()

    @tracker.traced_tool("kb.lookup")
    def lookup() -> None:
        return None

    with pytest.raises(errors.FleetwardenError, match="outside a task"):
        lookup()


def test_outcomes_and_human_time() -> None:
    """Outcomes add count and value; human minutes add minutes and cost at the hourly rate."""
    tracker, reg = _tracker(human_hourly_rate_usd=30.0)
    with tracker.task("refund") as task:
        task.outcome("resolved_ticket", value_usd=4.0)
        task.outcome("resolved_ticket", count=2)
        cost = task.human(10)
    key = dict(agent="bot", namespace="ns", workflow="refund")
    assert _value(reg, "fleetwarden_outcomes_total", outcome="resolved_ticket", **key) == 3
    assert _value(reg, "fleetwarden_outcome_value_usd_total", outcome="resolved_ticket", **key) == 4.0
    assert cost == pytest.approx(5.0)
    assert _value(reg, "fleetwarden_human_minutes_total", **key) == 10
    assert _value(reg, "fleetwarden_human_cost_usd_total", **key) == pytest.approx(5.0)


def test_model_info_follows_the_latest_model_unless_pinned() -> None:
    """fleetwarden_agent_model_info shows the agent's latest model (one series), or the pinned one."""
    tracker, reg = _tracker()
    with tracker.task("w") as task:
        task.llm_call("gpt-4o-mini", input_tokens=1, output_tokens=1)
        task.llm_call("gpt-4o", input_tokens=1, output_tokens=1)
    assert _value(reg, "fleetwarden_agent_model_info", agent="bot", namespace="ns", model="gpt-4o") == 1
    assert _value(reg, "fleetwarden_agent_model_info", agent="bot", namespace="ns", model="gpt-4o-mini") is None
    pinned = sdk.Tracker("other", registry=reg, model="claude-sonnet-4")
    with pinned.task("w") as task:
        task.llm_call("gpt-4o-mini", input_tokens=1, output_tokens=1)
    assert _value(reg, "fleetwarden_agent_model_info", agent="other", namespace="default",
                  model="claude-sonnet-4") == 1


def test_labels_are_only_the_allowed_ones_and_never_a_task_id() -> None:
    """Every exported sample uses only the design's label names; no task id appears anywhere."""
    tracker, reg = _tracker(policy=sdk.GuardrailPolicy())
    with tracker.task("w", task_id="task-123") as task, task.step("s"):
        task.llm_call("gpt-4o", input_tokens=1, output_tokens=1)
        task.tool_call("t")
        task.outcome("o")
        task.human(1)
    names = set()
    for family in reg.collect():
        for sample in family.samples:
            names.add(sample.name)
            assert set(sample.labels) <= ALLOWED_LABELS
            assert "task-123" not in sample.labels.values()
    assert {"fleetwarden_guardrail_decisions_total", "fleetwarden_agent_model_info"} <= names
    declared = set(_metrics.METRIC_NAMES)
    assert {n for n in names if not n.endswith(("_bucket", "_sum", "_count"))} <= declared


def test_threads_record_exact_totals() -> None:
    """Eight threads recording into one task and one registry lose no update."""
    tracker, reg = _tracker()
    task = tracker.start_task("w")

    def work() -> None:
        for _ in range(500):
            task.llm_call("gpt-4o-mini", input_tokens=3, output_tokens=2, cost_usd=0.001)
            task.tool_call("t", cost_usd=0.002)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    task.end()
    key = dict(agent="bot", namespace="ns", workflow="w")
    assert _value(reg, "fleetwarden_llm_calls_total", step="", model="gpt-4o-mini", status="ok", **key) == 4000
    assert _value(reg, "fleetwarden_llm_input_tokens_total", step="", model="gpt-4o-mini", **key) == 12000
    assert _value(reg, "fleetwarden_tool_calls_total", step="", tool="t", status="ok", **key) == 4000
    assert task.tokens == 20000
    assert task.cost_usd == pytest.approx(12.0)


def test_asyncio_tasks_each_see_their_own_task_and_step() -> None:
    """Concurrent asyncio tasks each have their own current task and step."""
    tracker, reg = _tracker()

    @tracker.traced_task(workflow="async")
    async def handle(step: str) -> str:
        task = sdk.current_task()
        assert task is not None
        with task.step(step):
            await asyncio.sleep(0.01)
            task.llm_call("gpt-4o-mini", input_tokens=1, output_tokens=1, cost_usd=0.0)
            return task.task_id

    async def main() -> list[str]:
        return list(await asyncio.gather(*(handle(f"s{i % 3}") for i in range(9))))

    ids = asyncio.run(main())
    assert len(set(ids)) == 9
    for i in range(3):
        assert _value(reg, "fleetwarden_llm_calls_total", agent="bot", namespace="ns", workflow="async",
                      step=f"s{i}", model="gpt-4o-mini", status="ok") == 3
    assert _value(reg, "fleetwarden_tasks_total", agent="bot", namespace="ns", workflow="async",
                  status="completed") == 9


def test_trackers_share_a_registry() -> None:
    """Two agents on one registry export side by side without a duplicate-registration error."""
    reg = CollectorRegistry()
    for name in ("a", "b"):
        with sdk.Tracker(name, registry=reg).task("w") as task:
            task.tool_call("t")
    for name in ("a", "b"):
        assert reg.get_sample_value("fleetwarden_tasks_total", dict(agent=name, namespace="default",
                                                                    workflow="w", status="completed")) == 1


def test_ending_twice_counts_once_and_bad_status_is_refused() -> None:
    """A task ends once; an unknown status is an InputError."""
    tracker, reg = _tracker()
    task = tracker.start_task("w")
    with pytest.raises(errors.InputError):
        task.end("done")
    task.end("completed")
    task.end("failed")
    assert _value(reg, "fleetwarden_tasks_total", agent="bot", namespace="ns", workflow="w",
                  status="completed") == 1
    assert _value(reg, "fleetwarden_tasks_total", agent="bot", namespace="ns", workflow="w",
                  status="failed") is None


def test_metrics_server_serves_the_registry() -> None:
    """start_metrics_server serves /metrics of the registry on 127.0.0.1."""
    import urllib.request

    tracker, reg = _tracker()
    with tracker.task("w") as task:
        task.tool_call("t")
    server = sdk.start_metrics_server(0, registry=reg)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'fleetwarden_tasks_total{agent="bot",namespace="ns",status="completed",workflow="w"} 1.0' in body


def test_open_task_gauges_name_the_largest_and_oldest_running_task_per_agent() -> None:
    """Per agent (no task label): open tasks, and of those with a record in the last 5 minutes the
    largest and the oldest, with tokens and age; a task idle for an hour is no longer open."""
    now = [1_800_000_000.0]
    reg = CollectorRegistry()
    tracker = sdk.Tracker("bot", namespace="ns", registry=reg, clock=lambda: now[0])
    gauge = lambda name: _value(reg, f"fleetwarden_{name}", agent="bot", namespace="ns")  # noqa: E731
    old = tracker.start_task("w")
    now[0] += 10  # its age counts from its first record, as replay counts it from its first event
    old.llm_call("gpt-4o-mini", input_tokens=100, output_tokens=0, cost_usd=0.0)
    now[0] += 20
    big = tracker.start_task("w")
    big.llm_call("gpt-4o-mini", input_tokens=5000, output_tokens=0, cost_usd=0.0)
    now[0] += 60
    assert gauge("open_tasks") == 2
    assert (gauge("largest_running_task_tokens"), gauge("largest_running_task_age_seconds")) == (5000, 60)
    assert (gauge("oldest_running_task_tokens"), gauge("oldest_running_task_age_seconds")) == (100, 80)
    now[0] += 400  # "old" waits (no record for over 5 minutes); "big" goes on
    big.tool_call("t", cost_usd=0.0)
    assert gauge("open_tasks") == 2
    assert (gauge("oldest_running_task_tokens"), gauge("oldest_running_task_age_seconds")) == (5000, 460)
    big.end()
    assert (gauge("open_tasks"), gauge("largest_running_task_tokens"), gauge("oldest_running_task_age_seconds")) \
        == (1, 0, 0)  # none running: a known zero
    now[0] += 3600
    assert gauge("open_tasks") == 0  # idle for an hour: cut off, no longer open
