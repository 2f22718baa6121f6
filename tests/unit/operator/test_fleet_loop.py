"""One fleet-wide evaluation per interval (FLEETWARDEN_EVALUATION=fleet): it waits for kopf's
indexes, evaluates every indexed budget each cycle on one Prometheus fetch, writes a status
only when it changed, survives a failing budget, and sees budgets that come and go. The
Runtime is the real one; the API server is the recording fake of test_runtime_cycle."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from test_runtime_cycle import CountingFetcher, FakeKube, body, deployment, make

from fleetwarden.handlers import fleet, runtime

ROOT = Path(__file__).resolve().parents[3]


def index(*bodies: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A stand-in for a kopf index: namespace -> the bodies of that namespace."""
    out: dict[str, list[dict[str, Any]]] = {}
    for b in bodies:
        out.setdefault(b["metadata"]["namespace"], []).append(b)
    return out


def in_namespace(b: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**b, "metadata": {**b["metadata"], "namespace": namespace, "uid": f"{namespace}-{b['metadata']['uid']}"}}


def test_each_budget_gets_its_own_namespaces_objects() -> None:
    budgets = index(body(0), body(1), in_namespace(body(2), "other"))
    deployments = index(deployment(0), deployment(1), in_namespace(deployment(2), "other"))
    policies = index({"metadata": {"name": "p", "namespace": "other"}})
    items = fleet.copy_indexes(budgets, deployments, policies, {})
    by_name = {(i.budget["metadata"]["namespace"], i.budget["metadata"]["name"]): i for i in items}
    assert sorted(by_name) == [("other", "budget-2"), ("shop", "budget-0"), ("shop", "budget-1")]
    assert [d["metadata"]["name"] for d in by_name[("shop", "budget-0")].deployments] == ["bot-0", "bot-1"]
    assert [d["metadata"]["name"] for d in by_name[("other", "budget-2")].deployments] == ["bot-2"]
    assert by_name[("shop", "budget-0")].policies == [] and len(by_name[("other", "budget-2")].policies) == 1


def test_a_failing_budget_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def evaluate(item: fleet.Item) -> None:
        name = item.budget["metadata"]["name"]
        if name in ("budget-3", "budget-7"):
            raise RuntimeError(f"{name} broke")
        done.append(name)

    items = fleet.copy_indexes(index(*(body(i) for i in range(10))), {}, {}, {})
    with caplog.at_level(logging.WARNING), fleet.cf.ThreadPoolExecutor(4) as pool:
        failed = fleet.evaluate_all(items, evaluate, pool)
    assert failed == 2
    assert sorted(done) == sorted(f"budget-{i}" for i in range(10) if i not in (3, 7))
    assert "shop/budget-3: budget-3 broke" in caplog.text


