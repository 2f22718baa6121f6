"""The independent fleet generator: deterministic, valid events, and shapes that do what their labels say."""

from __future__ import annotations

import collections
import statistics
from typing import Any

import pytest

from fleetwarden.core import events, fleetgen

HOUR = 3600


def fleet_events(seed: int, **kw: Any) -> tuple[list[dict[str, Any]], fleetgen.Fleet]:
    evs, fleet = fleetgen.build(seed, **kw)
    return list(evs), fleet


def by_agent(evs: list[dict[str, Any]], agent: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["agent"] == agent]


def median_cost(evs: list[dict[str, Any]], lo: float, hi: float, *, per: str) -> float:
    """The median model cost per call (``per="call"``), or per task of the tasks that ended in
    [lo, hi) (``per="task"``): medians, as task costs are heavy-tailed."""
    if per == "call":
        return statistics.median(e["cost_usd"] for e in evs if e["type"] == "llm" and lo <= e["time"] < hi)
    ended = {e["task_id"] for e in evs if e["type"] == "task" and lo <= e["time"] < hi}
    cost: collections.Counter[str] = collections.Counter()
    for e in evs:
        if e["type"] == "llm" and e["task_id"] in ended:
            cost[e["task_id"]] += e["cost_usd"]
    return statistics.median(cost.values())


def test_same_seed_same_fleet_and_the_splits_are_apart() -> None:
    """A seed gives the same events and labels byte for byte; tuning and held-out seeds never meet."""
    a, fa = fleet_events(7, agents=4, hours=2.5, shapes=("task_loop", "new_tool"))
    b, fb = fleet_events(7, agents=4, hours=2.5, shapes=("task_loop", "new_tool"))
    assert a == b and fa.labels == fb.labels and fa.benign == fb.benign
    assert a != fleet_events(8, agents=4, hours=2.5, shapes=("task_loop", "new_tool"))[0]
    assert not set(fleetgen.TUNING_SEEDS) & set(fleetgen.HELD_OUT_SEEDS)


def test_events_are_valid_and_in_time_order() -> None:
    """Every event passes the usage-event contract; times never go back."""
    evs, _ = fleet_events(3, agents=len(fleetgen.SHAPES), hours=3)
    assert len(evs) > 10_000
    assert all(events.is_valid(e) for e in evs[::7])
    assert all(x["time"] <= y["time"] for x, y in zip(evs, evs[1:], strict=False))


def test_every_shape_once_with_its_label() -> None:
    """Each positive shape is one label of its kind; each benign shape one benign record."""
    fleet = fleetgen.plan(11)
    assert len(fleet.agents) == 25
    assert sorted(lb.shape for lb in fleet.labels) == sorted(fleetgen.POSITIVE)
    assert all(lb.kind == fleetgen.POSITIVE[lb.shape] for lb in fleet.labels)
    assert sorted(b.shape for b in fleet.benign) == sorted(fleetgen.NEGATIVE)
    ramp = next(lb for lb in fleet.labels if lb.shape == "tool_ramp")
    assert ramp.tool is not None
    slow = next(lb for lb in fleet.labels if lb.shape == "spike_slow")
    assert slow.tasks_per_minute < 0.5 and slow.model != slow.previous_model
    with pytest.raises(ValueError, match="unknown shape"):
        fleetgen.plan(1, shapes=("nope",))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_declared_changes_and_cost_shifts_change_cost_as_labelled(seed: int) -> None:
    """Spikes and cost shifts cost 2x or more per task after the onset (medians); a pricier model
    1.2-1.3x per call, a cheaper one less; only the cost shift keeps its version."""
    shapes = ("spike_busy", "cost_shift", "pricier_model", "cheaper_model")
    evs, fleet = fleet_events(seed, agents=4, hours=4, shapes=shapes)
    for a in fleet.agents:
        mine = by_agent(evs, a.name)
        per = "call" if a.shape in ("pricier_model", "cheaper_model") else "task"
        ratio = (median_cost(mine, a.at + 1800, a.at + 3 * HOUR, per=per)
                 / median_cost(mine, a.at - 2 * HOUR, a.at, per=per))
        low, high = {"pricier_model": (1.05, 1.5), "cheaper_model": (0.0, 0.85)}.get(a.shape or "", (1.8, 99.0))
        assert low < ratio < high, (a.shape, ratio)
        versions = {e.get("agent_version") for e in mine if e["type"] == "llm" and e["time"] > a.at + 1800}
        assert (a.version in versions) == (a.shape == "cost_shift")  # no declared change for a cost shift


def test_loops_storms_ramps_and_idle_hours() -> None:
    """A task loop keeps calling while other tasks complete; a retry storm completes nothing; a tool
    ramps to 10x; an idle agent starts no task for an hour."""
    shapes = ("task_loop", "retry_storm", "tool_ramp", "idle_return")
    evs, fleet = fleet_events(5, agents=4, hours=5, shapes=shapes)
    agents = {a.shape: a for a in fleet.agents}
    loop = agents["task_loop"]
    mine = by_agent(evs, loop.name)
    looping = [e for e in mine if e.get("task_id") == f"{loop.name}-loop" and e["type"] == "llm"]
    assert looping[0]["time"] >= loop.at and looping[-1]["time"] > loop.until - 300
    done = [e for e in mine if e["type"] == "task" and e["status"] == "completed" and loop.at < e["time"] < loop.until]
    assert done or loop.rate < 0.2
    storm = agents["retry_storm"]
    window = [e for e in by_agent(evs, storm.name) if storm.at + 1200 < e["time"] < storm.until]
    assert window and not [e for e in window if e["type"] == "task" and e["status"] == "completed"]
    ramp = agents["tool_ramp"]
    calls = collections.Counter(int((e["time"] - ramp.at) // 60) for e in by_agent(evs, ramp.name)
                                if e["type"] == "tool" and e["tool"] == ramp.tool)
    before = sum(calls[m] for m in range(-30, 0)) / 30
    assert sum(calls[m] for m in range(15, 20)) / 5 >= 0.7 * max(10 * before, 30)
    idle = agents["idle_return"]
    late = [e for e in by_agent(evs, idle.name) if idle.at + 3600 * 0.5 < e["time"] < idle.until - 60]
    assert len(late) < 0.05 * len([e for e in by_agent(evs, idle.name) if idle.at - 3600 < e["time"] < idle.at])
