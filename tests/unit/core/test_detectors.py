"""Table tests of the anomaly detectors on hand-built minute sequences."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fleetwarden.core import detectors, series, spec

T0 = 1_800_000_000 - 1_800_000_000 % 60
AGENT, NS = "bot", "ns"


def minute(i: int, **kw: Any) -> series.AgentMinute:
    return series.AgentMinute(agent=AGENT, namespace=NS, minute=T0 + 60 * i, **kw)


def params(**over: Any) -> spec.AnomalyParams:
    return spec.AnomalyParams.model_validate(over)


def run(mins: list[series.AgentMinute], p: spec.AnomalyParams | None = None) -> list:
    ds = detectors.DetectorSet(p or spec.AnomalyParams(), AGENT, NS)
    out = []
    for m in mins:
        out.extend(ds.step(m))
    return out


# ---------------------------------------------------------------- model_update_spike


def spike_series(before: int, after: int, cost_before: float, cost_after: float, *,
                 model_after: str = "new", version_after: str | None = None,
                 tasks: int = 2, outcomes: float = 2.0) -> list[series.AgentMinute]:
    out = []
    for i in range(before + after):
        new = i >= before
        out.append(minute(i, inference_cost_usd=(cost_after if new else cost_before) * tasks,
                          tasks_completed=tasks, outcomes=outcomes, llm_calls=3, tokens=1000,
                          model=model_after if new else "old",
                          version=(version_after if new and version_after else "v1")))
    return out


SPIKE_TABLE = [
    # (name, before minutes, after minutes, cost/task before, after, p overrides, expected ratio or None)
    ("3x after a model change", 60, 20, 0.01, 0.03, {}, 3.0),
    ("exactly at the ratio", 60, 20, 0.25, 0.375, {"ratio": 1.5}, 1.5),
    ("just under the ratio", 60, 20, 0.25, 0.3749, {"ratio": 1.5}, None),
    ("cheaper model", 60, 20, 0.01, 0.004, {}, None),
    ("same cost", 60, 20, 0.01, 0.01, {}, None),
    ("too few tasks after the change", 60, 9, 0.01, 0.05, {"minTasks": 20}, None),  # 18 tasks < 20
    ("a 1.3x pricier model", 60, 40, 0.01, 0.013, {}, None),
    ("no baseline: a new agent", 3, 40, 0.01, 0.05, {}, None),  # 6 tasks before < MIN_BASELINE_TASKS
    ("min_tasks 1 judges at the first task", 60, 1, 0.01, 0.05, {"minTasks": 1}, 5.0),
]


@pytest.mark.parametrize(("name", "before", "after", "c0", "c1", "over", "ratio"), SPIKE_TABLE,
                         ids=[row[0] for row in SPIKE_TABLE])
def test_model_update_spike_table(name: str, before: int, after: int, c0: float, c1: float,
                                  over: dict, ratio: float | None) -> None:
    """A model change is a spike exactly when cost per task after / before reaches the ratio."""
    found = run(spike_series(before, after, c0, c1), params(modelUpdateSpike=over))
    if ratio is None:
        assert found == []
        return
    assert len(found) == 1
    f = found[0]
    assert f.kind == "model_update_spike" and f.action == "rollback"
    assert (f.model, f.previous_model) == ("new", "old")
    assert f.onset == T0 + 60 * before
    assert math.isclose(f.evidence["cost_per_task_ratio"], ratio, rel_tol=1e-3)
    min_tasks = over.get("minTasks", 5)
    first = T0 + 60 * (before + math.ceil(min_tasks / 2))  # the first judgement (2 tasks a minute)
    if ratio >= 3:
        assert f.time == first  # noise-free and far past H0: decided at once
    else:
        assert first <= f.time <= T0 + 60 * (before + after)  # at the ratio: as soon as the evidence suffices
    assert f.evidence["tasks_after"] >= min_tasks


def test_a_busy_agents_spike_is_judged_against_its_minimum_baseline_minutes() -> None:
    """An agent ending 60 tasks a minute holds baselineTasks (200) in under four minutes; the
    baseline still keeps MIN_BASELINE_MINUTES minutes, so a tripled cost is found within minutes
    (the demo's shape: the change six minutes after the agent started)."""
    before = detectors.MIN_BASELINE_MINUTES + 1
    found = run(spike_series(before, 5, 0.002, 0.006, tasks=60, outcomes=60.0))
    assert [f.kind for f in found] == ["model_update_spike"]
    assert found[0].onset == T0 + 60 * before and found[0].time <= T0 + 60 * (before + 2)


def test_version_change_with_same_model_is_judged() -> None:
    """A new agent_version with the same model that triples cost per task is a spike naming the model."""
    mins = spike_series(60, 20, 0.01, 0.03, model_after="old", version_after="v2")
    found = run(mins)
    assert len(found) == 1
    assert found[0].model == "old" and found[0].evidence["version"] == "v2"


def test_spike_by_cost_per_outcome() -> None:
    """Same cost per task but a third of the outcomes is a spike in cost per outcome."""
    mins = spike_series(60, 0, 0.01, 0.01) + [
        minute(60 + i, inference_cost_usd=0.02, tasks_completed=2, outcomes=2 / 3, model="new", version="v1")
        for i in range(20)]
    found = run(mins)
    assert len(found) == 1
    assert found[0].evidence["cost_per_outcome_ratio"] == pytest.approx(3.0)
    assert found[0].evidence["cost_per_task_ratio"] == pytest.approx(1.0)


def test_spike_is_reported_once_and_again_when_it_doubles() -> None:
    """A lasting spike is one finding; it is reported again only when the ratio doubles."""
    mins = spike_series(60, 30, 0.01, 0.03)
    assert len(run(mins)) == 1
    worse = mins + [minute(90 + i, inference_cost_usd=0.5, tasks_completed=2, outcomes=2, model="new",
                           version="v1") for i in range(20)]
    found = run(worse)
    assert len(found) == 2 and found[1].evidence["ratio"] >= 2 * found[0].evidence["ratio"]


def test_flipping_between_two_usual_models_is_not_a_change() -> None:
    """An agent whose main model alternates between two it uses all the time raises nothing."""
    mins = [minute(i, inference_cost_usd=0.02 if i % 2 else 0.08, tasks_completed=2, outcomes=2,
                   model="mini" if i % 2 else "big", version="v1") for i in range(200)]
    assert run(mins) == []


def test_rollback_after_a_spike_is_silent() -> None:
    """Rolling back to the previous (cheaper) model raises nothing more."""
    mins = spike_series(60, 30, 0.01, 0.03)
    back = [minute(90 + i, inference_cost_usd=0.02, tasks_completed=2, outcomes=2, model="old", version="v1")
            for i in range(40)]
    assert len(run(mins + back)) == 1


def test_zero_cost_baseline_is_not_judged() -> None:
    """A baseline that cost nothing gives no ratio, so no finding (unknown is not a spike)."""
    assert run(spike_series(60, 20, 0.0, 0.05)) == []


# ---------------------------------------------------------------- runaway_loop


def loop_series(tokens: list[int], *, history: int = 20, history_tokens: int = 10_000,
                output: float = 0.0, completed: int = 1) -> list[series.AgentMinute]:
    mins = [minute(i, tokens=history_tokens, tasks_completed=completed, llm_calls=2) for i in range(history)]
    mins += [minute(history + i, tokens=t, outcomes=output, llm_calls=3) for i, t in enumerate(tokens)]
    return mins


LOOP_TABLE = [
    # (name, tokens per minute after the history, overrides, found?)
    ("accelerating, no output", [10_000, 13_000, 17_000, 22_000, 30_000], {}, True),
    ("exactly 1.5x the first half and the usual rate",
     [9_998, 10_002, 12_000, 14_000, 15_000], {}, True),
    ("just under the acceleration", [9_998, 10_002, 12_000, 14_000, 14_999], {}, False),
    ("flat", [20_000] * 5, {}, False),
    ("one minute not rising", [10_000, 13_000, 13_000, 22_000, 30_000], {}, False),
    ("under min_tokens_per_minute", [1000, 1300, 1700, 2200, 3000], {"minTokensPerMinute": 5000}, False),
    ("min_tokens_per_minute 0 is a threshold", [1000, 1300, 1700, 2200, 3000], {"minTokensPerMinute": 0}, False),
    ("window of 2", [10_000, 16_000], {"windowMinutes": 2}, True),
    ("no output expected in so short a window", [10_000, 16_000], {"windowMinutes": 2}, False),
]


@pytest.mark.parametrize(("name", "tokens", "over", "expected"), LOOP_TABLE, ids=[r[0] for r in LOOP_TABLE])
def test_runaway_loop_table(name: str, tokens: list[int], over: dict, expected: bool) -> None:
    """A loop is found exactly when tokens rise every minute past the acceleration with no output
    where output was expected (at least 5 outputs at the agent's usual rate)."""
    # an agent with 3 outputs a minute (5 expected in the window of 2), or 1 (2 expected: not judged)
    completed = 1 if name.startswith("no output expected") or over.get("windowMinutes", 5) >= 5 else 3
    found = run(loop_series(tokens, completed=completed), params(runawayLoop=over))
    if not expected:
        assert found == []
        return
    assert len(found) == 1
    f = found[0]
    assert f.kind == "runaway_loop" and f.action == "kill"
    assert f.time == T0 + 60 * (20 + len(tokens))
    assert f.onset == T0 + 60 * 20


def test_low_tokens_with_zero_min_still_needs_the_usual_rate() -> None:
    """With min_tokens_per_minute 0 a small agent's loop is found once it passes 1.5x its usual rate."""
    found = run(loop_series([1000, 1300, 1700, 2200, 3000], history_tokens=1500),
                params(runawayLoop={"minTokensPerMinute": 0}))
    assert len(found) == 1


def test_output_in_the_window_is_not_a_loop() -> None:
    """An accelerating agent that still produces output is busy, not looping."""
    assert run(loop_series([10_000, 13_000, 17_000, 22_000, 30_000], output=1)) == []


def test_new_agent_without_history_is_not_judged() -> None:
    """An agent with no usual rate yet (its first minutes) raises no loop."""
    assert run(loop_series([10_000, 13_000, 17_000, 22_000, 30_000], history=0)) == []


def test_loop_is_one_finding_until_output_returns() -> None:
    """A lasting loop is reported once; after output returns, a new loop is a new finding."""
    rising = [10_000, 13_000, 17_000, 22_000, 30_000, 40_000, 55_000, 70_000]
    mins = loop_series(rising, completed=2)
    assert len(run(mins)) == 1
    recovered = [minute(28 + i, tokens=10_000, tasks_completed=2) for i in range(10)]
    again = [minute(38 + i, tokens=t) for i, t in enumerate(rising)]
    assert len(run(mins + recovered + again)) == 2


def test_gap_counts_as_idle_minutes() -> None:
    """A missing minute is zero activity: a gap inside the window breaks the rise."""
    mins = loop_series([10_000, 13_000, 17_000, 22_000, 30_000])
    del mins[22]  # a gap where tokens were 17 000
    assert run(mins) == []


# ---------------------------------------------------------------- tool_call_explosion


def tool_series(base: float, burst: list[float], *, history: int = 60, llm: int = 10, tasks: int = 3,
                llm_burst: int | None = None, tasks_burst: int | None = None,
                tool: str = "crm.search") -> list[series.AgentMinute]:
    mins = [minute(i, tool_calls={tool: base}, llm_calls=llm, tasks_completed=tasks, tokens=500)
            for i in range(history)]
    mins += [minute(history + i, tool_calls={tool: b}, llm_calls=llm_burst if llm_burst is not None else llm,
                    tasks_completed=tasks_burst if tasks_burst is not None else tasks, tokens=500)
             for i, b in enumerate(burst)]
    return mins


EXPLOSION_TABLE = [
    # (name, base calls/min, burst calls per minute, kwargs, overrides, expected ratio or None)
    ("10x", 5, [50, 50, 50], {}, {}, 10.0),
    ("exactly at the ratio", 5, [40, 40, 40], {}, {}, 8.0),
    ("just under the ratio", 5, [39, 40, 40], {}, {}, None),
    ("under min_calls_per_minute", 1, [10, 10, 10], {}, {}, None),
    ("min_calls_per_minute 0 is a threshold", 1, [10, 10, 10], {}, {"minCallsPerMinute": 0}, 10.0),
    ("a 3x traffic surge", 5, [15, 15, 15], {"llm_burst": 30, "tasks_burst": 9}, {}, None),
    ("a 10x traffic surge (tool, LLM calls and tasks)", 5, [50, 50, 50],
     {"llm_burst": 100, "tasks_burst": 30}, {}, None),
    ("10x with LLM calls up but tasks flat", 5, [50, 50, 50], {"llm_burst": 100}, {}, 10.0),
    ("new tool, no baseline", 0, [50, 50, 50], {}, {}, None),
]


@pytest.mark.parametrize(("name", "base", "burst", "kw", "over", "ratio"), EXPLOSION_TABLE,
                         ids=[r[0] for r in EXPLOSION_TABLE])
def test_tool_call_explosion_table(name: str, base: float, burst: list[float], kw: dict, over: dict,
                                   ratio: float | None) -> None:
    """A tool explosion is a jump past the ratio and the minimum rate that traffic does not explain."""
    found = run(tool_series(base, burst, **kw), params(toolCallExplosion=over))
    if ratio is None:
        assert found == []
        return
    assert len(found) == 1
    f = found[0]
    assert f.kind == "tool_call_explosion" and f.tool == "crm.search" and f.action == "alert"
    assert f.evidence["ratio"] == pytest.approx(ratio, rel=1e-3)
    assert f.time == T0 + 60 * 63 and f.onset == T0 + 60 * 60


def test_explosion_is_one_finding_while_it_lasts() -> None:
    """An explosion lasting 20 minutes is one finding; a new one after it ended is another."""
    mins = tool_series(5, [50] * 20)
    assert len(run(mins)) == 1
    calm = [minute(80 + i, tool_calls={"crm.search": 5}, llm_calls=10, tasks_completed=3) for i in range(30)]
    again = [minute(110 + i, tool_calls={"crm.search": 60}, llm_calls=10, tasks_completed=3) for i in range(5)]
    assert len(run(mins + calm + again)) == 2


def test_explosion_that_doubles_again_is_reported_again() -> None:
    """Once reported, an explosion is reported again only when its ratio doubles."""
    found = run(tool_series(5, [50, 50, 50, 60, 60, 120, 120, 120]))
    assert len(found) == 2
    assert found[1].evidence["ratio"] >= 2 * 10


def test_explosion_needs_history() -> None:
    """An agent with less than a quarter of the baseline of history is not judged."""
    assert run(tool_series(5, [50, 50, 50], history=10)) == []
    assert len(run(tool_series(5, [50, 50, 50], history=15))) == 1


def test_explosion_names_the_tool_among_many() -> None:
    """Only the tool that exploded is named."""
    mins = [minute(i, tool_calls={"a": 5, "b": 5}, llm_calls=10, tasks_completed=3) for i in range(60)]
    mins += [minute(60 + i, tool_calls={"a": 5, "b": 60}, llm_calls=10, tasks_completed=3) for i in range(3)]
    found = run(mins)
    assert [f.tool for f in found] == ["b"]


# ---------------------------------------------------------------- the set


def test_minutes_out_of_order_are_refused() -> None:
    """Feeding a minute at or before the last one is a programming error."""
    ds = detectors.DetectorSet(spec.AnomalyParams(), AGENT, NS)
    ds.step(minute(5))
    with pytest.raises(ValueError, match="fed after"):
        ds.step(minute(5))


def test_minutes_of_another_agent_are_refused() -> None:
    """A DetectorSet holds one agent's state only."""
    ds = detectors.DetectorSet(spec.AnomalyParams(), AGENT, NS)
    with pytest.raises(ValueError, match="fed to the detectors"):
        ds.step(series.AgentMinute(agent="other", namespace=NS, minute=T0))


def test_a_long_gap_equals_an_idle_history() -> None:
    """After a gap longer than any window the detectors behave as after that many idle minutes."""
    burst = tool_series(5, [50, 50, 50])
    shifted = [series.AgentMinute(**{**{f: getattr(m, f) for f in m.__dataclass_fields__},
                                     "minute": m.minute + 86400}) for m in burst[60:]]
    # a day of silence, then the burst: no baseline calls within the window, so nothing
    assert run(burst[:60] + shifted) == []


def test_same_minutes_same_findings() -> None:
    """The fold is pure: two runs over the same minutes give equal findings."""
    mins = tool_series(5, [50] * 5) + loop_series([10_000, 13_000, 17_000, 22_000, 30_000])[20:]
    mins = [series.AgentMinute(**{**{f: getattr(m, f) for f in m.__dataclass_fields__}, "minute": T0 + 60 * i})
            for i, m in enumerate(mins)]
    assert run(mins) == run(mins) != []


# ---------------------------------------------------------------- gaps: skipping equals feeding empty minutes


def _fill_gaps(mins: list[series.AgentMinute]) -> list[series.AgentMinute]:
    """The same minutes with every missing minute fed as an explicit empty bucket."""
    out: list[series.AgentMinute] = []
    for m in mins:
        if out:
            out += [series.AgentMinute(agent=AGENT, namespace=NS, minute=t)
                    for t in range(out[-1].minute + 60, m.minute, 60)]
        out.append(m)
    return out


def _random_minutes(seed: int) -> list[series.AgentMinute]:
    """Busy stretches, runaway loops, tool bursts and model changes separated by gaps of many lengths."""
    import random

    rng = random.Random(seed)
    out: list[series.AgentMinute] = []
    i = 0
    model = "m1"
    for _ in range(40):
        i += rng.choice([0, 0, 1, 2, 3, 5, 30, 59, 60, 63, 64, 65, 66, 70, 200])
        kind = rng.choice(["busy", "busy", "loop", "burst", "model"])
        if kind == "model":
            model = "m2" if model == "m1" else "m1"
        n = rng.randint(3, 70) if kind in ("busy", "model") else rng.randint(5, 9)
        for k in range(n):
            if kind == "loop":
                kw: dict[str, Any] = {"tokens": 6000 * (k + 2) ** 2, "llm_calls": 5 + k}
            elif kind == "burst":
                kw = {"tool_calls": {"a": float(rng.choice([40, 70, 120])), "b": 1.0}, "llm_calls": rng.choice([8, 60]),
                      "tokens": 3000, "tasks_completed": rng.choice([0, 2])}
            else:
                calls = {t: float(rng.randint(1, 4)) for t in ("a", "b") if rng.random() < 0.8}
                kw = {"tool_calls": calls, "llm_calls": rng.randint(5, 12), "tokens": rng.randint(2000, 5000),
                      "tasks_completed": rng.randint(1, 3), "outcomes": float(rng.randint(0, 2)), "model": model,
                      "inference_cost_usd": (0.05 if model == "m2" else 0.01) * rng.randint(1, 3)}
            out.append(minute(i, **kw))
            i += 1 if rng.random() < 0.85 else rng.choice([2, 3, 4, 66])
    return out


def test_gap_equals_empty_minutes_fed_one_by_one() -> None:
    """Skipping a gap gives exactly the findings of feeding its empty minutes one by one."""
    kinds: set[str] = set()
    for seed in range(12):
        mins = _random_minutes(seed)
        for p in (spec.AnomalyParams(), params(toolCallExplosion={"windowMinutes": 1, "baselineMinutes": 5},
                                               runawayLoop={"windowMinutes": 2})):
            skipped = run(mins, p)
            assert skipped == run(_fill_gaps(mins), p)
            kinds |= {f.kind for f in skipped}
    assert kinds == {"runaway_loop", "tool_call_explosion", "model_update_spike"}


@pytest.mark.parametrize("resume", [70, 200])
def test_explosion_found_inside_a_gap(resume: int) -> None:
    """A tool burst that traffic explains at first but not once the traffic stops is found in the gap, at its time."""
    mins = [minute(i, tool_calls={"a": 2}, llm_calls=10) for i in range(62)]
    mins.append(minute(62, tool_calls={"a": 70}, llm_calls=80))  # traffic grew too: not yet an explosion
    later = minute(resume, tool_calls={"a": 2}, llm_calls=10)  # a gap shorter / longer than the windows
    found = run(mins + [later])
    assert [(f.kind, f.time) for f in found] == [("tool_call_explosion", float(T0 + 64 * 60))]
    assert found == run(_fill_gaps(mins + [later]))


# ---------------------------------------------------------------- the operator's refold


def _found(kind: str, time_min: int, onset_min: int | None, agent: str = "a") -> Any:
    from fleetwarden.core import findings
    action = {"runaway_loop": "kill", "model_update_spike": "rollback"}.get(kind, "alert")
    return findings.Finding(kind=kind, agent=agent, namespace="ns", time=T0 + 60 * time_min, action=action,
                            message="m", onset=None if onset_min is None else T0 + 60 * onset_min)


def test_a_refold_keeps_only_what_its_detector_judged_on_its_whole_reach() -> None:
    """In the operator's lookback (from minute 0 on), a cost shift needs 90 minutes before its time
    (its longest window and the baseline before it); a loop or a spike the hour before its onset;
    a tool its window and baseline."""
    p = params()
    kept = detectors.in_view([_found("cost_shift", 90, 70), _found("cost_shift", 89, 70),
                              _found("runaway_loop", 100, 60), _found("runaway_loop", 100, 59),
                              _found("model_update_spike", 120, 60), _found("tool_call_explosion", 63, 62),
                              _found("tool_call_explosion", 62, 61)], T0, p)
    assert [(f.kind, (f.time - T0) // 60) for f in kept] == [
        ("cost_shift", 90), ("runaway_loop", 100), ("model_update_spike", 120), ("tool_call_explosion", 63)]


def test_a_refold_gives_a_reported_problem_its_onset_and_a_loop_holds_its_cost_shift() -> None:
    """A finding whose reach holds a reported onset of its kind and agent is that incident; a cost
    shift within LOOP_HOLD_MINUTES of a reported loop's onset is the loop's; other agents and
    kinds, and a loop long gone, are left alone."""
    p = params()
    reported = [("cost_shift", "a", None, T0 + 60 * 40), ("runaway_loop", "b", None, T0 + 60 * 10)]
    out = detectors.keep_reported([_found("cost_shift", 100, 45), _found("cost_shift", 100, 45, agent="c"),
                                   _found("runaway_loop", 60, 45), _found("cost_shift", 60, 50, agent="b"),
                                   _found("cost_shift", 71, 50, agent="b")], reported, p)
    assert [(f.kind, f.agent, (f.onset - T0) // 60) for f in out] == [
        ("cost_shift", "a", 40), ("cost_shift", "c", 45), ("runaway_loop", "a", 45), ("cost_shift", "b", 50)]


# ---------------------------------------------------------------- cost_shift: the baselines it keeps per cut


def _costly_minutes(seed: int, n: int, shifts: dict[int, float]) -> list[series.AgentMinute]:
    """A busy agent's minutes, heavy-tailed costs per task, the cost multiplied by ``shifts[i]`` from minute ``i``."""
    import random

    rng = random.Random(seed)
    out = []
    factor = 1.0
    for i in range(n):
        factor = shifts.get(i, factor)
        tasks = rng.randint(1, 3)
        cost = factor * sum(0.01 * rng.lognormvariate(0, 0.6) for _ in range(tasks))
        out.append(minute(i, tasks_completed=tasks, llm_calls=3 * tasks + rng.randint(0, 2), tokens=2000,
                          inference_cost_usd=cost, model="m1"))
    return out


def _shifts(shift: detectors.CostShift, mins: list[series.AgentMinute], *, cold: bool = False,
            reset_at: int | None = None) -> list[tuple[float | None, float, dict[str, Any]]]:
    """(onset, time, evidence) of the cost shifts found; ``cold``: every cut's baseline computed afresh
    each minute; ``reset_at``: a declared change (``reset``) before that minute."""
    out = []
    for m in mins:
        if m.minute == T0 + 60 * (reset_at if reset_at is not None else -1):
            shift.reset()
        if cold:
            shift._bases.clear()
        out += [(f.onset, f.time, f.evidence) for f in shift.step(m)]
    return out


def test_cost_shift_kept_baselines_give_what_a_cold_computation_gives() -> None:
    """Each cut's baseline is summarised once and kept for the windows that end there: the same
    findings (onsets, evidence to the last digit) as computing every baseline afresh each minute."""
    p = spec.CostShiftParams()
    for seed in range(3):
        mins = _costly_minutes(seed, 240, {70: 3.0, 110: 1.0, 180: 4.0})
        kept = _shifts(detectors.CostShift(p), mins)
        assert len(kept) >= 2
        assert kept == _shifts(detectors.CostShift(p), mins, cold=True)


def test_cost_shift_keeps_no_baseline_across_a_declared_change() -> None:
    """A declared change starts the history over: what follows it is judged as by a detector that
    never saw what came before (no baseline kept from before the change, though its cuts are recent)."""
    p = spec.CostShiftParams()
    mins = _costly_minutes(1, 120, {60: 5.0})
    assert _shifts(detectors.CostShift(p), mins)  # without the reset, the rise is a shift
    after = _shifts(detectors.CostShift(p), mins, reset_at=60)
    assert after == _shifts(detectors.CostShift(p), mins[60:]) == []


def test_cost_shift_screens_out_only_windows_it_could_not_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window whose cost per task did not reach ``ratio`` skips the full test (the baseline's noise):
    the same findings as running the full test on every window."""
    p = spec.CostShiftParams()
    runs = [_costly_minutes(seed, 240, {70: 3.0, 110: 1.0, 180: 2.2}) for seed in range(4)]
    screened = [_shifts(detectors.CostShift(p), mins) for mins in runs]
    monkeypatch.setattr(detectors.CostShift, "_task_rose", lambda self, cut, found: True)
    assert screened == [_shifts(detectors.CostShift(p), mins) for mins in runs]
    assert sum(len(found) for found in screened) >= 4


def _rose_in_full(shift: detectors.CostShift, cut: int) -> bool:
    """Whether the window from ``cut`` reached ``ratio``, with the means worked out (no bound)."""
    from fleetwarden.core import evidence

    post = shift._columns("task", cut)
    base = evidence.level_of(*shift._columns("task", cut - detectors.SHIFT_BASELINE_MINUTES * series.MINUTE, cut))
    return (len(post[0]) >= detectors.SHIFT_MIN_OBSERVATIONS and base is not None
            and math.exp(evidence.shift_of(*post, base)[1]) >= shift.p.ratio * (1 - 1e-9))


@pytest.mark.parametrize("seed", range(3))
def test_cost_shift_bounds_answer_as_the_means_do_at_the_edge_of_ratio(seed: int) -> None:
    """The bounds that screen a window before its means are worked out (its largest observation against
    the baseline's smallest, then against its level) say "not reached" only where the means say so:
    windows just under, at and just over ``ratio``, a lone tall observation, weights of every size, and
    the same baseline asked again once its level is known."""
    import random

    from fleetwarden.core import evidence

    rng = random.Random(seed)
    minute = series.MINUTE
    ratio = 2.0
    answers = []
    for case in range(400):
        shift = detectors.CostShift(spec.CostShiftParams(ratio=ratio))
        cut = (1000 + 100 * case) * minute
        n_base, n_post = rng.randint(1, 60), rng.randint(5, 30)
        base_xs = [rng.gauss(-4.0, rng.choice((0.0, 0.05, 0.4))) for _ in range(n_base)]
        base_us = [rng.choice((1.0, 1.0, 2.0, 7.5)) for _ in range(n_base)]
        level = evidence.level_of(base_xs, base_us, [math.sqrt(u) for u in base_us])
        mean = level.mean if level is not None else -4.0
        edge = mean + math.log(ratio) + rng.choice((-1e-3, -1e-9, 0.0, 1e-12, 1e-9, 1e-3, 0.5))
        kind = rng.choice(("flat", "noisy", "tall"))
        post_xs = ([edge] * n_post if kind == "flat" else
                   [edge + rng.gauss(0, 0.2) for _ in range(n_post)] if kind == "noisy" else
                   [mean] * (n_post - 1) + [edge])
        post_us = [rng.choice((1.0, 3.0)) for _ in range(n_post)]
        times = [cut - (n_base - i) * minute for i in range(n_base)] + [cut + i * minute for i in range(n_post)]
        xs, us = base_xs + post_xs, base_us + post_us
        shift._times["task"], shift._xs["task"], shift._us["task"] = times, xs, us
        shift._roots["task"] = [math.sqrt(u) for u in us]
        expected = _rose_in_full(shift, cut)
        found = detectors._Baseline(cut)
        assert shift._task_rose(cut, found) == expected, (case, kind)
        found.task_level(shift)  # the level known: the second bound
        assert shift._task_rose(cut, found) == expected, (case, kind)
        answers.append(expected)
    assert 40 < sum(answers) < 360  # both answers, many times each


@pytest.mark.parametrize(("seed", "expected"), [
    (2, [(69, 89, "task", 2.6198, 10.05, 0.6422), (139, 149, "call", 3.9502, 19.19, 0.5335)]),
    (3, [(70, 80, "call", 2.9776, 9.63, 0.6579), (141, 151, "task", 3.7671, 16.05, 0.6434)]),
    (5, [(66, 86, "task", 3.0587, 18.96, 0.6022), (140, 150, "call", 4.741, 17.74, 0.5749)]),
])
def test_cost_shift_findings_of_fixed_streams(seed: int, expected: list[tuple[Any, ...]]) -> None:
    """A shift that ends (its last ten minutes back under ratio ** NULL_SHARE times its baseline) and
    another soon after, judged against the minutes since the end: onsets, times and evidence as the
    detector gave them before its speed-ups (commit 05b0ecc), to the digit."""
    found = [((onset - T0) // 60, (t - T0) // 60, e["basis"], e["ratio"], e["log_likelihood_ratio"], e["log_sd_task"])
             for onset, t, e in _shifts(detectors.CostShift(spec.CostShiftParams()),
                                        _costly_minutes(seed, 200, {70: 3.0, 110: 1.0, 140: 4.0}))]
    assert found == expected


# ---------------------------------------------------------------- runaway_loop: one task's baseline, kept


class _Unkept(detectors.TaskRunaway):
    """The detector summing its baseline afresh at every judgement (the reference)."""

    def _judge(self, m: series.AgentMinute, track: Any, task_id: str | None) -> list:
        self._base = None
        return super()._judge(m, track, task_id)


def _task_fleet(rng: Any, n: int) -> list[series.AgentMinute]:
    """Minutes of an agent whose short tasks come and go, while now and then one task burns for long
    (its tokens rising most minutes, sometimes flat), and its largest and oldest readings swap."""
    out: list[series.AgentMinute] = []
    start, tokens, burning = T0 - 60, 0, 0
    for i in range(n):
        t = T0 + 60 * i
        if burning:
            burning -= 1
            tokens += rng.choice((0, 4_000, 9_000, 20_000)) if rng.random() < 0.9 else 0
        elif rng.random() < 0.02:  # a task begins to burn, for 20 minutes to over three hours
            start, tokens, burning = t - 60 * rng.randrange(0, 3), 1_000, rng.randrange(20, 200)
        elif rng.random() < 0.5:  # another short task
            start, tokens = t - 60 * rng.randrange(0, 2), rng.randrange(100, 2_000)
        else:
            tokens += rng.randrange(0, 300)
        age = float(t + 60 - start)
        other = (rng.randrange(100, 1_000), float(rng.randrange(30, 600)), "t-other")
        mine = (tokens, age, f"t-{start}")
        largest, oldest = (mine, other) if rng.random() < 0.85 else (other, mine)
        out.append(minute(i, tokens=rng.randrange(500, 3_000), tasks_completed=rng.randrange(0, 3),
                          llm_calls=3, open_tasks=2,
                          largest_task_tokens=largest[0], largest_task_age=largest[1], largest_task_id=largest[2],
                          oldest_task_tokens=oldest[0], oldest_task_age=oldest[1], oldest_task_id=oldest[2]))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_burning_tasks_kept_baseline_finds_what_a_fresh_sum_finds(seed: int) -> None:
    """TaskRunaway keeps the last task's baseline sums while that task burns; the same findings as
    summing it at every judgement, through new tasks, swapped readings and rows dropped from the
    front (kept rows cut to 90 minutes, so a burning task outlives its baseline's first row)."""
    import random

    p = spec.AnomalyParams().runaway_loop.model_copy(update={"window_minutes": 3})
    kept, fresh = detectors.TaskRunaway(p), _Unkept(p)
    kept._keep = fresh._keep = 90 * 60
    found_kept, found_fresh = [], []
    for m in _task_fleet(random.Random(seed), 900):
        found_kept += kept.step(m)
        found_fresh += fresh.step(m)
    assert found_kept == found_fresh
    assert found_fresh  # the fleet does burn


def test_the_kept_baselines_fleet_burns_across_seeds() -> None:
    """The corpus above reaches the cases it is for: judgements of one start that outlive the
    baseline's first row, and many starts."""
    import random

    p = spec.AnomalyParams().runaway_loop.model_copy(update={"window_minutes": 3})
    refreshed = 0
    for seed in range(6):
        d = detectors.TaskRunaway(p)
        d._keep = 90 * 60
        for m in _task_fleet(random.Random(seed), 900):
            before = d._base
            d.step(m)
            if before is not None and d._base is not None and d._base[0] == before[0] and d._base[1] != before[1]:
                refreshed += 1
    assert refreshed > 0


def test_a_baselines_computed_values_are_made_once_and_never_wait_on_another_baselines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cost_shift's baselines compute their level once, on first use; two baselines computing at once
    in two threads (the operator's evaluation threads) do not wait for each other, as they did
    behind functools.cached_property's one lock per class in Python 3.11."""
    import threading

    from fleetwarden.core import evidence

    both = threading.Barrier(2, timeout=10)
    made: list[int] = []

    def level_of(xs: list[float], us: list[float], roots: list[float]) -> evidence.Level:
        both.wait()  # the other thread is computing its own at the same time
        made.append(len(xs))
        return evidence.Level(units=float(len(xs)), mean=0.0, scale=1.0)

    monkeypatch.setattr(evidence, "level_of", level_of)
    shift = detectors.CostShift(spec.CostShiftParams())
    minute = series.MINUTE
    cut = 10_000 * minute
    shift._times["task"] = [cut - 3 * minute, cut - 2 * minute, cut - minute, cut]
    shift._xs["task"], shift._us["task"], shift._roots["task"] = [1.0] * 4, [1.0] * 4, [1.0] * 4
    a, b = detectors._Baseline(cut), detectors._Baseline(cut - minute)  # 3 and 2 observations before
    errors: list[BaseException] = []

    def read(x: detectors._Baseline) -> None:
        try:
            found = x.task_level(shift)
            assert found is not None and found.units == (3 if x is a else 2)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(made) == [2, 3]
    again = a.task_level(shift)
    assert again is not None and again.units == 3 and len(made) == 2  # kept: not made again