class CountingPool(fleet.cf.ThreadPoolExecutor):
    """A thread pool that counts the tasks submitted, and the most unfinished at once."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted = self.alive = self.most = 0
        self._count_lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        with self._count_lock:
            self.submitted += 1
            self.alive += 1
            self.most = max(self.most, self.alive)
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Any) -> None:
        with self._count_lock:
            self.alive -= 1


def test_a_cycle_runs_a_few_runners_not_a_task_per_budget(caplog: pytest.LogCaptureFixture) -> None:
    """A submitted task is a future with a condition, a lock and a queue (some 1.8 KB with its
    work item), and hands the interpreter to the submitting thread and back: a cycle submits
    ``runners`` tasks, each taking budget after budget, not its 10,000 at once; it still evaluates
    every budget once, in order, and counts every failure."""
    done: list[str] = []
    lock = threading.Lock()
    threads: set[str] = set()

    def evaluate(item: fleet.Item) -> None:
        name = item.budget["metadata"]["name"]
        threads.add(threading.current_thread().name)
        if name.endswith("7"):
            raise RuntimeError(f"{name} broke")
        with lock:
            done.append(name)

    items = fleet.copy_indexes(index(*(body(i) for i in range(300))), {}, {}, {})
    taken: list[int] = []
    with caplog.at_level(logging.WARNING), CountingPool(4) as pool:
        failed = fleet.evaluate_all(items, evaluate, pool, runners=3, wait_for=taken.append)
    assert failed == 30 and len(done) == 270 and len(set(done)) == 270
    assert pool.submitted == 3 and pool.most <= 3 and 1 <= len(threads) <= 3
    assert taken == list(range(300))  # each item's turn waited for once, in order
    assert caplog.text.count("broke") == fleet.LOGGED_FAILURES and "25 more budgets failed" in caplog.text


@pytest.mark.timeout(60)
def test_a_loop_stopped_during_a_cycle_ends_it() -> None:
    """When the loop stops mid-cycle, the runners take no more budgets: the cycle finishes those
    taken and returns; it does not hang. A pool shut down before the cycle runs nothing."""
    started: list[str] = []
    stop = threading.Event()

    def evaluate(item: fleet.Item) -> None:
        started.append(item.budget["metadata"]["name"])
        if len(started) == 5:
            stop.set()

    items = fleet.copy_indexes(index(*(body(i) for i in range(200))), {}, {}, {})
    with fleet.cf.ThreadPoolExecutor(2) as pool:
        assert fleet.evaluate_all(items, evaluate, pool, runners=2, stopped=stop.is_set) == 0
    assert 5 <= len(started) <= 6  # the other runner may have taken one as the fifth stopped it
    pool.shutdown()
    assert fleet.evaluate_all(items, evaluate, pool, runners=2) == 0 and len(started) <= 6


def test_with_the_gate_the_work_stays_on_one_runner_until_it_waits() -> None:
    """With the runtime's gate, one runner evaluates budget after budget on its own thread (the
    others wait to come in); when it steps out to wait (an API call), another runner goes on."""
    gate = runtime.Gate()
    seen: list[tuple[str, str]] = []

    def evaluate(item: fleet.Item) -> None:
        name = item.budget["metadata"]["name"]
        with gate.held():  # as Runtime.reconcile
            seen.append((name, threading.current_thread().name))
            threading.Event().wait(0.002)  # (lets the interpreter go, as zstd does: the other runners run)
            if name == "budget-20":
                with gate.outside():  # its status write
                    threading.Event().wait(0.2)

    items = fleet.copy_indexes(index(*(body(i) for i in range(100))), {}, {}, {})
    with fleet.cf.ThreadPoolExecutor(4) as pool:
        assert fleet.evaluate_all(items, evaluate, pool, runners=4, gate=gate) == 0
    assert sorted(n for n, _ in seen) == sorted(f"budget-{i}" for i in range(100))
    first = {n: t for n, t in seen}
    assert len({first[f"budget-{i}"] for i in range(21)}) == 1  # one thread while none waited
    assert first["budget-21"] != first["budget-20"]  # another went on while it waited
    assert gate.waiting() == 0 and not gate.holding()  # (nobody holds it, nobody waits)


def test_a_thread_waiting_to_come_in_goes_before_the_runners_next_budget() -> None:
    """An evaluation from outside the runners that asks for the gate (one prompted by an edit)
    waits for the budget under way, not for the runner's whole cycle."""
    gate = runtime.Gate()
    seen: list[str] = []

    def prompted() -> None:
        with gate.held():
            seen.append("prompted")

    def evaluate(item: fleet.Item) -> None:
        name = item.budget["metadata"]["name"]
        with gate.held():
            seen.append(name)
            if name == "budget-10":
                threading.Thread(target=prompted).start()
                for _ in range(1000):  # until it waits at the gate
                    if gate.waiting() > 0:
                        break
                    threading.Event().wait(0.005)

    items = fleet.copy_indexes(index(*(body(i) for i in range(50))), {}, {}, {})
    with fleet.cf.ThreadPoolExecutor(1) as pool:
        assert fleet.evaluate_all(items, evaluate, pool, runners=1, gate=gate) == 0
    assert seen.index("prompted") == seen.index("budget-10") + 1 and len(seen) == 51


