"""`fleetwarden replay` end to end: the real CLI in a subprocess on generated event files, and the
same example manifests given to the real API server and to replay (both accept or both refuse)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_fleetwarden import crds_installed  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SUPPORT = EXAMPLES / "support-swarm"
T0 = 1795860000  # 2026-11-28T10:00:00Z
LABELS = {"fleetwarden.dev/budget": "support-swarm", "team": "cx"}


def replay_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetwarden", "replay", *args], capture_output=True, text=True,
                          input=stdin, timeout=300, cwd=ROOT)


def support_day(path: Path, *, broken_at: int | None = None) -> int:
    """Two hours of a support agent spending 0ドル.50 a call twice a minute (60ドル/h against a 20ドル/h cap),
    a denied tool call, and, optionally, a broken line. Returns the number of lines written."""
    lines = []
    for i in range(240):
        t = T0 + 30 * i
        lines.append({"time": t, "type": "llm", "agent": "support-bot", "namespace": "support", "labels": LABELS,
                      "workflow": "resolve_ticket", "task_id": f"t-{i // 4}", "model": "gpt-4o",
                      "input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.5})
        if i % 4 == 3:
            lines.append({"time": t + 1, "type": "task", "agent": "support-bot", "namespace": "support",
                          "task_id": f"t-{i // 4}", "status": "completed"})
    lines.insert(100, {"time": T0 + 1500, "type": "tool", "agent": "support-bot", "namespace": "support",
                       "labels": LABELS, "task_id": "t-12", "tool": "ticket.delete"})
    text = [json.dumps(x) for x in lines]
    if broken_at is not None:
        text.insert(broken_at - 1, '{"time": 1, "type": "llm", "agent": "support-bot"}')
    path.write_text("\n".join(text) + "\n")
    return len(text)


def test_replay_prints_findings_in_time_order_as_json_lines(tmp_path: Path) -> None:
    """Replay with the support-swarm example prints budget, kill-switch and tool findings as contract JSON, in time order."""
    events = tmp_path / "events.jsonl"
    support_day(events)
    result = replay_cli("--events", str(events), "-f", str(SUPPORT), "--output", "json")
    assert result.returncode == 0, result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [f["kind"] for f in found]
    assert kinds.index("budget_warning") < kinds.index("budget_exceeded") < kinds.index("kill_switch")
    assert kinds.count("kill_switch") == 1 and kinds.count("tool_not_allowed") == 1
    assert [f["time"] for f in found] == sorted(f["time"] for f in found)
    for f in found:
        assert {"kind", "agent", "namespace", "time", "action", "message", "evidence"} <= set(f)
        assert f["time"].endswith("Z") and f["namespace"] == "support"
    kill = found[kinds.index("kill_switch")]
    assert (kill["action"], kill["budget"]) == ("kill", "support-swarm")
    assert "events read, 0 broken" in result.stderr


def test_replay_names_broken_lines_and_exits_1(tmp_path: Path) -> None:
    """A broken line is named on stderr with file, line and field; the rest is replayed; exit code 1."""
    events = tmp_path / "events.jsonl"
    support_day(events, broken_at=17)
    result = replay_cli("--events", str(events), "-f", str(SUPPORT))
    assert result.returncode == 1
    assert f"{events}:17: field 'task_id': required for type 'llm'" in result.stderr
    assert "kill_switch" in result.stdout and "1 broken" in result.stderr


def test_replay_reads_stdin_and_text_output(tmp_path: Path) -> None:
    """`--events -` reads standard input; text output gives one readable line per finding."""
    events = tmp_path / "events.jsonl"
    support_day(events)
    result = replay_cli("--events", "-", "-f", str(SUPPORT), stdin=events.read_text())
    assert result.returncode == 0, result.stderr
    kill = [line for line in result.stdout.splitlines() if "kill_switch" in line]
    assert len(kill) == 1 and "CRITICAL" in kill[0] and "support/support-bot" in kill[0]
    assert kill[0].startswith("2026-11-28T")


def test_invalid_manifest_is_a_usage_error(tmp_path: Path) -> None:
    """An invalid manifest stops replay before any output with exit 2, naming file, line and field."""
    events = tmp_path / "events.jsonl"
    support_day(events)
    bad = EXAMPLES / "invalid" / "negative-amount.yaml"
    result = replay_cli("--events", str(events), "-f", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert str(bad) in result.stderr and "spec.limits[0].amountUSD" in result.stderr


def _replay_accepts(path: Path, events: Path) -> bool:
    result = replay_cli("--events", str(events), "-f", str(path))
    assert result.returncode in (0, 2), result.stderr
    return result.returncode == 0


def test_api_server_and_replay_accept_and_refuse_the_same_manifests(cluster: Any, crds_installed: list[str],  # noqa: F811
                                                                    tmp_path: Path) -> None:
    """Each example fleet is accepted by the API server (server-side dry run) and by replay; each invalid one by neither."""
    events = tmp_path / "events.jsonl"
    support_day(events)
    created: list[str] = []
    try:
        for directory in sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name != "invalid"):
            for path in sorted(directory.glob("*.yaml")):
                for doc in yaml.safe_load_all(path.read_text()):
                    if doc and doc.get("kind") == "Namespace":
                        name = doc["metadata"]["name"]
                        if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
                            cluster.kubectl("create", "namespace", name)
                            created.append(name)
            server = cluster.kubectl("apply", "--dry-run=server", "-f", str(directory), check=False)
            assert server.returncode == 0, f"{directory.name}: {server.stderr}"
            assert _replay_accepts(directory, events), directory.name
        for path in sorted((EXAMPLES / "invalid").glob("*.yaml")):
            server = cluster.kubectl("create", "--dry-run=server", "-f", str(path), check=False)
            assert (server.returncode == 0) == _replay_accepts(path, events), \
                f"{path.name}: API server {'accepted' if server.returncode == 0 else 'refused'}, replay disagrees"
            assert server.returncode != 0, path.name
    finally:
        for name in created:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
