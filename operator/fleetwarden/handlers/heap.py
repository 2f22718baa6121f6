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

Below Python's own allocator, glibc's ``malloc`` (which serves every block over 512 bytes: the
Prometheus answers, the kept detector states, large dicts and lists) gives each thread that
allocates its own arena, up to eight per core, and memory freed in one arena serves only that
arena. With the operator's worker threads each holding a part of the heap, RSS grew to hold a
dozen partly free arenas. So :func:`tune` also caps the arenas at :data:`MALLOC_ARENAS`
(``mallopt(M_ARENA_MAX)``; unless ``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES`` already set it, and
only on glibc). The threads hardly contend for them: they allocate while holding the GIL. And
:func:`settle` hands the pages freed after the first pass back to the system (``malloc_trim``),
and the fleet loop does again after every cycle (:func:`trim`, some 6 ms at 10,000 budgets):
a cycle's transient blocks (decoded answers, statuses) leave free pages behind that stayed
resident until the next cycle reused them (at 10,000 budgets 70 MiB at the end of a window).
Trimmed after each cycle, RSS falls by 30-45 MiB and the next cycle takes some back; the
window's maximum, 596-626 MiB in five runs against 637 MiB in one before, is inside the
machine's spread (docs/operator.md, "Scale"). It is kept because it costs so little.
Measured at 2,000 budgets (the same benchmark, one run each): 443 MiB RSS before (``--measure
180``), 323 MiB with two arenas (``--measure 120``).

The operator's image preloads jemalloc and puts Python's objects in it too (``LD_PRELOAD`` and
``PYTHONMALLOC=malloc``: the Dockerfile; docs/operator.md, Scale: "jemalloc"), which hands
freed memory back by itself: at 10,000 budgets RSS was 490-500 MiB against 580 on glibc's malloc
with its arenas capped and trimmed. The arena cap and glibc's account are then left out (they
would speak of a heap nothing uses): :func:`allocator` names the malloc the process calls, on
``/metrics`` as ``fleetwarden_operator_malloc_info``. Under jemalloc, :func:`trim` purges every
arena instead (its freed pages would otherwise go back over some ten seconds), jemalloc's own
account is on ``/metrics`` (:func:`jemalloc_bytes`: ``fleetwarden_operator_jemalloc_bytes``), and
so is the number of arenas it was given (:func:`jemalloc_arenas`). The image gives it one
(``MALLOC_CONF=narenas:1``; jemalloc's default is four per core), for the reason glibc's are
capped: the threads allocate holding the GIL, and each arena keeps partly used pages of its
own. At 10,000 budgets, with eight arenas 311-314 MiB allocated lay in 442-447 MiB of active
pages and RSS was 525-535 MiB; with one, 304-310 MiB in 400-408 MiB, RSS 452-459 MiB (docs/operator.md,
Scale: "One jemalloc arena").

Replay (``fleetwarden replay``) keeps the interpreter's defaults: its objects are the minutes of
one close, freed as it goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

YOUNG_THRESHOLD = 50_000  # new container objects between two young collections (CPython's default: 700)
MALLOC_ARENAS = 2  # glibc malloc arenas (its default: eight per core)
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _address(function: Any) -> int | None:
    return ctypes.cast(function, ctypes.c_void_p).value


def _process_malloc() -> int | None:
    """The address of the ``malloc`` the process calls (the first one the dynamic linker finds:
    an allocator in ``LD_PRELOAD`` comes before the C library's)."""
    return _address(ctypes.CDLL(None).malloc)


@functools.cache
def _glibc() -> Any:
    """glibc's C library when its ``malloc`` is the one the process calls, else None: another
    libc (musl, macOS), or another allocator preloaded (the operator's image preloads jemalloc:
    glibc's account and its trim would then speak of a heap nothing uses). Loaded once (every
    scrape reads malloc's account through it, and every fleet cycle trims through it)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    if _process_malloc() != _address(libc.malloc):
        return None
    return libc


_ALLOCATORS = (("jemalloc", "mallctl"), ("tcmalloc", "tc_malloc"), ("mimalloc", "mi_malloc"))


@functools.cache
def allocator() -> str:
    """Which ``malloc`` the process calls: ``glibc``, ``jemalloc``, ``tcmalloc``, ``mimalloc``,
    or ``other`` (on ``/metrics`` as ``fleetwarden_operator_malloc_info``)."""
    if _glibc() is not None:
        return "glibc"
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return "other"
    return next((name for name, symbol in _ALLOCATORS if hasattr(process, symbol)), "other")


@functools.cache
def _jemalloc() -> Any:
    """The process's symbols when the ``malloc`` it calls is jemalloc's (the image preloads it),
    else None. Loaded once (every scrape reads jemalloc's account, every fleet cycle purges)."""
    if allocator() != "jemalloc":
        return None
    process = ctypes.CDLL(None)
    process.mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    process.mallctl.restype = ctypes.c_int
    return process


JEMALLOC_PARTS = ("allocated", "active", "resident", "retained", "metadata")
_ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL: "arena.4096.purge" purges every arena


def jemalloc_bytes() -> dict[str, int] | None:
    """jemalloc's own account of its memory, in bytes (its ``stats.*``, read afresh): ``allocated``
    (blocks the program holds), ``active`` (the pages those blocks lie in), ``resident`` (pages
    jemalloc has in memory: active ones, its metadata, and freed pages not yet given back),
    ``retained`` (address space given back to the system but kept mapped: not resident) and
    ``metadata``. None when jemalloc is not the malloc the process calls, or cannot say (built
    without statistics)."""
    process = _jemalloc()
    if process is None:
        return None
    epoch = ctypes.c_uint64(1)
    if process.mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch)) != 0:  # refresh the stats
        return None
    out: dict[str, int] = {}
    for part in JEMALLOC_PARTS:
        value = _mallctl_read(process, f"stats.{part}", ctypes.c_size_t)
        if value is None:
            return None
        out[part] = value
    return out


