"""What the demo runs, and how it is stopped: nothing is left behind unless asked.

``<state>`` (default ``$FLEETWARDEN_CACHE/demo``) holds the local control plane (see
:mod:`fleetwarden.devcluster.cluster`), ``prometheus/`` and ``alertmanager/`` (the same
places ``fleetwarden dev-cluster up --prometheus --alertmanager`` uses), and the demo's own
processes: ``pids/sim-<namespace>.pid``, ``pids/operator.pid`` with their logs in
``logs/``. Every process is recorded there, so ``fleetwarden dev-cluster --state-dir
<state> down`` stops all of them (what ``--keep`` tells a person to run). Without
``--keep`` the processes are tied to the demo (``PR_SET_PDEATHSIG``): even a demo killed
hard takes them with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleetwarden import errors
from fleetwarden.devcluster import cluster as devcluster
from fleetwarden.devcluster import failures, layout, monitoring, pki, procs

MARKER = "demo.json"
RULES = "manifests/prometheus/rules.yaml"


# The operator's identity in manifests/ (the demo runs the operator as it).
OPERATOR_IDENTITY = ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml")
OPERATOR_NAMESPACE = "fleetwarden-system"
OPERATOR_ACCOUNT = "fleetwarden-operator"


class DemoError(errors.FleetwardenError):
    """The demo could not go on (a wait timed out, a part failed); the message says what."""


def default_state_dir() -> Path:
    return layout.cache_dir() / "demo"


def repo_root() -> Path:
    """The checkout the demo runs from (crds/, examples/ and manifests/ are read from it)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "crds").is_dir() and (parent / "examples").is_dir():
            return parent
    raise DemoError(f"cannot find crds/ and examples/ above {here}: run the demo from a Fleetwarden checkout")


