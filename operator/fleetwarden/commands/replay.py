"""`fleetwarden replay`: run the budgets, policies and detectors over a usage-event file.

    fleetwarden replay --events events.jsonl -f examples/support-swarm/ --output json

Reads usage events (JSON Lines, ``-`` is standard input; or Parquet, a file ending in
``.parquet``, with the ``parquet`` extra), applies the AgentBudget and
CostPolicy manifests given with ``-f`` (files or directories, the same YAML the cluster
gets) and prints the findings in time order: JSON Lines per ``docs/contracts/findings.md``
with ``--output json``, one readable line each with ``--output text``. Each broken line is
named on standard error (``events.jsonl:17: field 'type': ...``) and the rest is still
processed (in Parquet, a broken row is named by its number from 1 in place of the line);
a summary line ends standard error. With ``--jobs N`` (N > 1) the anomaly detectors run in N worker
processes, sharded by agent, beside the reading, pricing and policies in this one: the same
output, byte for byte. Beyond the contract, a line over 1 MiB, an
amount over 1e9, a call of more than 20 million tokens or an impossible numeric time is a
broken line too (``docs/design.md``, "Limits on usage events").

With ``--compare DIR_OR_FILE`` (repeatable like ``-f``) the events are replayed twice, under
the ``-f`` manifests and under the proposed ones, and what the proposed manifests would have
changed is printed instead of the findings: actions added or removed, tasks and tool calls
blocked, approvals raised and dollars saved by earlier kills (``docs/replay.md``; one JSON
object with ``--output json``).

Exit codes: 0 all lines valid; 1 some lines were broken; 2 usage error (bad manifest,
missing file, bad price file).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from fleetwarden import errors
from fleetwarden.core import counterfactual, events, findings, manifests, pricing, replay, timefmt

# New container objects between two young collections of the cyclic garbage collector while a replay
# runs (CPython's default: 700). A replay keeps every agent's detectors and windows alive for the
# whole file, and each minute's judgement makes many objects that live for microseconds: with the
# default, the collector scanned the oldest generation in full 30 times over the first 2 million
# events of the benchmark's file and took 12% of the replay; with this threshold, none (docs/design.md,
# "The collector during a replay"). The operator sets the same (handlers/heap.py).
YOUNG_THRESHOLD = 50_000


@contextlib.contextmanager
def collector_for_replay() -> Iterator[None]:
    """The young threshold at :data:`YOUNG_THRESHOLD` while the block runs (the detector pool's
    workers take it from this process), the thresholds before restored after."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "replay", help="find budget, policy and anomaly findings in a usage-event file",
        description="Replay usage events (JSON Lines or Parquet) through the budgets, cost policies and anomaly "
                    "detectors, printing findings in time order. No cluster needed.")
    parser.add_argument("--events", required=True, metavar="FILE",
                        help="usage events, JSON Lines ('-': stdin) or Parquet (*.parquet)")
    parser.add_argument("-f", "--filename", dest="manifests", action="append", default=[], metavar="FILE_OR_DIR",
                        help="AgentBudget/CostPolicy YAML (files or directories; repeatable)")
    parser.add_argument("--compare", dest="compare", action="append", default=[], metavar="FILE_OR_DIR",
                        help="proposed AgentBudget/CostPolicy YAML to compare with the -f ones (repeatable); "
                             "prints what they would have changed")
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--prices", metavar="FILE", help="price configuration (YAML) over the built-in prices")
    parser.add_argument("--jobs", "-j", type=_jobs, default=1, metavar="N",
                        help="parallel jobs (default 1): with N > 1 the anomaly detectors run in N worker "
                             "processes, sharded by agent; the output is the same as with 1")
    parser.set_defaults(func=run)


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of processes, at least 1, got {text!r}")
    return n


def _text_line(f: findings.Finding) -> str:
    who = f"{f.namespace}/{f.agent}"
    workflow = f" workflow={f.workflow}" if f.workflow else ""
    extra = "".join(f" {k}={v}" for k, v in (("budget", f.budget), ("tool", f.tool), ("task", f.task_id)) if v)
    return (f"{timefmt.rfc3339_ms(f.time)}  {f.severity.upper():8} {f.action:8} {f.kind:20} {who}{workflow}{extra}"
            f"  {f.message}")


def _dumper(output: str) -> tuple[IO[bytes] | IO[str], object]:
    if output == "json":
        try:
            import orjson

            return sys.stdout.buffer, lambda f: orjson.dumps(f.to_dict()) + b"\n"
        except ImportError:  # pragma: no cover
            import json

            return sys.stdout, lambda f: json.dumps(f.to_dict(), separators=(",", ":")) + "\n"
    return sys.stdout, lambda f: _text_line(f) + "\n"


