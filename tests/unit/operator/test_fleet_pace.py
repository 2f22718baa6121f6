"""The fleet loop's pace (FLEETWARDEN_PACE): each budget evaluated at the same point of every
cycle, and the next cycle started early enough that no budget waits longer than the interval,
on a fleet whose cycles differ in cost as the operator's do at 10,000 budgets (one costlier
cycle a minute). The clock is a fake one that the evaluations and the loop's waits move; the
pool runs each evaluation as it is submitted (one worker)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from test_fleet_loop import run_until
from test_runtime_cycle import CountingFetcher, FakeKube, body, deployment, make

from fleetwarden.handlers import fleet, runtime

INTERVAL = 15.0


class InlinePool(cf.Executor):
    """Runs each submitted call at once, in the submitting thread: one worker, no races on the fake clock."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the future, as a pool does
            future.set_exception(exc)
        return future


def item(uid: str) -> fleet.Item:
    return fleet.Item({"metadata": {"namespace": "shop", "name": uid, "uid": uid}}, [], [], [])


class Fleet:
    """``n`` budgets evaluated by a FleetLoop on a fake clock; each evaluation costs what ``costs``
    says for its cycle and its place in the cycle's order. Records each budget's wait between two
    evaluations (end to end, as the operator's ``oldest_evaluation`` reads them) and when each
    evaluation began in its cycle."""

    def __init__(self, n: int, pace: float, costs: Callable[[int, int], float]) -> None:
        self.now = 1000.0
        self.costs = costs
        self.last: dict[str, float] = {}  # uid -> when its last evaluation ended
        self.waits: list[tuple[int, float]] = []  # (cycle, wait)
        self.began: list[tuple[int, float]] = []  # (place in the cycle's order, seconds into the cycle)
        self.items = [item(f"b{i:04d}") for i in range(n)]
        self.loop = fleet.FleetLoop(self.evaluate, interval=INTERVAL, workers=1, new_cycle=lambda: None,
                                    ready=threading.Event(), pace=pace, last_evaluated=self.last_evaluated,
                                    monotonic=lambda: self.now, sleep=self.sleep)
        self.loop.pool.shutdown()
        self.loop.pool = InlinePool()
        self.started = self.now
        self.order: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def last_evaluated(self, it: fleet.Item) -> float | None:
        return self.last.get(it.budget["metadata"]["uid"])

    def evaluate(self, it: fleet.Item) -> None:
        uid = it.budget["metadata"]["uid"]
        self.order.append(uid)
        self.began.append((len(self.order) - 1, self.now - self.started))
        self.now += self.costs(self.loop.cycles, len(self.order) - 1)
        if uid in self.last:
            self.waits.append((self.loop.cycles, self.now - self.last[uid]))
        self.last[uid] = self.now

    def run(self, cycles: int) -> list[float]:
        """``cycles`` cycles started as ``FleetLoop.run`` starts them; returns each cycle's start."""
        starts = []
        try:
            for _ in range(cycles):
                self.started, self.order, self.began = self.now, [], []
                starts.append(self.now)
                result = self.loop.cycle(self.items)
                self.now = max(self.now, self.started + INTERVAL - result.early)
        finally:
            self.loop.stopping.set()
            self.loop.driver.shutdown()
        return starts


def minute(cycle: int, place: int = 0) -> float:
    """Seconds an evaluation costs in cycle ``cycle`` (0 the first pass): one cycle in four costlier,
    as a minute's at 10,000 budgets (4 s and 9 s a cycle of 1,000 unpaced)."""
    return 0.009 if cycle % 4 == 2 else 0.004


def test_unpaced_a_costlier_cycle_makes_budgets_wait_longer_than_the_interval() -> None:
    """The fault the pace mends: all at once, a budget late in a costly cycle after a cheap one
    waits the interval plus their difference (15 + 9 - 4 s for the last)."""
    f = Fleet(1000, pace=0.0, costs=minute)
    f.run(12)
    assert max(wait for _, wait in f.waits) == pytest.approx(INTERVAL + 9 - 4, abs=0.05)


