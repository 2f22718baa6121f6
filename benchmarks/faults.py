"""The fault table: run the fault tests (``pytest -m faults tests/e2e``) on the real local stack
and print one row per fault kind.

    python benchmarks/faults.py [pytest arguments...]

Columns: injected (times the fault was actually hit), survived (of those, runs that ended
converged), actions duplicated, actions lost, false status claims (the goal: 0 in the last
three). Each fault test records its row with ``tests/e2e/faults.record``; a new fault is a new
test marked ``faults`` that calls it. docs/operator.md keeps the last table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (("fault", "fault"), ("injected", "injected"), ("survived", "survived"),
           ("duplicated", "actions duplicated"), ("lost", "actions lost"), ("false_claims", "false status claims"))


def table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (e.g. -k leader)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleetwarden-faults-") as tmp:
        out = Path(tmp) / "rows.jsonl"
        env = dict(os.environ, FLEETWARDEN_FAULTS_OUT=str(out))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "operator"), env.get("PYTHONPATH")) if p)
        result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "faults", "-q",
                                 "tests/e2e", *args.pytest_args], cwd=ROOT, env=env, check=False)
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    print()
    print(table(rows))
    for row in rows:
        if row.get("note"):
            print(f"  {row['fault']}: {row['note']}")
    bad = [r for r in rows if r["duplicated"] or r["lost"] or r["false_claims"] or r["survived"] < r["injected"]]
    return result.returncode or (1 if bad or not rows else 0)


if __name__ == "__main__":
    raise SystemExit(main())
