"""The Helm chart (charts/fleetwarden): `helm lint`, the packaged chart, values refused with the
value named, renderings applied to the real API server with a server-side dry run, and the
same operator from kustomize (`kubectl kustomize manifests/`) and from the chart.

helm is built from tools/controlplane/helm (the ``helm`` fixture). The Prometheus Operator's
CRDs are not shipped here: the dry runs of ServiceMonitor, PodMonitor and PrometheusRule
objects use stand-in CRDs of the same group, version and kinds that accept any spec, so
they check each object's kind, name and namespace, not its spec against the Prometheus
Operator's schema (the rules themselves are promtool-tested: tests/unit/views/).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleetwarden"
MANIFESTS = ROOT / "manifests"

# The default values and the two value sets of charts/fleetwarden/ci/.
VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    "monitoring": ["-f", str(CHART / "ci" / "monitoring-values.yaml")],
    "namespaced": ["-f", str(CHART / "ci" / "namespaced-values.yaml")],
}
# Namespaces the value sets name (watched namespaces, RoleBindings, the dashboards' home).
CI_NAMESPACES = ("fleetwarden-ci-agents", "fleetwarden-ci-monitoring")
# Labels Helm's conventions add and kustomize's manifests do not carry.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version"}

pytestmark = pytest.mark.e2e


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def template(helm: str, *args: str, release: str = "fleetwarden", namespace: str = "fleetwarden-system") -> str:
    """`helm template RELEASE charts/fleetwarden --namespace NS --include-crds ARGS`: the manifests."""
    result = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, "--include-crds", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def without_helm_labels(value: Any) -> Any:
    """``value`` with the labels only Helm adds removed wherever they appear (labels, selectors)."""
    if isinstance(value, dict):
        return {k: without_helm_labels(v) for k, v in value.items() if k not in HELM_ONLY_LABELS}
    if isinstance(value, list):
        return [without_helm_labels(v) for v in value]
    return value


# ---------------------------------------------------------------- helm alone


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint(helm: str, value_set: str) -> None:
    """`helm lint --strict` passes with the default values and each value set of ci/."""
    result = run_helm(helm, "lint", "--strict", str(CHART), *VALUE_SETS[value_set])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_packaged_chart_holds_the_crds_and_the_manifests_files(helm: str, tmp_path: Path) -> None:
    """`helm package` follows the chart's links: the archive holds crds/ and files/ byte for byte as the
    repository's crds/ and manifests/, and leaves out the kustomization and the test value sets."""
    result = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("fleetwarden-*.tgz")
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("fleetwarden/"): m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            handle = tar.extractfile(members[name])
            assert handle is not None
            return handle.read()

        crds = sorted(n for n in members if n.startswith("crds/"))
        assert crds == sorted(f"crds/{p.name}" for p in (ROOT / "crds").glob("*.yaml"))
        for name in crds:
            assert read(name) == (ROOT / name).read_bytes(), name
        assert read("files/prometheus-rules.yaml") == (MANIFESTS / "prometheus" / "rules.yaml").read_bytes()
        assert read("files/grafana/governance.json") == (MANIFESTS / "grafana" / "governance.json").read_bytes()
        chart = yaml.safe_load(io.BytesIO(read("Chart.yaml")))
    assert archive.name == f"fleetwarden-{chart['version']}.tgz"
    assert not [n for n in members if n.startswith("ci/") or n.endswith(("Kustomization", "configmaps.yaml"))]