def test_paced_no_budget_waits_longer_than_the_interval() -> None:
    f = Fleet(1000, pace=0.7, costs=minute)
    starts = f.run(24)
    waits = [wait for cycle, wait in f.waits if cycle > 4]  # once a costly cycle has been seen
    assert max(waits) <= INTERVAL
    # ... for few more cycles: the costly cycle's lateness foreseen, not half an interval every time
    periods = [b - a for a, b in itertools.pairwise(starts[1:])]
    assert min(periods) >= INTERVAL - 1.0
    assert sum(periods) / len(periods) >= INTERVAL - 0.6


def test_paced_a_cycle_that_cannot_keep_up_is_foreseen_after_it_is_seen_once() -> None:
    """A costly cycle slower than the pace (13 s of work against 10.5 s of turns) makes its later
    budgets late; once it has been seen, the cycles before it start early enough."""
    f = Fleet(1000, pace=0.7, costs=lambda c, k: 0.013 if c % 4 == 2 else 0.004)
    f.run(24)
    waits = [wait for cycle, wait in f.waits if cycle > 4]
    assert max(waits) <= INTERVAL
    first = max(wait for cycle, wait in f.waits if cycle <= 3)  # the first costly cycle, not yet foreseen
    assert first > INTERVAL


def test_paced_a_minute_further_behind_than_the_two_before_it_is_foreseen() -> None:
    """As the operator's minutes do at 10,000 live budgets: one cycle in four falls behind in one
    stretch of its order (there the fetch of a new minute ends and its folds begin), and where and
    how far changes from one minute to the next: a third of them 2 s behind, the others about half
    a second, each at another point of the order. Once the first has been seen, no budget waits
    longer than the interval. (Foreseeing from the last 8 cycles, two minutes, the minute 2 s
    behind after two of half a second made budgets wait 16.2 s.)"""

    def costs(cycle: int, place: int) -> float:
        if cycle % 4 != 2:
            return 0.004
        minute = cycle // 4
        start = 150 + 250 * (minute % 3)
        if not start <= place < start + 100:
            return 0.004
        return 0.03 if minute % 3 == 0 else 0.015

    f = Fleet(1000, pace=0.7, costs=costs)
    f.run(40)
    behind = max(wait for cycle, wait in f.waits if cycle == 2)  # the first, not foreseen
    assert behind > INTERVAL + 1.5
    assert max(wait for cycle, wait in f.waits if cycle > 2) <= INTERVAL


def test_each_budget_is_submitted_no_sooner_than_its_turn_and_keeps_its_place() -> None:
    f = Fleet(200, pace=0.5, costs=lambda c, k: 0.001)
    f.run(1)  # the first pass: every budget new, all at once
    assert f.began[-1][1] == pytest.approx(0.199)
    f.loop.stopping.clear()
    f.loop.driver = cf.ThreadPoolExecutor(1)
    f.run(1)
    first = list(f.order)
    assert f.began[0][1] == 0.0
    for k, second in f.began:
        assert second >= 0.5 * INTERVAL * k / 200 - 1e-9
    assert f.began[-1][1] == pytest.approx(0.5 * INTERVAL * 199 / 200)
    f.loop.stopping.clear()
    f.loop.driver = cf.ThreadPoolExecutor(1)
    f.last["b0100"] = f.now + 1  # evaluated meanwhile (a spec edit): it goes last
    f.items = [*f.items, item("new")]  # a budget never evaluated: first, at once, taking no turn
    f.run(1)
    assert f.order == ["new", *(uid for uid in first if uid != "b0100"), "b0100"]
    assert f.began[0][1] == 0.0 and f.began[1][1] == pytest.approx(0.001)  # the first paced one: no wait
    assert f.began[-1][1] == pytest.approx(0.5 * INTERVAL * 199 / 200)  # the 200 paced as before


