"""Configuration the dev cluster generates: ports, command lines, Prometheus/Alertmanager configs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fleetwarden.devcluster import build, cluster, failures, kwok_stages, layout, monitoring, pki, procs

BINARIES = {name: Path(f"/cache/{name}") for name in
            ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")}


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    ports = dict(zip(cluster.PORT_NAMES, range(20001, 20001 + len(cluster.PORT_NAMES)), strict=True))
    return cluster.component_commands(BINARIES, ports, cluster.Paths(tmp_path))


def test_free_ports_are_distinct_and_bindable() -> None:
    """free_ports returns distinct loopback ports that can be bound right away."""
    ports = procs.free_ports(6)
    assert len(set(ports)) == 6
    import socket
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_every_component_listens_on_loopback_only(tmp_path: Path) -> None:
    """No command line binds or advertises anything but 127.0.0.1."""
    commands = _commands(tmp_path)
    assert set(commands) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    for name, argv in commands.items():
        for arg in argv:
            if any(key in arg for key in ("address=", "-urls=", "initial-cluster=")):
                assert "127.0.0.1" in arg, (name, arg)
                assert "0.0.0.0" not in arg, (name, arg)


@pytest.mark.parametrize(("component", "flag"), [
    ("kube-apiserver", "--authorization-mode=Node,RBAC"),
    ("kube-apiserver", "--secure-port=20003"),
    ("kube-apiserver", "--etcd-servers=http://127.0.0.1:20001"),
    ("kube-apiserver", f"--service-account-issuer={cluster.SA_ISSUER}"),
    ("kube-apiserver", f"--service-cluster-ip-range={cluster.SERVICE_CIDR}"),
    ("kube-controller-manager", "--leader-elect=false"),
    ("kube-controller-manager", "--controllers=*"),
    ("kube-controller-manager", "--use-service-account-credentials=true"),
    ("kube-scheduler", "--leader-elect=false"),
    ("kwok", "--manage-all-nodes=false"),
    ("kwok", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake"),
    ("etcd", "--listen-client-urls=http://127.0.0.1:20001"),
])
def test_component_flags(tmp_path: Path, component: str, flag: str) -> None:
    """Each component gets the flags the cluster relies on."""
    assert flag in _commands(tmp_path)[component]


def test_service_account_keys_are_wired(tmp_path: Path) -> None:
    """The API server verifies with sa.pub and signs with sa.key; the controller-manager signs with sa.key."""
    commands = _commands(tmp_path)
    sa = cluster.Paths(tmp_path).pki
    assert f"--service-account-key-file={sa.sa_pub}" in commands["kube-apiserver"]
    assert f"--service-account-signing-key-file={sa.sa_key}" in commands["kube-apiserver"]
    assert f"--service-account-private-key-file={sa.sa_key}" in commands["kube-controller-manager"]


def test_node_manifest_matches_the_kwok_selector() -> None:
    """Fake nodes carry the annotation KWOK selects on, and room for many pods."""
    node = cluster.node_manifest("kwok-node-0")
    assert node["metadata"]["annotations"][cluster.KWOK_NODE_ANNOTATION] == cluster.KWOK_NODE_VALUE  # type: ignore[index]
    assert int(node["status"]["allocatable"]["pods"]) >= 100  # type: ignore[index]


def test_kwok_config_holds_options_and_node_and_pod_stages() -> None:
    """The KWOK config has its options and the node/pod stages of the fast profile."""
    docs = list(yaml.safe_load_all(kwok_stages.kwok_config(cidr="10.64.0.0/16")))
    assert docs[0]["kind"] == "KwokConfiguration"
    assert docs[0]["options"]["cidr"] == "10.64.0.0/16"
    stages = {d["metadata"]["name"]: d["spec"]["resourceRef"]["kind"] for d in docs[1:]}
    assert stages == {"node-initialize": "Node", "pod-ready": "Pod", "pod-complete": "Pod", "pod-delete": "Pod"}


def test_serving_certificate_names_cover_loopback_and_service() -> None:
    """The API server certificate is valid for 127.0.0.1, localhost and the kubernetes Service IP."""
    ext = pki.serving_extensions("10.96.0.1")
    for name in ("IP:127.0.0.1", "DNS:localhost", "IP:10.96.0.1", "DNS:kubernetes.default.svc"):
        assert name in ext
    assert "serverAuth" in ext


def test_admin_client_is_in_system_masters() -> None:
    """The admin client certificate's organisation is system:masters."""
    cn, org = pki.CLIENTS["admin"]
    assert pki.client_subject(cn, org) == f"/O=system:masters/CN={cn}"


