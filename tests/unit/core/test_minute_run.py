"""The compact run of kept minutes (``series.MinuteRun``): what the operator's fetcher keeps of
every agent's lookback between fetches. Reading it must give back, field for field, the
minutes it was made of; its digest must tell any change of any field.

The minutes are those of the independent generator (``core/fleetgen.py``) bucketed as replay
buckets them (tool maps, versions, workflows, task readings), on a seed used nowhere else.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from types import MappingProxyType

import bucketed
import pytest

from fleetwarden.core import fleetgen, series

FLEET = bucketed.agent_minutes(seed=4417, agents=len(fleetgen.SHAPES), hours=1.0)
FIELDS = [f.name for f in dataclasses.fields(series.AgentMinute)]


def _run(ms: Sequence[series.AgentMinute]) -> series.MinuteRun:
    return series.MinuteRun.of(ms[0].agent, ms[0].namespace, ms)


def _fields(m: series.AgentMinute) -> list[tuple[str, object, type]]:
    return [(name, getattr(m, name), type(getattr(m, name))) for name in FIELDS]


def test_a_run_reads_back_every_minute_field_for_field() -> None:
    tools = False
    for ms in FLEET.values():
        run = _run(ms)
        assert len(run) == len(ms)
        back = list(run)
        assert back == ms
        for got, want in zip(back, ms, strict=True):
            assert [(n, v) for n, v, _ in _fields(got)] == [(n, v) for n, v, _ in _fields(want)]
            # an int stays an int, a None stays None; a float field reads as a float
            for (name, value, kind), (_, original, original_kind) in zip(_fields(got), _fields(want), strict=True):
                if original_kind is int and name not in ("inference_cost_usd", "tool_cost_usd", "human_cost_usd",
                                                         "outcomes", "largest_task_age", "oldest_task_age"):
                    assert kind is int, name
                if original is None:
                    assert value is None, name
            assert isinstance(got.tool_calls, MappingProxyType) and isinstance(got.tool_costs, MappingProxyType)
            tools = tools or bool(want.tool_calls)
        assert [run[i] for i in range(len(run))] == ms and run[-1] == ms[-1]
    assert tools  # the fleet had minutes with tool calls


def test_quiet_minutes_take_small_rows_and_share_their_names() -> None:
    quiet = [series.AgentMinute("bot", "shop", 60 * i, inference_cost_usd=0.002, llm_calls=2, model="gpt-4o-mini",
                                workflow="support") for i in range(1, 91)]
    run = _run(quiet)
    rests = run._rests
    # a row each: layout, minute, a cost (0.002 needs 8 bytes), a count (4 hold it)
    assert len(run._blob) == len(quiet) * (4 + 4 + 8 + 4)
    assert len({id(r) for r in rests}) == 1  # one shared tuple of names
    kept_whole = sum(sys.getsizeof(m) for m in quiet)
    # the rows in one bytes, their offsets, a reference to the rest each
    assert sys.getsizeof(run._blob) + sys.getsizeof(run._offsets) + sys.getsizeof(rests) < kept_whole / 5


@pytest.mark.parametrize(("fields", "row"), [
    ({"llm_calls": 2**31 - 1, "tokens": -(2**31)}, 4 + 4 + 4 + 4),  # ints a 4-byte int holds
    ({"llm_calls": 2**31, "tokens": -(2**31) - 1}, 4 + 4 + 8 + 8),  # just past it
    ({"inference_cost_usd": 0.5, "outcomes": 3}, 4 + 4 + 4 + 4),  # floats a 4-byte float holds (3 reads as 3.0)
    ({"inference_cost_usd": 0.1, "outcomes": 2**25 + 1}, 4 + 4 + 8 + 8),  # floats it does not
    ({"tool_cost_usd": 1e39, "human_cost_usd": float("inf")}, 4 + 4 + 8 + 4),  # past its range; infinity
    ({"minute": 2**32}, 4 + 8),  # a minute past 4 bytes
    ({"minute": -60}, 4 + 8),
])
def test_a_row_holds_each_number_in_4_bytes_when_they_hold_it_exactly(fields: dict[str, object], row: int) -> None:
    m = dataclasses.replace(series.AgentMinute("bot", "shop", 60), **fields)  # type: ignore[arg-type]
    run = _run([m, dataclasses.replace(m)])
    assert len(run._blob) == 2 * row and run._rests[0] is not m  # packed, not kept whole
    back = run[0]
    assert back == m and run.minute_at(0) == m.minute == run[1].minute
    for name, value in fields.items():
        assert type(getattr(back, name)) is (float if name in ("inference_cost_usd", "tool_cost_usd", "human_cost_usd",
                                                             "outcomes") else int), name
        assert getattr(back, name) == value
    assert run.digest(1) == _run([dataclasses.replace(m)]).digest(1)  # equal minutes, equal rows


@pytest.mark.parametrize("odd", [
    {"tokens": 2.5},  # a float where the field is an int
    {"tokens": 2**70},  # an int past 64 bits
    {"inference_cost_usd": 2**60 + 1},  # an int a double does not hold exactly
    {"agent": "someone-else"},  # another agent's minute
])
def test_a_minute_a_row_cannot_hold_exactly_is_kept_as_it_is(odd: dict[str, object]) -> None:
    ms = [series.AgentMinute("bot", "shop", 60 * i, llm_calls=i) for i in range(1, 6)]
    ms[2] = dataclasses.replace(ms[2], **odd)  # type: ignore[arg-type]
    run = series.MinuteRun.of("bot", "shop", ms)
    assert run[2] is ms[2]
    assert list(run) == ms
    assert run.minute_at(2) == ms[2].minute


def test_slices_between_and_joins_are_runs_of_the_same_minutes() -> None:
    ms = max(FLEET.values(), key=len)
    run = _run(ms)
    first, last = ms[0].minute, ms[-1].minute
    mid = first + 60 * (len(ms) // 2)
    assert run.between(first, mid) == [m for m in ms if m.minute < mid]
    assert run.between(mid, last + 60) == [m for m in ms if m.minute >= mid]
    assert run.between(first, mid) + run.between(mid, last + 60) == run
    assert isinstance(run[3:9], series.MinuteRun) and run[3:9] == ms[3:9]
    assert run.first_at(mid) == next(i for i, m in enumerate(ms) if m.minute >= mid)
    assert run.index(ms[3]) == ms.index(ms[3])  # a Sequence's own index: where a minute stands
    assert [run.minute_at(i) for i in range(len(run))] == [m.minute for m in ms]
    assert list(series.since(run, mid)) == list(series.since(ms, mid)) == [m for m in ms if m.minute >= mid]
    other = series.MinuteRun("other", ms[0].namespace)
    with pytest.raises(TypeError):
        run + other


def test_equal_minutes_give_equal_digests_and_any_changed_field_another() -> None:
    for ms in FLEET.values():
        run = _run(ms)
        again = _run([dataclasses.replace(m) for m in ms])  # the same minutes, read again
        assert again == run
        assert all(again.digest(n) == run.digest(n) for n in range(len(ms) + 1))
        assert len({run.digest(n) for n in range(len(ms) + 1)}) == len(ms) + 1
    ms = max(FLEET.values(), key=lambda ms: sum(bool(m.tool_calls) for m in ms))
    i = next(i for i, m in enumerate(ms) if m.tool_calls)
    changes: dict[str, object] = {
        "minute": ms[i].minute + 1, "model": "another", "version": "v-other", "workflow": "other",
        "tool_calls": MappingProxyType({**ms[i].tool_calls, "x.tool": 1.0}),
        "tool_costs": MappingProxyType({"x.tool": 0.5}),
        "largest_task_id": "t-other", "oldest_task_id": "t-other",
        "open_tasks": 99, "largest_task_tokens": 99, "oldest_task_tokens": 99,
        "largest_task_age": 9.5, "oldest_task_age": 9.5,
    }
    for name in FIELDS:
        if name in ("agent", "namespace"):
            continue
        value = changes.get(name)
        if value is None:
            old = getattr(ms[i], name)
            value = old + 1 if isinstance(old, (int, float)) else 1
        changed = [*ms[:i], dataclasses.replace(ms[i], **{name: value}), *ms[i + 1:]]
        other = _run(changed)
        assert other != _run(ms), name
        assert other.digest(i + 1) != _run(ms).digest(i + 1), name
        assert other.digest(i) == _run(ms).digest(i), name  # the minutes before it are the same


def test_the_hours_figures_and_the_guardrails_read_a_run_as_they_read_a_list() -> None:
    from fleetwarden.core import decision, figures, guardrails, spec

    compared = 0
    for (namespace, agent), ms in FLEET.items():
        policy = spec.CostPolicy.model_validate({
            "apiVersion": spec.API_VERSION, "kind": "CostPolicy", "metadata": {"name": "p", "namespace": namespace},
            "spec": {"rateLimits": {"toolCallsPerMinute": 5}}})
        end = ms[-1].minute + 60
        deployment = decision.AgentDeployment(name=agent, namespace=namespace, labels={}, replicas=1)
        as_run = figures._minute_figures({agent: _run(ms)}, end, None, None)
        assert as_run == figures._minute_figures({agent: ms}, end, None, None)
        found = guardrails.agent_findings(deployment, _run(ms), {}, [policy])
        assert found == guardrails.agent_findings(deployment, ms, {}, [policy])
        compared += bool(found)
    assert compared  # some agent went past the rate limit


def test_slices_share_the_runs_rows_and_read_joins_digests_as_lists_do() -> None:
    """A slice of a slice, a join of slices from the middle of two runs, a minute kept whole among
    rows, negative positions: each reads as the same list of minutes would, and digests agree with
    a run made afresh of those minutes."""
    ms = max(FLEET.values(), key=len)
    ms = [*ms[:5], dataclasses.replace(ms[5], tokens=2.5), *ms[6:]]  # type: ignore[arg-type]  # kept whole
    run = _run(ms)
    assert run[5] is ms[5]
    inner = run[2:-2][1:-1]
    assert inner == ms[3:-3] and len(inner) == len(ms) - 6
    assert inner._blob is run._blob  # a slice copies no row
    assert inner[-1] == ms[-4] and inner.minute_at(-1) == ms[-4].minute and inner[0] == ms[3]
    with pytest.raises(IndexError):
        inner[len(inner)]
    with pytest.raises(IndexError):
        inner.minute_at(-len(inner) - 1)
    joined = run[4:9] + run[12:20]
    assert list(joined) == ms[4:9] + ms[12:20]
    fresh = _run(ms[4:9] + ms[12:20])
    assert joined == fresh
    assert [joined.digest(n) for n in range(len(fresh) + 1)] == [fresh.digest(n) for n in range(len(fresh) + 1)]
    assert run[3:3] == [] and len(run[7:2]) == 0 and list(run[3:3] + run[3:6]) == ms[3:6]
    assert run[2:9].digest(4) == _run(ms[2:6]).digest(4)


def _long(n: int) -> list[series.AgentMinute]:
    """``n`` minutes of one agent: the fleet's longest, again and again, each time later."""
    ms = max(FLEET.values(), key=len)
    span = ms[-1].minute - ms[0].minute + 60
    return [dataclasses.replace(ms[i % len(ms)], minute=ms[i % len(ms)].minute + span * (i // len(ms)))
            for i in range(n)]


def test_a_run_ending_where_its_rows_do_takes_added_rows_in_place_and_no_other_run_changes() -> None:
    """The fetcher's join: the kept run (ending where its buffer does) plus the new minutes is a
    run over the same buffer, the new rows after the old; the kept run, its slices and anything
    read from them are unchanged. A run that does not end there, or one with many rows before its
    first, gives a copy."""
    ms = _long(120)
    kept = _run(ms[:40])
    slice_ = kept[5:30]
    before = (list(kept), list(slice_), kept.digest(len(kept)), slice_.digest(len(slice_)))
    grown = kept[3:] + _run(ms[40:45])
    assert grown._blob is kept._blob  # in place: no row copied
    assert grown == ms[3:45] and [grown.digest(n) for n in range(len(grown) + 1)] == \
        [_run(ms[3:45]).digest(n) for n in range(len(grown) + 1)]
    assert (list(kept), list(slice_), kept.digest(len(kept)), slice_.digest(len(slice_))) == before
    # the old run no longer ends where the buffer does: adding to it again copies
    other = kept + _run(ms[40:42])
    assert other._blob is not kept._blob and other == ms[:42] and grown == ms[3:45]
    again = grown + _run(ms[45:50])  # the grown one still ends there
    assert again._blob is kept._blob and again == ms[3:50]
    assert (slice_ + _run(ms[30:31]))._blob is not kept._blob  # a slice ending before the last row
    # many minutes dropped from the front since the buffer was made: a copy of the run's own rows
    far = again[45:]  # 48 rows before it
    copied = far + _run(ms[50:51])
    assert copied._blob is not kept._blob and copied == ms[48:51]
    assert len(copied._blob) == len(_run(ms[48:51])._blob)


def test_a_run_with_many_rows_dropped_before_it_copies_its_own_into_a_new_buffer() -> None:
    ms = _long(120)
    run = _run(ms[:100])
    tail = run[64:]  # 64 rows before it: past the most a run adds in place with (47)
    added = tail + _run(ms[100:102])
    assert added._blob is not run._blob and added == ms[64:102]
    assert added._lo == 0 and len(added._rests) == len(added) and added._offsets[0] == 0
    assert len(added._blob) == len(_run(ms[64:102])._blob)
    near = run[10:] + _run(ms[100:102])  # 10 rows before it: in place
    assert near._blob is run._blob and near == ms[10:102]


def test_first_at_is_the_bisection_with_or_without_gaps_and_starts_off_the_minute() -> None:
    """Whatever the gaps and wherever ``start`` and ``lo`` fall (before, inside, after the run, off
    the minute), ``first_at`` is the position a bisection of the minutes gives."""
    import bisect
    import random

    rng = random.Random(11)
    for trial in range(200):
        minutes, m = [], 60 * rng.randrange(1000)
        for _ in range(rng.randrange(0, 40)):
            m += 60 * (1 if trial % 3 == 0 or rng.random() < 0.8 else rng.randrange(2, 6))
            minutes.append(m)
        run = series.MinuteRun.of("bot", "shop", [series.AgentMinute("bot", "shop", t, llm_calls=1) for t in minutes])
        lo_first = minutes[0] if minutes else 0
        for start in [lo_first - 61, lo_first, *(rng.randrange(lo_first - 120, lo_first + 60 * 50) for _ in range(20))]:
            for lo in (0, rng.randrange(0, len(minutes) + 2)):
                want = bisect.bisect_left(minutes, start, lo) if lo <= len(minutes) else lo
                assert run.first_at(start, lo) == want, (minutes, start, lo)
