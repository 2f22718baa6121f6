"""`fleetwarden report` offline: reading events and manifests, formats, and errors a person can fix."""

from __future__ import annotations

import csv
import io
import json

import pytest

from fleetwarden import cli, errors
from fleetwarden.commands import report

T0 = 1_800_000_000


def _write_events(path, lines):
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def _events():
    base = {"agent": "support-bot", "namespace": "support", "workflow": "refund",
            "labels": {"team": "cx", "project": "helpdesk", "cost_center": "CC-1042",
                       "fleetwarden.dev/budget": "cx"}}
    out = []
    for i in range(30):
        task = f"t{i}"
        out.append({**base, "time": T0 + 60 * i, "type": "llm", "task_id": task, "step": "plan", "model": "gpt-4o",
                    "input_tokens": 1000, "output_tokens": 100, "cost_usd": 0.02})
        out.append({**base, "time": T0 + 60 * i + 1, "type": "tool", "task_id": task, "step": "lookup",
                    "tool": "crm.search", "cost_usd": 0.01})
        out.append({**base, "time": T0 + 60 * i + 2, "type": "task", "task_id": task, "status": "completed"})
        out.append({**base, "time": T0 + 60 * i + 2, "type": "outcome", "task_id": task,
                    "outcome": "resolved_ticket"})
    out.append({"agent": "stray-bot", "namespace": "support", "time": T0 + 100, "type": "llm", "task_id": "s1",
                "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1, "cost_usd": 0.5})
    return out


BUDGET = """\
apiVersion: fleetwarden.dev/v1alpha1
kind: AgentBudget
metadata: {name: cx, namespace: support}
spec:
  selector: {matchLabels: {fleetwarden.dev/budget: cx}}
  limits: [{window: hour, amountUSD: 100}]
  unitEconomics:
    - {outcome: resolved_ticket, workflow: refund, targetCostUSD: 0.05, humanBaselineUSD: 6.0}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"""


@pytest.fixture
def inputs(tmp_path):
    events = _write_events(tmp_path / "events.jsonl", _events())
    manifests = tmp_path / "budget.yaml"
    manifests.write_text(BUDGET, encoding="utf-8")
    return events, manifests


def test_json_report_from_events_and_manifests(inputs, tmp_path):
    """The offline report sums cost by agent and team, judges unit economics and lists the ungoverned agent."""
    events, manifests = inputs
    out = tmp_path / "r.json"
    code = cli.main(["report", "--events", str(events), "-f", str(manifests), "--window", "1h",
                     "--by", "agent,team", "--output", "json", "-o", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["total_cost_usd"] == pytest.approx(30 * 0.03 + 0.5)
    agents = {r["key"]: r["cost_usd"] for r in data["breakdowns"][0]["rows"]}
    assert agents == {"support/support-bot": pytest.approx(0.9), "support/stray-bot": pytest.approx(0.5)}
    teams = {r["key"]: r["cost_usd"] for r in data["breakdowns"][1]["rows"]}
    assert teams == {"cx": pytest.approx(0.9), "(none)": pytest.approx(0.5)}
    (econ,) = data["economics"]
    assert econ["cost_per_outcome_usd"] == pytest.approx(0.03)
    assert econ["target_cost_usd"] == 0.05 and econ["roi"] == pytest.approx((6.0 - 0.03) / 0.03)
    assert econ["recommendation"] == "hold" and "within its target" in econ["reason"]
    assert [(g["agent"], g["problem"]) for g in data["governance"]] == [("stray-bot", "no_budget")]


def test_csv_and_table_to_stdout(inputs, capsys):
    """CSV and the terminal table go to standard output when no -o is given."""
    events, manifests = inputs
    assert cli.main(["report", "--events", str(events), "-f", str(manifests), "--output", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["section"] == "cost" and rows[0]["key"] == "total"
    assert cli.main(["report", "--events", str(events), "--by", "tool"]) == 0
    out = capsys.readouterr().out
    assert "Cost by tool" in out and "crm.search" in out and "Cost by agent" not in out


def test_html_report_written_to_file(inputs, tmp_path):
    """--output html -o FILE writes one self-contained page."""
    events, manifests = inputs
    out = tmp_path / "r.html"
    assert cli.main(["report", "--events", str(events), "-f", str(manifests), "--output", "html",
                     "-o", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="cost-trend"' in page and "stray-bot" in page


def test_broken_event_line_is_an_error_naming_file_and_line(tmp_path, capsys):
    """A broken event line stops the report with one line naming the file and line (exit 2)."""
    path = _write_events(tmp_path / "bad.jsonl", _events()[:3])
    with path.open("a") as fh:
        fh.write('{"time": 1, "type": "llm", "agent": "x"}\n')
    assert cli.main(["report", "--events", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 4" in err


def test_invalid_budget_is_an_error_naming_file_line_and_field(inputs, tmp_path, capsys):
    """An invalid AgentBudget names its file, the document's line and the field."""
    events, _ = inputs
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ConfigMap\n---\napiVersion: fleetwarden.dev/v1alpha1\nkind: AgentBudget\n"
                   "metadata: {name: x}\nspec:\n  limits: [{window: hour, amountUSD: -1}]\n")
    assert cli.main(["report", "--events", str(events), "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "line 3" in err and "spec.limits.0.amountUSD" in err


@pytest.mark.parametrize(("text", "seconds"), [("90m", 5400), ("24h", 86400), ("7d", 604800), ("1.5h", 5400), ("1h30m", 5400), (" 2w ", 1209600)])
def test_parse_duration(text, seconds):
    """Durations are numbers each with a unit (ms, s, m, h, d, w, y), as Prometheus writes them."""
    assert report.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "-1h", "0h", "1x", "1 h"])
def test_parse_duration_refuses_nonsense(text):
    """Anything else is an InputError naming the flag."""
    with pytest.raises(errors.InputError, match="--window"):
        report.parse_duration(text)


def test_unknown_dimension_is_refused(inputs, capsys):
    """--by with an unknown dimension is an error listing the known ones."""
    events, _ = inputs
    assert cli.main(["report", "--events", str(events), "--by", "agent,colour"]) == 2
    assert "colour" in capsys.readouterr().err


def test_offline_report_without_window_spans_the_events(inputs, tmp_path):
    """Offline, with no --window, the report covers the events' span (30 minutes here), not a day."""
    events, manifests = inputs
    out = tmp_path / "r.json"
    assert cli.main(["report", "--events", str(events), "-f", str(manifests), "--output", "json",
                     "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["total_cost_usd"] == pytest.approx(30 * 0.03 + 0.5)
    assert 30 * 60 <= data["window"]["seconds"] < 2 * 3600


def test_the_report_replays_with_the_collector_set_as_the_replay_command_sets_it(inputs, monkeypatch):
    """Its anomalies come from a whole replay, run at the replay command's young threshold."""
    import gc

    from fleetwarden.commands import replay as command
    from fleetwarden.core import replay

    events, manifests = inputs
    seen = []
    real = replay.run

    def run(*args, **kwargs):
        seen.append(gc.get_threshold()[0])
        yield from real(*args, **kwargs)

    monkeypatch.setattr(replay, "run", run)
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 12)
    try:
        assert cli.main(["report", "--events", str(events), "-f", str(manifests), "--output", "json"]) == 0
        assert gc.get_threshold() == (700, 11, 12)  # restored
    finally:
        gc.set_threshold(*before)
    assert seen == [command.YOUNG_THRESHOLD]