@pytest.mark.parametrize(("seconds", "text"), [(2, "2s"), (15.0, "15s"), (0.5, "500ms"), (1.25, "1250ms")])
def test_duration(seconds: float, text: str) -> None:
    """Seconds become Prometheus duration strings."""
    assert monitoring.duration(seconds) == text


def test_duration_refuses_zero() -> None:
    """A zero interval is an error, not a silent default."""
    with pytest.raises(ValueError):
        monitoring.duration(0)


def test_prometheus_config_scrapes_file_sd_at_the_interval(tmp_path: Path) -> None:
    """The config scrapes the targets directory at the given interval, with no rules or alerting."""
    config = monitoring.prometheus_config(scrape_interval=2, targets_dir=tmp_path)
    assert config["global"] == {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"}
    (job,) = config["scrape_configs"]  # type: ignore[misc]
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "*.json")]
    assert "rule_files" not in config
    assert "alerting" not in config


def test_prometheus_config_rules_and_alertmanager(tmp_path: Path) -> None:
    """Rule files and the Alertmanager URL appear in the config when given."""
    config = monitoring.prometheus_config(scrape_interval=15, targets_dir=tmp_path,
                                          rule_files=["/r/a.yml"], alertmanager="http://127.0.0.1:9093")
    assert config["rule_files"] == ["/r/a.yml"]
    assert config["global"]["scrape_timeout"] == "10s"  # type: ignore[index]
    am = config["alerting"]["alertmanagers"][0]  # type: ignore[index]
    assert am["static_configs"] == [{"targets": ["127.0.0.1:9093"]}]
    assert am["scheme"] == "http"


def test_prometheus_config_refuses_a_bad_alertmanager_url(tmp_path: Path) -> None:
    """An Alertmanager address without scheme is refused."""
    with pytest.raises(ValueError, match="alertmanager"):
        monitoring.prometheus_config(scrape_interval=2, targets_dir=tmp_path, alertmanager="127.0.0.1:9093")


def test_add_and_remove_targets_rewrite_file_sd(tmp_path: Path) -> None:
    """add_target writes one file per job (job label set); remove_target deletes it."""
    prom = monitoring.Prometheus(tmp_path, scrape_interval=2)
    prom.add_target("agents", "127.0.0.1:8000", {"team": "a"})
    prom.add_target("agents", "127.0.0.1:8001")
    (group,) = json.loads((tmp_path / "targets" / "agents.json").read_text())
    assert group == {"targets": ["127.0.0.1:8000", "127.0.0.1:8001"], "labels": {"team": "a", "job": "agents"}}
    prom.remove_target("agents", "127.0.0.1:8000")
    (group,) = json.loads((tmp_path / "targets" / "agents.json").read_text())
    assert group["targets"] == ["127.0.0.1:8001"]
    prom.remove_target("agents")
    assert not (tmp_path / "targets" / "agents.json").exists()


def test_alertmanager_config_sends_to_the_webhook() -> None:
    """Every alert, resolved ones too, goes to the caller's webhook."""
    config = monitoring.alertmanager_config("http://127.0.0.1:5001/")
    assert config["route"]["receiver"] == "webhook"  # type: ignore[index]
    assert config["receivers"] == [{"name": "webhook", "webhook_configs": [
        {"url": "http://127.0.0.1:5001/", "send_resolved": True}]}]


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing Prometheus binary raises BinaryMissingError naming the override variable."""
    monkeypatch.setenv("FLEETWARDEN_PROMETHEUS", "/nonexistent/prometheus")
    with pytest.raises(failures.BinaryMissingError, match="FLEETWARDEN_PROMETHEUS"):
        monitoring.find_binary("FLEETWARDEN_PROMETHEUS", ["prometheus"])


def test_versions_come_from_go_mod(tmp_path: Path) -> None:
    """The cache key is the version the go.mod requires."""
    go_mod = tmp_path / "go.mod"
    go_mod.write_text("module x\n\ngo 1.26\n\nrequire k8s.io/kubernetes v1.37.2\n\nrequire (\n"
                      "\tsigs.k8s.io/kwok v0.8.0\n)\n")
    assert layout.module_version(go_mod, "k8s.io/kubernetes") == "v1.37.2"
    assert layout.module_version(go_mod, "sigs.k8s.io/kwok") == "v0.8.0"
    with pytest.raises(failures.BinaryMissingError, match="no requirement"):
        layout.module_version(go_mod, "go.etcd.io/etcd/server/v3")


def test_repository_go_mods_pin_the_expected_components() -> None:
    """Each component and tool of the repository's tools/controlplane has a readable version."""
    for comp in layout.COMPONENTS + layout.TOOLS:
        assert layout.component_version(comp).startswith("v")
    assert [t.name for t in layout.TOOLS] == ["helm"]
    assert layout.component_version(layout.component("helm")).startswith("v4.")


