#!/usr/bin/env python3
"""Are the anomaly detectors' findings identical between another checkout and this one?

    python scripts/detector-identity.py OTHER_CHECKOUT [--quick]

For a change meant to make the detectors faster and nothing else. Each side runs in its own
process (``PYTHONPATH=<side>/operator``) over the same corpus and writes every finding as
JSON (every field, floats to the last bit); the two outputs must be byte for byte the same:

- ``core/fleetgen`` fleets of several seeds and sizes (every shape), and fleets where ten of
  fifteen agents get a cost shift; per agent, the replay fold over the whole run, and the
  operator's refold of its 90-minute lookback (``stages.detector_findings``) every few
  minutes;
- every ``core/scenarios`` scenario (two seeds, three agents).

``scripts/replay-identity`` compares whole ``fleetwarden replay`` outputs of the simulator's
fleets; this one weighs the detectors (cost shifts above all) and the operator's refolds.
Exits 1 when the findings differ, naming the first line that does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOOKBACK = 90 * 60
# (seed, agents, hours, refold every N minutes, every shape or mostly cost shifts)
CORPUS = [(0, 25, 6.0, 11, "all"), (1, 25, 6.0, 11, "all"), (2, 10, 8.0, 11, "all"), (3, 40, 4.0, 11, "all"),
          (1000, 25, 6.0, 11, "all"), (10, 15, 6.0, 4, "shifts"), (11, 15, 6.0, 4, "shifts"),
          (1010, 15, 6.0, 4, "shifts")]
SHIFTS = ("cost_shift",) * 10 + ("pricier_model", "traffic_surge", "spike_busy", "spike_slow", "idle_return")


def dump(out_path: str, quick: bool) -> None:
    """This side's findings over the corpus, one JSON line each (run with this side's PYTHONPATH)."""
    from fleetwarden.core import (
        buckets,
        decision,
        detectors,
        events,
        fleetgen,
        pricing,
        scenarios,
        spec,
        stages,
    )

    params = spec.AnomalyParams()
    prices = pricing.PriceTable()
    with open(out_path, "w") as out:

        def write(tag: str, found: Any) -> None:
            for f in found:
                out.write(f"{tag}\t{json.dumps(dataclasses.asdict(f), sort_keys=True)}\n")

        def fold(tag: str, evs: Any, every: int) -> None:
            bucketer = buckets.Bucketer(prices)
            per: dict[tuple[str, str], list[Any]] = {}
            for ev in evs:
                bucketer.add(events.from_obj(ev))
                for m in bucketer.close():
                    per.setdefault((m.namespace, m.agent), []).append(m)
            for m in bucketer.finish():
                per.setdefault((m.namespace, m.agent), []).append(m)
            for (ns, name), minutes in sorted(per.items()):
                ds = detectors.DetectorSet(params, name, ns)
                write(f"{tag} fold {ns}/{name}", [f for m in minutes for f in ds.step(m)])
                agent = decision.AgentDeployment(name=name, namespace=ns)
                for end in range(minutes[0].minute + 60 * every, minutes[-1].minute + 61, 60 * every):
                    view = [m for m in minutes if end - LOOKBACK <= m.minute < end]
                    write(f"{tag} refold {ns}/{name} {end}", stages.detector_findings(agent, view, params))

        for seed, agents, hours, every, shapes in CORPUS[:2] if quick else CORPUS:
            evs, _ = fleetgen.build(seed, agents=agents, hours=hours,
                                    shapes=fleetgen.SHAPES if shapes == "all" else SHIFTS)
            fold(f"fleetgen:{seed}:{agents}:{hours}:{shapes}", evs, every)
        for name in () if quick else scenarios.SCENARIOS:
            for seed in range(2):
                evs, _ = scenarios.build(name, seed, agents=3)
                fold(f"scenario:{name}:{seed}", evs, 17)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("other", nargs="?", help="the other checkout (its operator/ is imported)")
    parser.add_argument("--quick", action="store_true", help="two fleets only")
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dump:
        dump(args.dump, args.quick)
        return 0
    if not args.other or not (Path(args.other) / "operator" / "fleetwarden").is_dir():
        parser.error(f"{args.other!r} is not a checkout of this repository (no operator/fleetwarden in it)")
    with tempfile.TemporaryDirectory() as tmp:
        outputs: list[list[str]] = []
        for side in (Path(args.other).resolve(), ROOT):
            out = str(Path(tmp) / f"{len(outputs)}.jsonl")
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--dump", out] + (["--quick"] if args.quick else [])
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(side / "operator")})
            lines = Path(out).read_text().splitlines()
            print(f"{side}: {len(lines)} findings in {time.perf_counter() - t0:.1f} s", flush=True)
            outputs.append(lines)
        before, after = outputs
        kinds = sorted({json.loads(line.split("\t", 1)[1])["kind"] for line in before})
        for i, (a, b) in enumerate(zip(before, after, strict=False)):
            if a != b:
                print(f"DIFFERENT at finding {i + 1}:\n  {a}\n  {b}")
                return 1
        if len(before) != len(after):
            print(f"DIFFERENT: {len(before)} findings against {len(after)}")
            return 1
        print(f"identical: {len(before)} findings ({', '.join(kinds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
