"""The Prometheus and Alertmanager fixtures: file-SD targets, queries, rules, alerts to a webhook."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"# TYPE launcher_test_value gauge\nlauncher_test_value 42\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        del format, args


@pytest.fixture
def exporter():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_added_target_is_scraped_and_removed_target_goes_away(prometheus, exporter) -> None:
    """add_target makes Prometheus scrape the address with the labels; remove_target drops it."""
    prometheus.add_target("launcher-test", exporter, {"team": "platform"})
    try:
        prometheus.wait_for_target_up("launcher-test", timeout=30)
        result = prometheus.wait_for_query('launcher_test_value{job="launcher-test"}', timeout=30)
        assert result[0]["metric"]["team"] == "platform"
        assert float(result[0]["value"][1]) == 42.0
    finally:
        prometheus.remove_target("launcher-test")
    prometheus.wait_for_query('count(up{job="launcher-test"}) or vector(0)',
                              lambda r: not any(t["labels"].get("job") == "launcher-test"
                                                for t in prometheus.targets()), timeout=30)
    assert prometheus.scrape_interval == 2.0


def test_rule_fires_and_alertmanager_calls_the_webhook(prometheus, alertmanager, tmp_path: Path) -> None:
    """A loaded alerting rule fires and its alert reaches the webhook through Alertmanager."""
    rules = tmp_path / "rules.yml"
    rules.write_text("""\
groups:
- name: launcher-test
  rules:
  - alert: LauncherTestAlwaysFiring
    expr: vector(1) > 0
    labels: {severity: info}
""")
    prometheus.load_rules([rules])
    try:
        alert = alertmanager.wait_for_alert("LauncherTestAlwaysFiring", timeout=60)
        assert alert["labels"]["severity"] == "info"
    finally:
        prometheus.load_rules([])
