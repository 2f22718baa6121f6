"""What a release is made of, checked before there is one.

One version string (fleetwarden.__version__) is repeated by the chart, the kustomize image
tag and the Dockerfile; the chart's CRDs are the repository's crds/; the sdist and the wheel
build offline and pass `twine check`; the workflows and the Krew manifest say what
.github/workflows/release.yml publishes. The workflows themselves cannot run here.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

import fleetwarden

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleetwarden"
IMAGE = "ghcr.io/fleetwarden/operator"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _package_version() -> str:
    """fleetwarden.__version__ as written in operator/fleetwarden/__init__.py (not imported)."""
    tree = ast.parse((ROOT / "operator" / "fleetwarden" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError("operator/fleetwarden/__init__.py sets no __version__")


def versions() -> dict[str, str]:
    """Every place the release version is written, by where."""
    chart = _yaml(CHART / "Chart.yaml")
    (image,) = [i for i in _yaml(ROOT / "manifests" / "kustomization.yaml")["images"] if i["name"] == IMAGE]
    dockerfile = (ROOT / "Dockerfile").read_text()
    arg = re.search(r"^ARG VERSION=(\S+)$", dockerfile, re.MULTILINE)
    return {
        "fleetwarden.__version__": _package_version(),
        "Chart.yaml version": str(chart["version"]),
        "Chart.yaml appVersion": str(chart["appVersion"]),
        "manifests/kustomization.yaml images newTag": str(image["newTag"]),
        "Dockerfile ARG VERSION": arg.group(1) if arg else "(none)",
    }


def test_one_version_everywhere() -> None:
    """The package, the chart (version and appVersion), the kustomize image tag and the Dockerfile agree."""
    found = versions()
    assert len(set(found.values())) == 1, found
    assert re.fullmatch(r"\d+\.\d+\.\d+", found["fleetwarden.__version__"])
    assert fleetwarden.__version__ == found["fleetwarden.__version__"]


def test_pyproject_takes_its_version_from_the_package() -> None:
    """pyproject.toml writes no version of its own: setuptools reads fleetwarden.__version__."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fleetwarden.__version__"}


