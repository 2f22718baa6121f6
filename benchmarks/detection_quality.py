"""Detection quality of the anomaly detectors, on held-out fleets of an independent generator.

    python benchmarks/detection_quality.py [--split held-out] [--fleets 30] [--agents 25] [--hours 6]
    python benchmarks/detection_quality.py --suite scenarios [--seeds 30]

``--suite fleetgen`` (the default) builds fleets with ``fleetwarden.core.fleetgen`` (heavy-
tailed tasks, two-model agents, bursts, slow and fast agents, each hard shape injected once
per fleet with a label), runs them through the real bucketing (``core/buckets.py``) and
``DetectorSet`` with the default ``AnomalyParams``, and prints per shape: recall, time to
detect (median and p95 minutes from the labelled onset to the finding; and the median for
agents with at least one task a minute), and per benign shape the false alarms. A finding
matches a label of its kind, agent (and tool) made from one minute before the onset to
``DEADLINE`` after it; any other anomaly finding is a false alarm, counted against the
benign shape of its agent (after that shape's onset), against "plain" agents (heavy-tailed
costs, two-model agents, bursts), or, on an agent with a labelled anomaly, as "other
findings on an anomalous agent" (a second kind for the same problem, or a repeat).

Evaluation discipline (docs/detectors.md, "Evaluation"): the seeds of
``fleetgen.TUNING_SEEDS`` are for choosing detectors and parameters; the figures of
``fleetgen.HELD_OUT_SEEDS`` (``--split held-out``, the default) are reported for a settled
version only and never used to tune. ``--seeds-from`` must stay inside the chosen split.

``--suite scenarios`` is the older report over ``core/scenarios.py`` (the simulator-like
suite the detectors were first tuned on): per detector TP/FN/FP, precision, recall, time to
detect and onset error.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fleetwarden.core import buckets, detectors, events, findings, fleetgen, pricing, scenarios, series, spec

# How long after the onset a finding still counts as finding the label.
DEADLINE = {"runaway_loop": 3600.0, "tool_call_explosion": 3600.0, "model_update_spike": 3 * 3600.0,
            "cost_shift": 3 * 3600.0}
SCENARIO_DEADLINE = {"runaway_loop": 300.0, "tool_call_explosion": 300.0, "model_update_spike": 3 * 3600.0}
BUSY = 1.0  # tasks per minute from which the time-to-detect goal (5 minutes median) applies


def detect(evs: Iterable[dict[str, Any]], params: spec.AnomalyParams, prices: pricing.PriceTable,
           ends: dict[str, list[float]] | None = None) -> tuple[list[findings.Finding], int]:
    """The detectors' findings over ``evs`` (usage-event objects), and how many events there were;
    ``ends``, when given, gets each agent's task end times."""
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
        if ends is not None and ev["type"] == "task":
            ends.setdefault(ev["agent"], []).append(float(ev["time"]))
    feed(bucketer.finish())
    return out, n


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- the independent fleets


def seeds_of(split: str, fleets: int, first: int | None) -> range:
    """``fleets`` seeds of ``split`` (from ``first``, which must lie in it); held-out seeds are never for tuning."""
    pool = fleetgen.HELD_OUT_SEEDS if split == "held-out" else fleetgen.TUNING_SEEDS
    start = pool.start if first is None else first
    if start not in pool or start + fleets - 1 not in pool:
        raise SystemExit(f"--seeds-from {start} with --fleets {fleets} leaves the {split} seeds "
                         f"({pool.start}..{pool.stop - 1})")
    return range(start, start + fleets)


