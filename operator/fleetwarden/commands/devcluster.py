"""`fleetwarden devcluster` (placeholder until its issue lands; it says so instead of pretending)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("devcluster", help="(not built yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("fleetwarden devcluster: not built yet", file=sys.stderr)
    return 2