@pytest.mark.parametrize(("share", "seconds", "early"), [(0.0, 5.0, 0.0), (0.7, 16.0, 0.0)])
def test_no_pace_or_a_cycle_longer_than_the_interval_starts_nothing_early(share: float, seconds: float,
                                                                          early: float) -> None:
    pace = fleet.Pace(INTERVAL, share)
    ended = [(k, 100.0 + seconds * (k + 1) / 10) for k in range(10)]
    assert pace.early(100.0, 10, ended, over=seconds > INTERVAL) == early


def test_the_next_cycle_is_never_started_more_than_half_an_interval_early() -> None:
    pace = fleet.Pace(INTERVAL, 0.7)
    slow: Sequence[tuple[int, float]] = [(k, 100.0 + 14.0) for k in range(10)]  # all ended 14 s in
    pace.early(100.0, 10, slow, over=False)
    quick = [(k, 200.0 + pace.turn(k, 10)) for k in range(10)]  # each ended at its turn
    assert pace.early(200.0, 10, quick, over=False) == 0.5 * INTERVAL


def test_the_cycle_line_says_how_early_the_next_starts() -> None:
    line = fleet.cycle_line(7, 10000, 0, 11.04, 1795827642.5, "same_minute", 3.21, 0.456)
    assert line.endswith("its fetch ended 3.2s in; the next starts 0.46s early")
    read = fleet.CYCLE_LINE.search(line)
    assert read is not None and read["early"] == "0.46" and read["fetch"] == "3.2"


def test_with_a_prefetch_the_loop_fetches_between_cycles_and_no_cycle_makes_its_data_due() -> None:
    """The fleet loop with a pace fetches the next cycle's data as a cycle ends (on a thread of its
    own), so the cycle neither waits for the fetch nor shares the interpreter with its reading;
    only the first cycle, with nothing fetched before it, makes the snapshot due itself."""
    calls: list[str] = []
    ready = threading.Event()
    ready.set()
    loop = fleet.FleetLoop(lambda it: calls.append("evaluate"), interval=0.001, workers=1,
                           new_cycle=lambda: calls.append("new_cycle"), ready=ready, pace=0.5,
                           prefetch=lambda: calls.append("prefetch"))
    run_until(loop, ({"shop": [item("b0").budget]}, {}, {}, {}),
              lambda: loop.cycles >= 3 and calls.count("prefetch") >= 2)
    assert calls[:2] == ["new_cycle", "evaluate"] and calls.count("new_cycle") == 1


def test_the_runtime_s_prefetch_fetches_once_for_the_evaluations_after_it_and_never_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    fetcher, k = CountingFetcher(), FakeKube()
    rt = make(fetcher, k)
    rt.prefetch()
    assert fetcher.fetches == 1
    for i in range(3):
        rt.reconcile(body(i), [deployment(i)])
    assert fetcher.fetches == 1  # the evaluations read what the prefetch fetched
    failing = make(CountingFetcher(fail=True), FakeKube())
    with caplog.at_level(logging.WARNING):
        failing.prefetch()  # Prometheus down: logged, kept for the evaluations, not raised
    assert "connection refused" in caplog.text
    verdict = failing.reconcile(body(0), [deployment(0)])
    assert failing.fetcher.fetches == 1 and verdict is not None  # type: ignore[union-attr]


