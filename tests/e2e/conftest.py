"""End-to-end fixtures: a real control plane, a real Prometheus, and (on demand) Alertmanager.

Started once per test run and stopped at its end:

- ``cluster``: etcd + kube-apiserver + kube-controller-manager + kube-scheduler + KWOK on
  127.0.0.1 (fleetwarden.devcluster). With ``FLEETWARDEN_KUBECONFIG`` set, an existing
  cluster (kind, k3d, ...) is used instead and kubectl is taken from PATH.
- ``prometheus``: Prometheus with a 2 s scrape interval; targets via ``add_target``.
- ``alertmanager``: only started if a test asks for it; every alert it sends lands in
  ``alertmanager.received`` (a webhook receiver on loopback).
- ``namespace``: a fresh namespace per test, deleted afterwards.
- ``helm``: the path of helm, built from tools/controlplane/helm like the control plane.

Every test under tests/e2e gets the ``e2e`` marker automatically. Missing control-plane
binaries (and helm, when a test uses it) are built once, before the first test runs (a cold
build takes minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetwarden.devcluster import build, monitoring
from fleetwarden.devcluster import cluster as devcluster

E2E_DIR = Path(__file__).resolve().parent
TEST_SCRAPE_INTERVAL = 2.0


# -- markers and the one-time build ---------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before any test runs, so no test's timeout pays for a cold build."""
    if os.environ.get("FLEETWARDEN_KUBECONFIG") or session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def log(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"fleetwarden e2e: {message}")

    if any("cluster" in getattr(item, "fixturenames", ()) or "test_control_plane" in str(item.fspath)
           for item in session.items):
        build.ensure_binaries(log=log)
    if any("helm" in getattr(item, "fixturenames", ()) for item in session.items):
        build.ensure_tool("helm", log=log)


# -- cluster --------------------------------------------------------------------------------


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}: {(self.stderr or '').strip()}"


class Cluster:
    """What a test needs of a cluster: kubeconfig, server URL, env, and kubectl."""

    def __init__(self, kubeconfig: str, server: str, kubectl_path: str, state_dir: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.server = server
        self.kubectl_path = kubectl_path
        self.state_dir = state_dir  # None for an existing cluster
        env = dict(os.environ)
        env["KUBECONFIG"] = kubeconfig
        env["FLEETWARDEN_KUBECTL"] = kubectl_path
        env["PATH"] = os.pathsep.join([str(Path(kubectl_path).parent), env.get("PATH", "")])
        self.env: dict[str, str] = env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, as_user: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (``as_user`` impersonates with --as)."""
        argv = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}"]
        if as_user is not None:
            argv.append(f"--as={as_user}")
        argv += [str(a) for a in args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                                env=self.env, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def apply(self, path_or_yaml_text: str | os.PathLike[str], *, namespace: str | None = None
              ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f`` a file or directory path, or YAML/JSON text."""
        ns = [f"--namespace={namespace}"] if namespace else []
        text = str(path_or_yaml_text)
        is_path = isinstance(path_or_yaml_text, os.PathLike) or _is_existing_path(text)
        if is_path:
            return self.kubectl("apply", *ns, "-f", text)
        return self.kubectl("apply", *ns, "-f", "-", input=text)

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
                 interval: float = 0.5) -> Any:
        """Poll ``predicate`` until it returns something truthy; return it. Fails after ``timeout``."""
        return wait_for(predicate, timeout, what, interval)


