"""`fleetwarden replay --compare`: what proposed manifests would have changed, on a recorded fleet.

The fleet: ``fleetwarden simulate --fast``, 2 h of support-triage and support-resolver in
namespace ``support``; support-triage loops from minute 30 (runaway-loop). The current
manifests are examples/support-swarm with its selector set to the simulated labels; the
proposed ones tighten the hourly cap (20 -> 2 USD), the token cap per task (60000 -> 8000)
and the tool rate (120 -> 10 calls a minute), and add an approval rule for crm.search.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetwarden import cli
from fleetwarden.core import timefmt

ROOT = Path(__file__).resolve().parents[3]
SELECTOR = {"matchLabels": {"team": "customer-experience"}}


def _manifests(path: Path, *, tight: bool) -> Path:
    path.mkdir()
    budget = yaml.safe_load((ROOT / "examples/support-swarm/20-agentbudget.yaml").read_text())
    policy = yaml.safe_load((ROOT / "examples/support-swarm/30-costpolicy.yaml").read_text())
    budget["spec"]["selector"] = policy["spec"]["selector"] = SELECTOR
    if tight:
        budget["spec"]["limits"][0]["amountUSD"] = 2
        policy["spec"]["tokenCaps"]["perTask"] = 8000
        policy["spec"]["rateLimits"]["toolCallsPerMinute"] = 10
        policy["spec"]["approvals"] = [{"name": "searches", "tool": "crm.search", "callsPerWorkflowAbove": 2}]
    (path / "budget.yaml").write_text(yaml.safe_dump(budget))
    (path / "policy.yaml").write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("compare-fleet")
    events = tmp / "fleet.jsonl"
    subprocess.run([sys.executable, "-m", "fleetwarden", "simulate", "--fast", "--duration", "2h", "--profiles",
                    "support", "--names", "support-triage,support-resolver", "--namespace", "support",
                    "--scenario", "runaway-loop", "--at", "30", "--seed", "3", "--events", str(events)],
                   check=True, capture_output=True, cwd=ROOT)
    return events, _manifests(tmp / "current", tight=False), _manifests(tmp / "proposed", tight=True)


def _compare(capsys, events: Path, current: Path, proposed: Path, output: str = "json") -> dict | str:  # type: ignore[no-untyped-def]
    assert cli.main(["replay", "--events", str(events), "-f", str(current), "--compare", str(proposed),
                     "--output", output]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if output == "json" else out


def _spend(events: Path, agent: str, start: float, end: float) -> float:
    rows = (json.loads(line) for line in events.read_text().splitlines())
    return sum(r.get("cost_usd", 0.0) for r in rows if r["agent"] == agent and start <= r["time"] < end)


def test_tighter_manifests_add_denials_throttles_approvals_and_an_earlier_kill(fleet, capsys) -> None:  # type: ignore[no-untyped-def]
    """Tighter caps add deny and throttle actions, block tasks and calls, raise approvals, and the
    lower hourly cap kills support-resolver earlier: its spend in between is the saving."""
    events, current, proposed = fleet
    data = _compare(capsys, events, current, proposed)
    assert data["actions"]["removed"] == {}
    assert data["actions"]["added"]["deny"] > 0 and data["actions"]["added"]["throttle"] > 0
    capped = {(f["namespace"], f["agent"], f["task_id"]) for f in data["added"] if f["kind"] == "token_cap_exceeded"}
    assert {(t["namespace"], t["agent"], t["task_id"]) for t in data["blocked"]["tasks"]} == capped and capped
    assert data["blocked"]["calls_at_least"] > 0
    raised = [f for f in data["added"] if f["kind"] == "approval_required"]
    assert data["approvals"]["raised"] == len(raised) > 0
    [kill] = data["kills"]
    assert kill["agent"] == "support-resolver" and kill["proposed_kill"] < kill["current_kill"]
    expected = _spend(events, "support-resolver", timefmt.parse_rfc3339(kill["proposed_kill"]),
                      timefmt.parse_rfc3339(kill["current_kill"]))
    assert kill["spend_usd"] == pytest.approx(expected, abs=1e-6) and expected > 0
    assert data["dollars"] == {"saved_usd": kill["spend_usd"], "lost_usd": 0.0, "net_saved_usd": kill["spend_usd"],
                               "unpriced_events": 0}


def test_the_reverse_comparison_removes_what_the_other_added(fleet, capsys) -> None:  # type: ignore[no-untyped-def]
    """Compared the other way, every added action is removed, and the earlier kill is a later one
    whose recorded spend is lost, not saved."""
    events, current, proposed = fleet
    forward = _compare(capsys, events, current, proposed)
    back = _compare(capsys, events, proposed, current)
    assert back["actions"]["removed"] == forward["actions"]["added"] and back["actions"]["added"] == {}
    assert back["unblocked"] == forward["blocked"] and back["approvals"]["dropped"] == forward["approvals"]["raised"]
    assert back["dollars"]["lost_usd"] == forward["dollars"]["saved_usd"] and back["dollars"]["saved_usd"] == 0


def test_the_same_manifests_change_nothing(fleet, capsys) -> None:  # type: ignore[no-untyped-def]
    events, current, _ = fleet
    data = _compare(capsys, events, current, current)
    assert data["actions"] == {"added": {}, "removed": {}} and data["kills"] == [] and data["added"] == []
    assert data["dollars"]["saved_usd"] == 0


def test_text_output_states_each_figure(fleet, capsys) -> None:  # type: ignore[no-untyped-def]
    events, current, proposed = fleet
    text = _compare(capsys, events, current, proposed, output="text")
    assert "actions added:" in text and "saved by earlier kills" in text and "kill support/support-resolver" in text
    assert "\n+ " in text and "approvals:" in text


@pytest.mark.parametrize("bad, says", [("missing", "no such"), ("examples/invalid/approval-without-trigger.yaml",
                                                                   "approval-without-trigger.yaml")])
def test_a_bad_proposed_manifest_is_one_line_like_f(fleet, capsys, bad: str, says: str) -> None:  # type: ignore[no-untyped-def]
    events, current, _ = fleet
    path = str(ROOT / bad)
    assert cli.main(["replay", "--events", str(events), "-f", str(current), "--compare", path]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert cli.main(["replay", "--events", str(events), "-f", path]) == 2
    assert capsys.readouterr().err.strip() == err
