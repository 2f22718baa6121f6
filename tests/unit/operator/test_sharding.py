"""Shards of the operator (docs/scaling.md): a shard's namespaces scope every Prometheus query of
the SDK's series, its Lease is its own, its Events name the replica that posted them; and the
Prometheus headers a multi-tenant PromQL API needs (X-Scope-OrgID) go out with every query; a
VictoriaMetrics partial answer (isPartial) is no answer."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from fleetwarden.adapters import kube, prometheus
from fleetwarden.commands import operator as operator_command
from fleetwarden.handlers import agentbudgets, leader, settings

NOW = 1_800_000_000.0
# A metric selector in a query: a fleetwarden_* name not inside quotes, with its matchers if any.
SELECTOR = re.compile(r'(?<!")\b(fleetwarden_[a-z_]+)(\{[^}]*\})?(?!")')


@pytest.mark.parametrize(("namespaces", "scope"), [
    ((), ""),
    (("shop",), 'namespace=~"shop"'),
    (("shop", "billing", "shop"), 'namespace=~"billing|shop"'),
    (("team-*", "ops-?"), 'namespace=~"ops-.|team-.*"'),
])
def test_a_shards_namespaces_become_one_anchored_matcher(namespaces: tuple[str, ...], scope: str) -> None:
    """Names and kopf's globs become one regex matcher (PromQL anchors it, as kopf anchors a glob)."""
    assert prometheus.namespace_scope(namespaces) == scope


@pytest.mark.parametrize("bad", ["!shop", "a,b", "Shop", "shop.example", "", "a" * 64])
def test_what_no_matcher_expresses_is_refused(bad: str) -> None:
    """An exclusion, a comma list, an upper-case or dotted name is no namespace glob: ValueError naming it."""
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        prometheus.namespace_scope([bad])


class Recording:
    """Answers every query with nothing, and keeps the queries."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.queries.append(query)
        return []

    def custom_query_range(self, query: str, start_time: Any, end_time: Any, step: str,
                           params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.queries.append(query)
        return []


def queries(namespaces: tuple[str, ...] = ()) -> list[str]:
    client = Recording()
    snap = prometheus.Fetcher(client, namespaces=namespaces).fetch(NOW)
    assert snap.queries == len(client.queries) == prometheus.QUERIES_PER_CYCLE
    return client.queries


def test_every_selector_of_a_shards_queries_carries_its_namespaces() -> None:
    """A shard sends as many queries as the whole-fleet operator, and every metric selector in them
    (range, open tasks, six spend windows, freshness, the guardrail rider) is kept to its namespaces."""
    for query in queries(("shop", "team-*")):
        selectors = SELECTOR.findall(query)
        assert selectors, query
        for name, matchers in selectors:
            assert 'namespace=~"shop|team-.*"' in matchers, (name, query)


def test_without_namespaces_the_queries_are_the_fleets() -> None:
    """No namespaces: the queries are today's, with no namespace matcher at all."""
    sent = queries()
    assert prometheus.FRESHNESS_QUERY in sent and prometheus.OPEN_TASKS_QUERY in sent
    assert not any("namespace=~" in q for q in sent)


PROMTOOL = shutil.which("promtool")


def test_a_scoped_spend_query_sees_only_the_shards_namespaces_on_prometheus_own_engine(tmp_path: Path) -> None:
    """promtool evaluates the spend query of shard {shop} over series of shop, billing and shopping:
    only shop's agent is in the answer (the regex is anchored: shopping is not shop)."""
    assert PROMTOOL, "promtool is missing: run scripts/setup (Debian package prometheus)"
    metric = prometheus.SPEND_METRICS[0]
    series = [{"series": f'{metric}{{namespace="{ns}", agent="bot"}}', "values": "0+1x120"}
              for ns in ("shop", "billing", "shopping")]
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": prometheus.spend_query(3600, prometheus.namespace_scope(["shop"])),
                              "eval_time": "120m",
                              "exp_samples": [{"labels": '{namespace="shop", agent="bot"}', "value": 60.0}]}]}]}
    path = tmp_path / "scoped_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- the Lease of a shard


def test_each_shard_has_its_own_lease_and_its_replicas_share_it() -> None:
    """The whole cluster's Lease is fleetwarden-operator; a shard's is named by its namespaces (order
    and repeats aside), so its replicas agree on it and another shard never shares it."""
    assert leader.lease_name(()) == "fleetwarden-operator"
    a = leader.lease_name(["shop", "billing"])
    assert a == leader.lease_name(["billing", "shop", "shop"])
    assert a != leader.lease_name(["shop"]) != leader.lease_name(["billing"])
    assert re.fullmatch(r"fleetwarden-operator-[0-9a-f]{10}", a)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    operator_command.register(parser.add_subparsers())
    return parser.parse_args(["operator", *argv])


