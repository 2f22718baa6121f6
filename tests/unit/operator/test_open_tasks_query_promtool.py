"""The open-task query evaluated by Prometheus's own engine (`promtool test rules`): the SDK's five
gauges per replica come back one series each, told apart by `fw_metric` and kept per instance,
which is what build_task_readings combines per agent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from fleetwarden.adapters import prometheus

PROMTOOL = shutil.which("promtool")  # scripts/setup installs it (Debian's prometheus package)
GAUGES = {"open": 3, "largest_tokens": 90000, "largest_age": 600, "oldest_tokens": 1000, "oldest_age": 900}


def _run(tmp_path: Path, expected: dict[str, float]) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is missing: run scripts/setup (Debian package prometheus)"
    labels = 'namespace="ns", agent="bot", instance="pod-a:9300", job="agents"'
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": f"{metric}{{{labels}}}", "values": f"{GAUGES[key]}x10"}
                             for key, metric in prometheus.OPEN_TASK_GAUGES.items()],
            "promql_expr_test": [{
                "expr": prometheus.OPEN_TASKS_QUERY,
                "eval_time": "5m",
                "exp_samples": [{"labels": f'{{namespace="ns", agent="bot", instance="pod-a:9300", fw_metric="{k}"}}',
                                 "value": v} for k, v in expected.items()],
            }],
        }],
    }
    path = tmp_path / "open_tasks_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    return subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_each_gauge_comes_back_per_instance_with_its_name(tmp_path: Path) -> None:
    """Prometheus answers the open-task query with one series per gauge and replica."""
    result = _run(tmp_path, dict(GAUGES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness can fail: a wrong value for one gauge is refused."""
    result = _run(tmp_path, GAUGES | {"oldest_age": 1})
    assert result.returncode != 0, result.stdout + result.stderr
