"""How far a fleet of replicas can pass a tool rate limit: the most calls the whole fleet made
in any minute, for N = 1, 3 and 10 replicas, without and with the per-replica share.

    python benchmarks/fleet_limits.py [--limit 120] [--minutes 3] [--speed 60]

Each replica is a thread with its own Tracker, policy and rate limiter (as each pod has), calling
one tool as fast as its limiter lets it (action deny: a refused call is dropped). The replicas share
one wall clock, sped up ``--speed`` times so that a minute passes in a second. "alone" is each
replica enforcing the whole limit (no replicas.json, the old behaviour); "shared" is each enforcing
1/N of it (replicas.json says N). The bound is the limit plus one bucket's burst (one minute's worth).
"""

from __future__ import annotations

import argparse
import bisect
import threading
import time

from prometheus_client import CollectorRegistry

from fleetwarden import sdk
from fleetwarden.core import spec


def most_in_a_minute(times: list[float]) -> int:
    """The most calls in any 60 s window (``times`` in simulated seconds)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 60.0) - i for i, t in enumerate(times)), default=0)


def run(replicas: int, limit: float, shared: bool, minutes: float, speed: float) -> int:
    start = time.monotonic()

    def clock() -> float:
        return (time.monotonic() - start) * speed

    rules = spec.CostPolicySpec.model_validate({"rateLimits": {"toolCallsPerMinute": limit, "action": "deny"}})
    counts = {"bot": replicas} if shared else None
    end = minutes * 60.0
    calls: list[list[float]] = [[] for _ in range(replicas)]
    ready = threading.Barrier(replicas + 1)

    def replica(i: int) -> None:
        tracker = sdk.Tracker("bot", registry=CollectorRegistry(), clock=clock,
                              policy=sdk.GuardrailPolicy(rules, replicas=counts, clock=clock))
        task = tracker.start_task("w")
        mine = calls[i]
        ready.wait()
        while (now := clock()) < end:
            try:
                task.check_tool("crm.search")
                mine.append(now)
            except sdk.RateLimited as exc:
                time.sleep(min(exc.retry_after / speed, 0.01))

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(replicas)]
    for t in threads:
        t.start()
    ready.wait()
    for t in threads:
        t.join()
    return most_in_a_minute([t for mine in calls for t in mine])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=120.0, help="toolCallsPerMinute")
    parser.add_argument("--minutes", type=float, default=3.0, help="simulated minutes per run")
    parser.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    args = parser.parse_args()
    if not (args.limit > 0 and args.minutes >= 1 and args.speed > 0):
        parser.error("--limit and --speed must be > 0 and --minutes >= 1")
    bound = 2 * args.limit
    print(f"toolCallsPerMinute {args.limit:g}; bound = limit + one burst = {bound:g} calls in any minute")
    print(f"{'replicas':>8} {'alone: most/min':>16} {'overshoot':>10} {'shared: most/min':>17} {'overshoot':>10}"
          f" {'within bound':>13}")
    for n in (1, 3, 10):
        alone = run(n, args.limit, False, args.minutes, args.speed)
        shared = run(n, args.limit, True, args.minutes, args.speed)
        print(f"{n:>8} {alone:>16} {alone - args.limit:>+10g} {shared:>17} {shared - args.limit:>+10g}"
              f" {'yes' if shared <= bound else 'NO':>13}")


if __name__ == "__main__":
    main()
