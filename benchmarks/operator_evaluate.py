"""The operator's own work per budget, without the API server: cold and warm cycles.

Runs ``fleetwarden.handlers.runtime.Runtime.reconcile`` (what the kopf timer calls) over N
AgentBudgets, one agent each with 90 minutes of per-minute data from one fixed fleet-wide
snapshot, against an API client that does nothing. Prints, per cycle, the wall time and
the milliseconds per budget:

- cycle 1 (cold): every agent's lookback window is refolded by the detectors;
- cycles 2-3 (warm, the same minute): the operator's later cycles within a minute, which
  take the refold and the hour's figures from the per-minute memo;
- then ``--minutes`` cycles each a minute later (a new complete minute for every agent): the
  detectors fold each agent's window again, stepped on from the state kept at its anchor
  (core/warmfold.py), or from an empty state with ``--refold`` (the operator before the
  anchored fold: the fetch is the 90-minute lookback, the detectors refold it every minute).
  With ``--quiet`` no agent has a minute after the first cycle (the clock moves, the data does
  not), as in ``operator_scale.py``'s backfilled fleet once its history ends: each minute the
  hour's figures change as minutes leave it, and the agents whose anchor moved fold again.

    python benchmarks/operator_evaluate.py [--budgets 10000] [--cycles 3] [--minutes 5] [--refold] [--quiet]
                                           [--interval 15] [--live [--per-minute K]] [--workers N]
                                           [--profile FILE] [--young N]

``--live``: the warm cycles as a live fleet's (and ``operator_scale.py``'s): each fetches again
(the fleet loop forgets the snapshot each cycle), the clock moves on within the first minute,
and each fetch's hour spend has moved by LIVE_DRIFT_USD (without it the warm cycles see the
very snapshot and clock of the cold one, which a live operator never does). ``--profile``:
cProfile of the warm same-minute cycles, for ``python -m pstats``. ``--young 50000``: the
garbage collector's young threshold as the operator sets it (``handlers/heap.py``).

``--per-minute K`` (with ``--live``): each of the ``--minutes`` is K cycles one interval apart, as
the operator's: the first after the minute turned steps every agent's new minute, the others
are where an anchor's move of the next minute is folded ahead (core/warmfold.py).

``--workers N``: each cycle's evaluations on N threads, run as the fleet loop runs them (N
runners and the runtime's gate: ``handlers/fleet.py``, ``evaluate_all``), where the default
evaluates them one after the other in this thread: what the operator's threads cost on one
interpreter (docs/operator.md, "Scale": "One evaluation's work at a time").

``--interval`` is the operator's evaluation interval (its default, 15 s): past 300 budgets a
status whose figures alone changed is written at the budget's turn (docs/operator.md), and the
snapshot is fetched again when it is 0.8 intervals old, inside a cycle too (about 0.3 s at
10,000 budgets). Before this flag the benchmark ran at an interval of 3600 s: every budget's
figures at once, as in a small fleet.

``benchmarks/operator_scale.py`` measures the same with the real API server (where the
status PATCHes dominate); this one isolates what the operator itself computes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import cProfile
import gc
import resource
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_scale import NAMESPACES, FixedFetcher  # noqa: E402 - the same snapshot as the scale benchmark

from fleetwarden.core import series, spec, warmfold  # noqa: E402
from fleetwarden.handlers import fleet as fleet_loop  # noqa: E402
from fleetwarden.handlers import heap, runtime  # noqa: E402

# --live: what a budget's hour spend moves between two fetches, USD: its 0.09 USD an hour over the
# 240 samples of a 15 s scrape, the hour's window sliding past one sample (docs/operator.md, How
# spend is read), enough to move the status' spend (rounded to 4 decimals) and the spend gauge.
LIVE_DRIFT_USD = 0.0004


class NoApi:
    """Accepts every write and does nothing (the API server is not what is measured here)."""

    def patch_budget_status(self, *args: Any) -> None:
        pass

    def post_event(self, *args: Any) -> None:
        pass


def fleet(budgets: int) -> tuple[list[tuple[str, str]], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    agents = [(f"scale-{i % NAMESPACES:03d}", f"agent-{i // NAMESPACES:05d}") for i in range(budgets)]
    bodies: list[dict[str, Any]] = []
    deployments: dict[str, list[dict[str, Any]]] = {}
    for ns, name in agents:
        bodies.append({"apiVersion": spec.API_VERSION, "kind": "AgentBudget",
                       "metadata": {"name": name, "namespace": ns, "uid": f"{ns}/{name}", "generation": 1},
                       "spec": {"selector": {"matchLabels": {"agent": name}},
                                "limits": [{"window": "hour", "amountUSD": 10}, {"window": "day", "amountUSD": 100}]}})
        deployments.setdefault(ns, []).append({
            "metadata": {"name": name, "namespace": ns, "uid": f"d/{ns}/{name}", "labels": {"agent": name}},
            "spec": {"replicas": 0, "template": {"spec": {"containers": [
                {"name": "agent", "image": "example.com/a:1", "env": [{"name": "MODEL", "value": "gpt-4o-mini"}]}]}}}})
    return agents, bodies, deployments


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--minutes", type=int, default=5, help="cycles each a minute after the last")
    parser.add_argument("--per-minute", type=int, default=1, metavar="K",
                        help="with --live: K cycles each of those minutes, one interval apart (the first is "
                             "'a minute later', the others 'later that minute')")
    parser.add_argument("--refold", action="store_true", help="no anchored fold: refold the lookback every minute")
    parser.add_argument("--quiet", action="store_true", help="no agent has a minute after the first cycle")
    parser.add_argument("--interval", type=float, default=15.0, help="the operator's evaluation interval (s)")
    parser.add_argument("--live", action="store_true",
                        help="as a live fleet between fetches: each cycle fetches again, the clock moves on "
                             "within the minute and each fetch's hour spend has moved a little")
    parser.add_argument("--workers", type=int, default=1,
                        help="evaluate each cycle on this many threads, as the fleet loop does (FLEETWARDEN_WORKERS); "
                             "default 1: one after the other in this thread")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="cProfile the warm same-minute cycles into FILE (pstats)")
    parser.add_argument("--young", type=int, metavar="N",
                        help="the garbage collector's young threshold, as the operator sets it "
                             f"({heap.YOUNG_THRESHOLD}: handlers/heap.py); default: CPython's")
    args = parser.parse_args()
    if args.young:
        gc.set_threshold(args.young, *gc.get_threshold()[1:])
    agents, bodies, deployments = fleet(args.budgets)
    start = float(series.minute_of(time.time()) + 1) if args.live else time.time()
    fetcher = FixedFetcher(agents, start, anchor_minutes=0 if args.refold else warmfold.ANCHOR_MINUTES,
                           drift=LIVE_DRIFT_USD if args.live else 0.0)
    step = min(args.interval, 55.0 / max(1, args.cycles - 1))  # --live: the warm cycles stay in the first minute
    profiler = cProfile.Profile() if args.profile else None
    pool = cf.ThreadPoolExecutor(args.workers, thread_name_prefix="fleet-eval") if args.workers > 1 else None
    rt = runtime.Runtime(interval=args.interval, fetcher=fetcher, kube_client=NoApi(),  # type: ignore[arg-type]
                         clock=lambda: fetcher.now)
    if args.quiet:
        fetcher.history_end = series.minute_of(fetcher.now)
    print(f"detectors: {'refold of the lookback every minute' if args.refold else 'anchored fold'}"
          f"{'; no minute after the first cycle' if args.quiet else ''}")
    per_minute = max(1, args.per_minute) if args.live else 1
    later_step = min(args.interval, 55.0 / max(1, per_minute - 1))  # the cycles of a minute stay in it
    later = ["a minute later"] + ["later that minute"] * (per_minute - 1)
    labels = ["cold"] + ["warm, same minute"] * (args.cycles - 1) + later * args.minutes
    turned = fetcher.now
    for n, label in enumerate(labels, start=1):
        if label == "a minute later":
            fetcher.now = turned = turned + 60
            rt.new_cycle()
        elif label == "later that minute":
            fetcher.now += later_step
            rt.new_cycle()
        elif args.live and n > 1:
            fetcher.now += step
            rt.new_cycle()  # the fleet loop forgets the snapshot each cycle
        rt.snapshot()  # the fleet-wide fetch is not part of a budget's evaluation
        profiling = profiler if label == "warm, same minute" else None
        if profiling is not None:
            profiling.enable()
        started = time.perf_counter()
        if pool is None:
            for body in bodies:
                rt.reconcile(body, deployments[body["metadata"]["namespace"]], ())
        else:  # as the fleet loop submits them (handlers/fleet.py)
            def one(body: Any) -> Any:
                return rt.reconcile(body, deployments[body["metadata"]["namespace"]], ())
            fleet_loop.evaluate_all(cast(Any, bodies), one, pool,  # its items are the fleet loop's; any will do
                                    runners=args.workers, gate=rt.gate)
        took = time.perf_counter() - started
        if profiling is not None:
            profiling.disable()
        print(f"cycle {n} ({label}): {len(bodies)} budgets in {took:.2f}s ({took / len(bodies) * 1000:.3f} ms per budget)",
              flush=True)
    print(f"detector folds: {rt.folds.warm} from a kept state, {rt.folds.cold} from the anchor, {len(rt.folds)} kept; "
          f"{rt.folds.prepared} folded ahead of an anchor's move, {rt.folds.ahead_used} of them used")
    memo = getattr(rt, "memo", None)
    if memo is not None:
        print(f"memo: {memo.misses} computed, {memo.hits} reused, {len(memo)} kept")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if profiler is not None:
        profiler.dump_stats(args.profile)
        print(f"profile of the warm same-minute cycles: {args.profile} (python -m pstats {args.profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
