"""`fleetwarden replay`: run the budgets, policies and detectors over a usage-event file.

    fleetwarden replay --events events.jsonl -f examples/support-swarm/ --output json

Reads usage events (JSON Lines, ``-`` is standard input; or Parquet, a file ending in
``.parquet``, with the ``parquet`` extra), applies the AgentBudget and
CostPolicy manifests given with ``-f`` (files or directories, the same YAML the cluster
gets) and prints the findings in time order: JSON Lines per ``docs/contracts/findings.md``
with ``--output json``, one readable line each with ``--output text``. Each broken line is
named on standard error (``events.jsonl:17: field 'type': ...``) and the rest is still
processed (in Parquet, a broken row is named by its number from 1 in place of the line);
a summary line ends standard error. Beyond the contract, a line over 1 MiB, an
amount over 1e9, a call of more than 20 million tokens or an impossible numeric time is a
broken line too (``docs/design.md``, "Limits on usage events").

Exit codes: 0 all lines valid; 1 some lines were broken; 2 usage error (bad manifest,
missing file, bad price file).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from fleetwarden import errors
from fleetwarden.core import events, findings, manifests, pricing, replay, timefmt


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "replay", help="find budget, policy and anomaly findings in a usage-event file",
        description="Replay usage events (JSON Lines or Parquet) through the budgets, cost policies and anomaly "
                    "detectors, printing findings in time order. No cluster needed.")
    parser.add_argument("--events", required=True, metavar="FILE",
                        help="usage events, JSON Lines ('-': stdin) or Parquet (*.parquet)")
    parser.add_argument("-f", "--filename", dest="manifests", action="append", default=[], metavar="FILE_OR_DIR",
                        help="AgentBudget/CostPolicy YAML (files or directories; repeatable)")
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--prices", metavar="FILE", help="price configuration (YAML) over the built-in prices")
    parser.set_defaults(func=run)


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
    # 1. inputs a person can get wrong fail before any output: manifests, prices, the events file
    loaded = manifests.load(args.manifests)
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

    # 3. findings stream out in time order
    stats = replay.Stats()
    out, dump = _dumper(args.output)
    try:
        stream = events.iter_events(source, file=name)
        for f in replay.run(stream, loaded.budgets, loaded.policies, table,
                            on_error=on_error, stats=stats):
            out.write(dump(f))  # type: ignore[operator]
        out.flush()
    except BrokenPipeError:  # `| head`: the reader has gone; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0

    # 4. the summary
    skipped = f", {loaded.skipped} other documents skipped" if loaded.skipped else ""
    late = f", {stats.late} late (counted in a later minute)" if stats.late else ""
    late += f", {stream.blank[0]} blank lines skipped" if stream.blank[0] else ""
    print(f"fleetwarden replay: {stats.events} events read, {stats.broken} broken{late}, {stats.findings} findings, "
          f"{stats.agents} agents; {len(loaded.budgets)} budgets, {len(loaded.policies)} policies from "
          f"{loaded.files} files{skipped}", file=sys.stderr)
    return 1 if stats.broken else 0
