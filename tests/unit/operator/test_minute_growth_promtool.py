"""The per-minute range queries evaluated by Prometheus's own engine (`promtool test rules`), on
counters scraped every 15 s off the minute: each minute is what the counter gained by the last
scrape before the minute's end, whole; a series born in the minute counts from its first sample
(increase() reads that sample as its start: a new model's first calls would vanish); a reset
counts what came after it; a series seen again after failed scrapes counts its growth since its
last sample (not its whole value: it is not new)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from fleetwarden.adapters import prometheus

PROMTOOL = shutil.which("promtool")  # scripts/setup installs it (Debian's prometheus package)
CALLS = "fleetwarden_llm_calls_total"

# Samples every 15 s; notation as promtool's: "a+bxn" is n+1 samples from a stepping by b,
# "_xn" n missing samples. Evaluated at 10m: the minute (9m, 10m].
SERIES = [
    ("steady", "0+1x40", 4.0),               # one call per scrape: 4 in the minute
    ("bursty", "0x36 3 3 3 3", 3.0),         # 3 calls at the minute's first scrape
    ("born", "_x38 2 2", 2.0),               # a new model's series, born at 9m45s with 2 (increase(): 0)
    ("reset", "0+1x37 0 1 2", 2.0),          # restarted at 9m30s: what came after
    ("gap", "0+1x4 _x32 5 5 5 6", 2.0),      # scrapes failed for 8 minutes: its growth since 1m (not all 6)
]


def _run(tmp_path: Path, expected: dict[str, float]) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is missing: run scripts/setup (Debian package prometheus)"
    test = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": f'{CALLS}{{namespace="ns", agent="{agent}", model="m", workflow="w"}}',
                              "values": values} for agent, values, _ in SERIES],
            "promql_expr_test": [{
                "expr": prometheus.family_query("llm_calls"),
                "eval_time": "10m",
                "exp_samples": [{"labels": f'{{namespace="ns", agent="{agent}", model="m", workflow="w"}}',
                                 "value": value} for agent, value in sorted(expected.items())],
            }],
        }],
    }
    path = tmp_path / "minute_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    return subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_each_minute_is_the_whole_growth_of_old_born_and_reset_series(tmp_path: Path) -> None:
    """Prometheus evaluates the per-minute query to each series' growth by the minute's last scrape."""
    result = _run(tmp_path, {agent: value for agent, _, value in SERIES})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness can fail: the born series read as increase() would read it is refused."""
    result = _run(tmp_path, {agent: value for agent, _, value in SERIES} | {"born": 0.0})
    assert result.returncode != 0, result.stdout + result.stderr
