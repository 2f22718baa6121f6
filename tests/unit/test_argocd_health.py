"""The Argo CD health checks in manifests/argocd/resource_customizations, run as Argo CD runs them.

Argo CD's own test (``TestLuaHealthScript``) walks resource_customizations/, reads each
health_test.yaml, runs health.lua on every ``inputPath`` object and compares the returned
``{status, message}`` with ``healthStatus``. This does the same with Lua 5.1 (``lupa``; Argo
CD's gopher-lua is Lua 5.1 too), in a VM cut down to what Argo CD gives a health script
from argocd-cm: the base and table functions, no ``string``, ``math``, ``io``, ``os`` or
string methods. The object is the global table ``obj``, arrays 1-based.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "manifests" / "argocd" / "resource_customizations"
COMPONENT = ROOT / "manifests" / "argocd" / "kustomization.yaml"
CRDS = ROOT / "crds"

# gopher-lua's health codes (an unknown one makes Argo CD report Unknown)
HEALTH_CODES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
# Argo CD opens base, table and package; everything else goes.
_CUT_DOWN = """
debug.setmetatable("", nil)
string, math, io, os, debug, coroutine = nil, nil, nil, nil, nil, nil
"""


class _KubeYAML(yaml.SafeLoader):
    """YAML as Kubernetes reads it: timestamps stay strings."""


_KubeYAML.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_KubeYAML)  # noqa: S506 - a SafeLoader subclass


def run_health(script: str, obj: dict[str, Any]) -> dict[str, str]:
    """health.lua's verdict on ``obj`` as Argo CD's ``HealthStatus`` (a missing message is "")."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(_CUT_DOWN)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    if result is None:
        return {"status": "", "message": ""}
    return {"status": str(result["status"] or ""), "message": str(result["message"] or "")}


def _crd(kind: str) -> dict[str, Any]:
    for path in sorted(CRDS.glob("*.yaml")):
        doc = load_yaml(path)
        if doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == kind:
            return doc  # type: ignore[no-any-return]
    raise AssertionError(f"no CRD of kind {kind} in {CRDS}")


def _status_schema(kind: str) -> dict[str, Any]:
    (version,) = _crd(kind)["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]  # type: ignore[no-any-return]


KINDS = sorted(p.parent for p in CUSTOMIZATIONS.glob("*/*/health.lua"))


def _tests(kind_dir: Path) -> list[dict[str, Any]]:
    return list(load_yaml(kind_dir / "health_test.yaml")["tests"])


CASES = [pytest.param(kind_dir, case, id=f"{kind_dir.name}/{case['inputPath']}")
         for kind_dir in KINDS for case in _tests(kind_dir)]


def _inputs(kind_dir: Path) -> list[dict[str, Any]]:
    return [load_yaml(kind_dir / case["inputPath"]) for case in _tests(kind_dir)]


def test_both_kinds_have_a_health_check() -> None:
    """AgentBudget and CostApproval each have group/kind/health.lua, named as the CRDs name them."""
    assert [f"{p.parent.name}/{p.name}" for p in KINDS] == ["fleetwarden.dev/AgentBudget",
                                                           "fleetwarden.dev/CostApproval"]
    for kind_dir in KINDS:
        assert _crd(kind_dir.name)["spec"]["group"] == kind_dir.parent.name


@pytest.mark.parametrize(("kind_dir", "case"), CASES)
def test_health(kind_dir: Path, case: dict[str, Any]) -> None:
    """health.lua returns exactly the healthStatus its health_test.yaml expects for the input."""
    obj = load_yaml(kind_dir / case["inputPath"])
    assert obj["kind"] == kind_dir.name
    got = run_health((kind_dir / "health.lua").read_text(), obj)
    expected = {"status": case["healthStatus"]["status"], "message": case["healthStatus"].get("message", "")}
    assert expected["status"] in HEALTH_CODES
    assert got == expected


@pytest.mark.parametrize("kind_dir", KINDS, ids=lambda p: p.name)
def test_every_testdata_file_is_a_case(kind_dir: Path) -> None:
    """Every file in testdata/ is the inputPath of exactly one test, and every inputPath exists."""
    used = [case["inputPath"] for case in _tests(kind_dir)]
    assert len(used) == len(set(used))
    assert sorted(used) == sorted(f"testdata/{p.name}" for p in (kind_dir / "testdata").iterdir())


def test_every_agentbudget_state_has_a_case() -> None:
    """Each status.state of the CRD's enum has a case, and so has a budget with no status yet."""
    states = set(_status_schema("AgentBudget")["state"]["enum"])
    inputs = _inputs(CUSTOMIZATIONS / "fleetwarden.dev" / "AgentBudget")
    covered = {(obj.get("status") or {}).get("state") for obj in inputs}
    assert states <= covered
    assert None in covered


def test_every_costapproval_decision_has_a_case() -> None:
    """Each status.decision of the CRD's enum has a case, and so has a pending request (no decision)."""
    decisions = set(_status_schema("CostApproval")["decision"]["enum"])
    inputs = _inputs(CUSTOMIZATIONS / "fleetwarden.dev" / "CostApproval")
    covered = {(obj.get("status") or {}).get("decision") for obj in inputs}
    assert decisions | {None} == covered


def test_the_vm_has_no_string_library() -> None:
    """A script that uses a string method fails here as it fails in Argo CD."""
    with pytest.raises(lua51.LuaError):
        run_health('return {status = ("x"):upper()}', {})
    with pytest.raises(lua51.LuaError):
        run_health("return {status = string.upper('x')}", {})


def test_the_argocd_component_installs_each_health_check() -> None:
    """manifests/argocd merges each health.lua into argocd-cm under resource.customizations.health.<group>_<Kind>."""
    component = load_yaml(COMPONENT)
    assert component["kind"] == "Component"
    (generator,) = component["configMapGenerator"]
    assert (generator["name"], generator["behavior"]) == ("argocd-cm", "merge")
    files = dict(entry.split("=", 1) for entry in generator["files"])
    assert files == {f"resource.customizations.health.{p.parent.name}_{p.name}":
                     str((p / "health.lua").relative_to(COMPONENT.parent)) for p in KINDS}
