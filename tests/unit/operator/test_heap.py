"""The operator's garbage-collector settings (handlers/heap.py): a raised young threshold, one
collect-and-freeze once settled, and the collector's runs and time on /metrics."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator

import prometheus_client as pc
import pytest

from fleetwarden.handlers import heap


@pytest.fixture
def restored() -> Iterator[None]:
    """Put the interpreter's collector back as it was (this test process is pytest's)."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    settled, frozen = heap._settled, heap._frozen  # noqa: SLF001 - reset between tests
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks[:] = callbacks
        gc.unfreeze()
        heap._settled, heap._frozen = settled, frozen  # noqa: SLF001


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
    if heap._glibc() is not None and "MALLOC_ARENA_MAX" not in os.environ:  # noqa: SLF001
        assert sample(registry, "fleetwarden_operator_malloc_arenas") == heap.MALLOC_ARENAS


@pytest.mark.usefixtures("restored")
def test_settle_collects_and_freezes_once() -> None:
    registry = pc.CollectorRegistry()
    heap.tune(registry)
    heap._settled, heap._frozen = False, 0  # noqa: SLF001 - as at the operator's start
    gc.unfreeze()
    assert sample(registry, "fleetwarden_operator_gc_frozen_objects") == 0
    cycle = Node()
    cycle.me = cycle  # garbage only the cyclic collector frees
    probe = weakref.ref(cycle)
    del cycle
    assert heap.settle() is True
    assert probe() is None  # collected before the freeze, not frozen with the rest
    # A frozen object can still be freed (by another thread too), so the count only falls after the
    # freeze: the page shows what was frozen, at least what is frozen now.
    frozen = sample(registry, "fleetwarden_operator_gc_frozen_objects")
    assert 0 < gc.get_freeze_count() <= frozen
    fresh = [[] for _ in range(1000)]  # tracked after the freeze: a second freeze would take them
    assert heap.settle() is False  # once
    assert gc.get_freeze_count() <= frozen
    del fresh


def test_the_clock_pairs_start_and_stop_per_thread() -> None:
    clock = heap.Clock()
    clock("start", {"generation": 1})
    clock("stop", {"generation": 1})
    clock("stop", {"generation": 2})  # a stop without its start (the hook added mid-collection)
    assert clock.runs == [0, 1, 1]
    assert clock.seconds[0] == 0.0 and clock.seconds[2] == 0.0  # no time without its start


ARENAS = r"""
import ctypes, os, sys, tempfile, threading
from fleetwarden.handlers import heap
capped = heap.limit_arenas() if sys.argv[1] == "capped" else None
start = threading.Barrier(12)
done = threading.Barrier(13)
held = []

def work():
    start.wait()
    held.append(bytearray(4096))  # malloc'd by this thread, in its arena
    done.wait()

threads = [threading.Thread(target=work) for _ in range(12)]
for t in threads:
    t.start()
done.wait()
libc = heap._glibc()
path = os.path.join(tempfile.mkdtemp(), "info.xml")
libc.fopen.restype = ctypes.c_void_p
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(capped, open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(heap._glibc() is None, reason="malloc arenas are glibc's")  # noqa: SLF001
@pytest.mark.parametrize("mode", ["capped", "default"])
def test_malloc_arenas_are_capped_for_the_threads_of_a_fresh_process(mode: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", ARENAS, mode], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    arenas = int(out[1])
    if mode == "capped":
        assert out[0] == str(heap.MALLOC_ARENAS) and arenas <= heap.MALLOC_ARENAS
    else:  # what the cap prevents: twelve threads at once take arenas of their own
        assert out[0] == "None" and arenas > heap.MALLOC_ARENAS


def test_an_arena_cap_set_by_the_environment_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.limit_arenas() is None


TRIM = r"""
from fleetwarden.handlers import heap

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