def test_cache_layout_is_keyed_by_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Binaries live in $FLEETWARDEN_CACHE/bin/<component>-<version>/."""
    monkeypatch.setenv("FLEETWARDEN_CACHE", str(tmp_path))
    comp = layout.component("kubernetes")
    assert layout.component_bin_dir(comp, "v1.37.2") == tmp_path / "bin" / "kubernetes-v1.37.2"
    assert not build.is_complete(comp, "v1.37.2")


def test_kubernetes_build_stamps_its_version() -> None:
    """The Kubernetes build sets gitVersion so kubectl and the server report the release."""
    flags = build.ldflags(layout.component("kubernetes"), "v1.37.2")
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=37" in flags
    assert build.ldflags(layout.component("etcd"), "v3.7.3") == "-s -w"


def test_helm_build_stamps_its_version() -> None:
    """The helm build sets its version, so `helm version` reports the pinned release."""
    flags = build.ldflags(layout.component("helm"), "v4.3.2")
    assert "-X helm.sh/helm/v4/internal/version.version=v4.3.2" in flags


def test_the_cluster_does_not_need_helm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """find_binaries (what `dev-cluster up` needs) names the control plane only, never the helm tool."""
    monkeypatch.setenv("FLEETWARDEN_CACHE", str(tmp_path))
    for comp in layout.COMPONENTS:
        directory = layout.component_bin_dir(comp, layout.component_version(comp))
        directory.mkdir(parents=True)
        for name in comp.binaries:
            (directory / name).write_text("")
            (directory / name).chmod(0o755)
    assert "helm" not in build.find_binaries()
    assert set(build.find_binaries()) == {n for c in layout.COMPONENTS for n in c.binaries}


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    """stop_all ends a recorded process and the children it spawned, and forgets their pids."""
    script = "import subprocess,time; subprocess.Popen(['sleep','300']); time.sleep(300)"
    proc = procs.start("parent", [sys.executable, "-c", script], state_dir=tmp_path)
    deadline = time.monotonic() + 20  # a loaded machine may take a while to start the child
    while True:
        children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(children) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(children) == 2
    assert procs.stop_all(tmp_path, grace=2.0) == ["parent"]
    proc.wait(timeout=5)
    for pid in children:  # gone, a zombie, or the pid already reused by a process outside the group
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state, _, pgrp = stat[stat.rfind(")") + 2:].split()[:3]
        assert state == "Z" or int(pgrp) != proc.pid, (pid, stat)
    assert procs.recorded(tmp_path) == {}


def test_stop_ignores_a_pid_that_runs_something_else(tmp_path: Path) -> None:
    """A recorded pid now running another executable is not killed."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        record = {"pid": proc.pid, "exe": "/not/the/same/binary"}
        assert not procs.is_running(record)
        procs.stop(record, grace=0.5)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_token_kubeconfig_keeps_the_cluster_and_drops_the_admin_credentials() -> None:
    """A ServiceAccount's kubeconfig: the admin kubeconfig's server and CA, the token as its only credential."""
    admin = {"apiVersion": "v1", "kind": "Config", "current-context": "dev",
             "clusters": [{"name": "other", "cluster": {"server": "https://10.0.0.1"}},
                          {"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                                    "certificate-authority-data": "Q0E="}}],
             "users": [{"name": "admin", "user": {"client-key-data": "S0VZ"}}],
             "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "admin"}}]}
    out = yaml.safe_load(pki.token_kubeconfig(yaml.safe_dump(admin), "tok", "ops-operator", "ops"))
    assert out["clusters"] == [admin["clusters"][1]]
    assert out["users"] == [{"name": "ops-operator", "user": {"token": "tok"}}]
    assert out["contexts"][0]["context"] == {"cluster": "c", "user": "ops-operator", "namespace": "ops"}
    assert "S0VZ" not in pki.token_kubeconfig(yaml.safe_dump(admin), "tok", "ops-operator", "ops")


def test_end_stops_a_child_and_kills_one_that_ignores_sigterm() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    procs.end(polite, grace=5)
    assert polite.returncode == -15  # SIGTERM was enough
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)\n"
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"
    procs.end(stubborn, grace=0.5)
    assert stubborn.returncode == -9  # killed after the grace
    stubborn.stdout.close()
    procs.end(stubborn)  # an ended child: nothing to do