class Tally:
    """Labels found and missed, delays, and false alarms, per shape."""

    def __init__(self) -> None:
        self.injected: collections.Counter[str] = collections.Counter()
        self.found: collections.Counter[str] = collections.Counter()
        self.delay: dict[str, list[float]] = collections.defaultdict(list)
        self.delay_busy: dict[str, list[float]] = collections.defaultdict(list)
        self.tasks: dict[str, list[int]] = collections.defaultdict(list)  # tasks ended from onset to detection
        self.benign: collections.Counter[str] = collections.Counter()  # instances of each benign shape
        self.false: collections.Counter[str] = collections.Counter()  # false alarms by where they fell
        self.false_kinds: collections.Counter[str] = collections.Counter()
        self.fleets = 0
        self.agent_hours = 0.0

    def add(self, fleet: fleetgen.Fleet, found: list[findings.Finding], ends: dict[str, list[float]],
            verbose: bool) -> None:
        self.fleets += 1
        self.agent_hours += len(fleet.agents) * fleet.minutes / 60
        used: set[int] = set()
        for lb in fleet.labels:
            self.injected[lb.shape] += 1
            hits = [i for i, f in enumerate(found)
                    if i not in used and f.kind == lb.kind and f.agent == lb.agent and f.namespace == lb.namespace
                    and (lb.tool is None or f.tool == lb.tool)
                    and lb.onset - 60 <= f.time <= lb.onset + DEADLINE[lb.kind]]
            if not hits:
                if verbose:
                    print(f"missed: fleet {fleet.seed}: {lb}", file=sys.stderr)
                continue
            first = min(hits, key=lambda i: found[i].time)
            used.add(first)
            self.found[lb.shape] += 1
            minutes = (found[first].time - lb.onset) / 60
            self.delay[lb.shape].append(minutes)
            if lb.tasks_per_minute >= BUSY:
                self.delay_busy[lb.shape].append(minutes)
            mine = ends.get(lb.agent, [])
            self.tasks[lb.shape].append(bisect.bisect_right(mine, found[first].time) - bisect.bisect_left(mine, lb.onset))
        benign = {(b.namespace, b.agent): b for b in fleet.benign}
        labelled = {(lb.namespace, lb.agent): lb for lb in fleet.labels}
        for record in fleet.benign:
            self.benign[record.shape] += 1
        two_models = {(a.namespace, a.name) for a in fleet.agents if a.second is not None}
        for i, f in enumerate(found):
            if i in used or f.kind not in findings.ANOMALY_KINDS:
                continue
            key = (f.namespace, f.agent)
            shape, label = benign.get(key), labelled.get(key)
            if label is not None and f.time >= label.onset - 60:
                where = "other findings on an anomalous agent"
            elif shape is not None and f.time >= shape.onset:
                where = shape.shape
            else:
                where = "plain, two models" if key in two_models else "plain"
            self.false[where] += 1
            self.false_kinds[f.kind] += 1
            if verbose:
                print(f"false: fleet {fleet.seed}: [{where}] {f.kind} {f.agent} at +{(f.time - fleet.start) / 60:.0f}m "
                      f"{f.message}", file=sys.stderr)

    def report(self, hours: float, agents: int) -> None:
        print(f"{'shape':20} {'kind':20} {'found':>7} {'recall':>6} {'ttd med':>8} {'ttd p95':>8} "
              f"{'busy med':>8} {'tasks med':>9}")
        for shape, kind in fleetgen.POSITIVE.items():
            n, k = self.injected[shape], self.found[shape]
            d, busy = self.delay[shape], self.delay_busy[shape]
            print(f"{shape:20} {kind:20} {k:3d}/{n:<3d} {k / n if n else float('nan'):6.2f} {med(d):7.1f}m "
                  f"{pct(d, 0.95):7.1f}m {med(busy):7.1f}m {med(self.tasks[shape]):9.0f}")
        found = sum(self.found.values())
        injected = sum(self.injected.values())
        every = [d for shape in fleetgen.POSITIVE for d in self.delay[shape]]
        busy_all = [d for shape in fleetgen.POSITIVE for d in self.delay_busy[shape]]
        print(f"{'all shapes':41} {found:3d}/{injected:<3d} {found / injected if injected else float('nan'):6.2f} "
              f"{med(every):7.1f}m {pct(every, 0.95):7.1f}m {med(busy_all):7.1f}m")
        print(f"\n{'benign shape':38} {'instances':>9} {'false alarms':>12}")
        for shape in fleetgen.NEGATIVE:
            print(f"{shape:38} {self.benign[shape]:9d} {self.false[shape]:12d}")
        for where in ("plain", "plain, two models", "other findings on an anomalous agent"):
            print(f"{where:38} {'':9} {self.false[where]:12d}")
        healthy = sum(v for k, v in self.false.items() if k != "other findings on an anomalous agent")
        fleet_hours = self.fleets * hours
        per_fleet = healthy / self.fleets * (25 / agents) * (6 / hours) if self.fleets else float("nan")
        print(f"\nfalse alarms on healthy agents: {healthy} in {self.fleets} fleets ({fleet_hours:.0f} fleet-hours): "
              f"{healthy / fleet_hours:.3f} per fleet-hour, {per_fleet:.2f} per 25-agent 6-hour fleet; "
              f"by kind: {dict(self.false_kinds)}")