class Stack:
    """The running parts of one demo, all on 127.0.0.1."""

    def __init__(self, state_dir: Path, *, keep: bool, scrape_interval: float, log: Callable[[str], None],
                 cwd: Path | None = None) -> None:
        self.state_dir = state_dir
        self.cwd = cwd  # kubectl runs here (relative -f paths)
        self.keep = keep
        self.scrape_interval = scrape_interval
        self.log = log
        self.cluster = devcluster.LocalCluster(state_dir, log=lambda m: log(f"  dev-cluster: {m}"),
                                               tie_to_parent=not keep)
        self.info: dict[str, Any] = {}
        self.prometheus: monitoring.Prometheus | None = None
        self.alertmanager: monitoring.Alertmanager | None = None
        self.own: list[str] = []  # names of the processes the demo started itself
        self.env: dict[str, str] = dict(os.environ)

    # ---------------------------------------------------------------- start

    def check_state_dir(self) -> None:
        """Stop a demo left running with --keep; refuse a directory that is not a demo's."""
        state = self.state_dir
        if not state.exists() or not any(state.iterdir()):
            return
        if not (state / MARKER).exists():
            raise DemoError(f"{state} exists and is not a demo state directory (no {MARKER}); "
                            "choose another --state-dir")
        running = [name for name, up in self.cluster.processes().items() if up]
        if running:
            self.log(f"stopping the demo still running in {state} ({', '.join(sorted(running))})")
            self.cluster.down(grace=5.0)

    def start_control_plane(self, timeout: float) -> None:
        self.info = dict(self.cluster.up(timeout=timeout))
        (self.state_dir / MARKER).write_text(json.dumps({"pid": os.getpid(), "started": time.time(),
                                                         "keep": self.keep}) + "\n")
        self.env["KUBECONFIG"] = str(self.info["kubeconfig"])
        self.env["FLEETWARDEN_KUBECTL"] = str(self.info["kubectl"])
        self.env["PATH"] = os.pathsep.join([str(Path(self.kubectl_path).parent), self.env.get("PATH", "")])
        self.env["PYTHONUNBUFFERED"] = "1"

    @property
    def kubeconfig(self) -> str:
        return str(self.info["kubeconfig"])

    @property
    def kubectl_path(self) -> str:
        return str(self.info["kubectl"])

    def start_monitoring(self, rules: Path | None) -> None:
        tie = not self.keep
        self.alertmanager = monitoring.Alertmanager(self.state_dir / "alertmanager", None,
                                                    tie_to_parent=tie).start()
        self.prometheus = monitoring.Prometheus(
            self.state_dir / "prometheus", scrape_interval=self.scrape_interval,
            rule_files=[rules] if rules is not None else (), alertmanager=self.alertmanager.url,
            tie_to_parent=tie).start()
        self.cluster.set_extra_env({"PROMETHEUS_URL": self.prometheus.url,
                                    "ALERTMANAGER_URL": self.alertmanager.url,
                                    "FLEETWARDEN_PROMETHEUS_TARGETS": str(self.prometheus.targets_dir)})

    @property
    def prom(self) -> monitoring.Prometheus:
        assert self.prometheus is not None
        return self.prometheus

    def _start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = procs.start(name, argv, state_dir=self.state_dir, env=env or self.env, cwd=self.state_dir,
                           tie_to_parent=not self.keep)
        self.own.append(name)
        return proc

    def log_path(self, name: str) -> Path:
        return procs.log_path(self.state_dir, name)

    def start_simulator(self, namespace: str, profile: str, names: Sequence[str], *, speed: float,
                        seed: int = 1, timeout: float = 60.0) -> str:
        """One real-time simulator following the Deployments of ``namespace``; scraped as job sim-<ns>."""
        port = procs.free_port()
        events = self.state_dir / "events" / f"{namespace}.jsonl"
        events.parent.mkdir(parents=True, exist_ok=True)
        name = f"sim-{namespace}"
        argv = [sys.executable, "-m", "fleetwarden", "simulate", "--port", str(port), "--profiles", profile,
                "--agents", str(len(names)), "--names", ",".join(names), "--namespace", namespace,
                "--kubeconfig", self.kubeconfig, "--poll", "2", "--speed", f"{speed:g}", "--seed", str(seed),
                "--events", str(events)]
        proc = self._start(name, argv)
        address = f"{procs.LOOPBACK}:{port}"
        procs.wait_until(lambda: procs.http_ok(f"http://{address}/metrics"), timeout=timeout,
                         what=f"simulator {name}", proc=proc, log=self.log_path(name))
        self.prom.add_target(name, address)
        return address

    def operator_kubeconfig(self) -> Path:
        """The operator's own identity, as manifests/ install it (namespace, ServiceAccount, RBAC), in a
        kubeconfig with a TokenRequest token: the demo's operator never runs as admin."""
        manifests = repo_root() / "manifests"
        for name in OPERATOR_IDENTITY:
            self.kubectl("apply", "-f", str(manifests / name))
        token = self.kubectl("create", "token", OPERATOR_ACCOUNT, "-n", OPERATOR_NAMESPACE,
                             "--duration=48h").stdout.strip()
        path = self.state_dir / "operator.kubeconfig"
        path.write_text(pki.token_kubeconfig(Path(self.kubeconfig).read_text(), token,
                                             f"{OPERATOR_NAMESPACE}-{OPERATOR_ACCOUNT}", OPERATOR_NAMESPACE))
        path.chmod(0o600)
        return path

    def start_operator(self, *, interval: float, timeout: float = 90.0) -> int:
        """`fleetwarden operator` for every namespace, as its ServiceAccount, under leader election;
        returns its /metrics port (a scrape target too)."""
        assert self.alertmanager is not None
        port = procs.free_port()
        argv = [sys.executable, "-m", "fleetwarden", "operator", "--all-namespaces", "--interval", f"{interval:g}",
                "--prometheus-url", self.prom.url, "--scrape-interval", f"{self.scrape_interval:g}",
                "--metrics-port", str(port), "--alertmanager-url", self.alertmanager.url,
                "--leader-elect", "--lease-namespace", OPERATOR_NAMESPACE]
        proc = self._start("operator", argv, env={**self.env, "KUBECONFIG": str(self.operator_kubeconfig())})
        procs.wait_until(lambda: procs.http_ok(f"http://{procs.LOOPBACK}:{port}/metrics"), timeout=timeout,
                         what="operator", proc=proc, log=self.log_path("operator"))
        self.prom.add_target("fleetwarden-operator", f"{procs.LOOPBACK}:{port}")
        return port

    def running(self, name: str) -> bool:
        record = procs.recorded(self.state_dir).get(name)
        return record is not None and procs.is_running(record)

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------- use

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = [self.kubectl_path, *args]
        try:
            result = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=timeout,
                                    env=self.env, check=False, cwd=self.cwd)
        except subprocess.TimeoutExpired as exc:
            raise DemoError(f"kubectl {' '.join(args)} did not answer within {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def fleetwarden(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fleetwarden", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, check=False)

    def query(self, promql: str) -> list[dict[str, Any]]:
        try:
            return self.prom.query(promql)
        except (failures.ComponentError, OSError, ValueError):
            return []

    def scalar(self, promql: str) -> float | None:
        """The single value of an instant query; None when there is none (never 0 for "no data")."""
        result = self.query(promql)
        if len(result) != 1:
            return None
        try:
            value = float(result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            return None
        return value if value == value else None  # NaN (0/0) is unknown

    # ---------------------------------------------------------------- stop

    def stop(self, *, remove_state: bool) -> list[str]:
        """Stop the demo's processes (its own first, then monitoring and the control plane)."""
        stopped = []
        records = procs.recorded(self.state_dir)
        for name in ["operator", *sorted(n for n in self.own if n != "operator")]:
            if name in records:
                procs.stop(records[name], grace=10.0)
                (self.state_dir / "pids" / f"{name}.pid").unlink(missing_ok=True)
                stopped.append(name)
        stopped += self.cluster.down(keep_state=not remove_state, grace=10.0)
        return stopped