@pytest.mark.parametrize(("args", "named"), [
    (["--set", "replicas=two"], "/replicas"),
    (["--set", "replica=2"], "'replica'"),
    (["--set", "prometheus.url=prometheus:9090"], "/prometheus/url"),
    (["--set", "watchNamespaces[0]=Agents"], "/watchNamespaces/0"),
    (["--set", "admissionPolicies.requireBudgetLabel.validationActions[0]=deny"],
     "/admissionPolicies/requireBudgetLabel/validationActions/0"),
    (["--set", "leaderElection.enabled=false"], "leaderElection.enabled"),
    (["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true"],
     "metrics.podMonitor.enabled"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_values_are_refused_naming_the_value(helm: str, args: list[str], named: str) -> None:
    """A wrong type, an unknown key, a malformed URL or namespace, two replicas without leader election,
    or two monitors of the operator: `helm template` fails and names the value."""
    result = run_helm(helm, "template", "fleetwarden", str(CHART), *args)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


# ---------------------------------------------------------------- kustomize and helm


def test_kustomize_and_helm_render_the_same_rbac_and_deployment(cluster: Any, helm: str) -> None:
    """With the default values, the chart's RBAC (every ClusterRole, ClusterRoleBinding, Role, RoleBinding)
    and operator Deployment equal `kubectl kustomize manifests/`'s, but for Helm's own labels."""
    kustomized = {key(o): without_helm_labels(o) for o in objects(cluster.kubectl("kustomize", str(MANIFESTS)).stdout)}
    charted = {key(o): without_helm_labels(o) for o in objects(template(helm))}
    kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment"}
    rbac_and_deployment = sorted(k for k in kustomized if k[0] in kinds)
    assert sorted(k for k in charted if k[0] in kinds) == rbac_and_deployment
    assert ("Deployment", "fleetwarden-system", "fleetwarden-operator") in rbac_and_deployment
    for k in rbac_and_deployment:
        assert charted[k] == kustomized[k], k


def test_kustomize_and_helm_install_the_same_objects(cluster: Any, helm: str) -> None:
    """Every other object of the kustomize install (CRDs, ServiceAccount, Service, PodDisruptionBudget,
    admission policies) comes out of the chart the same; only the Namespace is the installer's to make."""
    kustomized = {key(o): without_helm_labels(o) for o in objects(cluster.kubectl("kustomize", str(MANIFESTS)).stdout)}
    charted = {key(o): without_helm_labels(o) for o in objects(template(helm))}
    assert set(kustomized) - set(charted) == {("Namespace", "", "fleetwarden-system")}
    assert set(charted) <= set(kustomized)
    for k in charted:
        assert charted[k] == kustomized[k], k


# ---------------------------------------------------------------- server-side dry run


def _stand_in_crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


@pytest.fixture(scope="module")
def monitoring_kinds(cluster: Any) -> Iterator[None]:
    """ServiceMonitor, PodMonitor and PrometheusRule served (stand-in CRDs unless the real ones are there)."""
    made = []
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors"),
                         ("PrometheusRule", "prometheusrules")):
        name = f"{plural}.monitoring.coreos.com"
        if cluster.kubectl("get", "crd", name, check=False).returncode != 0:
            cluster.apply(yaml.safe_dump(_stand_in_crd(kind, plural)))
            made.append(name)
    if made:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        *[f"crd/{n}" for n in made], timeout=90)
    yield
    if made:
        cluster.kubectl("delete", "crd", *made, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def ci_namespaces(cluster: Any) -> Iterator[None]:
    """The namespaces the value sets name."""
    made = [ns for ns in CI_NAMESPACES if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0]
    for ns in made:
        cluster.kubectl("create", "namespace", ns)
    yield
    if made:
        cluster.kubectl("delete", "namespace", *made, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendering_passes_a_server_side_dry_run(cluster: Any, helm: str, namespace: str, monitoring_kinds: None,
                                                ci_namespaces: None, value_set: str) -> None:
    """`helm template` with the value set, applied with `kubectl apply --dry-run=server` (strict field
    validation, admission, CRD schemas): the API server accepts every object."""
    text = template(helm, *VALUE_SETS[value_set], release="fw-ci", namespace=namespace)
    rendered = objects(text)
    result = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text, timeout=120)
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(rendered), result.stdout
    kinds = {o["kind"] for o in rendered}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount"} <= kinds
    if value_set == "monitoring":
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "PodDisruptionBudget"} <= kinds
    if value_set == "namespaced":
        assert "PodDisruptionBudget" not in kinds and "Role" not in kinds
        assert sum(o["kind"] == "RoleBinding" for o in rendered) == 3
        (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        assert [a for a in command if a.startswith("--namespace=")] == [f"--namespace={n}" for n in CI_NAMESPACES]
        assert "--all-namespaces" not in command
