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
   cycle: the number of queries does not grow with the fleet; with a pace, the loop fetches
   it on a thread of its own as the cycle before ends), copies the budgets and each
   namespace's Deployments, CostPolicies and CostApprovals out of the indexes (in the
   event loop's thread, so no watch event changes them while they are copied), and
   evaluates every budget on a pool of ``FLEETWARDEN_WORKERS`` threads
   (:meth:`fleetwarden.handlers.runtime.Runtime.reconcile`: the status is written only when
   it changed, or for the coarse heartbeat). With a pace (``FLEETWARDEN_PACE``, :class:`Pace`)
   the budgets are taken in the order of their last evaluation (new ones first, at once) and
   spread over that share of the interval, each at its own turn, so a budget is reached at the
   same point of every cycle; the few whose figures have waited longest past their turn (a
   large fleet's figure writes wait while a cycle runs behind) are taken first (HELD_FIRST).
3. It records the cycle's duration and starts the next cycle one interval after this one
   started, less what the pace foresees a budget would wait past the interval, even while
   that cycle's data is still being read (its first budgets go on with the last snapshot;
   at once, with a warning, when the cycle took longer than the interval). After
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
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import heapq
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fleetwarden.handlers import metrics

log = logging.getLogger(__name__)

# The failed evaluations of one cycle that are logged one by one (the rest are counted).
LOGGED_FAILURES = 5
# Pace: the most lateness of a cycle's budgets is kept for this many cycles (about four minutes at
# the default interval, so the costliest cycles of three or four minutes, those that fold a new
# minute, are among them).
PACE_KEPT = 16
# Pace: seconds kept in hand under the interval besides the lateness foreseen, and the most a cycle
# starts early (as a share of the interval).
PACE_MARGIN = 0.25
PACE_MOST_EARLY = 0.5
# Pace: a cycle is *behind* while its runners reach their budgets more than this share of the
# interval after their turns (2.25 s at 15 s), and the status writes no decision waits for (a
# large fleet's figures and heartbeats: handlers/runtime.py) wait until the runners are back within
# it. At 10,000 live budgets those writes went out at up to 20 a second however late a cycle ran,
# and the minute's costliest cycles took 15-23 s, against 11-14 s before the writes began
# (docs/operator.md, Scale).
BEHIND_SHARE = 0.15
# Held figures first: while a cycle runs behind, the budgets late in its order are behind at every
# evaluation, so their figures (held while behind) were never written while the fleet stayed busy:
# at 10,000 live budgets the longest held waited a minute longer each minute (docs/operator.md,
# Scale). So each cycle takes at its start, before the others, the budgets whose figures have
# waited longest past their turn (``held_since``, oldest first): at most HELD_FIRST of them (a
# second of the fleet's figure writes, runtime.MAX_FIGURE_WRITES_PER_SECOND), and at most
# HELD_FIRST_SHARE of the cycle's budgets, so the others' turns move by at most that share of the
# paced span (which the pace counts when it starts the next cycle early).
HELD_FIRST = 20
HELD_FIRST_SHARE = 0.01

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
    early: float = 0.0  # how many seconds less than one interval after its start the next cycle starts


