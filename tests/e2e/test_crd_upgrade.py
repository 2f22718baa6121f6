"""The API upgrade path's first promise (docs/api.md): an AgentBudget stored as v1alpha1 today
survives a CRD update that adds fields, untouched and still valid, on the real API server.

The test changes the session's AgentBudget CRD and puts the shipped one back afterwards.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_fleetwarden import crds_installed  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "agentbudgets.yaml"
CRD = "agentbudgets.fleetwarden.dev"
BUDGET = ROOT / "examples" / "support-swarm" / "20-agentbudget.yaml"
# The optional field the next release adds in this test (a date to review the budget by).
ADDED = {"type": "string", "format": "date", "description": "The day the owner reviews this budget by."}

pytestmark = pytest.mark.e2e


def spec_properties(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    properties: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return properties


def with_added_field(crd: dict[str, Any]) -> dict[str, Any]:
    updated = copy.deepcopy(crd)
    spec_properties(updated)["reviewBy"] = ADDED
    return updated


def served_fields(cluster: Any) -> set[str]:
    return set(spec_properties(cluster.get_json("crd", CRD)))


def stored(cluster: Any, namespace: str) -> dict[str, Any]:
    obj = cluster.get_json("agentbudget", "support-swarm", "-n", namespace)
    return {"spec": obj["spec"], "status": obj.get("status"), "generation": obj["metadata"]["generation"],
            "resourceVersion": obj["metadata"]["resourceVersion"]}


def accepts_the_added_field(cluster: Any, namespace: str) -> bool:
    """A server-side dry run of a budget with the added field is accepted and keeps it (not pruned)."""
    body = yaml.safe_load(BUDGET.read_text())
    body["metadata"] = {"name": "with-review-date", "namespace": namespace}
    body["spec"]["reviewBy"] = "2027-01-31"
    result = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-", "-o", "json",
                             input=json.dumps(body), check=False)
    return result.returncode == 0 and json.loads(result.stdout)["spec"].get("reviewBy") == "2027-01-31"


def test_a_stored_agentbudget_survives_a_crd_update_that_adds_a_field(cluster: Any, crds_installed: list[str],  # noqa: F811
                                                                       namespace: str) -> None:
    """Create a v1alpha1 AgentBudget (spec from examples/, a status as the operator writes it); apply a
    CRD that adds an optional spec field; the object reads back unchanged (same resourceVersion), still
    passes validation on update, and takes the new field; the shipped CRD is then put back."""
    shipped = yaml.safe_load(CRD_FILE.read_text())
    assert cluster.get_json("crd", CRD)["status"]["storedVersions"] == ["v1alpha1"]
    body = yaml.safe_load(BUDGET.read_text())
    body["metadata"]["namespace"] = namespace
    cluster.apply(json.dumps(body))
    cluster.kubectl("patch", "agentbudget", "support-swarm", "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {
                        "state": "Active", "observedGeneration": 1, "lastEvaluated": "2026-11-30T10:00:00Z",
                        "summary": {"window": "hour", "spendUSD": 4.2, "capUSD": 20, "percentUsed": 21},
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Evaluated",
                                        "message": "evaluated", "lastTransitionTime": "2026-11-30T10:00:00Z",
                                        "observedGeneration": 1}]}}))
    before = stored(cluster, namespace)
    assert before["status"]["summary"]["spendUSD"] == 4.2
    assert "reviewBy" not in served_fields(cluster) and not accepts_the_added_field(cluster, namespace)
    try:
        cluster.apply(yaml.safe_dump(with_added_field(shipped)))
        cluster.wait_for(lambda: accepts_the_added_field(cluster, namespace), 60, "the updated schema served")
        assert stored(cluster, namespace) == before
        assert cluster.get_json("crd", CRD)["status"]["storedVersions"] == ["v1alpha1"]
        # still valid: the stored spec, created afresh (no ratcheting of unchanged fields on a create), passes
        # the new schema and its CEL rules; and an update of the stored object is accepted
        fresh = {"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget", "spec": before["spec"],
                 "metadata": {"name": "support-swarm-copy", "namespace": namespace}}
        cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(fresh))
        cluster.kubectl("label", "agentbudget", "support-swarm", "-n", namespace, "fleetwarden.dev/checked=yes")
        after = stored(cluster, namespace)
        assert (after["spec"], after["status"], after["generation"]) == (
            before["spec"], before["status"], before["generation"])
        cluster.kubectl("patch", "agentbudget", "support-swarm", "-n", namespace, "--type=merge",
                        "-p", '{"spec": {"reviewBy": "2027-01-31"}}')
        assert stored(cluster, namespace)["spec"] == {**before["spec"], "reviewBy": "2027-01-31"}
    finally:
        cluster.apply(str(CRD_FILE))
    cluster.wait_for(lambda: "reviewBy" not in served_fields(cluster), 30, "the shipped CRD back")
    cluster.wait_for(lambda: not accepts_the_added_field(cluster, namespace), 60, "the shipped schema served")
    # back on the shipped schema, the field it does not know is pruned when the object is read
    assert stored(cluster, namespace)["spec"] == before["spec"]