blocks = [bytes(2000) + bytes([i % 256]) for i in range(40_000)]  # 80 MB, each a malloc of its own
pin = bytes(2000) + b"!"  # above them, so free() alone cannot shrink the heap from its top
del blocks
before = rss()
print(heap.trim(), before - rss())
"""


@pytest.mark.skipif(heap._glibc() is None, reason="malloc_trim is glibc's")  # noqa: SLF001
def test_trim_hands_freed_pages_back() -> None:
    trimmed, freed = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True,
                                    check=True).stdout.split()
    assert trimmed == "True" and int(freed) > 40_000_000


@pytest.mark.skipif(heap._glibc() is None, reason="malloc_trim is glibc's")  # noqa: SLF001
def test_each_trim_is_counted_with_its_time() -> None:
    def counted() -> dict[str, float]:
        return {s.name: s.value for family in heap.CLOCK.collect() for s in family.samples
                if s.name.startswith("fleetwarden_operator_malloc_trim")}

    before = counted()
    heap.trim()
    heap.trim()
    after = counted()
    assert after["fleetwarden_operator_malloc_trims_total"] == before["fleetwarden_operator_malloc_trims_total"] + 2
    assert after["fleetwarden_operator_malloc_trim_seconds_total"] >= before["fleetwarden_operator_malloc_trim_seconds_total"]


ACCOUNT = r"""
from fleetwarden.handlers import heap

start = heap.malloc_bytes()
blocks = [bytes(2000) + bytes([i % 256]) for i in range(40_000)]  # 80 MB, each a malloc of its own
held = heap.malloc_bytes()
del blocks[::2]  # every other block freed: 40 MB of holes the heap keeps between those in use
holes = heap.malloc_bytes()
print(*(d[k] for d in (start, held, holes) for k in ("in_use", "free", "mmapped")))
"""


@pytest.mark.skipif(heap._glibc() is None, reason="the account is glibc's")  # noqa: SLF001
def test_mallocs_account_tells_blocks_in_use_from_freed_ones_it_holds() -> None:
    out = [int(x) for x in subprocess.run([sys.executable, "-c", ACCOUNT], capture_output=True, text=True,
                                          check=True).stdout.split()]
    start, held, holes = out[0:3], out[3:6], out[6:9]
    assert held[0] - start[0] > 80_000_000  # the blocks, in use
    assert holes[0] < held[0] - 38_000_000  # half of them freed ...
    assert holes[1] > held[1] + 38_000_000  # ... and held as free memory, not given back
    assert holes[2] == held[2]  # none of them large enough for a mapping of its own


@pytest.mark.skipif(heap._glibc() is None, reason="the account is glibc's")  # noqa: SLF001
def test_the_account_is_on_the_page_by_part() -> None:
    registry = pc.CollectorRegistry()
    registry.register(heap.Clock())
    for part in ("in_use", "free", "mmapped"):
        assert sample(registry, "fleetwarden_operator_malloc_bytes", part=part) >= 0
    assert sample(registry, "fleetwarden_operator_malloc_bytes", part="in_use") > 0


def test_an_account_glibc_cannot_give_is_left_off_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_glibc", lambda: None)  # another libc: musl, macOS
    assert heap.malloc_bytes() is None
    registry = pc.CollectorRegistry()
    registry.register(heap.Clock())
    assert registry.get_sample_value("fleetwarden_operator_malloc_bytes", {"part": "in_use"}) is None


@pytest.fixture
def fresh_allocator() -> Iterator[None]:
    """``_glibc``, ``_jemalloc`` and ``allocator`` asked again (they are cached for the process)."""
    heap._glibc.cache_clear()  # noqa: SLF001
    heap._jemalloc.cache_clear()  # noqa: SLF001
    heap.allocator.cache_clear()
    yield
    heap._glibc.cache_clear()  # noqa: SLF001
    heap._jemalloc.cache_clear()  # noqa: SLF001
    heap.allocator.cache_clear()


def test_a_malloc_other_than_glibcs_is_named_and_glibcs_account_and_trim_are_not_used(
        monkeypatch: pytest.MonkeyPatch, fresh_allocator: None) -> None:
    if heap._glibc() is None:  # noqa: SLF001
        pytest.skip("the C library is not glibc")
    assert heap.allocator() == "glibc"
    heap._glibc.cache_clear()  # noqa: SLF001
    heap.allocator.cache_clear()
    monkeypatch.setattr(heap, "_process_malloc", lambda: 1)  # the process calls a malloc not glibc's
    assert heap._glibc() is None  # noqa: SLF001
    assert heap.allocator() == "other"  # (no jemalloc, tcmalloc or mimalloc symbol in this process)
    assert heap.malloc_bytes() is None and heap.trim() is False and heap.limit_arenas() is None
    registry = pc.CollectorRegistry()
    registry.register(heap.Clock())
    assert registry.get_sample_value("fleetwarden_operator_malloc_info", {"allocator": "other"}) == 1
    assert registry.get_sample_value("fleetwarden_operator_malloc_bytes", {"part": "in_use"}) is None
    assert registry.get_sample_value("fleetwarden_operator_malloc_trims_total") is None


def test_glibcs_malloc_is_named_on_the_page(fresh_allocator: None) -> None:
    registry = pc.CollectorRegistry()
    registry.register(heap.Clock())
    name = "glibc" if heap._glibc() is not None else heap.allocator()  # noqa: SLF001
    assert registry.get_sample_value("fleetwarden_operator_malloc_info", {"allocator": name}) == 1


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
NAMED = r"""
from fleetwarden.handlers import heap
print(heap.allocator(), heap.malloc_bytes(), heap.limit_arenas(), sorted(heap.jemalloc_bytes() or {}) == sorted(heap.JEMALLOC_PARTS))
"""


@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason="jemalloc is not installed here (the image preloads it)")
def test_jemalloc_preloaded_is_named_and_glibcs_heap_left_alone() -> None:
    env = dict(os.environ, LD_PRELOAD=JEMALLOC)
    out = subprocess.run([sys.executable, "-c", NAMED], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["jemalloc", "None", "None", "True"]


PURGE = r"""
import prometheus_client as pc
from fleetwarden.handlers import heap

