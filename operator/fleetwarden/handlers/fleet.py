"""One evaluation of the whole fleet per interval (``FLEETWARDEN_EVALUATION=fleet``; ``timers`` is the default).

The other mode, ``timers``, gives every AgentBudget its own kopf timer: one asyncio task and
one finalizer per budget, each firing on its own phase. At 10,000 budgets on a 2-core
machine those timers fall behind the interval (docs/operator.md, Scale): kopf schedules
10,000 tasks, each hopping to a worker thread and back. Here one loop does the same work:

1. It runs in kopf's event loop (started by a startup handler) and waits until the indexes
   are complete (``ready``: the operator's own indexes, :mod:`fleetwarden.handlers.store`,
   set it once every watched object is listed and handled; with kopf's indexes, the first
   event handler to run sets it, as kopf holds every handler back until all are filled),
   so no budget is ever evaluated against a half-listed fleet. It then runs ``on_ready``
   once (the governance check of every namespace), and logs what it still waits for
   (``waiting``) every 30 s until then.
2. Every interval it forgets the cached Prometheus snapshot (one fleet-wide fetch per
   cycle: the number of queries does not grow with the fleet), copies the budgets and each
   namespace's Deployments, CostPolicies and CostApprovals out of the indexes (in the
   event loop's thread, so no watch event changes them while they are copied), and
   evaluates every budget on a pool of ``FLEETWARDEN_WORKERS`` threads
   (:meth:`fleetwarden.handlers.runtime.Runtime.reconcile`: the status is written only when
   it changed, or for the coarse heartbeat).
3. It records the cycle's duration and starts the next cycle one interval after this one
   started (at once, with a warning, when the cycle took longer than the interval). After
   the first cycle it settles the heap once (:func:`fleetwarden.handlers.heap.settle`), after
   each later one it gives malloc's free pages back (:func:`fleetwarden.handlers.heap.trim`).

A failed evaluation is logged (the first few of a cycle, then their count) and retried on
the next cycle; it never stops the others. Immediate evaluations (a spec edit of a budget
already evaluated, a scale-up under a Killed or Suspended budget) are asked for by the event
handlers of :mod:`fleetwarden.handlers.agentbudgets` with :meth:`FleetLoop.prompt` and run at
once on the loop's own thread, beside the cycle: the handlers return at once, so kopf's
executor never queues behind evaluations (at 10,000 budgets, every status the operator wrote
came back as a watch event that waited there with its body: tens of thousands of them at
the start). A budget never evaluated yet is left to the next cycle. The per-budget lock of
the Runtime keeps a prompted evaluation and the cycle from evaluating one budget twice at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleetwarden.handlers import metrics

log = logging.getLogger(__name__)

# The failed evaluations of one cycle that are logged one by one (the rest are counted).
LOGGED_FAILURES = 5
# Evaluations submitted to the pool ahead of those running, per worker (evaluate_all's in_flight).
IN_FLIGHT_PER_WORKER = 4

Body = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Item:
    """One budget and what its evaluation reads of its namespace."""

    budget: Body
    deployments: Sequence[Body]
    policies: Sequence[Body]
    approvals: Sequence[Body]


@dataclasses.dataclass(frozen=True)
class CycleResult:
    budgets: int
    failed: int
    seconds: float


def _values(index: Any, namespace: str) -> list[Body]:
    try:
        return list(index.get(namespace, ()) or ())
    except (AttributeError, TypeError):
        return []


def copy_indexes(budgets: Any, deployments: Any, policies: Any, approvals: Any) -> list[Item]:
    """Every budget of the indexes (namespace -> store) with its namespace's objects; the lists
    of one namespace are shared by its budgets. Call it in the event loop's thread."""
    items: list[Item] = []
    for namespace in list(budgets or ()):
        bodies = _values(budgets, namespace)
        if not bodies:
            continue
        deps, pols, apprs = (_values(deployments, namespace), _values(policies, namespace),
                             _values(approvals, namespace))
        items.extend(Item(body, deps, pols, apprs) for body in bodies)
    return items


def _log_failure(item: Item, exc: BaseException) -> None:
    meta = item.budget.get("metadata") or {}
    log.warning("budget %s/%s: %s (evaluated again next cycle)", meta.get("namespace"), meta.get("name"), exc)


