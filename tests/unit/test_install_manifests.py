"""The install manifests and the operator image agree with each other and stay least-privilege.

Static checks of manifests/ and the Dockerfile (which cannot be built here); applying the
manifests to a real API server and checking RBAC with `kubectl auth can-i` is in
tests/e2e/test_install.py.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CRDS = ROOT / "crds"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _operator_deployment() -> dict[str, Any]:
    (deployment,) = [d for d in _docs(MANIFESTS / "operator.yaml") if d["kind"] == "Deployment"]
    return deployment


def _cluster_role() -> dict[str, Any]:
    (role,) = [d for d in _docs(MANIFESTS / "rbac.yaml") if d["kind"] == "ClusterRole"]
    return role


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        instruction, _, args = full.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


DOCKERFILE = dockerfile_instructions((ROOT / "Dockerfile").read_text())


def _all(instruction: str) -> list[str]:
    return [args for name, args in DOCKERFILE if name == instruction]


def test_dockerfile_builds_on_python_slim() -> None:
    """The image starts from python:3.11-slim and installs the package with the operator extra."""
    assert DOCKERFILE[0] == ("FROM", "python:3.11-slim")
    assert any(re.search(r"pip install \"?\.\[operator", run) for run in _all("RUN"))


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    """The last USER is a numeric non-root uid (so runAsNonRoot can verify it) and matches the Deployment."""
    user = _all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    names = [name for name, _ in DOCKERFILE]
    assert names.index("ENTRYPOINT") > len(names) - 1 - names[::-1].index("USER")
    pod = _operator_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_dockerfile_copies_the_package_and_never_an_operator_init() -> None:
    """Only pyproject, README and operator/fleetwarden are copied; nothing creates operator/__init__.py."""
    sources = []
    for args in _all("COPY") + _all("ADD"):
        *srcs, _dest = shlex.split(args)
        sources += [s for s in srcs if not s.startswith("--")]
    assert sorted(sources) == ["README.md", "operator/fleetwarden", "pyproject.toml"]
    assert not any("operator/__init__.py" in args for _, args in DOCKERFILE)
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_dockerfile_preloads_the_jemalloc_it_installs() -> None:
    """The image installs Debian's jemalloc, links it to one path on every architecture, and
    preloads that path, Python's objects in it too, with one arena (the operator names the malloc
    and its arenas on /metrics)."""
    runs = " ".join(_all("RUN"))
    assert re.search(r"apt-get install [^&]*\blibjemalloc2\b", runs)
    link = re.search(r'ln -s (?:"[^"]*"|\S+) (\S+libjemalloc\.so\.2)', runs)
    assert link, "no link to the installed libjemalloc.so.2"
    env = dict(pair.split("=", 1) for args in _all("ENV") for pair in shlex.split(args))
    assert env.get("LD_PRELOAD") == link.group(1)
    assert env.get("PYTHONMALLOC") == "malloc"  # Python's objects in jemalloc too
    assert env.get("MALLOC_CONF") == "narenas:1"  # one arena: the threads allocate holding the GIL
    names = [name for name, _ in DOCKERFILE]
    assert names.index("ENV", names.index("RUN")) < names.index("ENTRYPOINT")


def test_dockerfile_entrypoint_is_the_deployment_command() -> None:
    """The image's ENTRYPOINT and the operator Deployment's command are the same kopf run."""
    (entrypoint,) = _all("ENTRYPOINT")
    command = json.loads(entrypoint)
    assert command[:2] == ["fleetwarden", "operator"]
    assert {"--leader-elect", "--all-namespaces"} <= set(command)
    (container,) = _operator_deployment()["spec"]["template"]["spec"]["containers"]
    assert container["command"] == command


def test_operator_pod_is_locked_down() -> None:
    """The operator runs non-root, read-only, without privilege escalation or capabilities."""
    pod = _operator_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_operator_liveness_probe_hits_kopf_liveness_endpoint() -> None:
    """The liveness probe asks the port and path that kopf's --liveness serves."""
    (container,) = _operator_deployment()["spec"]["template"]["spec"]["containers"]
    (liveness,) = [a for a in container["command"] if a.startswith("--liveness=")]
    match = re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)(/\S+)", liveness)
    assert match
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert (ports[probe["port"]], probe["path"]) == (int(match.group(1)), match.group(2))
    assert "metrics" in ports
    assert {e["name"] for e in container["env"]} >= {"FLEETWARDEN_PROMETHEUS_URL", "POD_NAME", "POD_NAMESPACE"}


def test_operator_environment_is_what_the_operator_reads() -> None:
    """Every variable the Deployment sets is one fleetwarden.handlers.settings reads (a misspelt one
    would be ignored without a word), and the Prometheus URL and metrics port are among them."""
    settings = (ROOT / "operator" / "fleetwarden" / "handlers" / "settings.py").read_text()
    read = set(re.findall(r'"(FLEETWARDEN_[A-Z_]+)"', settings))
    (container,) = _operator_deployment()["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"] if e["name"].startswith("FLEETWARDEN_")]
    assert set(names) <= read, sorted(set(names) - read)
    assert {"FLEETWARDEN_PROMETHEUS_URL", "FLEETWARDEN_METRICS_PORT"} <= set(names)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = [e["value"] for e in container["env"] if e["name"] == "FLEETWARDEN_METRICS_PORT"]
    assert int(port) == ports["metrics"]


