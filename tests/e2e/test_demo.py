"""`fleetwarden demo` end to end: the whole story on its own control plane, Prometheus and operator.

The demo starts everything itself (in its own state dir, on free loopback ports), so this
test uses no session fixture; it runs the demo as a person does and checks the facts of
its JSON summary against what it printed and against the processes it leaves (none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fleetwarden.devcluster import build, procs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run() -> tuple[subprocess.CompletedProcess[str], dict, Path]:  # type: ignore[type-arg]
    """One run of `python -m fleetwarden demo --summary FILE` in a temporary state dir."""
    if os.environ.get("FLEETWARDEN_KUBECONFIG"):
        pytest.skip("the demo starts its own local control plane")
    build.ensure_binaries()
    work = Path(tempfile.mkdtemp(prefix="fleetwarden-e2e-demo-"))
    state, summary_path = work / "state", work / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "fleetwarden", "demo", "--state-dir", str(state), "--summary", str(summary_path)],
        capture_output=True, text=True, timeout=780, cwd=ROOT, check=False)
    print(result.stdout[-20000:])
    print(result.stderr[-5000:], file=sys.stderr)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return result, summary, state


def test_demo_finishes_and_reports_success(demo_run: tuple) -> None:  # type: ignore[type-arg]
    """The demo exits 0 and its summary says ok, with every step of the story timed."""
    result, summary, _ = demo_run
    assert result.returncode == 0, f"demo failed: {summary.get('error')} in step {summary.get('failedStep')}"
    assert summary["ok"] is True
    assert [s["name"] for s in summary["steps"]] == [
        "start", "apply", "agents", "baseline", "model", "kill", "resume", "epilogue"]


def test_model_update_is_rolled_back_and_cost_per_task_recovers(demo_run: tuple) -> None:  # type: ignore[type-arg]
    """The pricier model raised cost per task; the operator rolled the Deployment back; cost returned to normal."""
    result, summary, _ = demo_run
    assert result.returncode == 0
    base, update, rollback = summary["baseline"], summary["modelUpdate"], summary["rollback"]
    assert update["from"] == "gpt-4o-mini" and update["to"] == "gpt-4.1-mini"
    assert update["peakRatio"] >= 1.8
    assert rollback["from"] == "gpt-4.1-mini" and rollback["to"] == "gpt-4o-mini"
    assert rollback["deploymentModel"] == "gpt-4o-mini"
    assert rollback["incident"].startswith("inc-")
    assert rollback["ratioAfter"] <= 1.3
    assert rollback["costPerTaskAfterUSD"] < update["peakCostPerTaskUSD"]
    assert base["costPerTaskUSD"] > 0
    assert f"support-triage: gpt-4.1-mini -> gpt-4o-mini ({rollback['incident']})" in result.stdout


def test_runaway_loop_trips_the_kill_switch_and_resume_restores_replicas(demo_run: tuple) -> None:  # type: ignore[type-arg]
    """The runaway loop engaged the kill switch (pods gone, Warning event); acknowledging restored 2 replicas."""
    result, summary, _ = demo_run
    assert result.returncode == 0
    kill, resume = summary["killSwitch"], summary["resume"]
    assert kill["incident"].startswith("inc-")
    assert kill["kind"] in ("kill_switch", "runaway_loop")
    assert kill["replicasRemembered"] == {"lead-gen-agent": 2}
    assert kill["deploymentReplicas"] == 0 and kill["pods"] == 0
    assert kill["conditionKillSwitchEngaged"] == "True"
    assert "KillSwitchEngaged" in kill["warningEvents"]
    assert resume["acknowledged"] == kill["incident"]
    assert resume["deploymentReplicas"] == 2 and resume["runningPods"] == 2
    assert resume["engagedAfter"] is False
    assert "acknowledged: restoring replicas lead-gen-agent=2" in result.stdout


def test_epilogue_lists_incidents_and_alerts(demo_run: tuple) -> None:  # type: ignore[type-arg]
    """`fleetwarden incident list -A` worked and Alertmanager received the kill switch and the rollback."""
    result, summary, _ = demo_run
    assert result.returncode == 0
    assert summary["incidentList"] is True
    assert summary["killSwitch"]["incident"] in result.stdout.split("fleetwarden incident list -A", 1)[1]
    assert {"FleetwardenKillSwitch", "FleetwardenModelUpdateSpike"} <= set(summary["alerts"])


def test_demo_leaves_no_process_behind(demo_run: tuple) -> None:  # type: ignore[type-arg]
    """Without --keep every process the demo started is stopped and its state dir removed."""
    result, _, state = demo_run
    assert result.returncode == 0
    assert not state.exists()
    mine = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid).find(str(state)) >= 0]
    assert mine == []
    assert procs.recorded(state) == {}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