def jemalloc_arenas() -> int | None:
    """How many arenas jemalloc was configured with (``opt.narenas``: four per core unless
    ``MALLOC_CONF`` says otherwise; the image says one), or None when jemalloc is not the malloc."""
    process = _jemalloc()
    return None if process is None else _mallctl_read(process, "opt.narenas", ctypes.c_uint)


def _mallctl_read(process: Any, name: str, kind: Any) -> int | None:
    """One of jemalloc's numbers by name (``mallctl``), read as the C type ``kind``; None if refused."""
    value, size = kind(), ctypes.c_size_t(ctypes.sizeof(kind))
    if process.mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
        return None
    return int(value.value)


def limit_arenas(arenas: int = MALLOC_ARENAS) -> int | None:
    """Cap glibc's malloc arenas at ``arenas`` (see the module doc). Returns the cap set, or None
    when nothing was set: not glibc, or the environment chose already."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    libc = _glibc()
    if libc is None or libc.mallopt(_M_ARENA_MAX, arenas) != 1:
        return None
    global _arena_cap
    _arena_cap = arenas
    return arenas


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h, glibc 2.33 and later): every field a ``size_t``."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_bytes() -> dict[str, int] | None:
    """glibc's own account of the memory ``malloc`` holds, in bytes, over all its arenas:
    ``in_use`` (blocks allocated now, in the arenas), ``free`` (blocks freed and kept for reuse,
    mostly holes between blocks in use; :func:`trim` gives the whole pages among them back, which
    stay counted here, so not all of it need be resident) and
    ``mmapped`` (large blocks each in a mapping of its own, given back when freed). None when
    it cannot say: not glibc, or a glibc older than 2.33 (no ``mallinfo2``). Python's own
    allocator (objects of 512 bytes or less) takes its memory in 1 MiB mappings outside these."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {"in_use": int(info.uordblks), "free": int(info.fordblks), "mmapped": int(info.hblkhd)}