class Pace:
    """Each budget evaluated at the same point of every cycle, and the next cycle started early by
    what keeps every budget's wait between two evaluations within the interval.

    A cycle takes first, at once, the budgets never evaluated (a new budget is not kept waiting
    for a turn), then the others in the order they were last evaluated (longest ago first), and
    submits the k-th of those n no sooner than ``share * interval * k / n`` seconds into the cycle,
    its *turn*. A budget's turn then falls at the same point of each cycle however
    costly the cycle is, and its evaluation ends some *lateness* after it (waiting in the queue, the
    fetch's parse holding the interpreter, the evaluation itself). All at once (``share`` 0), the k-th
    budget is reached after the k before it, so a budget waited the interval plus the difference
    between two cycles' costs up to it: cycles 2-5 s costlier than the one before (the minute's
    turn, the folds ahead late in a minute) made budgets wait 16-18 s at a 15 s interval.

    The lateness can still differ from one cycle to the next, so the next cycle starts early enough
    that every budget just evaluated would be evaluated again within the interval (less
    ``PACE_MARGIN``) even if its evaluation ended as late after its turn as the latest of any in the
    last ``PACE_KEPT`` cycles; never more than ``PACE_MOST_EARLY`` of the interval early. The latest
    of the whole order, not of the budget's own part of it, and of some four minutes: where a
    cycle falls behind, and how far, changes from one minute to the next (the fetch of a new
    minute ends at another point of its cycle, and the new minute's folds begin there), and the
    latest of a hundredth of the order in the last two minutes foresaw too little (waits of
    15.5-16.9 s at 10,000 live budgets; docs/operator.md, Scale). A cycle longer than the interval
    is left out of the record (the next one starts at once anyway; a warm-up's slow cycles would
    keep every start early for minutes)."""

    def __init__(self, interval: float, share: float) -> None:
        self.interval, self.share = interval, share
        self._kept: collections.deque[float] = collections.deque(maxlen=PACE_KEPT)  # each cycle's latest

    def turn(self, k: int, n: int) -> float:
        """Seconds into its cycle at which the k-th of ``n`` budgets is submitted."""
        return self.share * self.interval * k / n if n else 0.0

    def early(self, started: float, n: int, ended: Sequence[tuple[int | None, float]], over: bool,
              ahead: int = 0) -> float:
        """Record the cycle that began at ``started`` with ``n`` budgets at their turns, ``ended``
        holding (k, the time its evaluation ended) for each budget evaluated (k None: one evaluated
        at once, never evaluated before), and return how many seconds less than one interval after
        ``started`` the next cycle must start (0 without a pace, or after a cycle longer than the
        interval: ``over``). ``ahead``: how many budgets the next cycle may take before the others
        out of their order (their held figures: FleetLoop.held_first), moving each of the others up
        to that many turns later."""
        if self.share <= 0 or not ended or over:
            return 0.0
        lates = [end - started - self.turn(k, n) for k, end in ended if k is not None]
        if lates:  # (none when every budget was new to this cycle: nothing to record)
            self._kept.append(max(lates))
        foreseen = max(self._kept, default=0.0)
        # The next cycle takes them in the order their evaluations ended (the order of their last
        # evaluation), budgets new to it first, at once, moving none of them to a later turn but for
        # the ``ahead`` taken first: the r-th to end here is submitted at turn r + ahead there at the
        # latest and may end ``foreseen`` after it.
        ends = sorted(end for _, end in ended)
        m = len(ends)
        start_by = min(end - self.turn(r + ahead, m) for r, end in enumerate(ends)) - foreseen
        start_by += self.interval - PACE_MARGIN
        return min(max(0.0, started + self.interval - start_by), PACE_MOST_EARLY * self.interval)


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


class Gate(Protocol):
    """The runtime's gate (handlers/runtime.py, Gate): one thread does the evaluations' own work."""

    def held(self, idle: bool = False) -> contextlib.AbstractContextManager[None]: ...

    def outside(self, due: bool = False) -> contextlib.AbstractContextManager[None]: ...

    def pass_on(self) -> None: ...


