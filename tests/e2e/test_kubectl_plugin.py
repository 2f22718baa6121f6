"""`kubectl fleetwarden ...`: the `kubectl-fleetwarden` console script (pyproject's entry point, in
the virtualenv's bin beside this Python) run by the real kubectl as a plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetwarden.core import incidents

BIN = Path(sys.executable).parent
PLUGIN = BIN / "kubectl-fleetwarden"

pytestmark = pytest.mark.e2e


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.fixture
def plugin_env(cluster: Any) -> dict[str, str]:
    """The cluster's environment with the virtualenv's bin on PATH, where pip put kubectl-fleetwarden."""
    assert PLUGIN.is_file(), f"{PLUGIN} is missing: install the package into this virtualenv (scripts/setup)"
    env = dict(cluster.env)
    env["PATH"] = os.pathsep.join([str(BIN), env["PATH"]])
    return env


def test_kubectl_fleetwarden_incident_list_is_the_cli(cluster: Any, namespace: str,
                                                       plugin_env: dict[str, str]) -> None:
    """kubectl finds the plugin, and `kubectl fleetwarden incident list -A` prints what
    `fleetwarden incident list -A` prints, an incident recorded in the cluster among it."""
    record = incidents.Incident(
        id=f"inc-{namespace[-6:]}plugin", kind="runaway_loop", agent="bot", namespace=namespace,
        opened="2026-11-30T10:00:00Z", detected="2026-11-30T10:01:00Z", last_seen="2026-11-30T10:05:00Z",
        message="tokens per minute accelerating", action="kill", budget="support")
    cluster.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "fleetwarden-incidents", "namespace": namespace},
                                  "data": {record.id: record.to_json()}}))
    plugins = run([cluster.kubectl_path, "plugin", "list"], plugin_env)
    assert str(PLUGIN) in plugins.stdout, plugins.stdout + plugins.stderr
    for output in (["-o", "json"], []):
        via_kubectl = run([cluster.kubectl_path, "fleetwarden", "incident", "list", "-A", *output], plugin_env)
        direct = run([sys.executable, "-m", "fleetwarden", "incident", "list", "-A", *output], plugin_env)
        assert via_kubectl.returncode == 0, via_kubectl.stderr
        # the same output, seen through this test's namespace: an operator of another test may be
        # adding to its own incidents between the two listings
        assert _ours(via_kubectl.stdout, namespace, output) == _ours(direct.stdout, namespace, output)
        assert record.id in _ours(via_kubectl.stdout, namespace, output)


def _ours(listing: str, namespace: str, output: list[str]) -> str:
    """The listing's header and its lines (or JSON records) of ``namespace``."""
    if output:
        return json.dumps([r for r in json.loads(listing) if r.get("namespace") == namespace], sort_keys=True)
    lines = listing.splitlines()
    return "\n".join(lines[:1] + [line for line in lines[1:] if namespace in line])


def test_kubectl_fleetwarden_names_itself_in_errors_and_help(cluster: Any, namespace: str,
                                                              plugin_env: dict[str, str]) -> None:
    """An error is one line naming `kubectl fleetwarden`; --help shows the kubectl form of the usage."""
    missing = run([cluster.kubectl_path, "fleetwarden", "incident", "show", "inc-none", "-n", namespace], plugin_env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"kubectl fleetwarden incident: error: no incident inc-none in namespace {namespace} "
        "(try `fleetwarden incident list -A`)"]
    usage = run([cluster.kubectl_path, "fleetwarden", "--help"], plugin_env)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: kubectl fleetwarden ")
