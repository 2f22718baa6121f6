"""Replay throughput and memory, side by side with merely parsing the same file with orjson.

    python benchmarks/replay_throughput.py                 # 10 million events (a day of 1,000 agents)
    python benchmarks/replay_throughput.py --events 500000 # a quick run
    python benchmarks/replay_throughput.py --file my.jsonl # your own events

Generates (once, cached outside the repository in ~/.cache/fleetwarden-bench/) a file of
N usage events of a fleet whose agents are under an AgentBudget and a CostPolicy (token
caps, tool allowlist, rate limits, approval rule, anomaly detection), then, each in its own
process:

- parse: read the file line by line and ``orjson.loads`` each line, on one core (the floor);
- replay: ``fleetwarden.core.replay.run`` over ``events.iter_events`` (validation, pricing,
  minute buckets, budgets, policies, detectors), consuming every finding, on one core, with the
  garbage collector set as ``fleetwarden replay`` sets it (``collector_for_replay``);
- replay -jN: the same with ``jobs=N`` (``--jobs``, default: every core), the detectors in
  N worker processes sharded by agent, this one reading, pricing and applying the policies.

It prints the times, the ratios to the parse (issue 14's target: 2x on one core, under 1x
with every core) and the peak RSS of the replay (the largest of its processes) for two
lengths of one file: its first N/5 lines (the first fifth of the day: the same fleet at the
same density) and all N, to show memory does not grow with the length. (Before, the smaller
size was a file of its own, N/5 events over the whole day: a fifth of the density, which
compared densities, not lengths.) The machine's load
average is printed first: on a shared machine, compare ratios of one run only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetwarden-bench"
DAY = 86400
START = 1795824000  # 2026-11-28T00:00:00Z

MANIFESTS = """\
apiVersion: fleetwarden.dev/v1alpha1
kind: AgentBudget
metadata: {name: bench, namespace: bench}
spec:
  selector: {matchLabels: {fleetwarden.dev/budget: bench}}
  limits:
    - {window: hour, amountUSD: 400}
    - {window: day, amountUSD: 9000}
    - {window: month, amountUSD: 200000, calendar: true}
  killSwitch: {thresholdPercent: 150, window: hour}
---
apiVersion: fleetwarden.dev/v1alpha1
kind: CostPolicy
metadata: {name: bench, namespace: bench}
spec:
  selector: {matchLabels: {fleetwarden.dev/budget: bench}}
  tokenCaps: {perTask: 40000}
  rateLimits: {toolCallsPerMinute: 30, perTool: {crm.search: 20}}
  tools: {allow: ["crm.*", kb.search, "ticket.*"], deny: [ticket.delete]}
  toolPricesUSD: {kb.search: 0.001}
  approvals:
    - {name: refunds, tool: ticket.refund, amountAboveUSD: 200}
