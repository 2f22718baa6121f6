"""The digest CronJob's command, live against the real Prometheus, posting to a local webhook.

The command is read from manifests/digest-cronjob.yaml (the same args and env the CronJob
runs); the Prometheus URL and the webhook URL (a Secret in the cluster) come from the
environment as in the pod, the ConfigMap target is the test's namespace on the real API
server. The webhook is an http.server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import views_fleet
import yaml
from fixtures_fleetwarden import crds_installed  # noqa: F401 - fixture
from views_fleet import views_fleet_session  # noqa: F401 - fixture

from fleetwarden import cli

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _cronjob_command() -> tuple[list[str], dict[str, str]]:
    """The CronJob container's args (after `fleetwarden`) and its plain env values."""
    docs = yaml.safe_load_all((ROOT / "manifests" / "digest-cronjob.yaml").read_text())
    job = next(d for d in docs if d["kind"] == "CronJob")
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["fleetwarden"]
    env = {e["name"]: e.get("value") or "" for e in container["env"]}
    return list(container["args"]), env


def _with(args: list[str], **values: str) -> list[str]:
    """The args with ``--name=value`` replaced for each given name (``configmap`` -> ``--configmap``)."""
    out = []
    for a in args:
        name = a[2:].split("=", 1)[0].replace("-", "_")
        out.append(f"--{name.replace('_', '-')}={values[name]}" if name in values else a)
    return out


class _Receiver(http.server.BaseHTTPRequestHandler):
    status = 200
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"status": 200, "bodies": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/services/T0/B0/secret-token", handler
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fleet(prometheus, views_fleet_session):  # noqa: F811
    """The session's real fleet (simulator and operator, shared with the views tests), with at least
    two one-minute periods of data for the period-over-period run."""
    running = views_fleet_session
    started = time.time()
    views_fleet.wait_for_data(
        prometheus,
        f'sum by (agent) (increase(fleetwarden_llm_cost_usd_total{{namespace="{running.namespace}"}}[1m])) > 0',
        until=lambda res: {r["metric"]["agent"] for r in res} >= set(running.agents))
    time.sleep(max(0.0, started + 130 - time.time()))  # two whole one-minute periods since the data began
    return running


def _env(monkeypatch, prometheus, url: str) -> list[str]:
    args, env = _cronjob_command()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLEETWARDEN_PROMETHEUS_URL", prometheus.url)  # the in-cluster Service, here
    monkeypatch.setenv("FLEETWARDEN_DIGEST_WEBHOOK_URL", url)  # from the Secret in the pod
    return args


def test_the_cronjob_command_posts_the_digest_and_writes_the_configmap(
        prometheus, fleet, webhook, cluster, crds_installed, namespace, monkeypatch, capsys):  # noqa: F811
    """The CronJob's own command (14-day period) runs against the real Prometheus: the digest goes
    to standard output, to the webhook (Slack payload) and to the ConfigMap; a 1-day retention
    is said plainly, with the previous period unknown rather than 0."""
    url, handler = webhook
    args = _with(_env(monkeypatch, prometheus, url), configmap=f"{namespace}/fleetwarden-digest")
    assert "--period=14d" in args and "--post=slack" in args
    assert cli.main([*args, "--kubeconfig", cluster.kubeconfig]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("# Fleetwarden cost digest")
    assert len(handler.bodies) == 1
    text = handler.bodies[0]["text"]
    assert text == out.out
    assert "retention (1 d) is shorter than two periods (28 d)" in text
    assert "Total spend $" in text and "against the previous 14d: unknown" in text
    assert f"{fleet.namespace}/" not in text.split("## Top movers")[1].split("##")[0]  # no delta, no mover
    stored = json.loads(cluster.kubectl("get", "configmap", "fleetwarden-digest", "-n", namespace,
                                        "-o", "json").stdout)
    assert stored["data"]["digest.md"] == text
    assert json.loads(stored["data"]["digest.json"])["previous_known"] is False


def test_period_over_period_live_names_the_fleet_and_its_teams(prometheus, fleet, webhook, monkeypatch, capsys):
    """With a 1-minute period both periods are in Prometheus: spend by team with deltas, movers."""
    url, handler = webhook
    args = [a for a in _with(_env(monkeypatch, prometheus, url), period="1m") if "configmap" not in a]
    assert cli.main([*args, "--output=json", "--post=alertmanager"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["previous_known"] is True, data["notes"]
    teams = {r["key"]: r for r in data["spend"] if r["dimension"] == "team"}
    for team in set(fleet.teams.values()):
        assert teams[team]["current"] > 0 and teams[team]["previous"] > 0 and teams[team]["change"] is not None
    assert data["top_movers"], data
    slack, alertmanager = handler.bodies
    assert "## Top movers" in slack["text"] and f"{fleet.namespace}/" in slack["text"]
    alert = alertmanager["alerts"][0]
    assert alert["labels"]["alertname"] == "FleetwardenDigest"
    assert alert["annotations"]["description"].startswith("# Fleetwarden cost digest")


def test_a_failing_webhook_is_retried_then_an_error_and_the_digest_is_not_lost(
        prometheus, fleet, webhook, monkeypatch, capsys, tmp_path):
    """A webhook answering 500: 1 + retries attempts, a non-zero exit naming the failure, and the
    digest still written (to -o here, the job's log in the cluster)."""
    url, handler = webhook
    handler.status = 500
    out = tmp_path / "digest.md"
    args = [a for a in _with(_env(monkeypatch, prometheus, url), retries="2", backoff="0.2", period="1m")
            if "configmap" not in a]
    assert cli.main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "posting the digest to http://127.0.0.1" in err and "failed 3 times (last: HTTP 500)" in err
    assert f"the digest was written to {out}" in err and "secret-token" not in err
    assert len(handler.bodies) == 3
    assert out.read_text().startswith("# Fleetwarden cost digest") and handler.bodies[0]["text"] == out.read_text()


def test_the_html_digest_renders_in_headless_chromium(prometheus, fleet, monkeypatch, tmp_path):
    """The live HTML digest, parsed by a real browser: every section, the fleet's teams, a non-blank page."""
    import test_views_report_html as report_html  # its Chromium and PNG helpers

    page = tmp_path / "digest.html"
    args = [a for a in _with(_env(monkeypatch, prometheus, "http://127.0.0.1:9/unused"), period="1m")
            if not a.startswith(("--post", "--configmap", "--output"))]
    assert cli.main([*args, "--output=html", "-o", str(page)]) == 0
    dom = report_html._chromium("--dump-dom", page.as_uri()).stdout
    for section in ("spend-by-team-project-and-cost-center", "top-movers", "cost-per-outcome", "budgets",
                    "recommendations", "incidents", "governance-gaps"):
        assert f'<section id="{section}">' in dom
    for team in set(fleet.teams.values()):
        assert f"<td>{team}</td>" in dom
    shot = tmp_path / "digest.png"
    report_html._chromium(f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    width, height, pixels = report_html._png_pixels(shot)
    assert (width, height) == (1280, 1600) and len(pixels) > 20
