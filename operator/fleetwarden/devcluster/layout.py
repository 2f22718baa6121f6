"""Where things live: the cache of built binaries, the Go modules, the default state dir.

Layout (``FLEETWARDEN_CACHE`` defaults to ``~/.cache/fleetwarden``)::

    $FLEETWARDEN_CACHE/bin/kubernetes-v1.37.2/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
    $FLEETWARDEN_CACHE/bin/etcd-v3.7.3/etcd
    $FLEETWARDEN_CACHE/bin/kwok-v0.8.0/kwok
    $FLEETWARDEN_CACHE/bin/helm-v4.3.2/helm       (a tool: the chart's tests use it, the cluster does not)
    $FLEETWARDEN_CACHE/cluster/          state of `fleetwarden dev-cluster up`

The versions come from the ``go.mod`` files in ``tools/controlplane/*`` of the repository,
so bumping a ``go.mod`` selects a new cache directory and never reuses a stale binary.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from fleetwarden.devcluster import failures


@dataclasses.dataclass(frozen=True)
class Component:
    """One Go module under tools/controlplane that yields some binaries."""

    name: str            # directory under tools/controlplane and cache key prefix
    module: str          # the module whose version keys the cache
    packages: tuple[str, ...]  # what to `go build`
    binaries: tuple[str, ...]  # the files it yields


COMPONENTS: tuple[Component, ...] = (
    Component(
        name="kubernetes",
        module="k8s.io/kubernetes",
        packages=(
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-scheduler",
            "k8s.io/kubernetes/cmd/kubectl",
        ),
        binaries=("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    ),
    Component(name="etcd", module="go.etcd.io/etcd/server/v3", packages=(".",), binaries=("etcd",)),
    Component(name="kwok", module="sigs.k8s.io/kwok", packages=("sigs.k8s.io/kwok/cmd/kwok",),
              binaries=("kwok",)),
)

# Built by `fleetwarden dev-cluster build` beside the control plane, but not needed to run it.
TOOLS: tuple[Component, ...] = (
    Component(name="helm", module="helm.sh/helm/v4", packages=("helm.sh/helm/v4/cmd/helm",),
              binaries=("helm",)),
)


def cache_dir() -> Path:
    """``$FLEETWARDEN_CACHE``, default ``~/.cache/fleetwarden``."""
    value = os.environ.get("FLEETWARDEN_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fleetwarden"


def default_state_dir() -> Path:
    """Where `dev-cluster up` keeps pids, logs, certificates and kubeconfigs."""
    return cache_dir() / "cluster"


def tools_dir() -> Path:
    """``tools/controlplane`` of the source checkout (``FLEETWARDEN_TOOLS_DIR`` overrides)."""
    value = os.environ.get("FLEETWARDEN_TOOLS_DIR")
    if value:
        return Path(value).expanduser()
    # operator/fleetwarden/devcluster/layout.py -> repository root
    return Path(__file__).resolve().parents[3] / "tools" / "controlplane"


def module_version(go_mod: Path, module: str) -> str:
    """The version ``go_mod`` requires for ``module`` (e.g. ``v1.37.2``)."""
    try:
        text = go_mod.read_text()
    except OSError as exc:
        raise failures.BinaryMissingError(
            f"cannot read {go_mod} to learn the {module} version: {exc.strerror}") from exc
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise failures.BinaryMissingError(f"{go_mod}: no requirement on {module}")
    return match.group(1)


def component(name: str) -> Component:
    for item in COMPONENTS + TOOLS:
        if item.name == name:
            return item
    raise KeyError(name)


def component_version(comp: Component, tools: Path | None = None) -> str:
    return module_version((tools or tools_dir()) / comp.name / "go.mod", comp.module)


def component_bin_dir(comp: Component, version: str) -> Path:
    """``$FLEETWARDEN_CACHE/bin/<name>-<version>``."""
    return cache_dir() / "bin" / f"{comp.name}-{version}"