def evaluate_all(items: Sequence[Item], evaluate: Callable[[Item], Any], pool: cf.Executor,
                 in_flight: int | None = None) -> int:
    """Evaluate every item on ``pool``, at most ``in_flight`` submitted and not finished at once
    (None: all at once); returns how many failed (each logged, the first few in full).

    A submitted evaluation is a future with its condition, lock and queue of waiters and a work
    item: at 10,000 budgets, a cycle's all at once were some 18 MiB alive for the whole cycle
    (the first pass included). A pool shut down meanwhile (the loop stops) ends the cycle: the
    items not submitted yet are not evaluated, those submitted are waited for."""
    window = max(1, len(items) if in_flight is None else in_flight)
    slots = threading.Semaphore(window)
    failures: list[tuple[Item, BaseException]] = []  # (appended by the pool's threads: list.append is atomic)

    def finished(item: Item, future: cf.Future[Any]) -> None:
        try:
            exc = None if future.cancelled() else future.exception()
            if exc is not None:
                failures.append((item, exc))
        finally:
            slots.release()

    for item in items:
        slots.acquire()
        try:
            future = pool.submit(evaluate, item)
        except RuntimeError:  # "cannot schedule new futures after shutdown": the loop stops
            slots.release()
            break
        future.add_done_callback(functools.partial(finished, item))
    for _ in range(window):  # every slot back: every evaluation submitted has finished
        slots.acquire()
    for item, exc in failures[:LOGGED_FAILURES]:
        _log_failure(item, exc)
    if len(failures) > LOGGED_FAILURES:
        log.warning("%d more budgets failed this cycle (evaluated again next cycle)", len(failures) - LOGGED_FAILURES)
    return len(failures)