def evaluate_all(items: Sequence[Item], evaluate: Callable[[Item], Any], pool: cf.Executor,
                 runners: int | None = None, wait_for: Callable[[int], Any] | None = None,
                 stopped: Callable[[], bool] | None = None, gate: Gate | None = None) -> int:
    """Evaluate every item on ``pool``; returns how many failed (each logged, the first few in
    full). ``runners`` tasks (None: one per item) run on the pool, each taking the next item in
    order when it is done with the last. ``wait_for(k)``, when given, is called before the k-th
    item is evaluated and returns when it may be (the fleet loop's pace). ``stopped()`` true (the
    loop stops) ends the cycle: no item is taken after it, those taken are finished (a pool shut
    down before its runners were submitted runs none).

    Runners, not a future per item: a submitted evaluation was a future with its condition, lock
    and queue of waiters and a work item (at 10,000 budgets, a cycle's all at once were some
    18 MiB), and each one handed the interpreter from a worker to the submitting thread and back.
    With ``gate`` a runner holds it while it takes and evaluates budget after budget, and lets it
    go only to wait (its API calls, a budget's turn: ``wait_for`` steps out itself), when another
    runner goes on, or between two budgets to an evaluation from outside the runners (one
    prompted by an edit) or to a runner back at its budget's turn (the fleet loop's ``wait_for``
    steps out with ``due``): the evaluations' work stays on one thread, and moves only when that
    one waits, or when a budget taken before the holder's next is due."""
    n = max(1, min(len(items), len(items) if runners is None else runners))
    order = iter(enumerate(items))
    take = threading.Lock()  # one runner takes the next item at a time (inside the gate: never waited for)
    failures: list[tuple[Item, BaseException]] = []  # (appended by the pool's threads: list.append is atomic)

    def run() -> None:
        with gate.held(idle=True) if gate is not None else contextlib.nullcontext():
            while True:
                if gate is not None:
                    gate.pass_on()  # an evaluation prompted by an edit (or kopf's) first
                with take:
                    if stopped is not None and stopped():
                        return
                    got = next(order, None)
                if got is None:
                    return
                k, item = got
                try:
                    if wait_for is not None:
                        wait_for(k)
                    evaluate(item)
                except BaseException as exc:  # noqa: BLE001 - counted and logged; the next budget is evaluated
                    failures.append((item, exc))

    futures = []
    for _ in range(n):
        try:
            futures.append(pool.submit(run))
        except RuntimeError:  # "cannot schedule new futures after shutdown": the loop stops
            break
    cf.wait(futures)
    for item, exc in failures[:LOGGED_FAILURES]:
        _log_failure(item, exc)
    if len(failures) > LOGGED_FAILURES:
        log.warning("%d more budgets failed this cycle (evaluated again next cycle)", len(failures) - LOGGED_FAILURES)
    return len(failures)


@dataclasses.dataclass(frozen=True)
class Wait:
    """One evaluation of a cycle, of a budget evaluated before (``monotonic``'s times)."""

    rank: int | None  # its place among the cycle's paced budgets (None: taken at once)
    began: float  # when its evaluation began (its runner had the gate)
    ended: float
    before: float  # when its evaluation before this one ended
    item: Item


def _name(item: Item) -> str:
    meta = item.budget.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def waits_line(number: int, waits: Sequence[Wait], started: float, last_started: float | None,
               pace: Pace, n: int) -> str | None:
    """The log's line of what one cycle's budgets waited (None: none of them was evaluated before):
    the longest wait between two evaluations of one budget (from the end of the one before to the
    end of this one) and what made it up: how long after the cycle before this cycle started, how
    far into each cycle its evaluation ended, and, with a pace, how long after its turn the
    evaluation began (it waited for the evaluations before it) and how long it took (its own work,
    its API calls, the gate held by others while it waited for them). Then, with a pace, the most
    that any budget of each tenth of the order ended after its turn, and how long that tenth's
    evaluations took in all (more than its turns span: the evaluations themselves fell behind;
    less, with budgets late: something else held the interpreter). The waits over the interval
    are those the oldest evaluation shows (``fleetwarden_operator_oldest_evaluation_seconds``)."""
    if not waits:
        return None
    worst = max(waits, key=lambda w: w.ended - w.before)
    parts = [f"cycle {number} waits: the longest {worst.ended - worst.before:.1f}s ({_name(worst.item)}"]
    if last_started is not None:
        parts.append(f"; this cycle started {started - last_started:.1f}s after the one before; its evaluation "
                     f"ended {worst.before - last_started:.1f}s into that one and {worst.ended - started:.1f}s into this")
    if pace.share > 0 and worst.rank is not None:
        turn = pace.turn(worst.rank, n)
        parts.append(f"; its turn {turn:.1f}s in ({100 * worst.rank // max(1, n)}% of the order), "
                     f"began {worst.began - started - turn:.1f}s after it, took {worst.ended - worst.began:.1f}s")
    parts.append(")")
    if pace.share > 0 and n:
        tenths: list[float | None] = [None] * 10
        took = [0.0] * 10
        for w in waits:
            if w.rank is None:
                continue
            part, late = w.rank * 10 // n, w.ended - started - pace.turn(w.rank, n)
            mark = tenths[part]
            tenths[part] = late if mark is None else max(mark, late)
            took[part] += w.ended - w.began
        longest = max(waits, key=lambda w: w.ended - w.began)
        parts.append("; ended after their turns, at most, by tenth of the order: " + " ".join(
            "-" if late is None else f"{late:.1f}" for late in tenths) + " s")
        # against a tenth's turns (``pace.share * pace.interval / 10`` s): more, and its budgets fall behind
        parts.append(f"; their evaluations took in all, by tenth (each tenth's turns span "
                     f"{pace.share * pace.interval / 10:.2f}s): " + " ".join(f"{t:.2f}" for t in took) + " s")
        parts.append(f"; the longest evaluation {longest.ended - longest.began:.1f}s ({_name(longest.item)})")
    return "".join(parts)