def test_the_image_is_named_once_and_tagged_once() -> None:
    """The kustomize Deployment names the image without a tag (kustomization.yaml's images: sets it), the
    chart's values name the same repository, and the Dockerfile labels the image with the version."""
    operator = [d for d in yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text())
                if d and d["kind"] == "Deployment"]
    (container,) = operator[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    values = _yaml(CHART / "values.yaml")
    assert values["image"]["repository"] == IMAGE and values["image"]["tag"] == ""
    assert 'org.opencontainers.image.version="${VERSION}"' in (ROOT / "Dockerfile").read_text()


def test_chart_crds_are_the_repository_crds() -> None:
    """charts/fleetwarden/crds holds exactly the CRD files of crds/, byte for byte (it is a link to it)."""
    chart_crds = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    crds = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert chart_crds and chart_crds == crds


def test_chart_files_are_the_manifests() -> None:
    """The chart's files/ are manifests/' own rules, dashboards, admission policies and approval roles."""
    pairs = {
        "prometheus-rules.yaml": "prometheus/rules.yaml",
        "agents-podmonitor.yaml": "prometheus/podmonitor.yaml",
        "approvals-policy.yaml": "approvals-policy.yaml",
        "require-budget-label.yaml": "policies/require-budget-label.yaml",
        "approvals-rbac.yaml": "approvals-rbac.yaml",
        "digest-cronjob.yaml": "digest-cronjob.yaml",
        "agent-rbac.yaml": "agent-rbac.yaml",
        "grafana/governance.json": "grafana/governance.json",
        "grafana/platform.json": "grafana/platform.json",
    }
    for name, source in pairs.items():
        assert (CHART / "files" / name).read_bytes() == (ROOT / "manifests" / source).read_bytes(), name


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An sdist and a wheel built from the source tree, offline, with the installed build backend."""
    out = tmp_path_factory.mktemp("dist")
    egg_info = ROOT / "operator" / "fleetwarden.egg-info"  # the sdist step writes it into the tree
    existed = egg_info.exists()
    try:
        result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                                capture_output=True, text=True, timeout=300, check=False)
    finally:
        if not existed:
            shutil.rmtree(egg_info, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_sdist_and_wheel_pass_twine_check(dists: dict[str, Path]) -> None:
    """`twine check --strict` accepts the sdist and the wheel (metadata, README rendering), named by the version."""
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout
    version = fleetwarden.__version__
    assert dists["wheel"].name == f"fleetwarden-{version}-py3-none-any.whl"
    assert dists["sdist"].name == f"fleetwarden-{version}.tar.gz"


def test_wheel_installs_both_commands_and_the_package_only(dists: dict[str, Path]) -> None:
    """The wheel declares the `fleetwarden` and `kubectl-fleetwarden` console scripts and holds the
    fleetwarden package (typed), nothing of tests/ or charts/."""
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    assert "fleetwarden = fleetwarden.__main__:main" in scripts
    assert "kubectl-fleetwarden = fleetwarden.__main__:kubectl_plugin" in scripts
    assert "fleetwarden/py.typed" in names and "fleetwarden/core/evaluate.py" in names
    assert {n.split("/")[0] for n in names} == {"fleetwarden", f"fleetwarden-{fleetwarden.__version__}.dist-info"}


def _workflow(name: str) -> dict[Any, Any]:
    doc: dict[Any, Any] = _yaml(ROOT / ".github" / "workflows" / name)
    return doc


def _runs(workflow: dict[Any, Any]) -> str:
    return "\n".join(step.get("run", "") for job in workflow["jobs"].values() for step in job.get("steps", []))


def _uses(workflow: dict[Any, Any]) -> list[str]:
    return [step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step]


def test_ci_workflow_runs_the_ci_script() -> None:
    """CI runs exactly .ci/run, on pushes and pull requests."""
    ci = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci[True])  # YAML 1.1 reads the key `on` as True
    assert "bash .ci/run" in _runs(ci)


def test_release_workflow_publishes_what_the_issue_lists() -> None:
    """On a version tag: the version check, a multi-arch image with an SBOM signed by cosign on GHCR, the
    chart pushed as an OCI artifact, and an sdist and wheel that pass `twine check`."""
    release = _workflow("release.yml")
    assert release[True]["push"]["tags"] == ["v*"]
    runs = _runs(release)
    uses = " ".join(_uses(release))
    assert "tests/unit/test_release.py" in runs
    assert "docker/build-push-action" in uses and "docker/setup-buildx-action" in uses
    (build,) = [s for job in release["jobs"].values() for s in job.get("steps", [])
                if s.get("uses", "").startswith("docker/build-push-action")]
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["sbom"] is True and build["with"]["push"] is True
    assert "sigstore/cosign-installer" in uses and "cosign sign --yes" in runs
    assert "helm package charts/fleetwarden" in runs and 'helm push "dist/fleetwarden-$VERSION.tgz" "$CHARTS"' in runs
    assert release["env"]["CHARTS"].startswith("oci://ghcr.io/")
    assert release["env"]["IMAGE"].startswith("ghcr.io/")
    assert "python -m build" in runs and "twine check --strict" in runs
    assert release["permissions"]["id-token"] == "write"  # cosign keyless signing


def test_krew_manifest_installs_the_plugin_binary() -> None:
    """plugins/fleetwarden.yaml is a Krew Plugin whose every platform installs `kubectl-fleetwarden`, the
    console script's name, from the release's assets (the release bot fills in the version and sha256)."""
    text = (ROOT / "plugins" / "fleetwarden.yaml").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "kubectl-fleetwarden" in project["project"]["scripts"]
    # as the bot's addURIAndSha writes it: the uri, then the sha256 on a line indented by 4
    rendered = re.sub(r"\{\{\s*addURIAndSha\s+\"([^\"]+)\"\s+\.TagName\s*\}\}",
                      lambda m: f"uri: {m.group(1).replace('{{ .TagName }}', 'v1.2.3')}\n    sha256: 0", text)
    rendered = rendered.replace("{{ .TagName }}", "v1.2.3")
    plugin = yaml.safe_load(rendered)
    assert plugin["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert plugin["kind"] == "Plugin" and plugin["metadata"]["name"] == "fleetwarden"
    assert plugin["spec"]["version"] == "v1.2.3"
    platforms = plugin["spec"]["platforms"]
    assert {(p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"]) for p in platforms} == {
        ("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")}
    for platform in platforms:
        assert platform["bin"] == "kubectl-fleetwarden"
        assert platform["uri"].startswith("https://github.com/fleetwarden/fleetwarden/releases/download/v1.2.3/")