def run_until(loop: fleet.FleetLoop, indexes: tuple[Any, ...], done: Any) -> None:
    """Run ``loop`` on ``indexes`` until ``done()``."""
    async def main() -> None:
        task = asyncio.create_task(loop.run(*indexes))
        for _ in range(20_000):
            await asyncio.sleep(0.001)
            if task.done():
                task.result()
            if done():
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert done(), "the loop did not get there"

    asyncio.run(main())


def test_every_budget_once_per_cycle_on_one_fetch_and_status_only_on_change() -> None:
    fetcher, k = CountingFetcher(), FakeKube()
    rt = make(fetcher, k)
    evaluations: collections.Counter[str] = collections.Counter()
    budgets = index(*(body(i) for i in range(20)))

    def evaluate(item: fleet.Item) -> None:
        name = item.budget["metadata"]["name"]
        if name == "budget-0":  # meanwhile the watches see budget-0 go and budget-20 come
            budgets["shop"] = [b for b in budgets["shop"] if b["metadata"]["name"] != "budget-0"] + [body(20)]
        evaluations[name] += 1
        rt.reconcile(item.budget, item.deployments, item.policies, approval_bodies=item.approvals)

    ready = threading.Event()
    ready.set()
    loop = fleet.FleetLoop(evaluate, interval=0.001, workers=4, new_cycle=rt.new_cycle, ready=ready)
    seen: dict[str, Any] = {}

    def done() -> bool:
        if loop.cycles >= 4 and not seen:
            seen.update(cycles=loop.cycles, evaluations=dict(evaluations), fetches=fetcher.fetches)
        return bool(seen)

    run_until(loop, (budgets, index(*(deployment(i) for i in range(21))), {}, {}), done)
    cycles, counts = seen["cycles"], seen["evaluations"]
    # the next cycle may have begun when the counts were read
    assert seen["fetches"] in (cycles, cycles + 1)  # one fleet-wide fetch per cycle, whatever the fleet size
    assert counts["budget-0"] == 1  # gone after the first cycle
    assert counts["budget-20"] in (cycles - 1, cycles)  # from the second cycle on
    assert all(counts[f"budget-{i}"] in (cycles, cycles + 1) for i in range(1, 20))
    assert len(k.of("status")) == 21  # each status written once: nothing changed afterwards


def test_nothing_is_evaluated_before_the_indexes_are_filled() -> None:
    evaluated: list[str] = []
    ready = threading.Event()
    loop = fleet.FleetLoop(lambda item: evaluated.append(item.budget["metadata"]["name"]), interval=0.001,
                           workers=1, new_cycle=lambda: None, ready=ready)
    waited = {"n": 0}

    def done() -> bool:
        waited["n"] += 1
        if waited["n"] < 200:  # 200 turns of the event loop without the indexes
            return False
        if waited["n"] == 200:
            assert evaluated == [] and loop.cycles == 0
            ready.set()
        return loop.cycles >= 1

    run_until(loop, (index(body(0)), {}, {}, {}), done)
    assert "budget-0" in evaluated


def test_the_heap_settles_once_after_the_first_cycle_has_evaluated_every_budget() -> None:
    evaluated: list[str] = []
    settled: list[tuple[int, int]] = []  # (cycles, evaluations) when the loop settled the heap
    ready = threading.Event()
    ready.set()
    loop = fleet.FleetLoop(lambda item: evaluated.append(item.budget["metadata"]["name"]), interval=0.001,
                           workers=2, new_cycle=lambda: None, ready=ready,
                           settled=lambda: settled.append((loop.cycles, len(evaluated))))
    run_until(loop, (index(*(body(i) for i in range(5))), {}, {}, {}), lambda: loop.cycles >= 3)
    assert settled == [(1, 5)]