def test_a_cycle_starts_when_the_pace_says_while_its_data_is_still_read_and_no_reading_queues_up() -> None:
    """Each cycle here starts half an interval after the one before (the pace's early start). The
    first reading of the next cycle's data does not end until the test says: the cycles go on
    starting on time meanwhile (their budgets go on with the last snapshot), and none asks for
    another reading while that one is under way, so the readings never queue up behind a slow
    Prometheus. Once it ends, the next cycle's end asks for the next."""
    interval = 1.0
    starts: list[float] = []
    released = threading.Event()
    readings: list[float] = []

    def prefetch() -> None:
        readings.append(time.monotonic())
        if len(readings) == 1:
            released.wait(30)

    ready = threading.Event()
    ready.set()
    loop = fleet.FleetLoop(lambda it: starts.append(time.monotonic()), interval=interval, workers=1,
                           new_cycle=lambda: None, ready=ready, pace=0.5, prefetch=prefetch)
    loop.pace.early = lambda *args, **kwargs: interval / 2  # type: ignore[method-assign]

    async def main() -> tuple[int, int, int]:
        task = asyncio.create_task(loop.run({"shop": [item("b0").budget]}, {}, {}, {}))
        while not starts:
            await asyncio.sleep(0.01)
        first = starts[0]

        async def at(share: float) -> None:
            await asyncio.sleep(max(0.0, first + share * interval - time.monotonic()))

        await at(1.75)  # cycles began at 0, 0.5, 1.0 and 1.5 intervals, the first reading still under way
        begun, asked = len(starts), len(readings)
        released.set()
        await at(2.75)  # and at 2.0 and 2.5: their ends asked for readings again
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return begun, asked, len(readings)

    try:
        begun, asked, later = asyncio.run(main())
    finally:
        released.set()
    assert (begun, asked) == (4, 1)
    assert 2 <= later <= 3  # (queued up, the three asked for during the first would have run after it)


def test_the_waits_line_names_the_budget_that_waited_longest_and_what_made_its_wait_up() -> None:
    """Cycle at 200.0, the one before at 185.0; budget b3 ended 2.0 s into the last cycle and
    9.5 s into this one (its turn 6.3 s in, began 2.7 s after it, took 0.5 s): 22.5 s between its
    two evaluations, the longest. The others ended 0.2 s after their turns; one taken at once is
    in no tenth, but its evaluation was the longest."""
    pace = fleet.Pace(INTERVAL, 0.7)
    n = 5
    waits = [fleet.Wait(k, 200.0 + pace.turn(k, n), 200.0 + pace.turn(k, n) + 0.2, 186.0 + k, item(f"b{k}"))
             for k in range(n) if k != 3]
    waits.append(fleet.Wait(3, 209.0, 209.5, 187.0, item("b3")))
    waits.append(fleet.Wait(None, 200.0, 201.0, 170.0 + 20.0, item("fresh")))
    line = fleet.waits_line(9, waits, 200.0, 185.0, pace, n)
    assert line is not None
    assert line.startswith("cycle 9 waits: the longest 22.5s (shop/b3; this cycle started 15.0s after the one "
                           "before; its evaluation ended 2.0s into that one and 9.5s into this; its turn 6.3s in "
                           "(60% of the order), began 2.7s after it, took 0.5s)")
    assert "by tenth of the order: 0.2 - 0.2 - 0.2 - 3.2 - 0.2 - s" in line
    assert "(each tenth's turns span 1.05s): 0.20 0.00 0.20 0.00 0.20 0.00 0.50 0.00 0.20 0.00 s" in line
    assert line.endswith("; the longest evaluation 1.0s (shop/fresh)")
    assert fleet.waits_line(9, [], 200.0, 185.0, pace, n) is None


def test_the_waits_line_is_read_back() -> None:
    pace = fleet.Pace(INTERVAL, 0.7)
    line = fleet.waits_line(4, [fleet.Wait(0, 100.5, 101.0, 85.5, item("b0"))], 100.0, 86.0, pace, 1)
    read = fleet.WAITS_LINE.search(line or "")
    assert read is not None and (read["number"], read["longest"], read["budget"]) == ("4", "15.5", "shop/b0")
    assert (read["spacing"], read["before"], read["now"]) == ("14.0", "-0.5", "1.0")


