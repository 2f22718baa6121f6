"""The simulator hooks the demo uses: agents named after Deployments, scenarios asked for at run time."""

from __future__ import annotations

import argparse
import io
import json
import threading
from types import SimpleNamespace as NS
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import errors, sdk
from fleetwarden.commands import simulate as simulate_cmd
from fleetwarden.simulate import fleet as fleet_mod
from fleetwarden.simulate import follow

START = 1_767_571_200.0


def _fleet(buf: io.BytesIO, **kwargs: Any) -> fleet_mod.Fleet:
    return fleet_mod.Fleet(start=START, registry=CollectorRegistry(), events=sdk.EventWriter(buf), **kwargs)


def _events(buf: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _run_until(fleet: fleet_mod.Fleet, seconds: float) -> None:
    while fleet.now < START + seconds:
        fleet._step()


def _deployment(name: str, annotations: dict[str, str] | None = None, replicas: int = 1) -> Any:
    return NS(metadata=NS(name=name, annotations=annotations),
              spec=NS(replicas=replicas, template=NS(spec=NS(containers=[NS(env=[])]))))


def test_names_replace_prefix_and_index_in_profile_order() -> None:
    """--names gives the agents those names, profile by profile, and events carry them."""
    buf = io.BytesIO()
    fleet = _fleet(buf, profiles=["support", "lead-generation"], agents_per_profile=1,
                   names=["support-triage", "lead-gen-agent"])
    assert [(a.name, a.profile.name) for a in fleet.agents] == [
        ("support-triage", "support"), ("lead-gen-agent", "lead-generation")]
    fleet.run_fast(600)
    assert {e["agent"] for e in _events(buf)} == {"support-triage", "lead-gen-agent"}


@pytest.mark.parametrize(("names", "message"), [
    (["only-one"], "1 names for 2 agents"),
    (["same", "same"], "must differ"),
])
def test_names_must_match_the_agents_one_to_one(names: list[str], message: str) -> None:
    """A wrong number of names, or a name twice, is refused."""
    with pytest.raises(ValueError, match=message):
        _fleet(io.BytesIO(), profiles=["support"], agents_per_profile=2, names=names)


def test_cli_refuses_a_wrong_number_of_names() -> None:
    """`simulate --names` with fewer names than agents is an InputError naming --names."""
    parser = argparse.ArgumentParser()
    simulate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--fast", "--events", "-", "--profiles", "support", "--agents", "2",
                              "--names", "a"])
    with pytest.raises(errors.InputError, match="--names"):
        simulate_cmd.run(args)


def test_target_may_be_a_given_name() -> None:
    """--target names an agent by its given name; the scenario changes only that agent."""
    buf = io.BytesIO()
    fleet = _fleet(buf, profiles=["support"], agents_per_profile=2, names=["support-triage", "support-resolver"],
                   scenario="model-update-spike", at_minutes=5, target="support-resolver")
    fleet.run_fast(900)
    late = {e["agent"]: e["model"] for e in _events(buf) if e["type"] == "llm" and e["time"] > START + 400}
    assert late == {"support-triage": "gpt-4o-mini", "support-resolver": "gpt-4.1-mini"}


def test_requested_runaway_loop_starts_at_the_next_step_on_that_agent_only() -> None:
    """request_scenario (from another thread) starts the scenario at once: the agent ends no task after it."""
    buf = io.BytesIO()
    fleet = _fleet(buf, profiles=["lead-generation"], agents_per_profile=2, names=["lead-gen-agent", "other"])
    _run_until(fleet, 300)
    worker = threading.Thread(target=fleet.request_scenario, args=("runaway-loop", "lead-gen-agent"))
    worker.start()
    worker.join()
    asked_at = fleet.now
    _run_until(fleet, 900)
    events = _events(buf)
    # tasks already under way may still finish within seconds; none starts after the request
    started_after = {e["task_id"] for e in events if e["agent"] == "lead-gen-agent" and e["time"] > asked_at + 60
                     and e["type"] == "task" and e["status"] == "completed"}
    loop_calls = [e for e in events if e["agent"] == "lead-gen-agent" and e.get("step") == "loop"]
    assert started_after == set()
    assert len(loop_calls) > 50 and loop_calls[0]["time"] >= asked_at
    assert not [e for e in events if e["agent"] == "other" and e.get("step") == "loop"]


def test_request_for_unknown_scenario_or_agent_is_refused() -> None:
    """An unknown scenario or agent raises ValueError; nothing is queued."""
    fleet = _fleet(io.BytesIO(), profiles=["support"], agents_per_profile=1)
    with pytest.raises(ValueError, match="unknown scenario"):
        fleet.request_scenario("meltdown", "support-agent-0")
    with pytest.raises(ValueError, match="no agent"):
        fleet.request_scenario("runaway-loop", "nobody")


def test_follower_starts_an_annotated_scenario_once_per_new_value() -> None:
    """A new simulate-scenario annotation value starts the scenario once; the same value again does nothing."""
    fleet = _fleet(io.BytesIO(), profiles=["lead-generation"], agents_per_profile=1, names=["lead-gen-agent"])
    asked: list[tuple[str, str]] = []
    fleet.request_scenario = lambda scenario, agent: asked.append((scenario, agent))  # type: ignore[method-assign]
    played: dict[str, str] = {}
    annotated = _deployment("lead-gen-agent", {follow.SCENARIO_ANNOTATION: "runaway-loop"})
    follow.apply(fleet, [annotated], played)
    follow.apply(fleet, [annotated], played)
    assert asked == [("runaway-loop", "lead-gen-agent")]
    follow.apply(fleet, [_deployment("lead-gen-agent")], played)
    follow.apply(fleet, [annotated], played)
    assert asked == [("runaway-loop", "lead-gen-agent")] * 2


def test_follower_ignores_a_bad_scenario_annotation() -> None:
    """An annotation naming no scenario is logged and ignored; the agent keeps running normally."""
    fleet = _fleet(io.BytesIO(), profiles=["lead-generation"], agents_per_profile=1, names=["lead-gen-agent"])
    follow.apply(fleet, [_deployment("lead-gen-agent", {follow.SCENARIO_ANNOTATION: "meltdown"})], {})
    assert not fleet.agents[0].stuck
    _run_until(fleet, 120)
    assert not fleet.agents[0].stuck