def test_a_shard_without_lease_name_takes_its_own_and_an_explicit_one_wins() -> None:
    args = parse("--namespace", "shop", "--leader-elect", "--lease-namespace", "fw")
    assert leader.settings_from_args(args, ["shop"]).name == leader.lease_name(["shop"])
    assert leader.settings_from_args(args, []).name == "fleetwarden-operator"
    args = parse("--namespace", "shop", "--leader-elect", "--lease-namespace", "fw", "--lease-name", "mine")
    assert leader.settings_from_args(args, ["shop"]).name == "mine"


# ---------------------------------------------------------------- the command


@pytest.fixture
def kopf_run(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A clean FLEETWARDEN_* environment, and kopf.run recorded instead of run."""
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")})
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize(("argv", "env", "served", "scope"), [
    (["--namespace", "shop", "-n", "team-*"], "", ["shop", "team-*"], ("shop", "team-*")),
    ([], "shop,billing", ["shop", "billing"], ("shop", "billing")),
    (["-A"], "shop", [], ()),
    (["--namespace", "team-*, !team-dev"], "", ["team-*, !team-dev"], ()),
])
def test_the_namespaces_served_are_the_queries_scope(kopf_run: list[dict[str, Any]], argv: list[str], env: str,
                                                     served: list[str], scope: tuple[str, ...]) -> None:
    """--namespace (or FLEETWARDEN_NAMESPACES without a flag) is what kopf watches and what the queries
    are kept to; -A is the whole cluster whatever the environment; a kopf pattern with an exclusion
    is watched as kopf reads it while the queries cover the fleet."""
    if env:
        os.environ["FLEETWARDEN_NAMESPACES"] = env
    operator_command.run(parse(*argv))
    (call,) = kopf_run
    assert call["namespaces"] == served and call["clusterwide"] is (not served)
    assert call["memories"] is agentbudgets.MEMORIES  # kopf's memories as the mode wants them (test_store.py)
    assert settings.Settings.from_env().namespaces == scope


# ---------------------------------------------------------------- headers and Events


class Headers(http.server.ThreadingHTTPServer):
    """Prometheus' query API answering an empty vector, keeping each request's headers."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.seen.append(dict(self.headers.items()))
                body = b'{"status": "success", "data": {"resultType": "vector", "result": []}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature
                del format, args

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def server() -> Iterator[Headers]:
    s = Headers()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


def test_the_tenant_header_goes_out_with_every_query(server: Headers) -> None:
    """FLEETWARDEN_PROMETHEUS_HEADERS X-Scope-OrgID=team-a|team-b (Mimir's tenant federation) is sent
    as is with each query; without it no such header is sent."""
    read = settings.Settings.from_env({"FLEETWARDEN_PROMETHEUS_HEADERS": "X-Scope-OrgID=team-a|team-b, X-Extra=1"})
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = prometheus.connect(url, headers=dict(read.prometheus_headers))
    client.custom_query("up")
    prometheus.connect(url).custom_query("up")
    tenant, plain = server.seen
    assert tenant["X-Scope-OrgID"] == "team-a|team-b" and tenant["X-Extra"] == "1"
    assert "X-Scope-OrgID" not in plain


def test_an_event_names_the_replica_that_posted_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """reportingInstance is the replica's Lease identity once it leads (kube.REPORTING_INSTANCE)."""
    posted: list[dict[str, Any]] = []

    class Core:
        def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
            posted.append(body)

    k = kube.Kube(kube.client.ApiClient(kube.client.Configuration()))
    k.core = Core()  # type: ignore[assignment]
    monkeypatch.setattr(kube, "REPORTING_INSTANCE", "operator-7d9f_0a1b2c3d4e")
    k.post_event({"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "shop", "uid": "u"}, "Normal", "R", "m")
    assert posted[0]["reportingInstance"] == "operator-7d9f_0a1b2c3d4e"


@pytest.mark.parametrize(("extra", "partial"), [({"isPartial": True}, True), ({"isPartial": False}, False), ({}, False)])
def test_a_victoriametrics_partial_answer_is_no_answer(extra: dict[str, Any], partial: bool) -> None:
    """A VictoriaMetrics cluster missing storage nodes answers success with isPartial true (no warnings):
    refused as a partial answer, like Prometheus' warnings; isPartial false or absent is a whole answer."""
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}, **extra}).encode()
    if partial:
        with pytest.raises(prometheus.BadAnswerError, match="partial answer: isPartial is true"):
            prometheus.answer_result(200, "application/json", body, "vector")
    else:
        assert prometheus.answer_result(200, "application/json", body, "vector") == []