def test_after_every_cycle_but_the_first_the_loop_calls_after_cycle() -> None:
    """The operator trims malloc's free pages after each cycle (handlers/heap.py: trim); after the
    first, settling the heap trims them already."""
    calls: list[tuple[str, int, int]] = []  # (which, cycles, evaluations) when the loop called it
    evaluated: list[str] = []
    ready = threading.Event()
    ready.set()
    loop = fleet.FleetLoop(lambda item: evaluated.append(item.budget["metadata"]["name"]), interval=0.001,
                           workers=2, new_cycle=lambda: None, ready=ready,
                           settled=lambda: calls.append(("settled", loop.cycles, len(evaluated))),
                           after_cycle=lambda: calls.append(("after", loop.cycles, len(evaluated))))
    run_until(loop, (index(*(body(i) for i in range(3))), {}, {}, {}), lambda: loop.cycles >= 4)
    assert calls[:4] == [("settled", 1, 3), ("after", 2, 6), ("after", 3, 9), ("after", 4, 12)]


@pytest.mark.parametrize("fails", [False, True])
def test_on_ready_runs_once_before_the_first_cycle_and_its_failure_stops_no_cycle(
        fails: bool, caplog: pytest.LogCaptureFixture) -> None:
    """The governance check of every namespace (own indexes) runs once the indexes are complete,
    before any budget is evaluated; if it fails, it is logged and the cycles go on."""
    order: list[str] = []
    ready = threading.Event()

    def on_ready() -> None:
        order.append("ready")
        if fails:
            raise RuntimeError("the API server said no")

    loop = fleet.FleetLoop(lambda item: order.append(item.budget["metadata"]["name"]), interval=0.001,
                           workers=1, new_cycle=lambda: None, ready=ready, on_ready=on_ready)
    ready.set()
    with caplog.at_level(logging.WARNING):
        run_until(loop, (index(body(0)), {}, {}, {}), lambda: loop.cycles >= 3)
    assert order[0] == "ready" and order.count("ready") == 1 and order.count("budget-0") >= 3
    assert ("the API server said no" in caplog.text) is fails


def test_oldest_evaluation_follows_the_budget_evaluated_longest_ago() -> None:
    clock = {"now": 100.0}
    rt = make(CountingFetcher(), FakeKube(), monotonic=lambda: clock["now"])
    assert rt.oldest_evaluation() == 0.0
    rt.reconcile(body(0), [deployment(0)])
    clock["now"] = 110.0
    rt.reconcile(body(1), [deployment(1)])
    clock["now"] = 115.0
    assert rt.oldest_evaluation() == 15.0
    rt.reconcile(body(0), [deployment(0)])
    assert rt.oldest_evaluation() == 5.0
    rt.forget("uid-1", "shop", "budget-1")
    assert rt.oldest_evaluation() == 0.0


