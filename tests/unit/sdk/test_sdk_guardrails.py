"""Guardrails in the agent: token caps, rate limits, tool lists, approval gates, halt, reload."""

from __future__ import annotations

import json
import os
import pathlib
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import errors, sdk
from fleetwarden.core import spec


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _policy(**spec_fields: object) -> sdk.GuardrailPolicy:
    return sdk.GuardrailPolicy(spec.CostPolicySpec.model_validate(spec_fields))


def _tracker(policy: sdk.GuardrailPolicy, clock: FakeClock | None = None, **kwargs: object
             ) -> tuple[sdk.Tracker, CollectorRegistry]:
    reg = CollectorRegistry()
    clock = clock or FakeClock()
    tracker = sdk.Tracker("bot", namespace="ns", registry=reg, policy=policy, clock=clock, sleep=clock.sleep,
                          **kwargs)  # type: ignore[arg-type]
    return tracker, reg


def _decisions(reg: CollectorRegistry, status: str, tool: str = "", workflow: str = "w") -> float:
    return reg.get_sample_value("fleetwarden_guardrail_decisions_total", dict(
        agent="bot", namespace="ns", workflow=workflow, tool=tool, status=status)) or 0.0


# ---------------------------------------------------------------- token cap

@pytest.mark.parametrize(("cap", "used", "estimate", "action", "raises"), [
    (1000, 0, 1000, "deny", False),       # exactly at the cap is allowed
    (1000, 0, 1001, "deny", True),        # one past the cap is refused before the call
    (1000, 900, 101, "deny", True),       # tokens already used count
    (1000, 900, 100, "deny", False),
    (1000, 900, 500, "alert", False),     # alert counts the decision but lets the call go
    (None, 10**9, 10**9, "deny", False),  # no cap
])
def test_token_cap(cap: int | None, used: int, estimate: int, action: str, raises: bool) -> None:
    """check_llm refuses a call that would pass the task's token cap (unless the action is alert)."""
    policy = _policy(tokenCaps={"perTask": cap, "action": action})
    tracker, reg = _tracker(policy)
    with tracker.task("w") as task:
        if used:
            task.llm_call("gpt-4o-mini", input_tokens=used, output_tokens=0)
        if raises:
            with pytest.raises(sdk.TokenCapExceeded) as info:
                task.check_llm(estimate)
            assert (info.value.used, info.value.estimated, info.value.cap) == (used, estimate, cap)
        else:
            task.check_llm(estimate)
    over = cap is not None and used + estimate > cap
    assert _decisions(reg, "token_cap_exceeded") == (1 if over else 0)
    assert _decisions(reg, "allowed") == (0 if over else 1)


def test_llm_guard_checks_before_the_block_runs() -> None:
    """llm_guard raises before its block (the model call) runs when the cap would pass."""
    tracker, _ = _tracker(_policy(tokenCaps={"perTask": 100}))
    ran = []
    with tracker.task("w") as task:
        with task.llm_guard(estimated_tokens=50):
            ran.append(1)
            task.llm_call("gpt-4o-mini", input_tokens=60, output_tokens=0)
        with pytest.raises(sdk.TokenCapExceeded), task.llm_guard(estimated_tokens=50):
            ran.append(2)
    assert ran == [1]


# ---------------------------------------------------------------- token bucket and rate limits

@pytest.mark.parametrize(("rate", "steps", "expected"), [
    # rate per minute; (advance seconds, expected wait) after each advance
    (60, [(0, 0.0)] * 60 + [(0, 1.0)], None),             # a burst of one minute's worth, then 1 s
    (60, [(0, 0.0)] * 60 + [(1, 0.0), (0, 1.0)], None),   # one token back after one second
    (6, [(0, 0.0)] * 6 + [(5, 5.0), (5, 0.0)], None),     # 6/min: one every 10 s
    (0.5, [(0, 0.0), (0, 120.0), (120, 0.0)], None),      # below 1/min: burst of one
])
def test_token_bucket(rate: float, steps: list[tuple[float, float]], expected: None) -> None:
    """The bucket allows a minute's burst and refills at rate/60 per second (injected clock)."""
    clock = FakeClock()
    bucket = sdk.TokenBucket(rate, clock=clock)
    for advance, wait in steps:
        clock.now += advance
        assert bucket.take() == pytest.approx(wait)


