"""Replay: events + manifests -> findings in time order, each problem once, broken lines reported."""

from __future__ import annotations

from fleetwarden import errors
from fleetwarden.core import events, findings, pricing, replay, spec

T0 = 1795860000.0  # 2026-11-28T10:00:00Z
TABLE = pricing.PriceTable.from_config({"models": [{"model": "m1", "input_per_mtok": 1, "output_per_mtok": 2}],
                                        "genai_prices": False})
META = {"name": "swarm", "namespace": "support"}
LABELS = {"team": "cx"}


def budget(**s: object) -> spec.AgentBudget:
    return spec.AgentBudget.model_validate({"metadata": META, "spec": {"selector": {"matchLabels": LABELS}, **s}})


def policy(**s: object) -> spec.CostPolicy:
    return spec.CostPolicy.model_validate({"metadata": META, "spec": {"selector": {"matchLabels": LABELS}, **s}})


def ev(t: float, type_: str, **fields: object) -> events.Event:
    raw = {"time": t, "type": type_, "agent": fields.pop("agent", "bot"), "namespace": "support", "labels": LABELS,
           "task_id": fields.pop("task_id", "t1"), **fields}
    return events.from_obj(raw)


def spend(t: float, usd: float, **f: object) -> events.Event:
    return ev(t, "llm", model="m1", input_tokens=10, output_tokens=10, cost_usd=usd, **f)


def run(evs: list, budgets: list | None = None, policies: list | None = None, **kw: object) -> list[findings.Finding]:
    return list(replay.run(evs, budgets or [], policies or [], TABLE, detect=False, **kw))


def test_budget_warning_then_exceeded_then_kill_each_once_in_time_order() -> None:
    """Spend crossing 80%, 100% and 150% of the hourly cap gives warning, exceeded and kill, once each, at the crossing event."""
    b = budget(limits=[{"window": "hour", "amountUSD": 10}])
    evs = [spend(T0 + 60 * i, 1.0) for i in range(20)]
    out = run(evs, [b])
    assert [(f.kind, f.time) for f in out] == [
        ("budget_warning", T0 + 60 * 7), ("budget_exceeded", T0 + 60 * 10), ("kill_switch", T0 + 60 * 15)]
    assert out[2].action == "kill" and all(f.budget == "swarm" for f in out)


def test_agents_outside_the_selector_are_not_governed() -> None:
    """A budget applies only to agents whose event labels match its selector, in its namespace."""
    b = budget(limits=[{"window": "hour", "amountUSD": 1}])
    other = [events.from_obj({"time": T0 + i, "type": "llm", "agent": "x", "namespace": "support", "task_id": "t",
                              "labels": {"team": "ops"}, "model": "m1", "input_tokens": 1, "output_tokens": 1,
                              "cost_usd": 5}) for i in range(3)]
    assert run(other, [b]) == []


def test_token_cap_once_per_task() -> None:
    """A task over its token cap is reported once, naming the task; another task over it is reported too."""
    p = policy(tokenCaps={"perTask": 50, "action": "pause"})
    evs = [spend(T0 + i, 0.0, task_id="a") for i in range(5)] + [spend(T0 + 10 + i, 0.0, task_id="b") for i in range(5)]
    out = run(evs, policies=[p])
    assert [(f.kind, f.task_id, f.time, f.action) for f in out] == [
        ("token_cap_exceeded", "a", T0 + 2, "pause"), ("token_cap_exceeded", "b", T0 + 12, "pause")]


def test_tool_not_allowed_once_per_agent_and_tool() -> None:
    """Calls to a denied tool are reported once per (agent, tool)."""
    p = policy(tools={"allow": ["crm.*"]})
    evs = [ev(T0 + i, "tool", tool=t) for i, t in enumerate(["crm.search", "shell", "shell", "rm", "shell"])]
    out = run(evs, policies=[p])
    assert [(f.kind, f.tool, f.time) for f in out] == [("tool_not_allowed", "shell", T0 + 1),
                                                       ("tool_not_allowed", "rm", T0 + 3)]