def cycle_line(number: int, budgets: int, failed: int, seconds: float, started: float, data: str | None,
               fetch_ended: float | None) -> str:
    """The log's line of one cycle: its budgets, time and data, the second of the minute it started at
    (the minute's turn and the folds ahead of it make some of a minute's cycles costlier than others),
    and when in it the cycle's fetch ended (the evaluations before that went on with the last snapshot).
    ``benchmarks/operator_scale.py`` reads it back (``CYCLE_LINE``)."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(started))
    fetch = "no fetch ended in it" if fetch_ended is None else f"its fetch ended {fetch_ended:.1f}s in"
    return (f"cycle {number}: {budgets} budgets in {seconds:.1f}s, {failed} failed; data {data or 'not read'}; "
            f"started {stamp} UTC, {started % 60:.1f}s into the minute; {fetch}")


# cycle_line's words, read back (the benchmark's table of cycles)
CYCLE_LINE = re.compile(r"cycle (?P<number>\d+): (?P<budgets>\d+) budgets in (?P<seconds>[\d.]+)s, (?P<failed>\d+) failed; "
                        r"data (?P<data>[\w ]+); started (?P<stamp>[\d:]+) UTC, (?P<second>[\d.]+)s into the minute; "
                        r"(?:its fetch ended (?P<fetch>[\d.]+)s in|no fetch ended in it)")


class FleetLoop:
    """Evaluate every indexed budget once per ``interval`` seconds."""

    def __init__(self, evaluate: Callable[[Item], Any], *, interval: float, workers: int,
                 new_cycle: Callable[[], None], ready: threading.Event,
                 settled: Callable[[], Any] | None = None,
                 on_ready: Callable[[], Any] | None = None,
                 waiting: Callable[[], str] | None = None,
                 data_end: Callable[[], int | None] | None = None,
                 after_cycle: Callable[[], Any] | None = None,
                 fetch_ended: Callable[[], float | None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time) -> None:
        self.evaluate = evaluate
        self.interval = interval
        self.new_cycle = new_cycle
        self.ready = ready
        self.settled = settled  # called once, after the first cycle (handlers/heap.py: settle)
        self.on_ready = on_ready  # called once, in the cycle's thread, before the first cycle
        self.waiting = waiting  # what readiness waits for, logged while it waits
        self.after_cycle = after_cycle  # called after every cycle, in its thread (handlers/heap.py: trim)
        self.data_end = data_end  # the end of the data's last complete minute, None without data
        self._last_end: int | None = None  # data_end after the last cycle that had data
        self.fetch_ended = fetch_ended  # when the last Prometheus fetch ended (``monotonic``'s time), None: never
        self.monotonic = monotonic
        self.clock = clock  # the wall clock, for the cycle's line in the log
        self.workers = workers
        self.pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="fleet-eval")
        self.driver = cf.ThreadPoolExecutor(1, thread_name_prefix="fleet-cycle")
        self.cycles = 0
        self.stopping = threading.Event()
        self._prompted: dict[str, Item] = {}  # budget uid -> its latest item, evaluated at once
        self._prompt_lock = threading.Lock()
        self._prompt_wake = threading.Event()
        self._prompter = threading.Thread(target=self._prompt_loop, name="fleet-prompt", daemon=True)
        self._prompter.start()

    def prompt(self, uid: str, item: Item) -> None:
        """Evaluate ``item`` at once, outside the cycle (a later prompt of the same budget replaces
        one not yet run). Returns at once."""
        with self._prompt_lock:
            self._prompted[uid] = item
        self._prompt_wake.set()

    def _prompt_loop(self) -> None:
        while not self.stopping.is_set():
            if not self._prompt_wake.wait(0.5):
                continue
            self._prompt_wake.clear()
            with self._prompt_lock:
                items, self._prompted = list(self._prompted.values()), {}
            for item in items:
                if self.stopping.is_set():
                    return
                try:
                    self.evaluate(item)
                except Exception as exc:  # noqa: BLE001 - logged; the next cycle evaluates it again
                    _log_failure(item, exc)

    def _evaluate(self, item: Item) -> Any:
        return None if self.stopping.is_set() else self.evaluate(item)

    def cycle(self, items: Sequence[Item]) -> CycleResult:
        """One cycle over ``items`` (blocking): a fresh snapshot, every budget evaluated."""
        started, wall = self.monotonic(), self.clock()
        self.new_cycle()
        failed = evaluate_all(items, self._evaluate, self.pool, in_flight=self.workers * IN_FLIGHT_PER_WORKER)
        seconds = self.monotonic() - started
        fetched = self.fetch_ended() if self.fetch_ended is not None else None
        self.cycles += 1
        if self.cycles == 1 and self.settled is not None:
            self.settled()
        elif self.after_cycle is not None:
            self.after_cycle()
        metrics.CYCLE_SECONDS.observe(seconds)
        metrics.LAST_CYCLE_SECONDS.set(seconds)
        data = None
        if self.data_end is not None:
            data = self._data_brought(self.data_end())
            metrics.CYCLE_SECONDS_BY_DATA.labels(data).observe(seconds)
        log.info("%s", cycle_line(self.cycles, len(items), failed, seconds, wall, data,
                                  None if fetched is None or fetched < started else fetched - started))
        return CycleResult(len(items), failed, seconds)

    def _data_brought(self, end: int | None) -> str:
        """What the cycle just ended had to evaluate (``data`` of ``..._cycle_by_data_seconds``)."""
        if end is None:
            return "unknown"
        last, self._last_end = self._last_end, end
        if self.cycles == 1:
            return "first"
        return "same_minute" if end == last else "new_minute"

    async def run(self, budgets: Any, deployments: Any, policies: Any, approvals: Any) -> None:
        """Cycle until cancelled (kopf cancels its tasks when it stops)."""
        loop = asyncio.get_running_loop()
        try:
            waited = 0
            while not self.ready.is_set():
                await asyncio.sleep(0.2)
                waited += 1
                if self.waiting is not None and waited % 150 == 0:
                    # after two minutes, a warning with what can hold a listing up for good
                    level = logging.INFO if waited < 600 else logging.WARNING
                    log.log(level, "the fleet loop waits for the indexes: %s%s", self.waiting(),
                            "" if level == logging.INFO else
                            " (a kind not watched or a listing never over: may the operator's ServiceAccount "
                            "list and watch it? kubectl auth can-i list KIND --as=system:serviceaccount:NS:SA)")
            if self.on_ready is not None:
                try:
                    await loop.run_in_executor(self.driver, self.on_ready)
                except Exception as exc:  # noqa: BLE001 - logged; the cycles go on without it
                    log.warning("before the first cycle: %s", exc)
            while True:
                started = self.monotonic()
                items = copy_indexes(budgets, deployments, policies, approvals)
                result = await loop.run_in_executor(self.driver, self.cycle, items)
                if result.seconds > self.interval:
                    log.warning("evaluating %d budgets took %.1fs, longer than the %gs interval: the next "
                                "cycle starts at once", result.budgets, result.seconds, self.interval)
                await asyncio.sleep(max(0.0, started + self.interval - self.monotonic()))
        finally:
            # The budgets still queued are skipped (``stopping``), the cycle submits no more
            # (evaluate_all: the pool refuses them) and ends once those submitted have.
            self.stopping.set()
            self.pool.shutdown(wait=False)
            self.driver.shutdown(wait=False)
