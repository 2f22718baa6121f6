"""Bad operator settings stop `fleetwarden operator` at start: one line naming the flag (or the
environment variable) and the value, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import kopf
import pytest

from fleetwarden import errors
from fleetwarden.commands import operator as operator_command
from fleetwarden.handlers import settings

# (variable, flag or None, bad value, words the reason must say)
BAD = [
    ("FLEETWARDEN_INTERVAL", "--interval", "nan", "finite number of seconds >= 0.5"),
    ("FLEETWARDEN_INTERVAL", "--interval", "inf", "finite number"),
    ("FLEETWARDEN_INTERVAL", "--interval", "-inf", "finite number"),
    ("FLEETWARDEN_INTERVAL", "--interval", "-5", ">= 0.5"),
    ("FLEETWARDEN_INTERVAL", "--interval", "0", ">= 0.5"),
    ("FLEETWARDEN_INTERVAL", "--interval", "fast", "finite number"),
    ("FLEETWARDEN_PROMETHEUS_TIMEOUT", "--prometheus-timeout", "0", "> 0"),
    ("FLEETWARDEN_PROMETHEUS_TIMEOUT", "--prometheus-timeout", "-1", "> 0"),
    ("FLEETWARDEN_PROMETHEUS_TIMEOUT", "--prometheus-timeout", "NaN", "finite number"),
    ("FLEETWARDEN_SCRAPE_INTERVAL", "--scrape-interval", "inf", "finite number of seconds >= 0.1"),
    ("FLEETWARDEN_SCRAPE_INTERVAL", "--scrape-interval", "0", ">= 0.1"),
    ("FLEETWARDEN_SCRAPE_INTERVAL", "--scrape-interval", "1e999", "finite number"),
    ("FLEETWARDEN_LOOKBACK_MINUTES", "--lookback-minutes", "-90", "whole number of minutes >= 5"),
    ("FLEETWARDEN_LOOKBACK_MINUTES", "--lookback-minutes", "nan", "whole number"),
    ("FLEETWARDEN_LOOKBACK_MINUTES", "--lookback-minutes", "90.5", "whole number"),
    ("FLEETWARDEN_METRICS_PORT", "--metrics-port", "-1", ">= 0 and <= 65535"),
    ("FLEETWARDEN_METRICS_PORT", "--metrics-port", "70000", "<= 65535"),
    ("FLEETWARDEN_WORKERS", None, "0", "whole number >= 1"),
    ("FLEETWARDEN_WORKERS", None, "inf", "whole number"),
    ("FLEETWARDEN_PACE", None, "0.95", "finite number >= 0 and <= 0.9"),
    ("FLEETWARDEN_PACE", None, "-0.1", ">= 0 and <= 0.9"),
    ("FLEETWARDEN_PACE", None, "nan", "finite number"),
    ("FLEETWARDEN_PROMETHEUS_URL", "--prometheus-url", "prometheus:9090", "http:// or https:// URL with a host"),
    ("FLEETWARDEN_PROMETHEUS_URL", "--prometheus-url", "prometheus.monitoring", "URL with a host"),
    ("FLEETWARDEN_PROMETHEUS_URL", "--prometheus-url", "http://", "URL with a host"),
    ("FLEETWARDEN_PROMETHEUS_URL", "--prometheus-url", "http:///api", "URL with a host"),
    ("FLEETWARDEN_PROMETHEUS_URL", "--prometheus-url", "ftp://prometheus:9090", "http:// or https://"),
    ("FLEETWARDEN_PROMETHEUS_URL", "--prometheus-url", "http://prometheus:99999", "URL with a host"),
    ("FLEETWARDEN_ALERTMANAGER_URL", "--alertmanager-url", "alertmanager:9093", "http:// or https://"),
    ("FLEETWARDEN_ALERTMANAGER_URL", "--alertmanager-url", "https://", "URL with a host"),
    ("FLEETWARDEN_PROMETHEUS_HEADERS", "--prometheus-headers", "X-Scope-OrgID", "Name=value pairs"),
    ("FLEETWARDEN_PROMETHEUS_HEADERS", "--prometheus-headers", "X Scope=a", "'X Scope=a' is not one"),
    ("FLEETWARDEN_PROMETHEUS_HEADERS", "--prometheus-headers", "X-Scope-OrgID=", "Name=value pairs"),
    ("FLEETWARDEN_PROMETHEUS_HEADERS", "--prometheus-headers", "X-Scope-OrgID=a\nb", "Name=value pairs"),
    ("FLEETWARDEN_NAMESPACES", "--namespace", "Team_A", "'Team_A' is not a namespace name or a glob"),
    ("FLEETWARDEN_NAMESPACES", None, "a,!b", "'!b' is not a namespace name or a glob"),
    ("FLEETWARDEN_EVALUATION", "--evaluation", "per-object", "one of fleet, timers"),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own copy of the environment, without FLEETWARDEN_* settings, and a
    kopf.run that fails at once (a value let through would otherwise start the operator)."""
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")})

    def run(**kwargs: object) -> None:
        raise AssertionError("the operator started")

    monkeypatch.setattr(kopf, "run", run)


