"""Prometheus and Alertmanager launchers for the local cluster and the end-to-end tests.

Prometheus gets a generated configuration, a free loopback port, a TSDB in its own
directory and ``--web.enable-lifecycle`` (so ``reload()`` works). Scrape targets come from
``file_sd_configs``: one JSON file per job in ``<dir>/targets/``, rewritten atomically by
``add_target``/``remove_target`` and picked up by Prometheus within seconds, without a
reload. The configuration files are JSON, which is valid YAML.

Alertmanager gets a generated configuration that sends every alert to one webhook URL,
its own storage directory, and no clustering.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetwarden.devcluster import failures, procs

DEFAULT_SCRAPE_INTERVAL = 15.0
_JOB_FILE = re.compile(r"[^A-Za-z0-9_.-]")


def duration(seconds: float) -> str:
    """A Prometheus duration string: 2 -> "2s", 0.5 -> "500ms"."""
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {seconds}")
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def find_binary(env_var: str, candidates: Sequence[str]) -> str:
    """``$env_var`` if set, else the first of ``candidates`` found (absolute or on PATH)."""
    override = os.environ.get(env_var)
    options = [override] if override else list(candidates)
    for option in options:
        path = option if os.path.isabs(option) else shutil.which(option)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise failures.BinaryMissingError(
        f"none of {', '.join(options)} is installed (set {env_var} to the binary's path)")


def prometheus_config(*, scrape_interval: float, targets_dir: Path, rule_files: Sequence[str | Path] = (),
                      alertmanager: str | None = None, evaluation_interval: float | None = None
                      ) -> dict[str, object]:
    """The Prometheus configuration as a dict (written as JSON)."""
    interval = duration(scrape_interval)
    config: dict[str, object] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": duration(min(scrape_interval, 10.0)),
            "evaluation_interval": duration(evaluation_interval or scrape_interval),
        },
        "scrape_configs": [{
            "job_name": "file-sd",
            "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "5s"}],
        }],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanager:
        parsed = urllib.parse.urlparse(alertmanager)
        if not parsed.scheme or not parsed.netloc:
            raise ValueError(f"alertmanager must be a URL like http://127.0.0.1:9093, got {alertmanager!r}")
        config["alerting"] = {"alertmanagers": [{
            "scheme": parsed.scheme,
            "path_prefix": parsed.path or "/",
            "static_configs": [{"targets": [parsed.netloc]}],
        }]}
    return config


def target_group(job: str, addresses: Sequence[str], labels: Mapping[str, str] | None = None
                 ) -> list[dict[str, Any]]:
    """A file_sd document: the ``job`` label wins over the scrape config's job name."""
    merged = {str(k): str(v) for k, v in (labels or {}).items()}
    merged["job"] = job
    return [{"targets": list(addresses), "labels": merged}]


