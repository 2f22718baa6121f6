"""Detection quality of the anomaly detectors over the labelled scenario suite.

    python benchmarks/detection_quality.py [--seeds 30] [--agents 3] [--mixed-agents 8]

Runs every scenario of ``fleetwarden.core.scenarios`` over many seeds through the real
bucketing (``core/buckets.py``) and ``DetectorSet`` with the default ``AnomalyParams``,
matches findings to the injected labels, and prints per detector: true positives, missed
labels, false or repeated findings, precision, recall, time-to-detect (median and p95,
minutes from the labelled onset to the finding's time) and the onset error.
A finding is matched when it has the label's kind, agent and tool within the deadline
(runaway loop and tool explosion: 5 minutes; model update spike: 3 hours, as it waits
for ``minTasks`` tasks after the change).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from collections.abc import Iterable
from typing import Any

from fleetwarden.core import buckets, detectors, events, findings, pricing, scenarios, series, spec

DEADLINE = {"runaway_loop": 300.0, "tool_call_explosion": 300.0, "model_update_spike": 3 * 3600.0}


def detect(evs: Iterable[dict[str, Any]], params: spec.AnomalyParams, prices: pricing.PriceTable
           ) -> tuple[list[findings.Finding], int]:
    """The detectors' findings over ``evs`` (usage-event objects), and how many events there were."""
    bucketer = buckets.Bucketer(prices)
    sets: dict[tuple[str, str], detectors.DetectorSet] = {}
    out: list[findings.Finding] = []

    def feed(minutes: Iterable[series.AgentMinute]) -> None:
        for m in minutes:
            ds = sets.get((m.namespace, m.agent))
            if ds is None:
                ds = sets[(m.namespace, m.agent)] = detectors.DetectorSet(params, m.agent, m.namespace)
            out.extend(ds.step(m))

    n = 0
    for ev in evs:
        bucketer.add(events.from_obj(ev))
        n += 1
        feed(bucketer.close())
    feed(bucketer.finish())
    return out, n


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--mixed-agents", type=int, default=8)
    ap.add_argument("--daily-seeds", type=int, default=3, help="seeds of the 24-hour daily-cycle scenario")
    args = ap.parse_args(argv)
    params = spec.AnomalyParams()
    prices = pricing.PriceTable()
    tp: collections.Counter[str] = collections.Counter()
    fn: collections.Counter[str] = collections.Counter()
    fp: collections.Counter[str] = collections.Counter()
    delay: dict[str, list[float]] = collections.defaultdict(list)
    onset_err: dict[str, list[float]] = collections.defaultdict(list)
    benign_runs = benign_noisy = 0
    n_events = 0
    t0 = time.perf_counter()
    for name in scenarios.SCENARIOS:
        seeds = args.daily_seeds if name == "daily_cycle" else args.seeds
        agents = args.mixed_agents if name == "mixed" else args.agents
        for seed in range(seeds):
            evs, labels = scenarios.build(name, seed, agents=agents)
            found, n = detect(evs, params, prices)
            n_events += n
            m = scenarios.match(labels, found, max_delay_s=DEADLINE)
            for lb, f in m.found:
                tp[lb.kind] += 1
                delay[lb.kind].append((f.time - lb.onset) / 60)
                onset_err[lb.kind].append(abs(f.onset - lb.onset) / 60 if f.onset is not None else float("nan"))
            for lb in m.missed:
                fn[lb.kind] += 1
                print(f"missed: {name} seed {seed}: {lb}", file=sys.stderr)
            for f in m.extra:
                fp[f.kind] += 1
                print(f"extra: {name} seed {seed}: {f.kind} {f.agent} {f.message}", file=sys.stderr)
            if name in scenarios.BENIGN:
                benign_runs += 1
                benign_noisy += bool(found)
    elapsed = time.perf_counter() - t0
    print(f"scenarios: {len(scenarios.SCENARIOS)}, seeds: {args.seeds} (daily cycle {args.daily_seeds}), "
          f"agents: {args.agents} (mixed {args.mixed_agents}), events: {n_events}, "
          f"{elapsed:.1f} s ({n_events / elapsed:,.0f} events/s)")
    print(f"{'detector':22} {'TP':>5} {'FN':>4} {'FP':>4} {'precision':>9} {'recall':>7} "
          f"{'ttd med':>8} {'ttd p95':>8} {'ttd max':>8} {'onset err p95':>13}")
    for kind in scenarios.ANOMALIES:
        t, f_n, f_p = tp[kind], fn[kind], fp[kind]
        prec = t / (t + f_p) if t + f_p else float("nan")
        rec = t / (t + f_n) if t + f_n else float("nan")
        d = delay[kind]
        med = statistics.median(d) if d else float("nan")
        p95 = pct(d, 0.95) if d else float("nan")
        mx = max(d) if d else float("nan")
        oe = pct(onset_err[kind], 0.95) if onset_err[kind] else float("nan")
        print(f"{kind:22} {t:5d} {f_n:4d} {f_p:4d} {prec:9.3f} {rec:7.3f} {med:7.1f}m {p95:7.1f}m "
              f"{mx:7.1f}m {oe:12.1f}m")
    print(f"benign runs with any finding: {benign_noisy} of {benign_runs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