def run(args: argparse.Namespace) -> int:
    with collector_for_replay():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    # 1. inputs a person can get wrong fail before any output: manifests, prices, the events file
    loaded = manifests.load(args.manifests)
    proposed = manifests.load(args.compare) if args.compare else None
    table = pricing.PriceTable.load(args.prices) if args.prices else pricing.PriceTable.from_config(None)
    source = args.events
    if source != "-" and not os.path.isfile(source):
        raise errors.InputError("is a directory, not a file of usage events" if os.path.isdir(source)
                                else "no such file", file=source)
    name = "<stdin>" if source == "-" else source

    # 2. broken lines are named on stderr as they come
    def on_error(exc: errors.FleetwardenError) -> None:
        if isinstance(exc, errors.InputError):
            where = f"{name}:{exc.line}" if exc.line is not None else name
            field = f" field {exc.field!r}:" if exc.field else ""
            print(f"{where}:{field} {exc.reason}", file=sys.stderr)
        else:
            print(f"{name}: {exc}", file=sys.stderr)

    # 3. findings stream out in time order (or, with --compare, the comparison of two replays)
    stats = replay.Stats()
    if proposed is not None:
        _compare(args, loaded, proposed, table, name, on_error, stats)
        _summary(loaded, stats, None, proposed)
        return 1 if stats.broken else 0
    out, dump = _dumper(args.output)
    try:
        stream = events.iter_events(source, file=name)
        for f in replay.run(stream, loaded.budgets, loaded.policies, table,
                            on_error=on_error, stats=stats, jobs=args.jobs):
            out.write(dump(f))  # type: ignore[operator]
        out.flush()
    except BrokenPipeError:  # `| head`: the reader has gone; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0

    # 4. the summary
    _summary(loaded, stats, stream.blank[0])
    return 1 if stats.broken else 0


def _summary(loaded: manifests.Manifests, stats: replay.Stats, blank: int | None,
             proposed: manifests.Manifests | None = None) -> None:
    skipped = f", {loaded.skipped} other documents skipped" if loaded.skipped else ""
    late = f", {stats.late} late (counted in a later minute)" if stats.late else ""
    late += f", {blank} blank lines skipped" if blank else ""
    print(f"fleetwarden replay: {stats.events} events read, {stats.broken} broken{late}, {stats.findings} findings, "
          f"{stats.agents} agents; {len(loaded.budgets)} budgets, {len(loaded.policies)} policies from "
          f"{loaded.files} files{skipped}"
          + (f"; compared with {len(proposed.budgets)} budgets, {len(proposed.policies)} policies from "
             f"{proposed.files} files" if proposed is not None else ""), file=sys.stderr)


def _compare(args: argparse.Namespace, current: manifests.Manifests, proposed: manifests.Manifests,
             table: pricing.PriceTable, name: str, on_error: Callable[[errors.FleetwardenError], None],
             stats: replay.Stats) -> None:
    """Replay under both sets of manifests, then print what the proposed ones change."""
    source = args.events
    buffered = list(events.iter_events(source, file=name)) if source == "-" else None

    def items() -> Iterable[events.Event | errors.EventError]:
        return buffered if buffered is not None else events.iter_events(source, file=name)

    runs = []
    for loaded, errs, st in ((current, on_error, stats), (proposed, None, None)):
        found = list(replay.run(items(), loaded.budgets, loaded.policies, table, on_error=errs, stats=st,
                                jobs=args.jobs))
        runs.append(counterfactual.Run(found, loaded.budgets, loaded.policies))
    result = counterfactual.compare(runs[0], runs[1], items(), table)
    if args.output == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(_compare_text(result))


def _compare_text(c: counterfactual.Comparison) -> str:
    def counts(fs: list[findings.Finding]) -> str:
        by = counterfactual.action_counts(fs)
        return ", ".join(f"{n} {a}" for a, n in by.items()) or "none"

    lines = [f"actions added:   {counts(c.added)}", f"actions removed: {counts(c.removed)}",
             f"blocked:   {len(c.blocked.tasks)} tasks, at least {c.blocked.calls_at_least} tool calls",
             f"unblocked: {len(c.unblocked.tasks)} tasks, at least {c.unblocked.calls_at_least} tool calls",
             f"approvals: {len(c.approvals_raised)} raised, {len(c.approvals_dropped)} no longer raised",
             f"dollars:   {c.saved_usd:.2f} saved by earlier kills, {c.lost_usd:.2f} spent by later or removed "
             f"kills, net {c.saved_usd - c.lost_usd:.2f}"
             + (f" ({c.unpriced_events} events with no known price not counted)" if c.unpriced_events else "")]
    for k in c.kills:
        lines.append(f"  kill {k.namespace}/{k.agent}: current {_when(k.current)}, proposed {_when(k.proposed)}, "
                     f"{k.spend_usd:.2f} USD in {k.events} events between")
    for sign, fs in (("+", c.added), ("-", c.removed)):
        lines.extend(f"{sign} {_text_line(f)}" for f in fs)
    return "\n".join(lines)


def _when(t: float) -> str:
    return "never" if t == float("inf") else timefmt.rfc3339_ms(t)