def alertmanager_config(webhook_url: str | None, *, group_wait: str = "1s", group_interval: str = "1s",
                        repeat_interval: str = "1h") -> dict[str, object]:
    """An Alertmanager configuration routing every alert to one webhook (resolved ones too).

    Without ``webhook_url`` the receiver sends nowhere (alerts are still visible in its API).
    """
    receiver: dict[str, object] = {"name": "webhook"}
    if webhook_url:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    return {
        "route": {
            "receiver": "webhook",
            "group_by": ["alertname"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [receiver],
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
        return json.loads(resp.read())


class Prometheus:
    """One Prometheus server on 127.0.0.1, configured and restarted by this object."""

    def __init__(self, directory: Path | str, *, scrape_interval: float = DEFAULT_SCRAPE_INTERVAL,
                 rule_files: Sequence[str | Path] = (), alertmanager: str | None = None,
                 port: int | None = None, binary: str | None = None, tie_to_parent: bool = False,
                 retention: str = "1d") -> None:
        self.directory = Path(directory)
        self.retention = retention  # --storage.tsdb.retention.time
        self.tie_to_parent = tie_to_parent
        self.scrape_interval = float(scrape_interval)
        self.rule_files = [str(p) for p in rule_files]
        self.alertmanager = alertmanager
        self.port = port
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise failures.ComponentError("prometheus is not started")
        return f"http://{procs.LOOPBACK}:{self.port}"

    @property
    def targets_dir(self) -> Path:
        return self.directory / "targets"

    @property
    def config_path(self) -> Path:
        return self.directory / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return procs.log_path(self.directory, "prometheus")

    def write_config(self) -> None:
        config = prometheus_config(scrape_interval=self.scrape_interval, targets_dir=self.targets_dir,
                                   rule_files=self.rule_files, alertmanager=self.alertmanager)
        _write_atomic(self.config_path, json.dumps(config, indent=2) + "\n")

    def start(self, *, timeout: float = 60.0) -> Prometheus:
        """Write the configuration, start Prometheus, wait until /-/ready answers."""
        binary = self.binary or find_binary("FLEETWARDEN_PROMETHEUS", ["/usr/bin/prometheus", "prometheus"])
        self.directory.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(exist_ok=True)
        if self.port is None:
            self.port = procs.free_port()
        self.write_config()
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.directory / 'tsdb'}",
            f"--web.listen-address={procs.LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            f"--storage.tsdb.retention.time={self.retention}",
            # Resend firing alerts every evaluation (default 1m), so an alert evaluated before
            # Alertmanager was discovered reaches it within seconds.
            f"--rules.alert.resend-delay={duration(self.scrape_interval)}",
        ]
        self.proc = procs.start("prometheus", argv, state_dir=self.directory, cwd=self.directory,
                                 tie_to_parent=self.tie_to_parent)
        procs.wait_until(lambda: procs.http_ok(f"{self.url}/-/ready"), timeout=timeout, what="prometheus",
                         proc=self.proc, log=self.log_path)
        return self

    def stop(self) -> None:
        procs.stop_all(self.directory, ("prometheus",), grace=5.0)

    # -- targets ----------------------------------------------------------------------

    def _target_file(self, job: str) -> Path:
        return self.targets_dir / f"{_JOB_FILE.sub('_', job)}.json"

    def add_target(self, job: str, address: str, labels: Mapping[str, str] | None = None) -> None:
        """Scrape ``address`` (host:port; label ``__metrics_path__`` changes the path) as ``job``.

        Adding to an existing job keeps its other addresses; ``labels`` replace the job's labels.
        """
        path = self._target_file(job)
        addresses: list[str] = []
        old_labels: dict[str, str] = {}
        if path.exists():
            group = json.loads(path.read_text())[0]
            addresses = list(group["targets"])
            old_labels = dict(group["labels"])
        if address not in addresses:
            addresses.append(address)
        chosen = dict(labels) if labels is not None else old_labels
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(target_group(job, addresses, chosen), indent=2) + "\n")

    def remove_target(self, job: str, address: str | None = None) -> None:
        """Stop scraping ``job`` (only ``address`` of it, when given)."""
        path = self._target_file(job)
        if not path.exists():
            return
        if address is not None:
            group = json.loads(path.read_text())[0]
            rest = [a for a in group["targets"] if a != address]
            if rest:
                _write_atomic(path, json.dumps(target_group(job, rest, group["labels"]), indent=2) + "\n")
                return
        path.unlink()

    def targets(self) -> list[dict[str, Any]]:
        """The active targets as Prometheus reports them (/api/v1/targets)."""
        data = _get_json(f"{self.url}/api/v1/targets?state=active")
        return list(data["data"]["activeTargets"])

    def wait_for_target_up(self, job: str, timeout: float = 30.0) -> None:
        """Wait until Prometheus scraped a target of ``job`` successfully."""
        def up() -> bool:
            return any(t["labels"].get("job") == job and t.get("health") == "up"
                       for t in self.targets())
        procs.wait_until(up, timeout=timeout, what=f"prometheus target {job!r} up", proc=self.proc,
                         log=self.log_path, interval=0.5)

    # -- queries and lifecycle ----------------------------------------------------------

    def query(self, promql: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; returns ``data.result`` (a list of {metric, value})."""
        params = {"query": promql}
        if at is not None:
            params["time"] = repr(at)
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            data = _get_json(url)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise failures.ComponentError(f"prometheus query {promql!r} failed: {exc.code} {body}") from exc
        if data.get("status") != "success":
            raise failures.ComponentError(f"prometheus query {promql!r} failed: {data}")
        result = data["data"]["result"]
        return list(result) if isinstance(result, list) else [result]

    def reload(self) -> None:
        """Rewrite the configuration and ask Prometheus to reload it (POST /-/reload)."""
        self.write_config()
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise failures.ComponentError(f"prometheus reload failed: {body}; log {self.log_path}:\n"
                                          f"{failures.log_tail(self.log_path)}") from exc

    def set_rule_files(self, rule_files: Sequence[str | Path]) -> None:
        """Load these rule files (replacing the previous list) and reload."""
        self.rule_files = [str(p) for p in rule_files]
        self.reload()

    def set_alertmanager(self, url: str | None, *, timeout: float = 30.0) -> None:
        """Send alerts to the Alertmanager at ``url`` (None: to none), reload, wait until it is active."""
        self.alertmanager = url
        self.reload()
        if url is not None:
            procs.wait_until(lambda: bool(self.alertmanagers()), timeout=timeout,
                             what=f"prometheus discovering alertmanager {url}", proc=self.proc,
                             log=self.log_path, interval=0.5)

    def alertmanagers(self) -> list[dict[str, Any]]:
        """Active Alertmanagers (/api/v1/alertmanagers)."""
        data = _get_json(f"{self.url}/api/v1/alertmanagers")
        return list(data["data"]["activeAlertmanagers"])

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups (/api/v1/rules)."""
        data = _get_json(f"{self.url}/api/v1/rules")
        return list(data["data"]["groups"])


class Alertmanager:
    """One Alertmanager on 127.0.0.1 that sends every alert to ``webhook_url``."""

    def __init__(self, directory: Path | str, webhook_url: str | None, *, port: int | None = None,
                 binary: str | None = None, tie_to_parent: bool = False) -> None:
        self.directory = Path(directory)
        self.tie_to_parent = tie_to_parent
        self.webhook_url = webhook_url
        self.port = port
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise failures.ComponentError("alertmanager is not started")
        return f"http://{procs.LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return procs.log_path(self.directory, "alertmanager")

    def start(self, *, timeout: float = 60.0) -> Alertmanager:
        binary = self.binary or find_binary(
            "FLEETWARDEN_ALERTMANAGER",
            ["/usr/bin/prometheus-alertmanager", "prometheus-alertmanager", "alertmanager"])
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = procs.free_port()
        config_path = self.directory / "alertmanager.yml"
        _write_atomic(config_path, json.dumps(alertmanager_config(self.webhook_url), indent=2) + "\n")
        argv = [
            binary,
            f"--config.file={config_path}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address={procs.LOOPBACK}:{self.port}",
            "--cluster.listen-address=",
        ]
        self.proc = procs.start("alertmanager", argv, state_dir=self.directory, cwd=self.directory,
                                 tie_to_parent=self.tie_to_parent)
        procs.wait_until(lambda: procs.http_ok(f"{self.url}/-/ready"), timeout=timeout, what="alertmanager",
                         proc=self.proc, log=self.log_path)
        return self

    def stop(self) -> None:
        procs.stop_all(self.directory, ("alertmanager",), grace=5.0)

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager currently holds (/api/v2/alerts)."""
        data = _get_json(f"{self.url}/api/v2/alerts")
        return list(data)

