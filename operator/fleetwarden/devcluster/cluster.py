"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK (fake nodes whose pods become Running), in the manner of
controller-runtime's envtest but with the controllers and a scheduler, so Deployments get
ReplicaSets get Pods.

Everything binds to 127.0.0.1. The state directory holds::

    cluster.json        ports, server URL, kubeconfig path, binaries (read by `status`/`env`)
    env                 `export KUBECONFIG=...` lines
    kubeconfig          admin (system:masters)
    pki/                CA, serving and client certificates, service-account key pair
    kubeconfigs/        controller-manager, scheduler, kwok
    etcd/               etcd data
    logs/<name>.log     one log per component
    pids/<name>.pid     one JSON record per process (pid, executable, argv)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from fleetwarden.devcluster import build, failures, kwok_stages, layout, pki, procs

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.64.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"
# Stop order for `down`: clients first, storage last.
STOP_ORDER = ("alertmanager", "prometheus", "kwok", "kube-scheduler", "kube-controller-manager",
              "kube-apiserver", "etcd")
# Subdirectories of the state dir where `up --prometheus/--alertmanager` run their launchers.
LAUNCHER_DIRS = ("alertmanager", "prometheus")
PORT_NAMES = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    del message


@dataclasses.dataclass(frozen=True)
class Paths:
    """Every file the control plane uses, under one state directory."""

    state: Path

    @property
    def pki(self) -> pki.Pki:
        return pki.Pki(self.state / "pki")

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def component_kubeconfig(self, client: str) -> Path:
        return self.state / "kubeconfigs" / f"{client}.kubeconfig"

    @property
    def info(self) -> Path:
        return self.state / "cluster.json"

    @property
    def env_file(self) -> Path:
        return self.state / "env"

    @property
    def etcd_data(self) -> Path:
        return self.state / "etcd"

    @property
    def kwok_config(self) -> Path:
        return self.state / "kwok" / "kwok.yaml"


