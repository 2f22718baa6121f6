"""Rate limits shared out among an agent's replicas: each replica's SDK enforces 1/n of each limit
(rate and burst), n read from the policy ConfigMap's replicas.json, so the fleet stays within the
limit plus one bucket's burst."""

from __future__ import annotations

import json
import pathlib

import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import errors, sdk
from fleetwarden.core import spec


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fleet(replicas: int, limits: dict[str, object], clock: Clock) -> list[sdk.Tracker]:
    rules = spec.CostPolicySpec.model_validate({"rateLimits": {**limits, "action": "deny"}})
    return [sdk.Tracker("bot", registry=CollectorRegistry(), clock=clock,
                        policy=sdk.GuardrailPolicy(rules, replicas={"bot": replicas}, clock=clock))
            for _ in range(replicas)]


def _most_in_a_minute(replicas: int, limits: dict[str, object], tool: str, seconds: int = 300) -> int:
    """Every replica calls ``tool`` ten times a second; the most calls the fleet made in any 60 s."""
    clock = Clock()
    tasks = [t.start_task("w") for t in _fleet(replicas, limits, clock)]
    times: list[float] = []
    for tick in range(seconds * 10):
        clock.now = tick / 10
        for task in tasks:
            try:
                task.check_tool(tool)
            except sdk.RateLimited:
                continue
            times.append(clock.now)
    return max(sum(1 for t in times if start <= t < start + 60) for start in {int(t) for t in times})


@pytest.mark.parametrize("replicas", [1, 3, 10])
@pytest.mark.parametrize(("limits", "tool", "limit"), [
    ({"toolCallsPerMinute": 60}, "crm.search", 60),
    ({"perTool": {"crm.*": 30}}, "crm.search", 30),
])
def test_the_fleet_stays_within_the_limit_plus_one_burst(replicas: int, limits: dict[str, object], tool: str,
                                                         limit: int) -> None:
    most = _most_in_a_minute(replicas, limits, tool)
    assert limit < most <= 2 * limit  # the burst (one minute's worth) is used, never more


def test_without_the_share_the_fleet_gets_n_times_the_limit() -> None:
    """What the share prevents: replicas that each think they are alone."""
    clock = Clock()
    rules = spec.CostPolicySpec.model_validate({"rateLimits": {"toolCallsPerMinute": 60, "action": "deny"}})
    tasks = [sdk.Tracker("bot", registry=CollectorRegistry(), clock=clock,
                         policy=sdk.GuardrailPolicy(rules, clock=clock)).start_task("w") for _ in range(3)]
    allowed = 0
    for tick in range(600):
        clock.now = tick / 10
        for task in tasks:
            try:
                task.check_tool("x")
                allowed += 1
            except sdk.RateLimited:
                pass
    assert allowed > 3 * 60


def test_a_share_below_one_call_keeps_a_burst_of_one() -> None:
    """10 replicas of a 5-a-minute limit: each may still make one call (the documented floor)."""
    clock = Clock()
    (tracker,) = _fleet(1, {"toolCallsPerMinute": 5}, clock)
    assert tracker.policy is not None
    tracker.policy.set(replicas={"bot": 10})
    task = tracker.start_task("w")
    task.check_tool("x")
    with pytest.raises(sdk.RateLimited) as caught:
        task.check_tool("x")
    assert caught.value.retry_after == pytest.approx(120.0)  # 0.5 calls a minute


def test_a_new_share_grants_no_fresh_burst() -> None:
    """Scaling 1 -> 10 cuts the bucket to its new burst; 10 -> 1 does not refill it."""
    clock = Clock()
    (tracker,) = _fleet(1, {"toolCallsPerMinute": 60}, clock)
    assert tracker.policy is not None
    task = tracker.start_task("w")
    for _ in range(50):
        task.check_tool("x")  # 10 of 60 left
    tracker.policy.set(replicas={"bot": 10})  # burst 6: 6 left
    task.check_tool("x")  # 5 left
    tracker.policy.set(replicas={"bot": 1})  # burst 60: still 5
    for _ in range(5):
        task.check_tool("x")
    with pytest.raises(sdk.RateLimited):
        task.check_tool("x")


def test_replicas_are_read_from_the_mounted_configmap(tmp_path: pathlib.Path) -> None:
    (tmp_path / "policy.json").write_text(json.dumps({"rateLimits": {"toolCallsPerMinute": 60}}))
    (tmp_path / "replicas.json").write_text(json.dumps({"bot": 3, "other": 1}))
    policy = sdk.GuardrailPolicy.from_dir(tmp_path)
    assert (policy.replicas("bot"), policy.replicas("other"), policy.replicas("new")) == (3, 1, 1)


@pytest.mark.parametrize("content", ['["bot"]', '{"bot": 0}', '{"bot": "3"}', '{"bot": true}', "{"])
def test_a_bad_replicas_file_at_start_names_the_file(tmp_path: pathlib.Path, content: str) -> None:
    (tmp_path / "replicas.json").write_text(content)
    with pytest.raises(errors.InputError, match="replicas.json"):
        sdk.GuardrailPolicy.from_dir(tmp_path)