def test_behind_its_turns_a_cycle_still_evaluates_its_budgets_in_order() -> None:
    """Four runners each take a budget and wait for its turn outside the gate (turns 15 ms apart).
    One evaluation takes 0.2 s, and the budgets after it fall behind their turns: the three
    runners holding the next ones are back, due, while it runs. Before, the runner that held the
    gate took the next budget once done, its turn passed too, and went on from budget to budget
    until one's turn was still to come, some ten budgets later: the three earlier budgets
    ended after all of those. Now a runner back at its turn is let in between two budgets, and
    every budget is evaluated within a few places of its own."""
    gate = runtime.Gate()
    evaluated: list[int] = []
    n, workers = 40, 4

    def evaluate(it: fleet.Item) -> None:
        k = int(it.budget["metadata"]["uid"][1:])
        time.sleep(0.2 if k == 5 else 0.001)  # (holding the gate: the evaluation's own work)
        evaluated.append(k)

    ready = threading.Event()
    loop = fleet.FleetLoop(evaluate, interval=1.2, workers=workers, new_cycle=lambda: None, ready=ready,
                           pace=0.5, gate=gate)
    try:
        loop.cycle([item(f"b{i:04d}") for i in range(n)])
    finally:
        loop.stopping.set()
        loop.pool.shutdown()
        loop.driver.shutdown()
    assert sorted(evaluated) == list(range(n))
    assert max(place - k for place, k in enumerate(evaluated)) <= workers, evaluated


def test_a_cycle_is_behind_while_its_budgets_are_reached_far_after_their_turns() -> None:
    """The runtime holds a large fleet's figure writes back while the fleet loop is behind
    (runtime.Runtime.behind): a budget reached more than BEHIND_SHARE of the interval after its
    turn. On time it is not, nor between cycles, nor once the runners are back at their turns."""
    slow = {1: range(40, 80), 2: range(160, 200)}  # these cost 0.2 s each, against turns 0.075 s apart
    f = Fleet(200, pace=1.0, costs=lambda c, k: 0.2 if k in slow.get(c, ()) else 0.001)
    seen: list[bool] = []
    evaluate = f.loop.evaluate

    def evaluate_seeing(it: fleet.Item) -> None:
        seen.append(f.loop.behind())
        evaluate(it)
    f.loop.evaluate = evaluate_seeing
    f.run(1)  # the first pass: every budget new, taken at once (no turn, never behind)
    assert not any(seen)
    f.loop.stopping.clear()
    f.loop.driver = cf.ThreadPoolExecutor(1)
    seen.clear()
    f.run(1)
    limit = fleet.BEHIND_SHARE * INTERVAL
    lateness = [f.began[k][1] - INTERVAL * k / 200 for k in range(200)]
    assert seen == [late > limit for late in lateness]  # each budget saw how late it was reached
    assert any(seen) and not seen[-1]  # behind in the slow stretch, back on time by the end
    f.loop.stopping.clear()
    f.loop.driver = cf.ThreadPoolExecutor(1)
    seen.clear()
    f.run(1)  # behind at its end
    assert seen[-1]
    assert not f.loop.behind()  # but not between cycles (an evaluation prompted by an edit writes as ever)


def test_the_budgets_held_longest_are_taken_first_the_oldest_first_and_no_more_than_the_limit() -> None:
    """FleetLoop.held_first: the budgets whose figures have waited longest past their turn go to the
    front of the order, the longest held first, at most HELD_FIRST of them and HELD_FIRST_SHARE of
    the cycle; the others keep their order."""
    held: dict[str, float] = {}
    loop = fleet.FleetLoop(lambda it: None, interval=INTERVAL, workers=1, new_cycle=lambda: None,
                           ready=threading.Event(), pace=0.7, last_evaluated=lambda it: 0.0,
                           held_since=lambda it: held.get(it.budget["metadata"]["uid"]))
    try:
        items = [item(f"b{i:04d}") for i in range(3000)]
        uids = [it.budget["metadata"]["uid"] for it in items]
        assert loop.held_first(items) == items  # none held: the order as it was
        held.update({f"b{i:04d}": 500.0 - i for i in range(2000, 2030)})  # 30 held, b2029 the longest
        held["b0007"] = 600.0  # held, but less long than those
        ordered = [it.budget["metadata"]["uid"] for it in loop.held_first(items)]
        first = [f"b{i:04d}" for i in range(2029, 2009, -1)]  # the 20 held longest, the longest first
        assert ordered[:fleet.HELD_FIRST] == first
        assert ordered[fleet.HELD_FIRST:] == [uid for uid in uids if uid not in first]
        # at most HELD_FIRST_SHARE of the cycle: 5 of 500, none of 99
        assert [it.budget["metadata"]["uid"] for it in loop.held_first(items[:500])] == ["b0007", *uids[:7],
                                                                                       *uids[8:500]]
        held.update({f"b{i:04d}": 100.0 - i for i in range(5)})
        assert [it.budget["metadata"]["uid"] for it in loop.held_first(items[:500])][:5] == [
            "b0004", "b0003", "b0002", "b0001", "b0000"]
        assert loop.held_first(items[:99]) == items[:99]
        # the cycle's order: new budgets first, then the held ones, then the rest by last evaluation
        fresh = item("new")
        loop.last_evaluated = lambda it: None if it is fresh else 0.0
        got, new = loop.order([*items, fresh])
        assert new == 1 and got[0] is fresh and [it.budget["metadata"]["uid"] for it in got[1:21]] == first
    finally:
        loop.stopping.set()
        loop.pool.shutdown()
        loop.driver.shutdown()