def test_rate_limit_reported_at_start_when_worse_and_after_it_ended() -> None:
    """A rate-limit excess is reported when it starts and each time it doubles, not while it lasts; again after calm minutes."""
    p = policy(rateLimits={"toolCallsPerMinute": 5})
    evs = []
    for minute, calls in enumerate([10, 12, 30, 0, 0, 8]):
        evs += [ev(T0 + 60 * minute + i, "tool", tool="crm.search") for i in range(calls)]
    evs += [spend(T0 + 10 * i + 0.5, 0.0) for i in range(60)]  # the clock goes on
    evs.sort(key=lambda e: e.time)
    out = run(evs, policies=[p])
    # level 1: over 5/min (6th call); 2: over 10 (11th call, next minute); 3: over 20 (21st call); then, once
    # the calm minute 3 is complete (an event LATENESS past its end: T0+240+120), the new excess of minute 5
    assert [(f.time, f.evidence["level"]) for f in out] == [(T0 + 5, 1), (T0 + 70, 2), (T0 + 140, 3), (T0 + 360.5, 1)]


def test_approval_required_by_amount_and_by_calls_per_task() -> None:
    """An amount above the rule's threshold, or the (N+1)th call of its tool in a task, needs approval."""
    p = policy(approvals=[{"name": "refunds", "tool": "ticket.refund", "amountAboveUSD": 100},
                          {"name": "enrich", "tool": "enrich", "callsPerWorkflowAbove": 2}])
    evs = [ev(T0, "tool", tool="ticket.refund", value_usd=50), ev(T0 + 1, "tool", tool="ticket.refund", value_usd=150),
           ev(T0 + 2, "tool", tool="ticket.refund", amount_usd=500)]
    evs += [ev(T0 + 10 + i, "tool", tool="enrich") for i in range(4)]
    out = run(evs, policies=[p])
    assert [(f.policy, f.time) for f in out] == [("refunds", T0 + 1), ("refunds", T0 + 2), ("enrich", T0 + 12)]


def test_broken_lines_and_unknown_models_are_reported_not_dropped() -> None:
    """Broken lines and unpriceable models go to on_error with their line; the rest is still replayed."""
    lines = [b'{"time":1,"type":"llm","agent":"a","task_id":"t","model":"nope","input_tokens":1,"output_tokens":1}',
             b"{oops", b'{"time":2,"type":"human","agent":"a","minutes":1}']
    seen: list[errors.FleetwardenError] = []
    stats = replay.Stats()
    out = list(replay.run(events.iter_events(lines), [], [], TABLE, on_error=seen.append, stats=stats, detect=False))
    assert out == []
    assert [(type(e).__name__, getattr(e, "line", None)) for e in seen] == [("EventError", 1), ("EventError", 2)]
    assert "nope" in str(seen[0])
    assert (stats.events, stats.broken) == (1, 2)


def test_findings_stream_in_time_order_with_disorder_and_many_agents() -> None:
    """Across agents and slightly disordered input, findings come out ordered by time, never before their event."""
    b = budget(limits=[{"window": "hour", "amountUSD": 5}])
    p = policy(tools={"deny": ["bad"]})
    evs = []
    for i in range(300):
        t = T0 + i * 7 - (50 if i % 5 == 0 else 0)  # every fifth event 50 s late
        evs.append(spend(t, 0.2, agent=f"a{i % 4}"))
        evs.append(ev(t, "tool", tool="bad", agent=f"a{i % 6}"))
    out = run(evs, [b], [p])
    times = [f.time for f in out]
    assert times == sorted(times) and len(out) >= 6
    assert {f.kind for f in out} >= {"budget_warning", "budget_exceeded", "kill_switch", "tool_not_allowed"}


def test_detectors_run_on_closed_minutes() -> None:
    """Replay feeds closed minutes to the anomaly detectors: a tool-call explosion is found at a minute's end."""
    evs = []
    for minute in range(80):
        t = T0 + 60 * minute
        evs += [spend(t + 1, 0.01), spend(t + 2, 0.01)]
        calls = 2 if minute < 70 else 200
        evs += [ev(t + 3 + i * 0.1, "tool", tool="crm.search") for i in range(calls)]
    out = list(replay.run(evs, [], [], TABLE))
    explosions = [f for f in out if f.kind == "tool_call_explosion"]
    assert explosions, [f.kind for f in out]
    assert explosions[0].time % 60 == 0 and T0 + 70 * 60 < explosions[0].time <= T0 + 75 * 60


def test_cli_counts_blank_lines_and_names_a_directory(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Blank lines are skipped but counted in the summary; a directory as --events is a clear error."""
    from fleetwarden import cli

    path = tmp_path / "usage.jsonl"
    path.write_text('{"time": 1767571200, "type": "human", "agent": "a", "minutes": 1}\n\n\n')
    assert cli.main(["replay", "--events", str(path)]) == 0
    assert "2 blank lines skipped" in capsys.readouterr().err
    assert cli.main(["replay", "--events", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