def _is_existing_path(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    try:
        return Path(text).exists()
    except OSError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.5) -> Any:
    """Poll ``predicate`` until truthy and return its value; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_error = None
        except Exception as exc:  # noqa: BLE001 - a failing probe means "not yet"
            last_error = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_error})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def _existing_cluster(kubeconfig: str) -> Cluster:
    kubectl = os.environ.get("FLEETWARDEN_KUBECTL") or shutil.which("kubectl")
    if kubectl is None:
        raise pytest.UsageError("FLEETWARDEN_KUBECONFIG is set but kubectl is not on PATH")
    path = str(Path(kubeconfig).expanduser())
    result = subprocess.run([kubectl, f"--kubeconfig={path}", "config", "view", "--minify",
                             "-o", "jsonpath={.clusters[0].cluster.server}"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise pytest.UsageError(f"cannot read {path}: {result.stderr.strip()}")
    return Cluster(path, result.stdout.strip(), kubectl)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's Kubernetes cluster (local control plane, or FLEETWARDEN_KUBECONFIG's)."""
    existing = os.environ.get("FLEETWARDEN_KUBECONFIG")
    if existing:
        yield _existing_cluster(existing)
        return
    state = tempfile.mkdtemp(prefix="fleetwarden-e2e-cluster-")
    local = devcluster.LocalCluster(state, tie_to_parent=True)
    try:
        info = local.up(timeout=240)
        yield Cluster(str(info["kubeconfig"]), str(info["server"]), str(info["kubectl"]), state_dir=state)
    finally:
        local.down()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test; deleted (without waiting) after it."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{base}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # Pods need the namespace's `default` ServiceAccount, which the controller-manager creates.
    cluster.wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name,
                                             check=False).returncode == 0,
                     30, f"ServiceAccount default in {name}")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary built from tools/controlplane/helm (built once, cached like the control plane)."""
    return str(build.ensure_tool("helm"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory for one test's kubeconfigs, logs and data; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="fleetwarden-e2e-operator-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- prometheus -----------------------------------------------------------------------------


class PrometheusFixture(monitoring.Prometheus):
    """monitoring.Prometheus plus test helpers; ``scrape_interval`` is 2 s."""

    def load_rules(self, rule_files: Sequence[str | os.PathLike[str]]) -> None:
        """Load these rule files (replacing earlier ones) and wait until Prometheus reports them."""
        self.set_rule_files([str(p) for p in rule_files])

    def wait_for_query(self, promql: str, predicate: Callable[[list[dict[str, Any]]], Any] = bool,
                       timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll an instant query until ``predicate(result)`` is truthy; return that result."""
        box: list[list[dict[str, Any]]] = []

        def check() -> bool:
            result = self.query(promql)
            if predicate(result):
                box.append(result)
                return True
            return False

        wait_for(check, timeout, f"prometheus query {promql!r}")
        return box[-1]


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusFixture]:
    """The session's Prometheus (2 s scrapes). Tests remove the targets they add."""
    directory = tempfile.mkdtemp(prefix="fleetwarden-e2e-prometheus-")
    prom = PrometheusFixture(directory, scrape_interval=TEST_SCRAPE_INTERVAL, tie_to_parent=True)
    try:
        prom.start()
        yield prom
    finally:
        prom.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- alertmanager ---------------------------------------------------------------------------


class AlertmanagerFixture:
    """A running Alertmanager whose webhook payloads are collected in ``received``."""

    def __init__(self, launcher: monitoring.Alertmanager, received: list[dict[str, Any]],
                 lock: threading.Lock, webhook_url: str) -> None:
        self.launcher = launcher
        self.received = received
        self.webhook_url = webhook_url
        self._lock = lock

    @property
    def url(self) -> str:
        return self.launcher.url

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def alerts(self) -> list[dict[str, Any]]:
        """The individual alerts of every payload received so far."""
        with self._lock:
            return [alert for payload in self.received for alert in payload.get("alerts", [])]

    def wait_for_alert(self, alertname: str, status: str = "firing", timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the webhook got ``alertname`` with ``status``; return that alert."""
        def find() -> dict[str, Any] | None:
            for alert in reversed(self.alerts()):
                if alert.get("labels", {}).get("alertname") == alertname and alert.get("status") == status:
                    return alert
            return None

        return wait_for(find, timeout, f"alert {alertname} {status} at the webhook")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def alertmanager(prometheus: PrometheusFixture) -> Iterator[AlertmanagerFixture]:
    """Alertmanager (started on first use) wired to the session's Prometheus and a webhook."""
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with contextlib.suppress(ValueError), lock:
                received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="alert-webhook", daemon=True)
    thread.start()
    webhook_url = f"http://127.0.0.1:{server.server_address[1]}/"
    directory = tempfile.mkdtemp(prefix="fleetwarden-e2e-alertmanager-")
    launcher = monitoring.Alertmanager(directory, webhook_url, tie_to_parent=True)
    try:
        launcher.start()
        prometheus.set_alertmanager(launcher.url)
        yield AlertmanagerFixture(launcher, received, lock, webhook_url)
    finally:
        with contextlib.suppress(Exception):
            prometheus.set_alertmanager(None)
        launcher.stop()
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)
