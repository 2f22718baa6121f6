"""A CostPolicy compiled into the ConfigMap the SDK reads: content and halt flag."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetwarden import errors, sdk
from fleetwarden.core import spec
from fleetwarden.handlers import policyconfig

POLICY = {
    "selector": {"matchLabels": {"team": "support"}},
    "tokenCaps": {"perTask": 20000},
    "rateLimits": {"toolCallsPerMinute": 30, "perTool": {"crm.search": 10}},
    "tools": {"allow": ["crm.*", "kb.search"], "deny": ["crm.delete"]},
    "toolPricesUSD": {"crm.search": 0.002},
    "approvals": [{"name": "refunds", "tool": "payments.refund", "amountAboveUSD": 50}],
}


def _deployment(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}}


def _budget(selector: dict, *, suspend: bool = False, state: str | None = None, engaged: bool = False) -> dict:
    status: dict = {}
    if state:
        status["state"] = state
    if engaged:
        status["killSwitch"] = {"engaged": True}
    return {"metadata": {"name": "b", "uid": "u"}, "spec": {"selector": selector, "suspend": suspend},
            "status": status}


def test_policy_json_round_trips_into_the_sdk(tmp_path: Path) -> None:
    """The SDK's GuardrailPolicy read from the ConfigMap files equals the validated spec."""
    compiled = policyconfig.compile_spec(POLICY)
    data = policyconfig.compile_data(compiled, is_halted=True, deployments=[
        {"metadata": {"name": "bot"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2}}])
    assert set(data) == {"policy.json", "halt", "replicas.json", "steps.json"}
    for key, value in data.items():
        (tmp_path / key).write_text(value)
    guard = sdk.GuardrailPolicy.from_dir(tmp_path)
    assert guard.spec == compiled == spec.CostPolicySpec.model_validate(POLICY)
    assert guard.halted is True
    assert (guard.replicas("bot"), guard.replicas("unknown")) == (3, 1)
    assert sdk.GuardrailPolicy.from_json(data["policy.json"]).spec == compiled


def test_policy_json_is_camel_case_with_defaults() -> None:
    """policy.json uses the CRD's field names and spells out every default."""
    text = policyconfig.compile_data(policyconfig.compile_spec({}), is_halted=False)
    assert '"tokenCaps"' in text["policy.json"] and '"modelUpdateSpike"' in text["policy.json"]
    assert text["halt"] == "false"


@pytest.mark.parametrize(("given", "compiled"), [({}, "Enforce"), ({"enforcement": "DryRun"}, "DryRun"),
                                                 ({"enforcement": "Warn"}, "Warn")])
def test_enforcement_is_compiled_for_the_sdk(tmp_path: Path, given: dict, compiled: str) -> None:
    """spec.enforcement reaches the SDK through policy.json (Enforce when unset)."""
    data = policyconfig.compile_data(policyconfig.compile_spec({**POLICY, **given}), is_halted=False)
    (tmp_path / "policy.json").write_text(data["policy.json"])
    assert f'"enforcement": "{compiled}"' in data["policy.json"]
    assert sdk.GuardrailPolicy.from_dir(tmp_path).spec.enforcement.value == compiled


def test_invalid_spec_names_the_field() -> None:
    """A spec that does not validate raises ManifestError naming the field."""
    with pytest.raises(errors.ManifestError, match="tokenCaps"):
        policyconfig.compile_spec({"tokenCaps": {"perTask": 0}})


SUPPORT = {"matchLabels": {"team": "support"}}
OTHER = {"matchLabels": {"team": "sales"}}


@pytest.mark.parametrize("deployments, budgets, expected", [
    ([_deployment("bot", team="support")], [], False),
    ([_deployment("bot", team="support")], [_budget(SUPPORT)], False),
    ([_deployment("bot", team="support")], [_budget(SUPPORT, suspend=True)], True),
    ([_deployment("bot", team="support")], [_budget(SUPPORT, state="Killed")], True),
    ([_deployment("bot", team="support")], [_budget({}, engaged=True)], True),  # empty selector: all
    ([_deployment("bot", team="support")], [_budget(OTHER, suspend=True)], False),
    ([], [_budget(SUPPORT, state="Suspended")], True),  # same selector, no Deployment yet
    ([], [_budget({"matchLabels": {"app": "x"}}, suspend=True)], False),
    ([_deployment("bot", team="sales")], [_budget(OTHER, suspend=True)], False),  # not the policy's agent
], ids=["no-budget", "active", "suspended", "killed", "engaged-all", "other-team", "same-selector",
        "unrelated", "agent-outside-policy"])
def test_halt_follows_the_budgets_of_the_policys_agents(deployments: list, budgets: list, expected: bool) -> None:
    """halt is true exactly when a killed or suspended budget covers one of the policy's agents."""
    assert policyconfig.halted(policyconfig.compile_spec(POLICY), deployments, budgets) is expected


def test_owner_reference_points_at_the_policy() -> None:
    """The ConfigMap is owned by its CostPolicy, so it is deleted with it."""
    ref = policyconfig.owner_reference({"metadata": {"name": "p", "uid": "123"}})
    assert ref == {"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy", "name": "p", "uid": "123",
                   "controller": True, "blockOwnerDeletion": False}
    assert policyconfig.configmap_name("p") == "fleetwarden-policy-p"


