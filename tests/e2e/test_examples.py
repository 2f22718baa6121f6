"""The CRDs and every example on the real API server (with KWOK faking the agents' pods).

The CRDs install and become Established; each example fleet applies, shows up in
`kubectl get` with its printer columns, and its agents run; each manifest in
examples/invalid/ is refused with the error its `# expect:` line names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_fleetwarden import crds_installed  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
INVALID = EXAMPLES / "invalid"
EXAMPLE_DIRS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name != "invalid")
INVALID_FILES = sorted(INVALID.glob("*.yaml"))

pytestmark = pytest.mark.e2e


def _docs(directory: Path) -> list[dict[str, Any]]:
    return [d for path in sorted(directory.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def _of_kind(directory: Path, kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs(directory) if d["kind"] == kind]


@pytest.fixture(scope="module")
def applied_examples(cluster: Any, crds_installed: list[str]) -> Iterator[dict[str, str]]:  # noqa: F811
    """Every example directory applied with `kubectl apply -f DIR`; its output by directory name."""
    for directory in EXAMPLE_DIRS:  # a namespace still terminating from an earlier run refuses objects
        for namespace in _of_kind(directory, "Namespace"):
            cluster.kubectl("wait", "--for=delete", f"namespace/{namespace['metadata']['name']}",
                            "--timeout=120s", check=False, timeout=150)
    outputs = {d.name: cluster.kubectl("apply", "-f", str(d)).stdout for d in EXAMPLE_DIRS}
    yield outputs
    for directory in EXAMPLE_DIRS:
        cluster.kubectl("delete", "-f", str(directory), "--ignore-not-found", "--wait=true", "--timeout=120s",
                        check=False, timeout=150)


def test_crds_are_established(cluster: Any, crds_installed: list[str]) -> None:  # noqa: F811
    """`kubectl apply -f crds/` gives Established CRDs whose names were accepted."""
    assert {"agentbudgets.fleetwarden.dev", "costpolicies.fleetwarden.dev"} <= set(crds_installed)
    for name in crds_installed:
        crd = json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True", name


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_example_applies_cleanly(applied_examples: dict[str, str], example: Path) -> None:
    """Each example directory applies without error and creates every object it holds."""
    output = applied_examples[example.name]
    for doc in _docs(example):
        kind = doc["kind"].lower()
        name = doc["metadata"]["name"]
        assert re.search(rf"^{re.escape(kind)}[\w.]*/{re.escape(name)} (created|configured|unchanged)$",
                         output, re.MULTILINE), (kind, name, output)


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    """kubectl's table output as (header, rows); columns are found from the header's positions."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    names = [header[a:b].strip() for a, b in bounds]
    rows = [[line[a:b].strip() for a, b in bounds] for line in lines[1:]]
    return names, rows


def test_kubectl_get_shows_the_budget_columns(cluster: Any, applied_examples: dict[str, str]) -> None:
    """`kubectl get agentbudgets -A` prints Window, Spend, Cap, Used% and State from the status."""
    status = {"state": "Warning", "summary": {"window": "hour", "spendUSD": 16.4, "capUSD": 20, "percentUsed": 82.0}}
    cluster.kubectl("patch", "agentbudget", "support-swarm", "-n", "support", "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": status}))
    names, rows = _table(cluster.kubectl("get", "agentbudgets", "-A").stdout)
    assert names == ["NAMESPACE", "NAME", "WINDOW", "SPEND", "CAP", "USED%", "STATE", "MODE", "AGE"]
    by_name = {(r[0], r[1]): r for r in rows}
    assert by_name[("support", "support-swarm")][2:7] == ["hour", "16.4", "20", "82", "Warning"]
    for example in EXAMPLE_DIRS:
        (budget,) = _of_kind(example, "AgentBudget")
        assert (budget["metadata"]["namespace"], budget["metadata"]["name"]) in by_name


def test_kubectl_get_category_lists_budgets_and_policies(cluster: Any, applied_examples: dict[str, str]) -> None:
    """`kubectl get fleetwarden -A` lists every example's AgentBudget and CostPolicy, with the policy columns."""
    output = cluster.kubectl("get", "fleetwarden", "-A").stdout
    for example in EXAMPLE_DIRS:
        for kind in ("AgentBudget", "CostPolicy"):
            (resource,) = _of_kind(example, kind)
            assert f"{kind.lower()}.fleetwarden.dev/{resource['metadata']['name']}" in output
    policies = cluster.kubectl("get", "costpolicies", "-n", "procurement").stdout
    names, rows = _table(policies)
    assert names == ["NAME", "TOKENS/TASK", "CALLS/MIN", "APPROVALS", "MODE", "READY", "AGE"]
    assert rows[0][:4] == ["procurement", "40000", "", "large-purchase"]