def test_rate_limits_overall_and_per_tool() -> None:
    """Overall and per-tool (pattern) limits both apply; a refused call raises RateLimited and is counted."""
    clock = FakeClock()
    policy = _policy(rateLimits={"toolCallsPerMinute": 5, "perTool": {"enrich.*": 2}, "action": "deny"})
    tracker, reg = _tracker(policy, clock)
    with tracker.task("w") as task:
        task.tool_call("enrich.premium")
        task.tool_call("enrich.basic")
        with pytest.raises(sdk.RateLimited) as info:
            task.tool_call("enrich.premium")
        assert info.value.retry_after == pytest.approx(30.0)
        task.tool_call("web.search")
        task.tool_call("web.search")
        task.tool_call("web.search")
        with pytest.raises(sdk.RateLimited):
            task.tool_call("web.search")  # the overall bucket (5) is empty
        clock.now += 12
        task.tool_call("web.search")
    assert _decisions(reg, "rate_limit_exceeded", tool="enrich.premium") == 1
    assert _decisions(reg, "rate_limit_exceeded", tool="web.search") == 1
    assert _decisions(reg, "allowed", tool="web.search") == 4


def test_throttle_sleeps_when_asked() -> None:
    """With rate_limit='sleep' and action throttle, the call waits for the bucket instead of raising."""
    clock = FakeClock()
    tracker, _ = _tracker(_policy(rateLimits={"toolCallsPerMinute": 2, "action": "throttle"}), clock,
                          rate_limit="sleep")
    with tracker.task("w") as task:
        for _ in range(4):
            task.tool_call("t")
    assert clock.now == pytest.approx(1000.0 + 60.0)  # two calls of burst, then 30 s each


# ---------------------------------------------------------------- allow and deny lists

@pytest.mark.parametrize(("allow", "deny", "tool", "allowed"), [
    (None, [], "anything", True),
    (["crm.*", "kb.lookup"], [], "crm.search", True),
    (["crm.*", "kb.lookup"], [], "kb.lookup", True),
    (["crm.*", "kb.lookup"], [], "web.search", False),
    (None, ["purchase.*"], "purchase.create", False),
    (["purchase.*"], ["purchase.create"], "purchase.create", False),  # deny wins
    (["purchase.*"], ["purchase.create"], "purchase.quote", True),
])
def test_tool_allow_and_deny_lists(allow: list[str] | None, deny: list[str], tool: str, allowed: bool) -> None:
    """A tool not on the allowlist, or on the denylist, raises ToolNotAllowed before it runs."""
    tracker, reg = _tracker(_policy(tools={"allow": allow, "deny": deny}))
    ran = []
    with tracker.task("w") as task:
        if allowed:
            with task.tool(tool):
                ran.append(tool)
        else:
            with pytest.raises(sdk.ToolNotAllowed), task.tool(tool):
                ran.append(tool)
    assert ran == ([tool] if allowed else [])
    assert _decisions(reg, "tool_not_allowed", tool=tool) == (0 if allowed else 1)


# ---------------------------------------------------------------- approval gates

APPROVALS = [
    {"name": "big-purchase", "tool": "purchase.create", "amountAboveUSD": 1000},
    {"name": "many-premium", "tool": "enrich.premium", "callsPerWorkflowAbove": 2, "timeoutSeconds": 5},
]