def trim() -> bool:
    """Give the pages malloc holds free back to the system: glibc's ``malloc_trim``, or jemalloc's
    purge of every arena (its freed pages otherwise go back by themselves over some ten seconds);
    whether glibc gave any back, or jemalloc's purge ran. Its runs and time are counted (``fleetwarden_operator_malloc_trim_seconds_total``)."""
    libc, jemalloc = _glibc(), _jemalloc()
    if libc is None and jemalloc is None:
        return False
    started = time.perf_counter()
    if libc is not None:
        given = bool(libc.malloc_trim(0))  # (ctypes lets go of the GIL meanwhile)
    else:
        given = jemalloc.mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0) == 0
    with _trim_lock:
        _trims[0] += 1
        _trims[1] += time.perf_counter() - started
    return given


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
        frozen.add_metric([], _frozen)  # (gc.get_freeze_count() walks every frozen object: not per scrape)
        yield frozen
        info = GaugeMetricFamily("fleetwarden_operator_malloc_info",
                                 "The malloc the operator calls (1): glibc's, or an allocator preloaded "
                                 "(the image preloads jemalloc).", labels=["allocator"])
        info.add_metric([allocator()], 1)
        yield info
        # Each account is absent when its allocator is not the one in use or cannot say (never a 0 for an unknown).
        for name, doc, held in (
                ("fleetwarden_operator_malloc_bytes", "Memory glibc's malloc holds, by part: in_use, free (freed, "
                 "kept for reuse) and mmapped (large blocks in mappings of their own).", malloc_bytes()),
                ("fleetwarden_operator_jemalloc_bytes", "Memory jemalloc holds, by part (its stats.*): allocated, "
                 "active, resident (in memory: active pages, metadata, freed pages not yet given back), retained "
                 "(given back, still mapped) and metadata.", jemalloc_bytes())):
            if held is not None:
                account = GaugeMetricFamily(name, doc, labels=["part"])
                for part, value in held.items():
                    account.add_metric([part], value)
                yield account
        jemalloc_arenas_ = jemalloc_arenas()
        if jemalloc_arenas_ is not None:
            arenas = GaugeMetricFamily("fleetwarden_operator_jemalloc_arenas",
                                       "The arenas jemalloc was configured with (opt.narenas; MALLOC_CONF).")
            arenas.add_metric([], jemalloc_arenas_)
            yield arenas
        if _glibc() is not None or _jemalloc() is not None:  # (absent: no trim or purge to run)
            trims = CounterMetricFamily("fleetwarden_operator_malloc_trims",
                                        "Runs of glibc's malloc_trim, or jemalloc's purge of every arena "
                                        "(after each fleet cycle: handlers/heap.py).")
            trims.add_metric([], _trims[0])
            yield trims
            trimmed = CounterMetricFamily("fleetwarden_operator_malloc_trim_seconds",
                                          "Time spent in glibc's malloc_trim or jemalloc's purge.")
            trimmed.add_metric([], _trims[1])
            yield trimmed
        if _arena_cap is not None:  # (absent: not glibc, or the environment's own choice)
            arenas = GaugeMetricFamily("fleetwarden_operator_malloc_arenas",
                                       "The cap the operator set on glibc's malloc arenas.")
            arenas.add_metric([], _arena_cap)
            yield arenas


CLOCK = Clock()
_trim_lock = threading.Lock()
_trims = [0, 0.0]  # trim(): runs, seconds
_arena_cap: int | None = None  # what limit_arenas set in this process
_frozen = 0  # what settle froze
_settle_lock = threading.Lock()
_settled = False


def tune(registry: Any = None) -> tuple[int, int, int]:
    """Raise the young threshold, cap malloc's arenas and start counting the collector's time (in
    ``registry`` when given, once). Returns the thresholds that were in place."""
    limit_arenas()
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
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = gc.get_freeze_count()
    trim()
    return True