def fleetgen_main(args: argparse.Namespace) -> int:
    params = spec.AnomalyParams()
    prices = pricing.PriceTable()
    tally = Tally()
    seeds = seeds_of(args.split, args.fleets, args.seeds_from)
    n_events = 0
    t0 = time.perf_counter()
    for seed in seeds:
        evs, fleet = fleetgen.build(seed, agents=args.agents, hours=args.hours)
        ends: dict[str, list[float]] = {}
        found, n = detect(evs, params, prices, ends)
        n_events += n
        tally.add(fleet, found, ends, args.verbose)
    elapsed = time.perf_counter() - t0
    print(f"fleetgen, {args.split} seeds {seeds.start}..{seeds.stop - 1}: {len(seeds)} fleets of {args.agents} agents, "
          f"{args.hours:g} h; {n_events} events, {elapsed:.0f} s\n")
    tally.report(args.hours, args.agents)
    return 0


# ---------------------------------------------------------------- the scenario suite


def scenarios_main(args: argparse.Namespace) -> int:
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
        agents = args.mixed_agents if name == "mixed" else args.scenario_agents
        for seed in range(seeds):
            evs, labels = scenarios.build(name, seed, agents=agents)
            found, n = detect(evs, params, prices)
            n_events += n
            m = scenarios.match(labels, found, max_delay_s=SCENARIO_DEADLINE)
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
                benign_noisy += any(f.kind in findings.ANOMALY_KINDS for f in found)
    elapsed = time.perf_counter() - t0
    print(f"scenarios: {len(scenarios.SCENARIOS)}, seeds: {args.seeds} (daily cycle {args.daily_seeds}), "
          f"agents: {args.scenario_agents} (mixed {args.mixed_agents}), events: {n_events}, "
          f"{elapsed:.1f} s ({n_events / elapsed:,.0f} events/s)")
    print(f"{'detector':22} {'TP':>5} {'FN':>4} {'FP':>4} {'precision':>9} {'recall':>7} "
          f"{'ttd med':>8} {'ttd p95':>8} {'ttd max':>8} {'onset err p95':>13}")
    for kind in scenarios.ANOMALIES:
        t, f_n, f_p = tp[kind], fn[kind], fp[kind]
        prec = t / (t + f_p) if t + f_p else float("nan")
        rec = t / (t + f_n) if t + f_n else float("nan")
        d = delay[kind]
        mx = max(d) if d else float("nan")
        print(f"{kind:22} {t:5d} {f_n:4d} {f_p:4d} {prec:9.3f} {rec:7.3f} {med(d):7.1f}m {pct(d, 0.95):7.1f}m "
              f"{mx:7.1f}m {pct(onset_err[kind], 0.95):12.1f}m")
    print(f"benign runs with any finding: {benign_noisy} of {benign_runs}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--suite", choices=("fleetgen", "scenarios"), default="fleetgen")
    ap.add_argument("--split", choices=("held-out", "tuning"), default="held-out",
                    help="fleetgen seeds: held-out (report only) or tuning (default held-out)")
    ap.add_argument("--fleets", type=int, default=30, help="fleetgen: fleets (seeds) to run")
    ap.add_argument("--seeds-from", type=int, default=None, help="fleetgen: the first seed (inside the split)")
    ap.add_argument("--agents", type=int, default=25, help="fleetgen: agents per fleet")
    ap.add_argument("--hours", type=float, default=6.0, help="fleetgen: hours per fleet")
    ap.add_argument("--verbose", action="store_true", help="fleetgen: each miss and false alarm on stderr")
    ap.add_argument("--seeds", type=int, default=30, help="scenarios: seeds per scenario")
    ap.add_argument("--scenario-agents", type=int, default=3, help="scenarios: agents per fleet")
    ap.add_argument("--mixed-agents", type=int, default=8, help="scenarios: agents of the mixed fleets")
    ap.add_argument("--daily-seeds", type=int, default=3, help="scenarios: seeds of the 24-hour daily cycle")
    args = ap.parse_args(argv)
    return fleetgen_main(args) if args.suite == "fleetgen" else scenarios_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
