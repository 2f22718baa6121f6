"""The budget spend query evaluated by Prometheus's own engine (`promtool test rules`) on
counters shaped like a real fleet's: old, newly born, reset, ended, and one whose scrape
failed at the window's start. increase() alone reads a young series at up to twice its growth."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from fleetwarden.adapters import prometheus
from fleetwarden.core import timefmt

LLM, TOOL, HUMAN = prometheus.SPEND_METRICS
PROMTOOL = shutil.which("promtool")  # scripts/setup installs it (Debian's prometheus package)

# One agent per shape; samples every minute, evaluated at 120 m over the rolling hour.
# Notation: "a+bxn" is n+1 samples from a stepping by b; "_xn" is n missing samples.
SERIES = [
    ("old", LLM, "0+1x120", 60.0),                        # 60 at the start, 120 now: exact
    ("old", HUMAN, "0+0.5x120", 30.0),                    # human time counts in the same spend
    ("old", TOOL, "10x120", 0.0),                         # no growth: nothing spent
    ("young", LLM, "_x115 3 4 4 4 4", 4.0),               # born at 115 m with 3: all 4 counts (increase: ~5)
    ("idle-born", TOOL, "_x100 5x20", 5.0),               # born with 5, never grew (increase: 0)
    ("reset", LLM, "0+1x90 0+1x29", 59.0),                # 60 -> 90, restart, 0 -> 29: increase()
    ("ended", TOOL, "0+1x90 stale", 30.5),                # gone at 91 m: increase(), +half a scrape
    ("gap", LLM, "0+1x58 stale _ _ 62+1x58", 62.0),       # scrape failed at the start: 58 before it
]


def _run(tmp_path: Path, expected: dict[str, float]) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is missing: run scripts/setup (Debian package prometheus)"
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": f'{metric}{{namespace="ns", agent="{agent}", pod="p"}}', "values": values}
                             for agent, metric, values, _ in SERIES],
            "promql_expr_test": [{
                "expr": prometheus.spend_query(3600),
                "eval_time": "120m",
                "exp_samples": [{"labels": f'{{namespace="ns", agent="{agent}"}}', "value": value}
                                for agent, value in sorted(expected.items())],
            }],
        }],
    }
    path = tmp_path / "spend_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    return subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def _expected() -> dict[str, float]:
    out: dict[str, float] = {}
    for agent, _, _, value in SERIES:
        out[agent] = out.get(agent, 0.0) + value
    return out


def test_spend_is_exact_for_old_young_and_gapped_series(tmp_path: Path) -> None:
    """Prometheus evaluates the spend query to each agent's true growth over the hour."""
    result = _run(tmp_path, _expected())
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness can fail: the young agent read as increase() would read it is refused."""
    wrong = _expected() | {"young": 5.0}
    result = _run(tmp_path, wrong)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and 'got: ' in out and '{agent="young", namespace="ns"} 4E+00' in out, out


def test_prometheus_durations_and_retention_flags() -> None:
    """Durations as Prometheus writes them; retention from /api/v1/status/flags as Prometheus 2.42
    answers it: unset is its 15-day default, a size-only retention is not a time, and the spend
    query's need (a calendar month plus an hour) is said to be unmet below that."""
    assert timefmt.parse_duration("15d") == 15 * 86400
    assert timefmt.parse_duration("2w3d") == 17 * 86400
    assert timefmt.parse_duration("1h30m") == 5400
    assert timefmt.parse_duration("500ms") == 0.5
    assert timefmt.parse_duration("1y") == 365 * 86400
    for bad in ("", "15", "d", "15d ", "-1h"):
        assert timefmt.parse_duration(bad) is None, bad
    unset = {"storage.tsdb.retention": "0s", "storage.tsdb.retention.size": "0B",
             "storage.tsdb.retention.time": "0s"}
    assert prometheus.retention_from_flags(unset) == 15 * 86400
    assert prometheus.retention_from_flags(unset | {"storage.tsdb.retention.time": "1d"}) == 86400
    assert prometheus.retention_from_flags(unset | {"storage.tsdb.retention": "40d"}) == 40 * 86400
    assert prometheus.retention_from_flags(unset | {"storage.tsdb.retention.size": "50GB"}) is None
    assert 31 * 86400 < prometheus.RETENTION_NEEDED_SECONDS <= 32 * 86400
