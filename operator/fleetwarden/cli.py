"""The ``fleetwarden`` command line: one sub-command per module in ``fleetwarden.commands``.

Each command module defines ``register(subparsers)`` (adding its parser and setting
``func``) so commands stay independent. Errors Fleetwarden raises on purpose are
printed as one clear line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fleetwarden import __version__, errors

# Module names under fleetwarden.commands, in the order `--help` lists them.
COMMANDS = [
    "devcluster",
    "demo",
    "replay",
    "simulate",
    "operator",
    "report",
    "digest",
    "incident",
    "approval",
]


def build_parser(prog: str = "fleetwarden") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Govern fleets of AI agents by budget.")
    parser.add_argument("--version", action="version", version=f"fleetwarden {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"fleetwarden.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None, prog: str = "fleetwarden") -> int:
    """Run one command; ``prog`` is how usage and error lines name the program."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except errors.FleetwardenError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