@pytest.mark.parametrize(("calls", "refused_at"), [
    ([("purchase.create", 999.0)], None),
    ([("purchase.create", 1000.0)], None),            # "above": equal is fine
    ([("purchase.create", 1000.01)], 0),
    ([("enrich.premium", None)] * 2, None),
    ([("enrich.premium", None)] * 3, 2),              # the third call of the task needs approval
    ([("enrich.basic", None)] * 5, None),
])
def test_approval_rules_without_a_backend(calls: list[tuple[str, float | None]], refused_at: int | None) -> None:
    """Without an approval backend a gated call raises ApprovalRequired naming the rule."""
    tracker, reg = _tracker(_policy(approvals=APPROVALS))
    with tracker.task("w") as task:
        for i, (tool, amount) in enumerate(calls):
            if i == refused_at:
                with pytest.raises(sdk.ApprovalRequired) as info:
                    task.tool_call(tool, amount_usd=amount)
                assert info.value.rule in ("big-purchase", "many-premium")
                break
            task.tool_call(tool, amount_usd=amount)
    refused_tool = calls[refused_at][0] if refused_at is not None else calls[0][0]
    assert _decisions(reg, "approval_required", tool=refused_tool) == (0 if refused_at is None else 1)


def test_approval_counts_are_per_task() -> None:
    """The call count of callsPerWorkflowAbove starts again in each task."""
    tracker, _ = _tracker(_policy(approvals=APPROVALS))
    for _ in range(3):
        with tracker.task("w") as task:
            task.tool_call("enrich.premium")
            task.tool_call("enrich.premium")


@pytest.mark.parametrize(("decision", "passes"), [("approved", True), ("denied", False), ("expired", False)])
def test_approval_backend_decides(decision: str, passes: bool) -> None:
    """With a backend the call waits for the decision: approved goes on, denied/expired raise ApprovalDenied."""
    approvals = sdk.InMemoryApprovals(auto=decision)  # type: ignore[arg-type]
    tracker, reg = _tracker(_policy(approvals=APPROVALS), approvals=approvals)
    with tracker.task("w", task_id="t-1") as task:
        if passes:
            task.tool_call("purchase.create", amount_usd=5000.0)
        else:
            with pytest.raises(sdk.ApprovalDenied) as info:
                task.tool_call("purchase.create", amount_usd=5000.0)
            assert info.value.decision == decision
    (request,) = approvals.requests.values()
    assert request["rule"] == "big-purchase" and request["task_id"] == "t-1" and request["amount_usd"] == 5000.0
    assert _decisions(reg, "approved", tool="purchase.create") == (1 if passes else 0)
    assert _decisions(reg, "denied", tool="purchase.create") == (0 if passes else 1)


def test_approval_waits_for_a_human_in_another_thread() -> None:
    """A gated call blocks until someone approves it; a call-count gate then stays open for the task."""
    approvals = sdk.InMemoryApprovals()
    tracker, reg = _tracker(_policy(approvals=APPROVALS), approvals=approvals)

    def human() -> None:
        approvals.approve(approvals.wait_for_request(timeout=5))

    helper = threading.Thread(target=human)
    helper.start()
    with tracker.task("w") as task:
        for _ in range(5):
            task.tool_call("enrich.premium")
    helper.join()
    assert len(approvals.requests) == 1
    assert _decisions(reg, "approved", tool="enrich.premium") == 1


def test_in_memory_backend_expires() -> None:
    """InMemoryApprovals.wait returns expired when no one decides in time."""
    approvals = sdk.InMemoryApprovals()
    rid = approvals.request(agent="a", namespace="n", workflow="w", task_id="t", rule="r", tool="x",
                            amount_usd=None, reason="test", timeout_seconds=0.01)
    assert approvals.wait(rid, 0.01) == "expired"


# ---------------------------------------------------------------- halt

def test_halt_stops_new_tasks_steps_and_calls() -> None:
    """A halted agent cannot start a task or step, and guarded calls raise Halted; each refusal is counted."""
    policy = sdk.GuardrailPolicy()
    tracker, reg = _tracker(policy)
    task = tracker.start_task("w")
    with task.step("one"):
        pass
    policy.set(halted=True)
    with pytest.raises(sdk.Halted), task.step("two"):
        pass
    with pytest.raises(sdk.Halted):
        task.check_llm(10)
    with pytest.raises(sdk.Halted):
        task.tool_call("t")
    with pytest.raises(sdk.Halted):
        tracker.start_task("w")
    assert _decisions(reg, "halted") == 3
    assert _decisions(reg, "halted", tool="t") == 1
    policy.set(halted=False)
    with tracker.task("w"):
        pass


