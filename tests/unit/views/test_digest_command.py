"""`fleetwarden digest` offline, on a test fleet with a model change and a runaway loop.

The fleet: ``fleetwarden simulate --fast`` twice, 4 h each, from the same start; in
namespace ``shop`` support-agent-0 changes model 150 minutes in (model-update-spike), in
namespace ``ops`` procurement-agent-0 loops from minute 150 (runaway-loop). With a 2 h
period the current period holds both, the previous one neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwarden import cli

ROOT = Path(__file__).resolve().parents[3]
LOOP = "ops/procurement-agent-0"
CHANGED = "shop/support-agent-0"


def _simulate(out: Path, *args: str) -> list[dict]:
    subprocess.run([sys.executable, "-m", "fleetwarden", "simulate", "--fast", "--duration", "4h", "--agents", "1",
                    "--at", "150", "--events", str(out), *args], check=True, capture_output=True, cwd=ROOT)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("digest-fleet")
    rows = _simulate(tmp / "a.jsonl", "--scenario", "model-update-spike", "--namespace", "shop", "--seed", "2")
    rows += _simulate(tmp / "b.jsonl", "--scenario", "runaway-loop", "--namespace", "ops", "--profiles",
                      "procurement", "--seed", "3")
    rows.sort(key=lambda r: r["time"])
    path = tmp / "fleet.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _digest(fleet: Path, tmp_path: Path, *args: str, output: str = "json") -> dict | str:
    out = tmp_path / f"digest.{output}"
    assert cli.main(["digest", "--events", str(fleet), "--output", output, "-o", str(out), *args]) == 0
    return json.loads(out.read_text()) if output == "json" else out.read_text()


def _report_agents(fleet: Path, tmp_path: Path, end: str) -> dict[str, float]:
    out = tmp_path / f"report-{end}.json"
    assert cli.main(["report", "--events", str(fleet), "--window", "2h", "--end", end, "--by", "agent",
                     "--output", "json", "-o", str(out)]) == 0
    return {r["key"]: r["cost_usd"] for r in json.loads(out.read_text())["breakdowns"][0]["rows"]}


def test_the_loop_and_the_model_change_are_the_top_movers_with_the_right_deltas(fleet, tmp_path):
    """The two top agent movers are the looping agent and the agent whose model changed, each
    explained, with the deltas `fleetwarden report` gives for the two periods."""
    data = _digest(fleet, tmp_path, "--period", "2h")
    assert data["period"]["start"] == "2026-01-05T02:01:00Z" and data["previous_known"] is True
    movers = data["top_movers"]
    agents = [m for m in movers if m["dimension"] == "agent"]
    assert [m["key"] for m in agents[:2]] == [LOOP, CHANGED]
    now = _report_agents(fleet, tmp_path, "2026-01-05T04:01:00Z")
    before = _report_agents(fleet, tmp_path, "2026-01-05T02:01:00Z")
    for m in agents[:2]:
        assert m["current"] == pytest.approx(now[m["key"]], abs=1e-6)
        assert m["previous"] == pytest.approx(before[m["key"]], abs=1e-6)
        assert m["change"] == pytest.approx(now[m["key"]] - before[m["key"]], abs=1e-6)
    assert agents[0]["change"] > 1000 and "Runaway agent loop" in agents[0]["explanation"]
    assert "model change gpt-4o-mini -> gpt-4.1-mini" in agents[1]["explanation"]
    models = {m["key"]: m for m in movers if m["dimension"] == "model"}
    assert "model change gpt-4o-mini -> gpt-4.1-mini" in models["gpt-4.1-mini"]["explanation"]
    assert models["gpt-4.1-mini"]["change"] > 0


def test_incidents_carry_their_cost_impact_and_postmortem_status(fleet, tmp_path):
    """Each incident shows spend above baseline and spend prevented; one without a postmortem is listed."""
    first = _digest(fleet, tmp_path, "--period", "2h")
    loop = next(i for i in first["incidents"] if i["kind"] == "runaway_loop")
    (tmp_path / "pm").mkdir()
    (tmp_path / "pm" / f"{loop['id']}.md").write_text("# postmortem\n")
    data = _digest(fleet, tmp_path, "--period", "2h", "--postmortems", str(tmp_path / "pm"))
    status = {i["kind"]: i["postmortem"] for i in data["incidents"]}
    assert status == {"runaway_loop": "written", "model_update_spike": "missing"}
    assert data["incidents_without_postmortem"] == [i["id"] for i in data["incidents"]
                                                    if i["kind"] == "model_update_spike"]
    impact = loop["impact"]
    assert impact["above_baseline_usd"] is not None and impact["above_baseline_usd"] >= 0
    assert impact["burn_usd_per_hour"] > impact["baseline_usd_per_hour"]
    assert impact["prevented_usd"] > 0  # a kill stops the burn until the end of the day


def test_markdown_names_both_movers_and_says_unknown(fleet, tmp_path):
    """The Markdown digest has a row per mover, with its delta and its reason."""
    md = _digest(fleet, tmp_path, "--period", "2h", output="markdown")
    assert "## Top movers" in md and "## Incidents" in md and "## Governance gaps" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| agent | {LOOP} |"))
    assert "Runaway agent loop" in row and "+$2," in row


def test_a_previous_period_before_the_first_data_is_unknown_never_zero(fleet, tmp_path):
    """With a 3 h period the previous one starts before the events: deltas are unknown, said plainly."""
    data = _digest(fleet, tmp_path, "--period", "3h")
    assert data["previous_known"] is False
    assert any("previous period starts before the first data" in n for n in data["notes"])
    assert data["total_cost_usd"]["previous"] is None and data["total_cost_usd"]["change"] is None
    assert all(r["previous"] is None and r["change"] is None for r in data["spend"])
    assert data["top_movers"] == []


def test_a_period_with_no_data_is_a_clear_error(fleet, capsys):
    """A period that ends before the first event is a one-line error naming --end."""
    assert cli.main(["digest", "--events", str(fleet), "--end", "2025-12-01T00:00:00Z"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no data in the period" in err and "--end" in err and len(err.splitlines()) == 1


def test_a_bad_period_is_a_clear_error(fleet, capsys):
    assert cli.main(["digest", "--events", str(fleet), "--period", "fortnight"]) == 2
    assert "--period 'fortnight'" in capsys.readouterr().err