@pytest.mark.parametrize(("desired", "ready", "count"), [
    (3, 3, 3), (3, 1, 3),  # pods starting or one died: the desired count, never fewer
    (3, 4, 4),  # a rollout's surge pod is ready: counted
    (None, None, 1), (0, None, 1), (0, 0, 1),  # default 1 replica; scaled to zero still 1, never 0
    (1, 5, 5),  # scaled down, the old pods still ready: counted until they go
])
def test_replica_count(desired: int | None, ready: int | None, count: int) -> None:
    """The share's divisor: the larger of the desired and the ready replicas, at least 1."""
    d: dict[str, Any] = {"metadata": {"name": "bot"}, "spec": {}, "status": {}}
    if desired is not None:
        d["spec"]["replicas"] = desired
    if ready is not None:
        d["status"]["readyReplicas"] = ready
    assert policyconfig.replica_count(d) == count
    assert policyconfig.replicas_json([d]) == f'{{"bot": {count}}}'


def test_deployment_events_that_can_change_coverage() -> None:
    """Created, deleted, relabelled, scaled and readiness-changed Deployments recompile; the initial
    listing and other updates do not."""
    seen: dict[str, tuple[dict[str, str], int]] = {}

    def body(labels: dict[str, str], replicas: int = 1, ready: int = 0) -> dict[str, Any]:
        return {"metadata": {"uid": "u1", "namespace": "ns", "labels": labels}, "spec": {"replicas": replicas},
                "status": {"readyReplicas": ready}}

    assert not policyconfig.deployment_changed({"type": None}, body({"team": "a"}), seen)  # the initial listing
    assert not policyconfig.deployment_changed({"type": "MODIFIED"}, body({"team": "a"}, ready=1), seen)  # same count
    assert policyconfig.deployment_changed({"type": "MODIFIED"}, body({"team": "a"}, replicas=3), seen)  # scaled
    assert not policyconfig.deployment_changed({"type": "MODIFIED"}, body({"team": "a"}, 1, ready=3), seen)  # going
    assert policyconfig.deployment_changed({"type": "MODIFIED"}, body({"team": "a"}, 1, ready=1), seen)  # gone
    assert policyconfig.deployment_changed({"type": "MODIFIED"}, body({"team": "a", "tier": "premium"}), seen)
    assert not policyconfig.deployment_changed({"type": "MODIFIED"}, body({"team": "a", "tier": "premium"}), seen)
    assert policyconfig.deployment_changed({"type": "DELETED"}, body({"team": "a"}), seen)
    assert seen == {}
    assert policyconfig.deployment_changed({"type": "ADDED"}, body({"team": "a"}), seen)  # created after startup


def _stepped(selector: dict, active: list[dict], enforcement: str | None = None, name: str = "b") -> dict:
    spec_: dict = {"selector": selector}
    if enforcement is not None:
        spec_["enforcement"] = enforcement
    return {"metadata": {"name": name, "uid": name}, "spec": spec_, "status": {"steps": {"active": active}}}


CAP = {"name": "CapOutputTokens-70", "action": "CapOutputTokens", "maxOutputTokens": 500}
STOP = {"name": "StopNewTasks-90", "action": "StopNewTasks"}
CHEAPER = {"name": "CheaperModel-50", "action": "CheaperModel", "model": "gpt-4o-mini"}


@pytest.mark.parametrize(("budgets", "expected"), [
    ([], {"maxOutputTokens": None, "stopNewTasks": False, "steps": []}),
    ([_stepped(SUPPORT, [CHEAPER])], {"maxOutputTokens": None, "stopNewTasks": False, "steps": []}),
    ([_stepped(SUPPORT, [CHEAPER, CAP, STOP])],
     {"maxOutputTokens": 500, "stopNewTasks": True, "steps": ["b/CapOutputTokens-70", "b/StopNewTasks-90"]}),
    ([_stepped(SUPPORT, [CAP]), _stepped({}, [{**CAP, "maxOutputTokens": 200}], name="all")],
     {"maxOutputTokens": 200, "stopNewTasks": False, "steps": ["all/CapOutputTokens-70", "b/CapOutputTokens-70"]}),
    ([_stepped(SUPPORT, [CAP, STOP], enforcement="DryRun"), _stepped(SUPPORT, [STOP], enforcement="Warn")],
     {"maxOutputTokens": None, "stopNewTasks": False, "steps": []}),
    ([_stepped(OTHER, [CAP, STOP])], {"maxOutputTokens": None, "stopNewTasks": False, "steps": []}),
], ids=["none", "cheaper-model-is-not-the-sdks", "cap-and-stop", "lowest-cap-wins", "dry-run-and-warn", "other-team"])
def test_steps_json_follows_the_steps_in_force(tmp_path: Path, budgets: list, expected: dict) -> None:
    """steps.json: the CapOutputTokens and StopNewTasks steps in force of the Enforce budgets covering the
    policy's agents, as the SDK reads them."""
    data = policyconfig.compile_data(policyconfig.compile_spec(POLICY), False, [_deployment("bot", team="support")],
                                     budgets)
    assert json.loads(data["steps.json"]) == expected
    (tmp_path / "steps.json").write_text(data["steps.json"])
    steps = sdk.GuardrailPolicy.from_dir(tmp_path).steps
    assert (steps.max_output_tokens, steps.stop_new_tasks) == (expected["maxOutputTokens"], expected["stopNewTasks"])