# ---------------------------------------------------------------- the mounted ConfigMap

def _write(directory: pathlib.Path, policy: dict[str, object] | str | None, halt: str | None) -> None:
    for name, value in (("policy.json", policy), ("halt", halt)):
        path = directory / name
        if value is None:
            path.unlink(missing_ok=True)
            continue
        path.write_text(value if isinstance(value, str) else json.dumps(value))
        stamp = os.stat(path).st_mtime_ns + 10**9
        os.utime(path, ns=(stamp, stamp))  # a new mtime even within the file system's resolution


def test_policy_reloads_when_the_files_change(tmp_path: pathlib.Path) -> None:
    """from_dir reads policy.json and halt, and sees a change after at most a second."""
    clock = FakeClock()
    spec_json = spec.CostPolicySpec(token_caps=spec.TokenCaps(per_task=100)).model_dump(mode="json", by_alias=True)
    _write(tmp_path, spec_json, "false")
    policy = sdk.GuardrailPolicy.from_dir(tmp_path, clock=clock)
    assert policy.spec.token_caps.per_task == 100 and not policy.halted
    _write(tmp_path, {"tokenCaps": {"perTask": 50}}, "true")
    assert policy.spec.token_caps.per_task == 100  # not looked at again within the second
    clock.now += 1.0
    assert policy.spec.token_caps.per_task == 50 and policy.halted
    generation = policy.generation
    clock.now += 1.0
    assert policy.halted and policy.generation == generation  # unchanged files: no reload


def test_broken_policy_keeps_the_last_good_one(tmp_path: pathlib.Path) -> None:
    """A policy.json that breaks after start keeps the last good policy; fixing it is picked up."""
    clock = FakeClock()
    _write(tmp_path, {"tokenCaps": {"perTask": 100}}, None)
    policy = sdk.GuardrailPolicy.from_dir(tmp_path, clock=clock)
    _write(tmp_path, "{not json", None)
    clock.now += 1.0
    assert policy.spec.token_caps.per_task == 100
    _write(tmp_path, {"tokenCaps": {"perTask": 7}}, None)
    clock.now += 1.0
    assert policy.spec.token_caps.per_task == 7