def cycle_line(number: int, budgets: int, failed: int, seconds: float, started: float, data: str | None,
               fetch_ended: float | None, early: float | None = None) -> str:
    """The log's line of one cycle: its budgets, time and data, the second of the minute it started at
    (the minute's turn and the folds ahead of it make some of a minute's cycles costlier than others),
    and when in it the cycle's fetch ended (the evaluations before that went on with the last snapshot), or
    how long before it, when the loop fetched it as the cycle before ended (``fetch_ended`` negative).
    With a pace, ``early``: how much less than one interval after this cycle's start the next starts.
    ``benchmarks/operator_scale.py`` reads it back (``CYCLE_LINE``)."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(started))
    fetch = ("no fetch ended in it" if fetch_ended is None else f"its fetch ended {fetch_ended:.1f}s in"
             if fetch_ended >= 0 else f"its fetch ended {-fetch_ended:.1f}s before it")
    paced = "" if early is None else f"; the next starts {early:.2f}s early"
    return (f"cycle {number}: {budgets} budgets in {seconds:.1f}s, {failed} failed; data {data or 'not read'}; "
            f"started {stamp} UTC, {started % 60:.1f}s into the minute; {fetch}{paced}")


# cycle_line's words, read back (the benchmark's table of cycles)
CYCLE_LINE = re.compile(r"cycle (?P<number>\d+): (?P<budgets>\d+) budgets in (?P<seconds>[\d.]+)s, (?P<failed>\d+) failed; "
                        r"data (?P<data>[\w ]+); started (?P<stamp>[\d:]+) UTC, (?P<second>[\d.]+)s into the minute; "
                        r"(?:its fetch ended (?P<fetch>[\d.]+)s in|its fetch ended (?P<ahead>[\d.]+)s before it|"
                        r"no fetch ended in it)"
                        r"(?:; the next starts (?P<early>[\d.]+)s early)?")


# waits_line's words, read back (the benchmark's longest wait of each cycle)
WAITS_LINE = re.compile(r"cycle (?P<number>\d+) waits: the longest (?P<longest>[\d.]+)s \((?P<budget>[^;)]+)"
                        r"(?:; this cycle started (?P<spacing>[\d.]+)s after the one before; its evaluation ended "
                        r"(?P<before>-?[\d.]+)s into that one and (?P<now>-?[\d.]+)s into this)?")


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
                 pace: float = 0.0,
                 prefetch: Callable[[], Any] | None = None,
                 last_evaluated: Callable[[Item], float | None] | None = None,
                 held_since: Callable[[Item], float | None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] | None = None,
                 gate: Gate | None = None) -> None:
        self.evaluate = evaluate
        self.gate = gate  # the runtime's: one runner does the evaluations' own work (evaluate_all)
        self.interval = interval
        self.pace = Pace(interval, pace)  # each budget's turn in a cycle, and how early the next starts
        self.last_evaluated = last_evaluated  # ``monotonic``'s time of an item's last evaluation (None: never)
        # since when an item's figures have waited past their turn (None: not held; HELD_FIRST)
        self.held_since = held_since
        # fetches the next cycle's snapshot as soon as a cycle ends, on a thread of its own (None: the
        # cycle's first evaluation fetches it, new_cycle having made it due)
        self.prefetch = prefetch
        self._prefetched = False  # the next cycle's snapshot was asked for at the end of the last
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
        self.fetcher = cf.ThreadPoolExecutor(1, thread_name_prefix="fleet-fetch")
        self.cycles = 0
        self.stopping = threading.Event()
        self.sleep = sleep or self.stopping.wait  # waits for a budget's turn (cut short when the loop stops)
        self._ranks: dict[int, int | None] = {}  # id(item) -> its place among the cycle's paced (None: at once)
        self._ended: list[tuple[int | None, float]] = []  # the cycle's (place, time its evaluation ended)
        self._waits: list[Wait] = []  # the cycle's evaluations of budgets evaluated before (its waits line)
        self._last_started: float | None = None  # when the cycle before started (``monotonic``)
        self.lateness = 0.0  # how long after its turn this cycle's last budget was reached (0: a cycle's start)
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

    def _prefetch(self) -> None:
        assert self.prefetch is not None
        try:
            self.prefetch()
        except Exception as exc:  # noqa: BLE001 - logged; the next cycle's evaluations fetch it again
            log.warning("fetching the next cycle's data: %s", exc)

    def _evaluate(self, item: Item) -> Any:
        if self.stopping.is_set():
            return None
        before = self.last_evaluated(item) if self.last_evaluated is not None else None
        began = self.monotonic()
        result = self.evaluate(item)
        ended = self.monotonic()
        rank = self._ranks[id(item)]
        self._ended.append((rank, ended))  # (list.append is atomic)
        if before is not None:
            self._waits.append(Wait(rank, began, ended, before, item))
        return result

    def order(self, items: Sequence[Item]) -> tuple[list[Item], int]:
        """``items`` with those never evaluated first (in the indexes' order), then the others in the
        order of their last evaluation, longest ago first, so each keeps its place from cycle to
        cycle, except that those whose figures have waited longest past their turn come before them
        (:meth:`held_first`); and how many were never evaluated (they are submitted at once, outside
        the pace)."""
        if self.last_evaluated is None:
            return list(items), 0
        fresh: list[Item] = []
        known: list[tuple[float, int]] = []  # (last evaluated, place in ``items``)
        for k, item in enumerate(items):
            last = self.last_evaluated(item)
            if last is None:
                fresh.append(item)
            else:
                known.append((last, k))
        known.sort()
        return fresh + self.held_first([items[k] for _, k in known]), len(fresh)

    @staticmethod
    def held_first_most(n: int) -> int:
        """How many of a cycle's ``n`` paced budgets may be taken first for their held figures."""
        return min(HELD_FIRST, int(n * HELD_FIRST_SHARE))

    def held_first(self, ordered: list[Item]) -> list[Item]:
        """``ordered`` with the budgets whose figures have waited longest past their turn moved to its
        front, the longest held first (at most :meth:`held_first_most`), the others in their order.
        At its front a cycle is on time, so their figures are written (unless the fleet's figure
        writes are at their rate), and at their next turn they are early in the order again."""
        most = self.held_first_most(len(ordered))
        if self.held_since is None or most <= 0:
            return ordered
        held = []  # (held since, place in ``ordered``)
        for k, item in enumerate(ordered):
            since = self.held_since(item)
            if since is not None:
                held.append((since, k))
        if not held:
            return ordered
        first = heapq.nsmallest(most, held)
        taken = {k for _, k in first}
        return [ordered[k] for _, k in first] + [item for k, item in enumerate(ordered) if k not in taken]

    def behind(self) -> bool:
        """Whether the cycle under way is behind its turns: its last budget was reached more than
        ``BEHIND_SHARE`` of the interval after its turn (never without a pace)."""
        return self.pace.share > 0 and self.lateness > BEHIND_SHARE * self.interval

    def _wait_for_turn(self, started: float, fresh: int, n: int) -> Callable[[int], Any]:
        """Waits for the k-th item's turn: none for the ``fresh`` first, then each of the ``n`` others at its own."""
        def wait_for(k: int) -> None:
            if k < fresh:
                return
            left = started + self.pace.turn(k - fresh, n) - self.monotonic()
            self.lateness = max(0.0, -left)
            if left > 0:
                # (back at its turn, the budget is let in between two of the gate's holder: due)
                with self.gate.outside(due=True) if self.gate is not None else contextlib.nullcontext():
                    self.sleep(left)
        return wait_for

    def cycle(self, items: Sequence[Item]) -> CycleResult:
        """One cycle over ``items`` (blocking): a fresh snapshot, every budget evaluated."""
        started, wall = self.monotonic(), self.clock()
        prefetched, self._prefetched = self._prefetched, False
        if not prefetched:
            self.new_cycle()
        items, fresh = self.order(items)
        paced = len(items) - fresh
        self._ranks = {id(item): (k - fresh if k >= fresh else None) for k, item in enumerate(items)}
        self._ended, self._waits, self.lateness = [], [], 0.0
        failed = evaluate_all(items, self._evaluate, self.pool, runners=self.workers,
                              wait_for=self._wait_for_turn(started, fresh, paced) if self.pace.share > 0 else None,
                              stopped=self.stopping.is_set, gate=self.gate)
        seconds = self.monotonic() - started
        early = self.pace.early(started, paced, self._ended, over=seconds > self.interval,
                                ahead=self.held_first_most(paced) if self.held_since is not None else 0)
        waits = waits_line(self.cycles + 1, self._waits, started, self._last_started, self.pace, paced)
        self._ranks, self._ended, self._waits, self._last_started = {}, [], [], started
        self.lateness = 0.0  # (between cycles nothing is behind: a prompted evaluation writes as ever)
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
        metrics.CYCLE_EARLY_SECONDS.set(early)
        log.info("%s", cycle_line(self.cycles, len(items), failed, seconds, wall, data,
                                  None if fetched is None or (fetched < started and not prefetched) else fetched - started,
                                  early if self.pace.share > 0 else None))
        if waits is not None:
            log.info("%s", waits)
        return CycleResult(len(items), failed, seconds, early)

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
            reading: cf.Future[None] | None = None  # the reading of the next cycle's data (prefetch)
            while True:
                started = self.monotonic()
                items = copy_indexes(budgets, deployments, policies, approvals)
                result = await loop.run_in_executor(self.driver, self.cycle, items)
                if result.seconds > self.interval:
                    log.warning("evaluating %d budgets took %.1fs, longer than the %gs interval: the next "
                                "cycle starts at once", result.budgets, result.seconds, self.interval)
                if self.prefetch is not None:
                    self._prefetched = True
                    if reading is None or reading.done():
                        # (a reading still under way brings the next cycle's data: none is asked for
                        # again behind it, so a slow Prometheus never makes the readings queue up)
                        reading = self.fetcher.submit(self._prefetch)
                # The next cycle starts when the pace says, even while its data is still read: its
                # first budgets go on with the last snapshot meanwhile, as any evaluation during a
                # fetch does (Runtime.snapshot). Waiting for the reading (up to one interval after
                # this cycle's start, as before) started the cycle after a minute's range queries a
                # whole interval after this one, and its budgets waited 15 s and what they ended
                # later in it (15.6-16.1 s at 10,000 live budgets; docs/operator.md, Scale).
                await asyncio.sleep(max(0.0, started + self.interval - result.early - self.monotonic()))
        finally:
            # The budgets not taken yet are skipped (``stopping``: evaluate_all's runners take no
            # more) and the cycle ends once those taken are done.
            self.stopping.set()
            self.pool.shutdown(wait=False)
            self.driver.shutdown(wait=False)
            self.fetcher.shutdown(wait=False)
