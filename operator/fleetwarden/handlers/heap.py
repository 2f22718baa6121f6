"""The operator's cyclic garbage collector: its young threshold, a freeze once settled, its time.

CPython's collector runs a young collection every 700 new container objects (dicts, lists,
dataclass instances), and an object alive across two of them moves to the oldest generation,
which is scanned in full each time it has grown by a quarter. One budget's evaluation makes many
objects that live for its few milliseconds (its restored detector state, windows, findings,
status); with the default threshold many of them outlived two young collections, so the oldest
generation kept growing by garbage and was scanned again and again. Measured on the 2,000-budget
benchmark (``python benchmarks/operator_scale.py --budgets 2000 --evaluation fleet``): 46 full
scans of 650,000 objects, 27 s of a 254 s run, and 41 s for all three generations.

So the operator (:func:`tune`, called by its kopf startup handler, before any evaluation):

- raises the young threshold to :data:`YOUNG_THRESHOLD`, so an evaluation's objects die young
  (the other two thresholds stay as they are);
- once the first pass over every budget is done (:func:`settle`, from the fleet loop; in
  ``timers`` mode once kopf has filled its indexes), collects once and **freezes** what is
  left: the modules, kopf's indexed bodies, the kept minutes and detector states. Frozen
  objects are never scanned again; they are still freed as soon as nothing refers to them
  (reference counting); only garbage in a reference cycle among them is never freed, which
  is why this happens once and not every cycle;
- counts the collector's time by generation in ``fleetwarden_operator_gc_seconds_total`` and
  its runs in ``fleetwarden_operator_gc_collections_total`` (a ``gc.callbacks`` hook adds to
  plain numbers; the registry reads them at scrape time, so nothing locks inside a collection),
  and what it froze in ``fleetwarden_operator_gc_frozen_objects``.

Replay (``fleetwarden replay``) keeps the interpreter's defaults: its objects are the minutes of
one close, freed as it goes.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

YOUNG_THRESHOLD = 50_000  # new container objects between two young collections (CPython's default: 700)


class Clock(Collector):
    """The collector's time and runs by generation, from a ``gc.callbacks`` hook."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._started: dict[int, float] = {}  # thread -> when its running collection started

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside a collection, holding the GIL: no lock taken (one could be held by this thread).
        thread = threading.get_ident()
        if phase == "start":
            self._started[thread] = time.perf_counter()
            return
        started = self._started.pop(thread, None)
        generation = min(int(info.get("generation", 2)), 2)
        self.runs[generation] += 1
        if started is not None:
            self.seconds[generation] += time.perf_counter() - started

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        seconds = CounterMetricFamily("fleetwarden_operator_gc_seconds",
                                      "Time the operator's cyclic garbage collector ran, by generation.",
                                      labels=["generation"])
        runs = CounterMetricFamily("fleetwarden_operator_gc_collections",
                                   "Runs of the operator's cyclic garbage collector, by generation.",
                                   labels=["generation"])
        for generation in range(3):
            seconds.add_metric([str(generation)], self.seconds[generation])
            runs.add_metric([str(generation)], self.runs[generation])
        yield seconds
        yield runs
        frozen = GaugeMetricFamily("fleetwarden_operator_gc_frozen_objects",
                                   "Objects the operator froze once settled (never scanned again; 0 before).")
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen


CLOCK = Clock()
_settle_lock = threading.Lock()
_settled = False


def tune(registry: Any = None) -> tuple[int, int, int]:
    """Raise the young threshold and start counting the collector's time (in ``registry`` when
    given, once). Returns the thresholds that were in place."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, before[1], before[2])
    if CLOCK not in gc.callbacks:
        gc.callbacks.append(CLOCK)
    if registry is not None:
        with contextlib.suppress(ValueError):  # registered already
            registry.register(CLOCK)
    return before


def settle() -> bool:
    """Collect once and freeze every object left, the first time it is called; False after."""
    global _settled
    with _settle_lock:
        if _settled:
            return False
        _settled = True
    gc.collect()
    gc.freeze()
    return True