@pytest.mark.parametrize(("content", "halt", "field"), [
    ("{not json", None, None),
    ({"tokenCaps": {"perTask": 0}}, None, "tokenCaps.perTask"),
    ({"tokens": {}}, None, "tokens"),
    ({}, "maybe", None),
])
def test_invalid_policy_at_start_names_the_file(tmp_path: pathlib.Path, content: object, halt: str | None,
                                                field: str | None) -> None:
    """A policy that does not parse at start raises InputError naming the file (and field)."""
    _write(tmp_path, content, halt)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError) as info:
        sdk.GuardrailPolicy.from_dir(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert info.value.field == field


def test_missing_directory_means_no_policy_until_it_appears(tmp_path: pathlib.Path) -> None:
    """A missing policy directory allows everything; the policy applies once the files appear."""
    clock = FakeClock()
    policy = sdk.GuardrailPolicy.from_dir(tmp_path / "absent", clock=clock)
    assert policy.spec == spec.CostPolicySpec() and not policy.halted
    (tmp_path / "absent").mkdir()
    _write(tmp_path / "absent", {"tools": {"deny": ["web.*"]}}, "true")
    clock.now += 1.0
    assert policy.halted and not policy.spec.tools.allowed("web.search")


def test_decisions_follow_a_policy_change_through_the_tracker(tmp_path: pathlib.Path) -> None:
    """A tracker on a mounted policy applies the new denylist after the files change."""
    clock = FakeClock()
    _write(tmp_path, {}, "false")
    tracker, reg = _tracker(sdk.GuardrailPolicy.from_dir(tmp_path, clock=clock), clock)
    with tracker.task("w") as task:
        task.tool_call("web.search")
        _write(tmp_path, {"tools": {"deny": ["web.*"]}}, "false")
        clock.now += 1.5
        with pytest.raises(sdk.ToolNotAllowed):
            task.tool_call("web.search")
    assert _decisions(reg, "allowed", tool="web.search") == 1
    assert _decisions(reg, "tool_not_allowed", tool="web.search") == 1


def test_async_tool_call_waits_for_approval_off_the_event_loop() -> None:
    """atool_call waits for the human in a worker thread: the event loop keeps running meanwhile
    (a ticker advances), the current step is carried over, and the approved call is recorded."""
    import asyncio

    approvals = sdk.InMemoryApprovals()
    tracker, reg = _tracker(_policy(approvals=APPROVALS), approvals=approvals)

    async def main() -> tuple[int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async def human() -> None:
            while not approvals.pending():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the loop must keep ticking while the call waits
            approvals.approve(approvals.pending()[0])

        tick = asyncio.create_task(ticker())
        with tracker.task("w", task_id="t-1") as task, task.step("buy"):
            _, cost = await asyncio.gather(human(), task.atool_call("purchase.create", amount_usd=5000.0,
                                                                    cost_usd=1.5))
        tick.cancel()
        return ticks, cost

    ticks, cost = asyncio.run(main())
    assert ticks >= 10 and cost == 1.5
    assert _decisions(reg, "approved", tool="purchase.create") == 1
    assert reg.get_sample_value("fleetwarden_tool_calls_total", dict(
        agent="bot", namespace="ns", workflow="w", step="buy", tool="purchase.create", status="ok")) == 1.0


# ---------------------------------------------------------------- enforcement modes

_BLOCKING = {
    "tokenCaps": {"perTask": 100},
    "rateLimits": {"perTool": {"crm.search": 1}, "action": "deny"},
    "tools": {"deny": ["shell.*"]},
    "approvals": [{"name": "big", "tool": "pay", "amountAboveUSD": 10}],
}


def _every_guardrail(task: sdk.Task) -> None:
    """One call past each guardrail: the token cap, the rate limit, the deny list, an approval gate."""
    task.check_llm(estimated_tokens=500)
    task.check_tool("crm.search")
    task.check_tool("crm.search")  # the bucket holds one call
    task.check_tool("shell.exec")
    task.check_tool("pay", amount_usd=50)


@pytest.mark.parametrize("mode", ["DryRun", "Warn"])
def test_dry_run_and_warn_never_block_and_count_would(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """DryRun and Warn: no guardrail raises, waits or asks for an approval; each call that Enforce would
    have blocked is counted as would_<status>, never as the blocking status; Warn logs each, DryRun not."""
    approvals = sdk.InMemoryApprovals()
    clock = FakeClock()
    tracker, reg = _tracker(_policy(enforcement=mode, **_BLOCKING), clock, approvals=approvals,
                            rate_limit="sleep")
    with caplog.at_level("WARNING", logger="fleetwarden.sdk"), tracker.task("w") as task:
        _every_guardrail(task)
    assert clock.now == 1000.0 and approvals.requests == {}
    for status, tool in [("token_cap_exceeded", ""), ("rate_limit_exceeded", "crm.search"),
                         ("tool_not_allowed", "shell.exec"), ("approval_required", "pay")]:
        assert _decisions(reg, "would_" + status, tool) == 1, status
        assert _decisions(reg, status, tool) == 0, status
    warned = [r.getMessage() for r in caplog.records if r.name == "fleetwarden.sdk"]
    assert len(warned) == (4 if mode == "Warn" else 0)
    assert all("spec.enforcement is Warn" in m for m in warned)


@pytest.mark.parametrize(("call", "error"), [
    (lambda t: t.check_llm(estimated_tokens=500), sdk.TokenCapExceeded),
    (lambda t: (t.check_tool("crm.search"), t.check_tool("crm.search")), sdk.RateLimited),
    (lambda t: t.check_tool("shell.exec"), sdk.ToolNotAllowed),
    (lambda t: t.check_tool("pay", amount_usd=50), sdk.ApprovalRequired),
])
def test_enforce_blocks_and_is_the_default(call: Any, error: type[Exception]) -> None:
    """Enforce (also when unset) raises as before and counts no would_ status."""
    for fields in ({"enforcement": "Enforce"}, {}):
        tracker, reg = _tracker(_policy(**fields, **_BLOCKING))
        with pytest.raises(error), tracker.task("w") as task:
            call(task)
        assert not [s for s in reg.collect() for x in s.samples if x.labels.get("status", "").startswith("would_")]


def test_the_halt_flag_stops_every_mode() -> None:
    """DryRun does not soften the kill switch: a halted policy still refuses."""
    tracker, _ = _tracker(sdk.GuardrailPolicy(spec.CostPolicySpec(enforcement=spec.Enforcement.dry_run),
                                              halted=True))
    with pytest.raises(sdk.Halted):
        tracker.task("w")


# ---------------------------------------------------------------- AgentBudget steps (steps.json)

def test_stop_new_tasks_refuses_new_tasks_while_running_ones_finish(tmp_path: pathlib.Path) -> None:
    """A StopNewTasks step in steps.json: start_task raises TasksStopped (counted as denied), naming the
    step; a task already running records and ends as usual; once the step is undone, tasks start again."""
    clock = FakeClock()
    (tmp_path / "steps.json").write_text(json.dumps({"maxOutputTokens": None, "stopNewTasks": False, "steps": []}))
    policy = sdk.GuardrailPolicy.from_dir(tmp_path, clock=clock)
    tracker, reg = _tracker(policy)
    running = tracker.start_task("w")
    _write_steps(tmp_path, {"maxOutputTokens": None, "stopNewTasks": True, "steps": ["support/StopNewTasks-90"]})
    clock.now += 1.0
    with pytest.raises(sdk.TasksStopped, match=r"support/StopNewTasks-90 \(StopNewTasks\) is in force"):
        tracker.start_task("w")
    assert _decisions(reg, "denied") == 1
    running.llm_call("gpt-4o-mini", input_tokens=10, output_tokens=5)
    with running.tool("kb.search"):
        pass
    running.end()
    _write_steps(tmp_path, {"maxOutputTokens": None, "stopNewTasks": False, "steps": []})
    clock.now += 1.0
    with tracker.task("w"):
        pass


def test_cap_output_tokens_clamps_max_tokens_and_reservations() -> None:
    policy = _policy(tokenCaps={"perTask": 10_000})
    tracker, _ = _tracker(policy)
    task = tracker.start_task("w")
    assert (task.max_output_tokens(4000), task.max_output_tokens()) == (4000, None)  # no step: as asked
    policy.set(steps=sdk.Steps(max_output_tokens=500, names=("support/CapOutputTokens-70",)))
    assert (task.max_output_tokens(4000), task.max_output_tokens(200), task.max_output_tokens()) == (500, 200, 500)
    reservation = task.reserve_llm(1000, max_tokens=4000)
    assert reservation.tokens == 1500 and task.reserved == 1500  # the clamped answer is what is held
    reservation.release()


def _write_steps(directory: pathlib.Path, data: object) -> None:
    path = directory / "steps.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    stamp = os.stat(path).st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))


@pytest.mark.parametrize(("content", "field"), [
    ("[]", None), ('{"maxOutputTokens": 0}', "maxOutputTokens"), ('{"stopNewTasks": "yes"}', "stopNewTasks"),
    ('{"steps": [1]}', "steps"), ("{", None),
])
def test_invalid_steps_at_start_names_the_file(tmp_path: pathlib.Path, content: str, field: str | None) -> None:
    (tmp_path / "steps.json").write_text(content)
    with pytest.raises(errors.InputError) as info:
        sdk.GuardrailPolicy.from_dir(tmp_path)
    assert "steps.json" in str(info.value) and (field is None or field in str(info.value))