def test_two_replicas_elect_a_leader_and_a_disruption_budget_keeps_one() -> None:
    """Two replicas under leader election (the command line parses, the Lease in the pod's own
    namespace), never both down in a rollout or a drain (PodDisruptionBudget minAvailable 1)."""
    from fleetwarden import cli

    deployment = _operator_deployment()
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args(container["command"][1:])
    assert args.leader_elect is True and args.lease_namespace is None  # $POD_NAMESPACE
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    (pdb,) = [d for d in _docs(MANIFESTS / "operator.yaml") if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_lease_role_is_namespaced_and_minimal() -> None:
    """Leases: get, create, update in the operator's namespace only (a Role, not the ClusterRole)."""
    docs = _docs(MANIFESTS / "rbac.yaml")
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert role["metadata"]["namespace"] == _operator_deployment()["metadata"]["namespace"]
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == _operator_deployment()["spec"]["template"]["spec"]["serviceAccountName"]
    assert not any("coordination.k8s.io" in r["apiGroups"] for r in _cluster_role()["rules"])


def test_agent_role_lets_an_agent_ask_but_never_decide() -> None:
    """fleetwarden-agent: read ConfigMaps, create/get/watch CostApprovals, nothing more; the example
    RoleBinding binds it in one namespace."""
    (role,) = _docs(MANIFESTS / "agent-rbac.yaml")
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
              for v in rule["verbs"]}
    assert ("fleetwarden.dev", "costapprovals", "create") in grants
    assert ("fleetwarden.dev", "costapprovals", "watch") in grants
    assert ("", "configmaps", "get") in grants
    assert not {r for _, r, _ in grants} - {"configmaps", "costapprovals", "selfsubjectreviews"}
    assert not {v for _, _, v in grants} & (FORBIDDEN_VERBS | {"update", "patch"})
    example = {d["kind"]: d for d in _docs(MANIFESTS / "agent-rolebinding.example.yaml")}
    assert example["RoleBinding"]["roleRef"]["name"] == role["metadata"]["name"]
    assert "agent-rbac.yaml" in _kustomization(MANIFESTS)["resources"]


def test_operator_service_account_is_bound_to_the_cluster_role() -> None:
    """The Deployment's ServiceAccount is the subject of the binding to the operator's ClusterRole."""
    (account,) = _docs(MANIFESTS / "serviceaccount.yaml")
    (binding,) = [d for d in _docs(MANIFESTS / "rbac.yaml") if d["kind"] == "ClusterRoleBinding"]
    pod = _operator_deployment()["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["roleRef"]["name"] == _cluster_role()["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]


FORBIDDEN_VERBS = {"*", "delete", "deletecollection", "escalate", "bind", "impersonate"}
FORBIDDEN_RESOURCES = {"*", "secrets", "pods", "pods/exec", "pods/attach", "serviceaccounts/token",
                       "roles", "clusterroles", "rolebindings", "clusterrolebindings"}


def test_cluster_role_is_least_privilege() -> None:
    """No wildcard, no delete, no secrets, pods, exec or RBAC in the operator's ClusterRole."""
    rules = _cluster_role()["rules"]
    for rule in rules:
        assert not set(rule["verbs"]) & FORBIDDEN_VERBS, rule
        assert not set(rule["resources"]) & FORBIDDEN_RESOURCES, rule
        assert "*" not in rule["apiGroups"] and "resourceNames" not in rule and "nonResourceURLs" not in rule


@pytest.mark.parametrize(("group", "resource", "verb"), [
    ("fleetwarden.dev", "agentbudgets", "watch"),
    ("fleetwarden.dev", "agentbudgets/status", "patch"),
    ("fleetwarden.dev", "costpolicies/status", "patch"),
    ("fleetwarden.dev", "costapprovals", "watch"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments/scale", "update"),
    ("", "events", "create"),
    ("events.k8s.io", "events", "create"),
    ("", "configmaps", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("keda.sh", "scaledobjects", "list"),
    ("keda.sh", "scaledobjects", "patch"),
])
def test_cluster_role_grants_what_the_operator_needs(group: str, resource: str, verb: str) -> None:
    """The operator may watch its resources, write their status, scale and patch agents, and post events."""
    assert any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in _cluster_role()["rules"])


def _kustomization(directory: Path) -> dict[str, Any]:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).exists():
            doc: dict[str, Any] = yaml.safe_load((directory / name).read_text())
            return doc
    raise AssertionError(f"{directory} has no kustomization")


def test_crds_kustomization_lists_every_crd() -> None:
    """crds/Kustomization names every CRD file in crds/, so `kubectl apply -k manifests/` installs them all."""
    assert sorted(_kustomization(CRDS)["resources"]) == sorted(p.name for p in CRDS.glob("*.yaml"))


def test_manifests_kustomization_resources_exist() -> None:
    """Every resource of manifests/kustomization.yaml exists, and the CRDs come in through ../crds."""
    resources = _kustomization(MANIFESTS)["resources"]
    assert "../crds" in resources
    for entry in resources:
        assert (MANIFESTS / entry).exists(), entry
