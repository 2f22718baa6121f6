"""Build the control-plane binaries with ``go build`` into the versioned cache.

Each component (kubernetes, etcd, kwok) is built into a temporary directory next to its
cache directory and renamed into place only when every binary exists, so an interrupted
build never leaves a half-filled cache. A file lock per component keeps two test runs
from building the same thing at once (the second waits, then finds it built).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fleetwarden.devcluster import failures, layout

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    del message


def ldflags(comp: layout.Component, version: str) -> str:
    """Linker flags: strip symbols; for Kubernetes and helm stamp the release into the version packages.

    Without the stamp `kubectl version` and the API server would report v0.0.0-master, and
    `helm version` only its minor release.
    """
    flags = ["-s", "-w"]
    if comp.name == "helm":
        flags.append(f"-X helm.sh/helm/v4/internal/version.version={version}")
    if comp.name == "kubernetes":
        major, minor = version.lstrip("v").split(".")[:2]
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {package}.gitVersion={version}",
                f"-X {package}.gitMajor={major}",
                f"-X {package}.gitMinor={minor}",
                f"-X {package}.gitTreeState=clean",
            ]
    return " ".join(flags)


def go_build_command(comp: layout.Component, version: str, out_dir: Path) -> list[str]:
    """The ``go build`` command line for one component (run from its module directory)."""
    return ["go", "build", "-trimpath", f"-ldflags={ldflags(comp, version)}",
            "-o", str(out_dir) + os.sep, *comp.packages]


def binary_paths(comp: layout.Component, version: str) -> dict[str, Path]:
    directory = layout.component_bin_dir(comp, version)
    return {name: directory / name for name in comp.binaries}


def is_complete(comp: layout.Component, version: str) -> bool:
    return all(p.is_file() and os.access(p, os.X_OK) for p in binary_paths(comp, version).values())


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_component(comp: layout.Component, *, tools: Path | None = None, force: bool = False,
                    log: Log = _quiet) -> dict[str, Path]:
    """Build ``comp`` unless its cache directory is complete; return binary name -> path."""
    tools = tools or layout.tools_dir()
    version = layout.component_version(comp, tools)
    final = layout.component_bin_dir(comp, version)
    with _lock(final.parent / f".{final.name}.lock"):
        if is_complete(comp, version) and not force:
            return binary_paths(comp, version)
        go = shutil.which("go")
        if go is None:
            raise failures.BinaryMissingError(
                f"{comp.name} {version} is not built in {final} and `go` is not on PATH "
                f"(install Go, then run `fleetwarden dev-cluster build`)")
        module_dir = tools / comp.name
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        log_path = tmp.parent / f".{final.name}.build.log"
        command = go_build_command(comp, version, tmp)
        log(f"building {comp.name} {version} (cold builds take minutes) ...")
        started = time.monotonic()
        try:
            with open(log_path, "w") as out:
                result = subprocess.run(command, cwd=module_dir, stdout=out, stderr=subprocess.STDOUT,
                                        check=False)
            if result.returncode != 0:
                raise failures.BuildError(
                    f"`{' '.join(command)}` in {module_dir} failed (exit {result.returncode}); "
                    f"log {log_path}:\n{failures.log_tail(log_path)}")
            missing = [n for n in comp.binaries if not (tmp / n).is_file()]
            if missing:
                raise failures.BuildError(f"go build of {comp.name} produced no {', '.join(missing)}")
            if final.exists():
                shutil.rmtree(final)
            tmp.chmod(0o755)  # mkdtemp made it private
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log(f"built {comp.name} {version} in {time.monotonic() - started:.0f}s -> {final}")
        return binary_paths(comp, version)


def find_binaries(*, tools: Path | None = None) -> dict[str, Path]:
    """Every control-plane binary by name, from the cache, without building.

    Raises BinaryMissingError naming the first component that is not built.
    """
    found: dict[str, Path] = {}
    for comp in layout.COMPONENTS:
        version = layout.component_version(comp, tools)
        if not is_complete(comp, version):
            raise failures.BinaryMissingError(
                f"{comp.name} {version} is not built in {layout.component_bin_dir(comp, version)} "
                f"(run `fleetwarden dev-cluster build`)")
        found.update(binary_paths(comp, version))
    return found


def ensure_tool(name: str, *, tools: Path | None = None, log: Log = _quiet) -> Path:
    """The path of the tool binary ``name`` (e.g. ``helm``), building its component first if missing."""
    comp = layout.component(name)
    return build_component(comp, tools=tools, log=log)[name]


def ensure_binaries(*, tools: Path | None = None, log: Log = _quiet) -> dict[str, Path]:
    """Every control-plane binary by name, building the missing components first."""
    found: dict[str, Path] = {}
    for comp in layout.COMPONENTS:
        found.update(build_component(comp, tools=tools, log=log))
    return found