def test_status_written_as_designed_is_kept_whole(cluster: Any, applied_examples: dict[str, str]) -> None:
    """A status with every field of docs/design.md survives the schema (nothing is pruned)."""
    status = {
        "observedGeneration": 1, "state": "Killed",
        "summary": {"window": "hour", "spendUSD": 31.0, "capUSD": 20, "percentUsed": 155.0},
        "spend": {"hour": 31.0, "day": 80.1, "month": 950.2},
        "burnRateUSDPerHour": 14.2, "projectedMonthUSD": 3100.0, "costPerTaskUSD": 0.41,
        "costPerOutcomeUSD": {"resolved_ticket": 0.52},
        "topAgents": [{"name": "support-resolver", "costUSD": 10.1}],
        "topTools": [{"name": "crm.search", "costUSD": 1.2, "calls": 300}],
        "models": [{"agent": "support-resolver", "model": "gpt-4o"}],
        "lastEvaluated": "2026-11-28T10:00:00Z",
        "conditions": [{"type": "KillSwitchEngaged", "status": "True", "reason": "SpendPastKillThreshold",
                        "message": "hour spend 155% of cap", "lastTransitionTime": "2026-11-28T10:00:00Z",
                        "observedGeneration": 1}],
        "killSwitch": {"engaged": True, "incident": "inc-3f2a9c1e00", "engagedAt": "2026-11-28T10:00:00Z",
                       "replicas": {"support-resolver": 3, "support-triage": 2}},
        "model": {"rollbacks": [{"agent": "support-resolver", "from": "gpt-4.1", "to": "gpt-4o",
                                 "at": "2026-11-28T08:00:00Z", "incident": "inc-aa", "reason": "2.3x cost per task"}],
                  "specDesired": "gpt-4o"},
        "steps": {"active": [{"name": "CheaperModel-70", "action": "CheaperModel", "window": "day", "atPercent": 70,
                              "percentUsed": 72.5, "since": "2026-11-28T09:00:00Z", "model": "gpt-4.1-nano",
                              "why": "spend over the day is 72% of the 200 USD cap, at or past 70%"}],
                  "engagement": "steps-0a1b2c3d4e", "acknowledged": ["StopNewTasks-95"],
                  "models": {"support-resolver": "gpt-4o"}, "replicas": {"support-resolver": 3}},
        "incidents": [{"id": "inc-3f2a9c1e00", "kind": "kill_switch", "agent": "support-resolver",
                       "workflow": "resolve_ticket", "model": "gpt-4o", "time": "2026-11-28T10:00:00Z",
                       "action": "kill", "message": "hour spend passed 150% of the cap"}],
    }
    cluster.kubectl("patch", "agentbudget", "procurement", "-n", "procurement", "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": status}))
    stored = cluster.get_json("agentbudget", "procurement", "-n", "procurement")
    assert stored["status"] == status


def test_defaults_are_filled_in_by_the_api_server(cluster: Any, applied_examples: dict[str, str]) -> None:
    """Fields an example leaves out come back with the CRD defaults (the ones the models use)."""
    stored = cluster.get_json("agentbudget", "lead-generation", "-n", "lead-generation")["spec"]
    assert stored["limits"][0]["warningPercent"] == 80
    assert stored["killSwitch"] == {"enabled": True, "thresholdPercent": 200, "window": "hour",
                                    "action": "ScaleToZero"}
    assert stored["model"] == {"envVar": "MODEL", "rollbackOnSpike": True}
    policy = cluster.get_json("costpolicy", "procurement", "-n", "procurement")["spec"]
    assert policy["anomalies"]["modelUpdateSpike"]["action"] == "rollback"
    assert policy["approvals"][0]["timeoutSeconds"] == 3600


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_example_agents_run(cluster: Any, applied_examples: dict[str, str], example: Path) -> None:
    """Each example Deployment gets all its replicas Running (pods faked by KWOK)."""
    for deployment in _of_kind(example, "Deployment"):
        namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        want = deployment["spec"]["replicas"]
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())

        def running(namespace: str = namespace, selector: str = selector, want: int = want) -> bool:
            pods = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
            return sum(p["status"].get("phase") == "Running" for p in pods) == want

        cluster.wait_for(running, 90, f"{want} Running pods of {namespace}/{name}")
        got = cluster.get_json("deployment", name, "-n", namespace)["status"]
        assert got.get("readyReplicas") == want


def test_kubectl_explain_shows_the_descriptions(cluster: Any, crds_installed: list[str]) -> None:  # noqa: F811
    """`kubectl explain agentbudget.spec.killSwitch` prints the field descriptions of the CRD."""
    crd = yaml.safe_load((ROOT / "crds" / "agentbudgets.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    kill_switch = schema["properties"]["spec"]["properties"]["killSwitch"]

    def explained() -> str | None:
        result = cluster.kubectl("explain", "agentbudget.spec.killSwitch", check=False)
        return result.stdout if result.returncode == 0 and "thresholdPercent" in result.stdout else None

    text = " ".join(cluster.wait_for(explained, 60, "kubectl explain agentbudget.spec.killSwitch").split())
    for name, prop in kill_switch["properties"].items():
        assert name in text
        assert " ".join(prop["description"].split())[:40] in text, name


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (.+)", first)
    assert match, f"{path.name}: first line must be '# expect: <error text>'"
    return match.group(1).strip()


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.name)
def test_invalid_example_is_refused_by_the_api_server(cluster: Any, crds_installed: list[str],  # noqa: F811
                                                      path: Path) -> None:
    """The API server refuses each invalid example with the error its `# expect:` line names."""
    (doc,) = _docs_of(path)
    result = cluster.kubectl("create", "-f", str(path), check=False)
    if result.returncode == 0:  # never leave an accepted mistake behind
        cluster.kubectl("delete", "-f", str(path), "--ignore-not-found", check=False)
    assert result.returncode != 0, f"{path.name} was accepted: {result.stdout}"
    assert expected_error(path) in result.stderr
    gone = cluster.kubectl("get", doc["kind"].lower(), doc["metadata"]["name"], "-n",
                           doc["metadata"].get("namespace", "default"), check=False)
    assert gone.returncode != 0


def _docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
