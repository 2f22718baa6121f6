"""The Argo CD health checks installed into argocd-cm both ways docs/gitops.md gives.

- The kustomize Component manifests/argocd: the user's kustomization holds argocd-cm
  (Argo CD's install manifests have it without a namespace; the kustomization sets one)
  and lists the Component; ``kubectl kustomize`` merges each health.lua into it, verbatim,
  next to the settings already there.
- The shell command of docs/gitops.md, run as written (in the test's namespace) against
  an argocd-cm that already holds settings.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "manifests" / "argocd"
CHECKS = COMPONENT / "resource_customizations" / "fleetwarden.dev"
DOC = ROOT / "docs" / "gitops.md"


def health_keys() -> dict[str, str]:
    return {f"resource.customizations.health.fleetwarden.dev_{kind}": (CHECKS / kind / "health.lua").read_text()
            for kind in ("AgentBudget", "CostApproval")}


def test_component_merges_the_health_checks_into_argocd_cm(cluster: Any, namespace: str, tmp_path: Path) -> None:
    """argocd-cm keeps its settings and gains resource.customizations.health.fleetwarden.dev_<Kind> = health.lua."""
    argocd_cm = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "argocd-cm", "labels": {"app.kubernetes.io/part-of": "argocd"}},
                 "data": {"url": "https://argocd.example.com"}}
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump(argocd_cm))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": ["argocd-cm.yaml"], "components": [os.path.relpath(COMPONENT, tmp_path)]}))

    rendered = cluster.kubectl("kustomize", str(tmp_path)).stdout
    (cm,) = [d for d in yaml.safe_load_all(rendered) if d]
    assert cm["metadata"]["name"] == "argocd-cm" and cm["metadata"]["namespace"] == namespace
    assert cm["data"] == {"url": "https://argocd.example.com", **health_keys()}
    # and the API server takes it as it is
    cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)


def test_the_documented_command_adds_the_keys_and_keeps_the_rest(cluster: Any, namespace: str) -> None:
    """docs/gitops.md's `kubectl create configmap ... | kubectl apply --server-side` merges the two keys into argocd-cm."""
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S) if "argocd-cm" in b]
    assert block.count("-n argocd") == 2
    cluster.kubectl("create", "configmap", "argocd-cm", "-n", namespace, "--from-literal=url=https://argocd.example.com")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("-n argocd", f"-n {namespace}")],
                         cwd=ROOT, env=cluster.env, check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    data = cluster.get_json("configmap", "argocd-cm", "-n", namespace)["data"]
    assert data == {"url": "https://argocd.example.com", **health_keys()}