def component_commands(binaries: dict[str, Path], ports: dict[str, int], paths: Paths
                       ) -> dict[str, list[str]]:
    """The command line of every component (pure: no files are touched)."""
    lo = procs.LOOPBACK
    cert = paths.pki
    etcd_url = f"http://{lo}:{ports['etcd']}"
    peer_url = f"http://{lo}:{ports['etcd-peer']}"
    return {
        "etcd": [
            str(binaries["etcd"]),
            "--name=fleetwarden",
            f"--data-dir={paths.etcd_data}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=fleetwarden={peer_url}",
            "--unsafe-no-fsync",  # a throw-away dev store: speed over durability
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={lo}",
            f"--advertise-address={lo}",
            f"--secure-port={ports['kube-apiserver']}",
            f"--cert-dir={paths.state / 'certs' / 'kube-apiserver'}",
            f"--tls-cert-file={cert.serving_cert}",
            f"--tls-private-key-file={cert.serving_key}",
            f"--client-ca-file={cert.ca_cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={cert.sa_pub}",
            f"--service-account-signing-key-file={cert.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-admission-plugins=NodeRestriction",  # added to the default plugin set
            "--allow-privileged=true",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
        ],
        "kube-controller-manager": [
            str(binaries["kube-controller-manager"]),
            f"--kubeconfig={paths.component_kubeconfig('controller-manager')}",
            f"--authentication-kubeconfig={paths.component_kubeconfig('controller-manager')}",
            f"--authorization-kubeconfig={paths.component_kubeconfig('controller-manager')}",
            f"--bind-address={lo}",
            f"--secure-port={ports['kube-controller-manager']}",
            f"--cert-dir={paths.state / 'certs' / 'kube-controller-manager'}",
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={cert.sa_key}",
            f"--root-ca-file={cert.ca_cert}",
            f"--cluster-signing-cert-file={cert.ca_cert}",
            f"--cluster-signing-key-file={cert.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ],
        "kube-scheduler": [
            str(binaries["kube-scheduler"]),
            f"--kubeconfig={paths.component_kubeconfig('scheduler')}",
            f"--authentication-kubeconfig={paths.component_kubeconfig('scheduler')}",
            f"--authorization-kubeconfig={paths.component_kubeconfig('scheduler')}",
            f"--bind-address={lo}",
            f"--secure-port={ports['kube-scheduler']}",
            f"--cert-dir={paths.state / 'certs' / 'kube-scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            str(binaries["kwok"]),
            f"--kubeconfig={paths.component_kubeconfig('kwok')}",
            f"--config={paths.kwok_config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_VALUE}",
            f"--server-address={lo}:{ports['kwok']}",
            f"--cidr={POD_CIDR}",
        ],
    }


def node_manifest(name: str, *, cpu: str = "1000", memory: str = "4Ti", pods: str = "1000") -> dict[str, object]:
    """A fake Node that KWOK manages (by annotation), with room for many pods."""
    resources = {"cpu": cpu, "memory": memory, "pods": pods}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok"},
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


class LocalCluster:
    """Start, inspect and stop the control plane of one state directory."""

    def __init__(self, state_dir: Path | str | None = None, *, nodes: int = 1, log: Log = _quiet,
                 tie_to_parent: bool = False) -> None:
        self.paths = Paths(Path(state_dir).expanduser() if state_dir else layout.default_state_dir())
        self.nodes = nodes
        self.log = log
        self.tie_to_parent = tie_to_parent

    # -- reading state ------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.paths.state

    def info(self) -> dict[str, object] | None:
        """What `up` recorded in cluster.json, or None when there is no cluster here."""
        try:
            data = json.loads(self.paths.info.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _process_dirs(self) -> list[Path]:
        """Directories holding pid records: the state dir and its launchers' subdirectories."""
        return [self.state_dir / sub for sub in LAUNCHER_DIRS] + [self.state_dir]

    def processes(self) -> dict[str, bool]:
        """Recorded component -> whether it is running (control plane and launchers)."""
        out: dict[str, bool] = {}
        for directory in self._process_dirs():
            out.update({name: procs.is_running(rec) for name, rec in procs.recorded(directory).items()})
        return out

    def env(self) -> dict[str, str]:
        """Environment variables that point clients at this cluster."""
        info = self.info()
        if info is None:
            raise failures.ComponentError(f"no cluster in {self.state_dir} (run `fleetwarden dev-cluster up`)")
        env = {"KUBECONFIG": str(info["kubeconfig"]), "FLEETWARDEN_KUBECTL": str(info["kubectl"]),
               "FLEETWARDEN_DEV_CLUSTER": str(self.state_dir)}
        extra = info.get("env")
        if isinstance(extra, dict):
            env.update({str(k): str(v) for k, v in extra.items()})
        return env

    def status(self) -> dict[str, object]:
        """Processes, their state, and whether the API server is ready."""
        info = self.info() or {}
        running = self.processes()
        ready = False
        server = info.get("server")
        if server and running.get("kube-apiserver"):
            ready = procs.http_ok(f"{server}/readyz", context=self._client_context())
        return {"state_dir": str(self.state_dir), "server": server, "ready": ready, "processes": running}

    # -- up -------------------------------------------------------------------------------

    def up(self, *, timeout: float = 180.0, build_missing: bool = True) -> dict[str, object]:
        """Start the control plane (or return the running one); wait until a pod can run."""
        running = self.processes()
        if running and all(running.values()) and self.info() is not None:
            self.log(f"cluster already running in {self.state_dir}")
            return self.info() or {}
        if any(running.values()):
            raise failures.ComponentError(
                f"the cluster in {self.state_dir} is partly running "
                f"({', '.join(n for n, r in running.items() if r)}); run `fleetwarden dev-cluster down` first")
        binaries = build.ensure_binaries(log=self.log) if build_missing else build.find_binaries()
        started = time.monotonic()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True)
        try:
            info = self._start(binaries, timeout=timeout)
        except BaseException:
            for directory in self._process_dirs():
                procs.stop_all(directory, STOP_ORDER, grace=3.0)
            raise
        self.log(f"cluster up in {time.monotonic() - started:.1f}s: {info['server']}")
        return info

    def _start(self, binaries: dict[str, Path], *, timeout: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        paths = self.paths
        ports = dict(zip(PORT_NAMES, procs.free_ports(len(PORT_NAMES)), strict=True))
        server = f"https://{procs.LOOPBACK}:{ports['kube-apiserver']}"
        self.log("generating certificates ...")
        certs = pki.generate(paths.state / "pki", service_ip=SERVICE_IP)
        paths.kubeconfig.write_text(pki.kubeconfig(server, certs, "admin"))
        paths.kubeconfig.chmod(0o600)
        for client in ("controller-manager", "scheduler", "kwok"):
            target = paths.component_kubeconfig(client)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(pki.kubeconfig(server, certs, client))
            target.chmod(0o600)
        paths.kwok_config.parent.mkdir(parents=True, exist_ok=True)
        paths.kwok_config.write_text(kwok_stages.kwok_config(cidr=POD_CIDR))
        commands = component_commands(binaries, ports, paths)
        info: dict[str, object] = {
            "server": server,
            "kubeconfig": str(paths.kubeconfig),
            "kubectl": str(binaries["kubectl"]),
            "ports": ports,
            "binaries": {k: str(v) for k, v in binaries.items()},
            "nodes": [f"kwok-node-{i}" for i in range(self.nodes)],
            "started": time.time(),
        }
        self._write_info(info)
        env = dict(os.environ)
        # KWOK would also read ~/.kwok/kwok.yaml; keep it to the state directory.
        env["KWOK_WORKDIR"] = str(paths.state / "kwok")

        def launch(name: str) -> subprocess.Popen[bytes]:
            self.log(f"starting {name} ...")
            return procs.start(name, commands[name], state_dir=paths.state, env=env, cwd=paths.state,
                               tie_to_parent=self.tie_to_parent)

        def wait(name: str, proc: subprocess.Popen[bytes], check: Callable[[], bool]) -> None:
            procs.wait_until(check, timeout=left(), what=name, proc=proc,
                             log=procs.log_path(paths.state, name))

        etcd = launch("etcd")
        wait("etcd", etcd, lambda: procs.http_ok(f"http://{procs.LOOPBACK}:{ports['etcd']}/health"))
        apiserver = launch("kube-apiserver")
        admin_tls = self._client_context()
        wait("kube-apiserver", apiserver, lambda: procs.http_ok(f"{server}/readyz", context=admin_tls))
        others = {name: launch(name) for name in ("kube-controller-manager", "kube-scheduler", "kwok")}
        self._create_nodes(str(binaries["kubectl"]))
        insecure = procs.insecure_context()
        for name in ("kube-controller-manager", "kube-scheduler"):
            healthz = f"https://{procs.LOOPBACK}:{ports[name]}/healthz"
            wait(name, others[name], functools.partial(procs.http_ok, healthz, context=insecure))
        wait("kwok", others["kwok"], lambda: procs.http_ok(f"http://{procs.LOOPBACK}:{ports['kwok']}/healthz"))
        kubectl = str(binaries["kubectl"])
        wait("kwok (nodes Ready)", others["kwok"], lambda: self._nodes_ready(kubectl))
        # The ServiceAccount admission plugin refuses pods until the `default` ServiceAccount exists.
        wait("kube-controller-manager (default ServiceAccount)", others["kube-controller-manager"],
             lambda: self._kubectl_ok(kubectl, "get", "serviceaccount", "default", "-n", "default"))
        self.log("control plane ready")
        return info

    def _write_info(self, info: dict[str, object]) -> None:
        self.paths.info.write_text(json.dumps(info, indent=2) + "\n")
        kubectl_dir = Path(str(info["kubectl"])).parent
        self.paths.env_file.write_text(
            f"export KUBECONFIG={info['kubeconfig']}\n"
            f"export FLEETWARDEN_KUBECTL={info['kubectl']}\n"
            f"export FLEETWARDEN_DEV_CLUSTER={self.state_dir}\n"
            f"export PATH={kubectl_dir}:$PATH\n"
        )

    def set_extra_env(self, extra: dict[str, str]) -> None:
        """Record more variables (e.g. PROMETHEUS_URL) for `env` and the env file."""
        info = self.info()
        if info is None:
            return
        merged = dict(info.get("env") or {})  # type: ignore[call-overload]
        merged.update(extra)
        info["env"] = merged
        self._write_info(info)
        with open(self.paths.env_file, "a") as handle:
            for key, value in merged.items():
                handle.write(f"export {key}={value}\n")

    def _client_context(self) -> ssl.SSLContext:
        certs = self.paths.pki
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.client_cert("admin")), str(certs.client_key("admin")))
        return context

    def _kubectl(self, kubectl: str, *args: str, input_text: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([kubectl, f"--kubeconfig={self.paths.kubeconfig}", *args], input=input_text,
                              capture_output=True, text=True, timeout=30, check=False)

    def _kubectl_ok(self, kubectl: str, *args: str) -> bool:
        return self._kubectl(kubectl, *args).returncode == 0

    def _create_nodes(self, kubectl: str) -> None:
        items = [node_manifest(f"kwok-node-{i}") for i in range(self.nodes)]
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        result = self._kubectl(kubectl, "apply", "-f", "-", input_text=manifest)
        if result.returncode != 0:
            raise failures.ComponentError(f"creating the fake nodes failed: {result.stderr.strip()}")

    def _nodes_ready(self, kubectl: str) -> bool:
        result = self._kubectl(kubectl, "get", "nodes", "-o", "json")
        if result.returncode != 0:
            return False
        nodes = json.loads(result.stdout).get("items", [])
        ready = 0
        for node in nodes:
            for cond in node.get("status", {}).get("conditions", []) or []:
                if cond.get("type") == "Ready" and cond.get("status") == "True":
                    ready += 1
        return ready >= self.nodes

    # -- down -----------------------------------------------------------------------------

    def down(self, *, keep_state: bool = False, grace: float = 10.0) -> list[str]:
        """Stop every recorded process (SIGTERM, then SIGKILL); remove the state dir unless kept."""
        stopped: list[str] = []
        for directory in self._process_dirs():
            stopped += procs.stop_all(directory, STOP_ORDER, grace=grace)
        leftover = [n for n, running in self.processes().items() if running]
        if leftover:
            raise failures.ComponentError(f"could not stop {', '.join(leftover)} in {self.state_dir}")
        if not keep_state and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        return stopped
