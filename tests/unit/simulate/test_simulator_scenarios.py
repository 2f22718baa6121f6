"""The fleet simulator: deterministic, contract-true events, and each scenario's signature."""

from __future__ import annotations

import collections
import io
import json
import pathlib
from types import SimpleNamespace as NS
from typing import Any

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import sdk
from fleetwarden.simulate import fleet as fleet_mod
from fleetwarden.simulate import follow, profiles

SCHEMA_PATH = pathlib.Path(__file__).resolve().parents[3] / "docs" / "contracts" / "usage-event.schema.json"
START = 1_767_571_200.0  # 2026-01-05T00:00:00Z
AT_MINUTES = 60.0


def _run(minutes: float, *, seed: int = 1, registry: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    buf = io.BytesIO()
    fleet = fleet_mod.Fleet(seed=seed, start=START, at_minutes=AT_MINUTES, registry=registry or CollectorRegistry(),
                            events=sdk.EventWriter(buf), **kwargs)
    fleet.run_fast(minutes * 60)
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _minute(event: dict[str, Any]) -> int:
    return int((event["time"] - START) // 60)


def _cost_per_task(events: list[dict[str, Any]], agent: str, lo: float, hi: float) -> tuple[float, int]:
    cost, tasks = 0.0, 0
    for e in events:
        if e["agent"] == agent and lo <= _minute(e) < hi:
            cost += e.get("cost_usd", 0.0) if e["type"] in ("llm", "tool") else 0.0  # rare human time aside
            tasks += e["type"] == "task"
    return cost / tasks, tasks


def test_same_seed_same_events_and_another_seed_differs() -> None:
    """A run is deterministic for a seed; a different seed gives different events."""
    first = _run(20, seed=7)
    assert first == _run(20, seed=7)
    assert first != _run(20, seed=8)


def test_events_follow_the_contract_and_carry_owner_labels() -> None:
    """Every event validates against the schema and names the agent's team, project and cost center."""
    events = _run(30, scenario="tool-call-explosion", agents_per_profile=1)
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    kinds = collections.Counter(e["type"] for e in events)
    assert set(kinds) >= {"llm", "tool", "task", "outcome"}
    first_of_kind = {e["type"]: i for i, e in reversed(list(enumerate(events)))}
    for i, e in enumerate(events):
        if i % 7 == 0 or i in first_of_kind.values():  # a sample: the schema check is slow in Python
            validator.validate(e)
        assert set(e["labels"]) == {"team", "project", "cost_center"}
    outcomes = {e["outcome"] for e in events if e["type"] == "outcome"}
    assert outcomes == {"resolved_ticket", "purchase_decision", "qualified_lead"}
    amounts = [e["amount_usd"] for e in events if e.get("tool") == "purchase.create"]
    assert amounts and all(a > 0 for a in amounts)


@pytest.mark.parametrize("profile", list(profiles.PROFILES))
def test_model_update_spike_triples_cost_per_task(profile: str) -> None:
    """After the model update the target's cost per task is about 3x, on a new model and version."""
    events = _run(150, scenario="model-update-spike", profiles=[profile], agents_per_profile=1)
    agent = f"{profiles.PROFILES[profile].agent_prefix}-0"
    before, _ = _cost_per_task(events, agent, 0, AT_MINUTES)
    after, _ = _cost_per_task(events, agent, AT_MINUTES + 5, 150)
    assert 2.4 <= after / before <= 3.6
    late = [e for e in events if e["type"] == "llm" and _minute(e) >= AT_MINUTES]
    assert {e["model"] for e in late} == {profiles.PROFILES[profile].spike_model}
    assert {e["agent_version"] for e in late} == {"v2"}


def test_runaway_loop_accelerates_and_completes_nothing() -> None:
    """In a runaway loop the target's tokens per minute keep growing and none of its tasks completes."""
    events = _run(AT_MINUTES + 12, scenario="runaway-loop")
    tokens: collections.Counter[int] = collections.Counter()
    completed_after = 0
    for e in events:
        if e["agent"] != "support-agent-0" or _minute(e) < AT_MINUTES:
            continue
        if e["type"] == "llm":
            tokens[_minute(e)] += e["input_tokens"] + e["output_tokens"] + e.get("cache_read_tokens", 0)
        completed_after += e["type"] == "task" and e["status"] == "completed" and _minute(e) >= AT_MINUTES + 1
    first5 = sum(tokens[m] for m in range(int(AT_MINUTES) + 1, int(AT_MINUTES) + 6))
    next5 = sum(tokens[m] for m in range(int(AT_MINUTES) + 6, int(AT_MINUTES) + 11))
    assert next5 > 3 * first5
    assert completed_after == 0
    others = [e for e in events if e["agent"] == "support-agent-1" and e["type"] == "task"
              and _minute(e) >= AT_MINUTES]
    assert others, "the other agents keep working"


def test_tool_call_explosion_multiplies_one_tool() -> None:
    """In a tool-call explosion the target's explosion tool is called 10-20x as often per task."""
    events = _run(AT_MINUTES + 30, scenario="tool-call-explosion", profiles=["support"], agents_per_profile=1)

    def per_task(lo: float, hi: float) -> float:
        calls = sum(1 for e in events if e.get("tool") == "crm.search" and lo <= _minute(e) < hi)
        tasks = sum(1 for e in events if e["type"] == "task" and lo <= _minute(e) < hi)
        return calls / tasks

    ratio = per_task(AT_MINUTES + 5, AT_MINUTES + 30) / per_task(0, AT_MINUTES)
    assert 8 <= ratio <= 20
    kb = [sum(1 for e in events if e.get("tool") == "kb.lookup" and lo <= _minute(e) < hi) / (hi - lo)
          for lo, hi in ((0, AT_MINUTES), (AT_MINUTES + 5, AT_MINUTES + 30))]
    assert kb[1] < 2 * kb[0], "the other tools do not explode"


def test_traffic_surge_triples_tasks_at_the_same_cost_per_task() -> None:
    """A traffic surge brings about 3x the tasks at about the same cost per task."""
    events = _run(AT_MINUTES * 2, scenario="traffic-surge", profiles=["support"], agents_per_profile=1)
    before, n_before = _cost_per_task(events, "support-agent-0", 0, AT_MINUTES)
    after, n_after = _cost_per_task(events, "support-agent-0", AT_MINUTES + 2, 2 * AT_MINUTES)
    assert 2.4 <= (n_after / (AT_MINUTES - 2)) / (n_before / AT_MINUTES) <= 3.6
    assert 0.8 <= after / before <= 1.25


def test_metrics_equal_event_totals() -> None:
    """The Prometheus counters of a run add up to the totals of its usage events."""
    registry = CollectorRegistry()
    events = _run(75, registry=registry, scenario="runaway-loop")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}

    def metric(*names: str) -> float:
        return sum(v for (n, _), v in samples.items() if n in names)

    assert metric("fleetwarden_llm_cost_usd_total", "fleetwarden_tool_cost_usd_total",
                  "fleetwarden_human_cost_usd_total") == pytest.approx(
        sum(e.get("cost_usd", 0.0) for e in events), abs=1e-9)
    assert metric("fleetwarden_llm_calls_total") == sum(e["type"] == "llm" for e in events)
    assert metric("fleetwarden_tool_calls_total") == sum(e["type"] == "tool" for e in events)
    assert metric("fleetwarden_tasks_total") == sum(e["type"] == "task" for e in events)
    assert metric("fleetwarden_llm_input_tokens_total") == sum(e.get("input_tokens", 0) for e in events)


def _deployment(name: str, replicas: int, model: str | None = None, annotation: str | None = None) -> NS:
    env = [NS(name="MODEL", value=model)] if model else []
    annotations = {follow.MODEL_ANNOTATION: annotation} if annotation else {}
    return NS(metadata=NS(name=name, annotations=annotations),
              spec=NS(replicas=replicas, template=NS(spec=NS(containers=[NS(env=env)]))))


def test_following_deployments_stops_spending_and_switches_models() -> None:
    """An agent scaled to zero stops spending; the model its Deployment names is the model it runs."""
    buf = io.BytesIO()
    fleet = fleet_mod.Fleet(profiles=["support"], agents_per_profile=2, start=START, registry=CollectorRegistry(),
                            events=sdk.EventWriter(buf))
    while fleet.now < START + 600:
        fleet._step()
    follow.apply(fleet, [_deployment("support-agent-0", 0), _deployment("support-agent-1", 2, model="gpt-4o"),
                         _deployment("unrelated", 0)])
    paused_at = fleet.now
    while fleet.now < START + 1200:
        fleet._step()
    follow.apply(fleet, [_deployment("support-agent-0", 1, model="gpt-4o", annotation="gpt-4.1-mini")])
    while fleet.now < START + 1800:
        fleet._step()
    fleet.finish()
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    spent_while_paused = [e for e in events if e["agent"] == "support-agent-0" and e["type"] in ("llm", "tool")
                          and paused_at < e["time"] < START + 1200]
    assert spent_while_paused == []
    models = {e["agent"]: e["model"] for e in events if e["type"] == "llm" and e["time"] > START + 1300}
    assert models == {"support-agent-0": "gpt-4.1-mini", "support-agent-1": "gpt-4o"}


def test_a_second_fast_run_replaces_the_events_file_instead_of_appending(tmp_path: pathlib.Path) -> None:
    """`simulate --events FILE` run twice leaves one run's events, not two interleaved clocks."""
    from fleetwarden import cli

    path = tmp_path / "usage.jsonl"
    argv = ["simulate", "--fast", "--duration", "10m", "--agents", "1", "--seed", "4", "--events", str(path)]
    assert cli.main(argv) == 0
    first = path.read_bytes()
    assert cli.main(argv) == 0
    assert path.read_bytes() == first