"""

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022"]
TOOLS = ["crm.search", "crm.get_customer", "kb.search", "ticket.update", "ticket.refund"]
WORKFLOWS = ["resolve_ticket", "triage", "refund"]


def generate(path: Path, n: int, agents: int = 1000, seed: int = 7) -> None:
    """N events of ``agents`` agents spread evenly over one day, in time order."""
    rng = random.Random(seed)
    rand = rng.random
    step = DAY / n
    names = [f"agent-{i:04d}" for i in range(agents)]
    heads = [
        f'{{"time":"%s","type":"%s","agent":"{a}","namespace":"bench",'
        f'"labels":{{"fleetwarden.dev/budget":"bench","team":"t{i % 7}"}},"workflow":"{WORKFLOWS[i % 3]}",'
        for i, a in enumerate(names)
    ]
    stamps: dict[int, str] = {}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", buffering=1 << 20) as out:
        buf = []
        for k in range(n):
            t = START + int(k * step)
            ts = stamps.get(t)
            if ts is None:
                stamps.clear()
                ts = stamps[t] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
            i = int(rand() * agents)
            task = f"t-{i}-{k // 20000}"
            r = rand()
            if r < 0.55:
                line = (heads[i] % (ts, "llm") + f'"task_id":"{task}","step":"answer","model":"{MODELS[i % 3]}",'
                        f'"input_tokens":{int(800 + 2000 * rand())},"output_tokens":{int(50 + 400 * rand())}}}')
            elif r < 0.87:
                tool = TOOLS[int(rand() * 5)]
                extra = f',"value_usd":{round(300 * rand(), 2)}' if tool == "ticket.refund" else ""
                line = heads[i] % (ts, "tool") + f'"task_id":"{task}","tool":"{tool}","cost_usd":0.002{extra}}}'
            elif r < 0.94:
                line = heads[i] % (ts, "task") + f'"task_id":"{task}","status":"completed"}}'
            elif r < 0.995:
                line = heads[i] % (ts, "outcome") + f'"task_id":"{task}","outcome":"resolved_ticket"}}'
            else:
                line = heads[i] % (ts, "human") + f'"task_id":"{task}","minutes":{round(5 * rand(), 1)}}}'
            buf.append(line)
            if len(buf) >= 10000:
                out.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            out.write("\n".join(buf) + "\n")
    tmp.replace(path)


def child(mode: str, path: str, manifests_dir: str) -> None:
    """One measurement in this process: print seconds and a count."""
    if mode == "parse":
        import orjson

        loads = orjson.loads
        t0 = time.perf_counter()
        count = 0
        with open(path, "rb") as fh:
            for line in fh:
                loads(line)
                count += 1
        print(time.perf_counter() - t0, count)
        return
    from fleetwarden.commands.replay import collector_for_replay
    from fleetwarden.core import events, manifests, pricing, replay

    jobs = int(mode.partition(":")[2] or 1)
    loaded = manifests.load([manifests_dir])
    table = pricing.PriceTable.from_config(None)
    stats = replay.Stats()
    t0 = time.perf_counter()
    count = 0
    with collector_for_replay():  # as `fleetwarden replay` runs it
        for _ in replay.run(events.iter_events(path), loaded.budgets, loaded.policies, table, stats=stats,
                            jobs=jobs):
            count += 1
    print(time.perf_counter() - t0, count, stats.events, stats.broken)


def first_lines(path: Path, out: Path, n: int) -> None:
    """The first ``n`` lines of ``path`` into ``out``: the same fleet at the same density, for a
    shorter time (the memory at two lengths compares length alone)."""
    tmp = out.with_suffix(".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.writelines(itertools.islice(src, n))
    tmp.replace(out)


def measure(mode: str, path: Path, manifests_dir: str) -> tuple[float, int, str]:
    """(seconds, peak RSS in MiB, child's output) of one measurement in a fresh process."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, str(path), manifests_dir],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{mode} failed: {out}")
    return float(out.split()[0]), usage.ru_maxrss // 1024, out.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the larger file")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--file", help="use this events file instead of generating (one size only)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes of the parallel replay")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        mdir = Path(tmp) / "manifests"
        mdir.mkdir()
        (mdir / "bench.yaml").write_text(MANIFESTS)
        if args.file:
            files = [Path(args.file)]
        else:
            CACHE.mkdir(parents=True, exist_ok=True)
            path = CACHE / f"events-{args.events}-{args.agents}.jsonl"
            if not path.exists():
                t0 = time.perf_counter()
                generate(path, args.events, args.agents)
                print(f"generated {path} ({args.events:,} events, {path.stat().st_size / 2**20:,.0f} MiB) "
                      f"in {time.perf_counter() - t0:.1f} s", flush=True)
            head = CACHE / f"events-{args.events}-{args.agents}.first-{args.events // 5}.jsonl"
            if not head.exists():
                first_lines(path, head, args.events // 5)
            files = [head, path]
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
        j = f"-j{args.jobs}"
        print(f"{'events':>12} {'MiB':>7} {'parse s':>8} {'replay s':>9} {'ratio':>6} {'replay' + j + ' s':>12} "
              f"{'ratio':>6} {'parse RSS':>10} {'replay RSS':>11} {'replay' + j + ' RSS':>14} findings")
        for path in files:
            parse_s, parse_rss, _ = measure("parse", path, str(mdir))
            replay_s, replay_rss, out = measure("replay", path, str(mdir))
            many_s, many_rss, many_out = measure(f"replay:{args.jobs}", path, str(mdir))
            _, found, n_events, broken = out.split()
            same = "" if many_out.split()[1:] == out.split()[1:] else f" (-j{args.jobs} DIFFERS: {many_out})"
            print(f"{int(n_events):>12,} {path.stat().st_size / 2**20:>7,.0f} {parse_s:>8.1f} {replay_s:>9.1f} "
                  f"{replay_s / parse_s:>5.2f}x {many_s:>12.1f} {many_s / parse_s:>5.2f}x {parse_rss:>6} MiB "
                  f"{replay_rss:>7} MiB {many_rss:>10} MiB {found} (broken lines: {broken}){same}", flush=True)


if __name__ == "__main__":
    main()
