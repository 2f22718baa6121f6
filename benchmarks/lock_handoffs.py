"""What a call that lets the interpreter lock go costs an evaluation while other threads have work.

Every evaluation reads its budget's kept status (``handlers.runtime._unpack_status``). This reads
one status N times in one thread, alone and beside K threads that only compute (as the
operator's status writers and kopf's event loop do while a large fleet's figure writes go on),
in the kept form (JSON) and compressed with zlib, as it was kept before: zlib lets the lock go
for each call, so each read waits to get it back, up to the switch interval (5 ms).

An agent's new minute restores its detectors' kept state (``core/warmfold.py``: zstd, which lets
the lock go too, then pickle). ``--states`` also restores one such state N times (the detectors
folded over 90 minutes of an agent of the independent generator, ``core/fleetgen.py``), and
unpickles the same state not compressed: the difference is zstd's part, with its handover.

    python benchmarks/lock_handoffs.py [--reads 2000] [--busy 1 2] [--states]

Prints the wall and CPU seconds of the reads for each form and each number of busy threads.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from fleetwarden.core import buckets, detectors, events, fleetgen, pricing, series, spec, warmfold  # noqa: E402
from fleetwarden.handlers import runtime  # noqa: E402

STATUS = {
    "state": "Active", "observedGeneration": 1, "lastEvaluated": "2026-12-06T12:53:23Z",
    "conditions": [{"type": f"Condition{i}", "status": "False", "reason": "Reason", "observedGeneration": 1,
                    "lastTransitionTime": "2026-12-06T12:53:23Z", "message": "a message of some forty letters"}
                   for i in range(6)],
    "spend": {"hour": 4.1, "day": 40.2, "month": 300.3},
    "summary": {"capUSD": 100, "percentUsed": 4.1, "spendUSD": 4.1, "window": "hour"},
    "topAgents": [{"agent": f"agent-{i}", "usd": 0.5 * i} for i in range(5)],
    "topTools": [{"tool": f"tool-{i}", "usd": 0.1 * i, "calls": 10 * i} for i in range(5)],
    "models": [{"agent": "agent-0", "model": "gpt-4o-mini"}],
}


def zlib_form() -> Callable[[], object]:
    packed = zlib.compress(json.dumps(STATUS, separators=(",", ":")).encode(), 1)
    return lambda: json.loads(zlib.decompress(packed))


def kept_form() -> Callable[[], object]:
    packed = runtime._pack_status(STATUS)  # noqa: SLF001
    return lambda: runtime._unpack_status(packed)  # noqa: SLF001


def state_forms(minutes: int = 90) -> list[tuple[str, Callable[[], object]]]:
    """An agent's detectors folded over ``minutes`` of its minutes, restored as the operator keeps
    them (zstd, no dictionary) and unpickled alone."""
    evs, _ = fleetgen.build(1401, agents=4, hours=(minutes + 5) / 60)
    bucketer = buckets.Bucketer(pricing.PriceTable())
    per: dict[tuple[str, str], list[series.AgentMinute]] = {}
    for ev in evs:
        bucketer.add(events.from_obj(ev))
        for m in bucketer.close():
            per.setdefault((m.namespace, m.agent), []).append(m)
    (namespace, agent), ms = max(per.items(), key=lambda kv: len(kv[1]))
    params = spec.AnomalyParams()
    folded = detectors.DetectorSet(params, agent, namespace)
    for m in ms[:minutes]:
        folded.step(m)
    raw = warmfold.pickled(folded)
    blob = warmfold.compress(raw)

    def unpickled() -> object:
        warmfold._restoring.params = params  # noqa: SLF001 - as loads does
        try:
            return pickle.loads(raw)  # noqa: S301 - made just above
        finally:
            warmfold._restoring.params = None  # noqa: SLF001
    print(f"a detector state of {len(ms[:minutes])} minutes: {len(raw):,} bytes pickled, {len(blob):,} with zstd")
    return [("state (zstd)", lambda: warmfold.loads(blob, None, params)), ("state unpickled", unpickled)]


def timed(read: Callable[[], object], reads: int, busy: int) -> tuple[float, float]:
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for _ in range(1000):
                x += 1
    threads = [threading.Thread(target=spin, daemon=True) for _ in range(busy)]
    for t in threads:
        t.start()
    try:
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(reads):
            read()
        return time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        stop.set()
        for t in threads:
            t.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--busy", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--states", action="store_true", help="also restore a detector state (core/warmfold.py)")
    args = parser.parse_args()
    if args.reads < 1 or any(b < 0 for b in args.busy):
        parser.error("--reads must be at least 1 and --busy at least 0")
    print(f"{args.reads} reads of one status (switch interval {sys.getswitchinterval() * 1000:g} ms)")
    forms = [("kept (JSON)", kept_form()), ("zlib (before)", zlib_form())]
    if args.states:
        forms += state_forms()
    for name, form in forms:
        for busy in [0, *args.busy]:
            wall, cpu = timed(form, args.reads, busy)
            print(f"{name:16} beside {busy} busy thread(s): {wall:7.3f} s wall, {cpu:6.3f} s CPU, "
                  f"{wall / args.reads * 1e6:8.1f} us a read")


if __name__ == "__main__":
    main()
