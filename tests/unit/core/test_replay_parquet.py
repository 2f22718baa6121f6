"""Replay reads Parquet: the same events as JSONL or Parquet give byte-identical findings; bad rows named by number."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetwarden import cli

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MANIFESTS = ["-f", str(EXAMPLES / "support-swarm"), "-f", str(EXAMPLES / "procurement"),
             "-f", str(EXAMPLES / "lead-generation")]
BUDGET_OF = {"support": "support-swarm", "procurement": "procurement", "lead-generation": "lead-generation"}


def to_parquet(rows: list[dict], path: Path) -> None:
    """Rows as a Parquet file, one column per field seen in any row (null where a row has none)."""
    pq.write_table(pa.Table.from_struct_array(pa.array(rows)), path)


def replay(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    rc = cli.main(["replay", "--events", str(path), *MANIFESTS, "--output", "json"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_generated_fleet_gives_the_same_findings_from_jsonl_and_parquet(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A simulated fleet (budgets and policies applied, a third of the events priced by replay)
    written as JSONL and as Parquet gives byte-identical findings and the same summary."""
    raw = tmp_path / "raw.jsonl"
    assert cli.main(["simulate", "--fast", "--duration", "2h", "--scenario", "runaway-loop", "--at", "30",
                     "--events", str(raw)]) == 0
    rows = []
    for i, line in enumerate(raw.read_text().splitlines()):
        e = json.loads(line)
        ns = e.get("namespace", "default")
        e.setdefault("labels", {})["fleetwarden.dev/budget"] = BUDGET_OF.get(ns, "support-swarm")
        if ns not in BUDGET_OF:
            e["namespace"] = "support"
        if i % 3 == 0:
            e.pop("cost_usd", None)
        rows.append(e)
    jsonl, parquet = tmp_path / "usage.jsonl", tmp_path / "usage.parquet"
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in rows))
    to_parquet(rows, parquet)
    capsys.readouterr()
    rc_j, out_j, err_j = replay(capsys, jsonl)
    rc_p, out_p, err_p = replay(capsys, parquet)
    assert out_j.count("\n") > 3, "the fleet should give findings to compare"
    assert (rc_p, out_p) == (rc_j, out_j)
    assert err_p.splitlines()[-1] == err_j.splitlines()[-1]


def test_bad_rows_are_named_by_row_number_and_the_rest_is_replayed(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Each broken row is named by its number (from 1) and field, as a broken line is; good rows still count
    (a label another row has but this one lacks is absent, not a null label)."""
    good = {"time": 1767571200.0, "type": "human", "agent": "a", "minutes": 1.0, "labels": {"team": "cx"}}
    rows = [good, {**good, "minutes": -1.0}, {**good, "type": "tool"}, {**good, "labels": {"project": "p"}}]
    path = tmp_path / "usage.parquet"
    to_parquet(rows, path)
    rc, _, err = replay(capsys, path)
    assert rc == 1
    assert err.splitlines()[:2] == [
        f"{path}:2: field 'minutes': must be a number >= 0, got -1.0",
        f"{path}:3: field 'task_id': required for type 'tool'",
    ]
    assert "2 events read, 2 broken" in err


def test_a_file_that_is_not_parquet_is_one_clear_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A .parquet file that pyarrow cannot read is named on one line (exit 2), no traceback."""
    path = tmp_path / "usage.parquet"
    path.write_text('{"time": 1767571200, "type": "human", "agent": "a", "minutes": 1}\n')
    rc, _, err = replay(capsys, path)
    assert rc == 2 and "not a readable Parquet file" in err and "Traceback" not in err