@pytest.mark.parametrize(("mode", "timer", "fleet_loop"), [("fleet", False, True), ("timers", True, False), ("", True, False)])
def test_the_mode_chooses_the_handlers(mode: str, timer: bool, fleet_loop: bool) -> None:
    """fleet registers the fleet loop and no per-budget timer; timers (the default) the reverse."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")}
    env["FLEETWARDEN_EVALUATION"] = mode
    code = ("import kopf, fleetwarden.handlers.agentbudgets as a; r = kopf.get_default_registry(); "
            "print(hasattr(a, 'budget_timer'), hasattr(a, 'start_fleet'), "
            "len(list(r._indexing.get_all_handlers())), "
            "sum(h.id.startswith('keep_') for h in r._watching.get_all_handlers()), "
            "sorted(h.id for h in r._watching.get_all_handlers() if h.when is a._acting "
            "and not h.when(body={}, event={})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120).stdout.split()
    # the fleet loop keeps its own indexes (handlers/store.py); the timers read kopf's. With its
    # own, the handlers that act wait until they are complete (kopf's `when`: False before)
    assert out[:4] == [str(timer), str(fleet_loop), "0" if fleet_loop else "4", "4" if fleet_loop else "0"]
    assert " ".join(out[4:]) == ("['budget_event', 'deployment_event']" if fleet_loop else "[]")


def test_a_cancelled_loop_ends_its_cycle_with_budgets_still_queued() -> None:
    """kopf cancels the loop mid-cycle (the operator stops): the budgets still queued are skipped
    and the cycle's thread ends, so nothing waits for it (the interpreter joins it at exit). A
    future cancelled by the pool's shutdown would never wake the cycle's wait."""
    started, release = threading.Event(), threading.Event()
    evaluated: list[str] = []

    def evaluate(item: fleet.Item) -> None:
        name = item.budget["metadata"]["name"]
        if name == "budget-0":
            started.set()
            release.wait(10)
        evaluated.append(name)

    loop = fleet.FleetLoop(evaluate, interval=60, workers=1, new_cycle=lambda: None, ready=threading.Event())
    loop.ready.set()

    async def main() -> None:
        task = asyncio.create_task(loop.run(index(*(body(i) for i in range(3))), {}, {}, {}))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # budget-0 is being evaluated, budget-1 and budget-2 wait in the queue
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    asyncio.run(main())
    cycle_threads = [t for t in threading.enumerate() if t.name.startswith("fleet-cycle")]
    for t in cycle_threads:
        t.join(5)
    assert not [t for t in cycle_threads if t.is_alive()], "the cycle's thread still waits for cancelled budgets"
    assert evaluated == ["budget-0"]  # the queued budgets were skipped, not evaluated after the stop


def test_a_prompted_budget_is_evaluated_at_once_outside_the_cycle_the_latest_body_wins() -> None:
    """A spec edit (or a scale-up under a held budget) in fleet mode: the handler only prompts the
    loop and returns; the loop's own thread evaluates, with the latest body of that budget."""
    evaluated: list[tuple[str, Any]] = []
    gate = threading.Event()

    def evaluate(item: fleet.Item) -> None:
        gate.wait(5)
        evaluated.append((item.budget["metadata"]["name"], item.budget["spec"].get("suspend")))

    loop = fleet.FleetLoop(evaluate, interval=60, workers=1, new_cycle=lambda: None, ready=threading.Event())
    try:
        first = {**body(0), "spec": {**body(0)["spec"], "suspend": False}}
        loop.prompt("uid-0", fleet.Item(first, [deployment(0)], [], []))
        loop.prompt("uid-0", fleet.Item({**first, "spec": {**first["spec"], "suspend": True}}, [deployment(0)], [], []))
        loop.prompt("uid-1", fleet.Item(body(1), [deployment(1)], [], []))
        gate.set()
        for _ in range(500):
            if len(evaluated) >= 2:
                break
            threading.Event().wait(0.01)
        threading.Event().wait(0.1)
        assert loop.cycles == 0  # no cycle ran: the loop was never started
        assert sorted(evaluated) == [("budget-0", True), ("budget-1", None)]  # the later prompt replaced the first
    finally:
        loop.stopping.set()


