"""The operator's garbage-collector settings (handlers/heap.py): a raised young threshold, one
collect-and-freeze once settled, and the collector's runs and time on /metrics."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import prometheus_client as pc
import pytest

from fleetwarden.handlers import heap


@pytest.fixture
def restored() -> Iterator[None]:
    """Put the interpreter's collector back as it was (this test process is pytest's)."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    settled = heap._settled  # noqa: SLF001 - reset between tests
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks[:] = callbacks
        gc.unfreeze()
        heap._settled = settled  # noqa: SLF001


class Node:
    me: object = None


def sample(registry: pc.CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not on the page"
    return value


@pytest.mark.usefixtures("restored")
def test_tune_raises_the_young_threshold_only_and_counts_collections_by_generation() -> None:
    gc.set_threshold(700, 11, 12)
    registry = pc.CollectorRegistry()
    assert heap.tune(registry) == (700, 11, 12)
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 11, 12)
    heap.tune(registry)  # twice: one hook, one registration
    assert gc.callbacks.count(heap.CLOCK) == 1
    before = {g: sample(registry, "fleetwarden_operator_gc_collections_total", generation=str(g)) for g in range(3)}
    gc.collect(2)
    gc.collect(0)
    after = {g: sample(registry, "fleetwarden_operator_gc_collections_total", generation=str(g)) for g in range(3)}
    assert after[2] == before[2] + 1 and after[0] == before[0] + 1 and after[1] == before[1]
    assert sample(registry, "fleetwarden_operator_gc_seconds_total", generation="2") >= 0.0  # on the page


@pytest.mark.usefixtures("restored")
def test_settle_collects_and_freezes_once() -> None:
    registry = pc.CollectorRegistry()
    heap.tune(registry)
    heap._settled = False  # noqa: SLF001 - as at the operator's start
    gc.unfreeze()
    assert sample(registry, "fleetwarden_operator_gc_frozen_objects") == 0
    cycle = Node()
    cycle.me = cycle  # garbage only the cyclic collector frees
    probe = weakref.ref(cycle)
    del cycle
    assert heap.settle() is True
    assert probe() is None  # collected before the freeze, not frozen with the rest
    frozen = gc.get_freeze_count()
    assert frozen > 0 and sample(registry, "fleetwarden_operator_gc_frozen_objects") == frozen
    assert heap.settle() is False  # once
    assert gc.get_freeze_count() == frozen


def test_the_clock_pairs_start_and_stop_per_thread() -> None:
    clock = heap.Clock()
    clock("start", {"generation": 1})
    clock("stop", {"generation": 1})
    clock("stop", {"generation": 2})  # a stop without its start (the hook added mid-collection)
    assert clock.runs == [0, 1, 1]
    assert clock.seconds[0] == 0.0 and clock.seconds[2] == 0.0  # no time without its start