MIB = 1 << 20
start = heap.jemalloc_bytes()
blocks = [bytes(2000) + bytes([i % 256]) for i in range(40_000)]  # 80 MB, each a malloc of its own
held = heap.jemalloc_bytes()
del blocks
freed = heap.jemalloc_bytes()
trimmed = heap.trim()
purged = heap.jemalloc_bytes()
registry = pc.CollectorRegistry()
registry.register(heap.Clock())
page = registry.get_sample_value("fleetwarden_operator_jemalloc_bytes", {"part": "resident"})
trims = registry.get_sample_value("fleetwarden_operator_malloc_trims_total")
print(trimmed, (held["allocated"] - start["allocated"]) // MIB, (held["allocated"] - freed["allocated"]) // MIB,
      (freed["resident"] - purged["resident"]) // MIB, page is not None and page > 0, trims)
"""


@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason="jemalloc is not installed here (the image preloads it)")
def test_jemallocs_account_and_its_purge_give_freed_pages_back() -> None:
    """With jemalloc preloaded (PYTHONMALLOC=malloc, as the image runs it), its account tells the
    blocks held from the pages resident, and trim() purges the freed pages at once."""
    env = dict(os.environ, LD_PRELOAD=JEMALLOC, PYTHONMALLOC="malloc", MALLOC_CONF="dirty_decay_ms:60000")
    out = subprocess.run([sys.executable, "-c", PURGE], env=env, capture_output=True, text=True, check=True).stdout.split()
    trimmed, allocated, freed, purged, on_page, trims = out
    # the blocks (76 MiB of bytes, 78 in jemalloc's 2 KiB class), held then freed; the interpreter's own
    # allocations come and go meanwhile, so the account moves by about that, not to the MiB
    assert trimmed == "True" and int(allocated) >= 70 and int(freed) >= 70
    assert int(purged) >= 60  # their pages were still resident (a minute's decay), and the purge gave them back
    assert on_page == "True" and float(trims) == 1.0


ARENAS_CONFIGURED = r"""
import prometheus_client as pc
from fleetwarden.handlers import heap

registry = pc.CollectorRegistry()
registry.register(heap.Clock())
print(heap.jemalloc_arenas(), registry.get_sample_value("fleetwarden_operator_jemalloc_arenas"))
"""


@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason="jemalloc is not installed here (the image preloads it)")
@pytest.mark.parametrize("conf", ["narenas:1", ""])
def test_the_arenas_jemalloc_was_given_are_on_the_page(conf: str) -> None:
    """The image's MALLOC_CONF (one arena) is seen to take effect; without it, jemalloc's own four per core."""
    env = dict(os.environ, LD_PRELOAD=JEMALLOC, PYTHONMALLOC="malloc", MALLOC_CONF=conf)
    arenas, on_page = subprocess.run([sys.executable, "-c", ARENAS_CONFIGURED], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()
    assert (int(arenas) == 1 if conf else int(arenas) >= 4) and float(on_page) == int(arenas)  # (four per core)