@pytest.mark.parametrize(("env", "flag", "value", "says"), BAD)
def test_a_bad_variable_is_refused_naming_it_and_its_value(env: str, flag: str | None, value: str, says: str) -> None:
    """Settings.from_env refuses the value with an InputError naming the variable, the value and the rule."""
    with pytest.raises(errors.InputError) as info:
        settings.Settings.from_env({env: value})
    assert info.value.field == env
    assert repr(value) in str(info.value) and says in str(info.value)
    assert "\n" not in str(info.value)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    operator_command.register(parser.add_subparsers())
    return parser.parse_args(["operator", *argv])


@pytest.mark.parametrize(("env", "flag", "value", "says"), [case for case in BAD if case[1] is not None])
def test_a_bad_flag_is_refused_naming_the_flag(env: str, flag: str, value: str, says: str) -> None:
    """`fleetwarden operator FLAG VALUE` refuses a bad value naming the flag (not the variable it sets)."""
    with pytest.raises(errors.InputError) as info:
        operator_command.run(parse(f"{flag}={value}"))
    assert info.value.field == flag
    assert repr(value) in str(info.value) and says in str(info.value)


def test_a_bad_variable_not_set_by_a_flag_is_named_as_the_variable() -> None:
    """A bad variable the flags leave alone is named as the variable."""
    os.environ["FLEETWARDEN_SCRAPE_INTERVAL"] = "nan"
    with pytest.raises(errors.InputError) as info:
        operator_command.run(parse("--interval", "5"))
    assert info.value.field == "FLEETWARDEN_SCRAPE_INTERVAL"


def test_good_values_and_defaults_are_read() -> None:
    """Valid values are read as numbers and URLs; unset or blank variables take the defaults."""
    got = settings.Settings.from_env({
        "FLEETWARDEN_INTERVAL": "2.5", "FLEETWARDEN_PROMETHEUS_URL": " https://prom.example:9090/prefix ",
        "FLEETWARDEN_PROMETHEUS_TIMEOUT": "0.25", "FLEETWARDEN_LOOKBACK_MINUTES": "30.0",
        "FLEETWARDEN_METRICS_PORT": "0", "FLEETWARDEN_WORKERS": "", "FLEETWARDEN_ALERTMANAGER_URL": "http://[::1]:9093",
        "FLEETWARDEN_PACE": "0"})
    assert got == settings.Settings(
        interval=2.5, prometheus_url="https://prom.example:9090/prefix", prometheus_timeout=0.25, scrape_interval=15.0,
        lookback_minutes=30, metrics_port=0, workers=16, alertmanager_url="http://[::1]:9093", pace=0.0)
    assert settings.Settings.from_env({}) == settings.Settings(
        interval=15.0, prometheus_url="http://localhost:9090", prometheus_timeout=10.0, scrape_interval=15.0,
        lookback_minutes=90, metrics_port=8081, workers=16, alertmanager_url=None)


ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("argv", "env", "says"), [
    (["--interval", "nan"], {}, "error: field '--interval': must be a finite number of seconds >= 0.5, got 'nan'"),
    (["--prometheus-url", "prometheus:9090"], {},
     "error: field '--prometheus-url': must be an http:// or https:// URL with a host"),
    ([], {"FLEETWARDEN_PROMETHEUS_TIMEOUT": "-3"},
     "error: field 'FLEETWARDEN_PROMETHEUS_TIMEOUT': must be a finite number of seconds > 0, got '-3'"),
])
def test_the_command_exits_2_with_one_line(argv: list[str], env: dict[str, str], says: str) -> None:
    """`python -m fleetwarden operator` with a bad value exits 2 at start, one line on stderr, no traceback."""
    environ = {**os.environ, **env, "PYTHONPATH": str(ROOT / "operator")}
    done = subprocess.run([sys.executable, "-m", "fleetwarden", "operator", *argv], env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"fleetwarden operator: {says}")
    assert done.stdout == ""