def test_with_held_figures_taken_first_no_budget_waits_longer_than_the_pace_allows() -> None:
    """Taking held budgets first moves the others' turns later; the pace starts the next cycle
    early by as many turns (``ahead``), so no budget waits longer than the interval less the
    pace's margin, as without them."""
    held: dict[str, float] = {}
    f = Fleet(2000, pace=0.7, costs=lambda c, k: 0.001)
    f.loop.held_since = lambda it: held.get(it.budget["metadata"]["uid"])
    evaluate = f.loop.evaluate

    def evaluate_holding(it: fleet.Item) -> None:
        uid = it.budget["metadata"]["uid"]
        held.pop(uid, None)  # taken first: written
        evaluate(it)
        if f.order.index(uid) >= 1900:  # the last hundred of each cycle are held (behind)
            held.setdefault(uid, f.now)
    f.loop.evaluate = evaluate_holding
    f.run(12)
    assert max(wait for cycle, wait in f.waits if cycle > 2) <= INTERVAL - fleet.PACE_MARGIN + 1e-6
    assert len(held) == 100


def test_no_budget_s_figures_starve_at_the_end_of_a_cycle_that_runs_behind() -> None:
    """A fleet whose cycles fall behind in their last quarter: a budget there is behind at every
    evaluation, and its figures (held while behind, as Runtime.figures_wait holds them) were never
    written while the fleet stayed that busy. Taken first once they have waited longest, every
    budget's figures are written, and none waits much longer than the held ones take to go
    through the front of the cycles (HELD_FIRST_SHARE of them a cycle)."""
    n = 1000
    held: dict[str, float] = {}  # uid -> since when its figures have waited
    written: dict[str, int] = {}  # uid -> the last cycle its figures were written in
    f = Fleet(n, pace=0.7, costs=lambda c, k: 0.03 if k >= 700 else 0.005)
    f.loop.held_since = lambda it: held.get(it.budget["metadata"]["uid"])
    evaluate = f.loop.evaluate

    def evaluate_writing(it: fleet.Item) -> None:
        uid = it.budget["metadata"]["uid"]
        if f.loop.behind():
            held.setdefault(uid, f.now)  # due every evaluation here: held while behind
        else:
            held.pop(uid, None)
            if f.loop.cycles:  # (the first pass writes every budget)
                written[uid] = f.loop.cycles
        evaluate(it)
    f.loop.evaluate = evaluate_writing
    cycles = 60
    f.run(cycles)
    tail = f.order[-100:]  # behind in the last cycle
    assert len(held) >= 100 and all(uid in held for uid in tail)
    assert set(written) == {it.budget["metadata"]["uid"] for it in f.items}  # every budget's written again
    most = fleet.FleetLoop.held_first_most(n)
    assert all(cycles - 1 - last <= len(held) / most + 2 for last in written.values())  # none starves