def test_in_fleet_mode_the_handler_prompts_only_a_budget_already_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the start every budget's first watch event has no observedGeneration: the first cycle
    evaluates them all, so the handlers leave them to it instead of a second evaluation each."""
    from fleetwarden.handlers import agentbudgets

    rt = make(CountingFetcher(), FakeKube())
    prompted: list[str] = []

    class Loop:
        def prompt(self, uid: str, item: fleet.Item) -> None:
            prompted.append(uid)
            assert [d["metadata"]["name"] for d in item.deployments] == ["bot-0"]

    monkeypatch.setattr(agentbudgets, "RUNTIME", rt)
    monkeypatch.setattr(agentbudgets, "FLEET", Loop())
    deployments = {"shop": [deployment(0)]}
    agentbudgets._prompt(body(0), deployments, {}, {})  # noqa: SLF001
    assert prompted == []
    agentbudgets._prompt(body(0), deployments, {}, {}, held=True)  # noqa: SLF001 - scaled up while held
    assert prompted == ["uid-0"]
    prompted.clear()
    rt.reconcile(body(0), [deployment(0)])
    agentbudgets._prompt(body(0), deployments, {}, {})  # noqa: SLF001
    assert prompted == ["uid-0"]


def cycles_by_data() -> dict[str, tuple[float, float]]:
    """``fleetwarden_operator_cycle_by_data_seconds``: data -> (cycles, seconds) so far."""
    from fleetwarden.handlers import metrics
    out = {}
    for data in ("first", "new_minute", "same_minute", "unknown"):
        count = metrics.REGISTRY.get_sample_value("fleetwarden_operator_cycle_by_data_seconds_count", {"data": data})
        total = metrics.REGISTRY.get_sample_value("fleetwarden_operator_cycle_by_data_seconds_sum", {"data": data})
        out[data] = (count or 0.0, total or 0.0)
    return out


def test_a_cycles_time_is_counted_by_whether_its_data_brought_a_new_minute() -> None:
    ends = iter([6000, 6000, 6060, None, 6060, 6120, 6120])  # the data's end after each cycle
    durations = iter([9, 2, 7, 3, 1, 8, 4])  # each cycle's seconds, by the loop's own clock
    now = {"t": 0.0}

    def monotonic() -> float:
        return now["t"]

    def evaluate(item: fleet.Item) -> None:
        pass

    def new_cycle() -> None:
        now["t"] += next(durations)  # the cycle's time passes while it runs

    loop = fleet.FleetLoop(evaluate, interval=60, workers=1, new_cycle=new_cycle, ready=threading.Event(),
                           data_end=lambda: next(ends), monotonic=monotonic)
    before = cycles_by_data()
    try:
        items = fleet.copy_indexes(index(body(0), body(1)), {}, {}, {})
        for _ in range(7):
            loop.cycle(items)
    finally:
        loop.stopping.set()
        loop.pool.shutdown()
        loop.driver.shutdown()
    after = cycles_by_data()
    counted = {data: (after[data][0] - before[data][0], after[data][1] - before[data][1]) for data in after}
    assert counted == {"first": (1, 9), "same_minute": (3, 2 + 1 + 4), "new_minute": (2, 7 + 8), "unknown": (1, 3)}


def test_each_cycle_logs_a_line_the_benchmark_reads_back(caplog: pytest.LogCaptureFixture) -> None:
    """Its time, data, the second of the minute it started at and when its fetch ended in it."""
    now = {"t": 100.0, "wall": 1795824000.0 + 3600 + 42.5}  # 01:00:42.5 UTC
    ends = iter([6000, 6060, None])
    fetched = iter([None, 114.45, 90.0])  # the second: 3.2 s after its start (111.25); the third: the last fetch ended before the cycle began

    def new_cycle() -> None:
        now["t"] += 11.25

    loop = fleet.FleetLoop(lambda item: None, interval=15, workers=1, new_cycle=new_cycle, ready=threading.Event(),
                           data_end=lambda: next(ends), fetch_ended=lambda: next(fetched),
                           monotonic=lambda: now["t"], clock=lambda: now["wall"])
    try:
        items = fleet.copy_indexes(index(body(0), body(1)), {}, {}, {})
        with caplog.at_level(logging.INFO, logger="fleetwarden.handlers.fleet"):
            for _ in range(3):
                loop.cycle(items)
                now["wall"] += 15
    finally:
        loop.stopping.set()
        loop.pool.shutdown()
        loop.driver.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cycle ")]
    assert lines[1] == ("cycle 2: 2 budgets in 11.2s, 0 failed; data new_minute; started 01:00:57 UTC, 57.5s into "
                        "the minute; its fetch ended 3.2s in")
    read = [fleet.CYCLE_LINE.search(line) for line in lines]
    assert [m.groupdict() if m else None for m in read] == [
        {"number": "1", "budgets": "2", "seconds": "11.2", "failed": "0", "data": "first", "stamp": "01:00:42",
         "second": "42.5", "fetch": None, "ahead": None, "early": None},
        {"number": "2", "budgets": "2", "seconds": "11.2", "failed": "0", "data": "new_minute", "stamp": "01:00:57",
         "second": "57.5", "fetch": "3.2", "ahead": None, "early": None},
        {"number": "3", "budgets": "2", "seconds": "11.2", "failed": "0", "data": "unknown", "stamp": "01:01:12",
         "second": "12.5", "fetch": None, "ahead": None, "early": None},
    ]


def test_the_runtime_says_when_its_last_fetch_ended_a_new_cycle_keeps_it() -> None:
    fetcher, k = CountingFetcher(), FakeKube()
    rt = make(fetcher, k)
    assert rt.fetch_ended() is None
    rt.reconcile(body(0), [deployment(0)])
    ended = rt.fetch_ended()
    assert ended is not None
    rt.new_cycle()
    assert rt.fetch_ended() == ended
    rt.reconcile(body(0), [deployment(0)])
    later = rt.fetch_ended()
    assert later is not None and later > ended


def test_without_a_data_end_no_cycle_is_counted_by_data() -> None:
    loop = fleet.FleetLoop(lambda item: None, interval=60, workers=1, new_cycle=lambda: None, ready=threading.Event())
    before = cycles_by_data()
    try:
        loop.cycle(fleet.copy_indexes(index(body(0)), {}, {}, {}))
    finally:
        loop.pool.shutdown()
        loop.driver.shutdown()
    assert loop.cycles == 1 and cycles_by_data() == before


def test_the_runtimes_data_end_is_its_snapshots_none_before_a_fetch_or_after_a_failed_one() -> None:
    fetcher, k = CountingFetcher(), FakeKube()
    rt = make(fetcher, k)
    assert rt.data_end() is None
    rt.reconcile(body(0), [deployment(0)])
    assert rt.data_end() == fetcher.fetch().end
    fetcher.fail = True
    rt.new_cycle()
    with contextlib.suppress(Exception):
        rt.reconcile(body(0), [deployment(0)])
    assert rt.data_end() is None


def test_the_fleet_loop_is_started_reading_the_runtime_s_evaluations_and_held_figures() -> None:
    """start_fleet gives the loop the runtime's time of each budget's last evaluation (the order) and
    since when its figures have waited past their turn (the longest held first: fleet.HELD_FIRST)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")}
    env["FLEETWARDEN_EVALUATION"] = "fleet"
    code = textwrap.dedent("""
        import asyncio
        import fleetwarden.handlers.agentbudgets as a
        from fleetwarden.handlers import fleet, runtime
        rt = runtime.Runtime(interval=15.0, fetcher=None)
        runtime.build = lambda settings: rt
        got = {}
        class Loop:
            def __init__(self, evaluate, **kwargs):
                got.update(kwargs)
            def behind(self):
                return False
            async def run(self, *indexes):
                return None
        fleet.FleetLoop = Loop
        async def main():
            await a.start_fleet()
            await asyncio.sleep(0)
        asyncio.run(main())
        item = fleet.Item({"metadata": {"uid": "u1"}}, [], [], [])
        rt._held["u1"] = 123.0
        rt._evaluated_at["u1"] = 456.0
        print(got["held_since"](item), got["last_evaluated"](item))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120).stdout.split()
    assert out == ["123.0", "456.0"]
