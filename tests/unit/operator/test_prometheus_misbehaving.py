"""Prometheus misbehaving: an answer that hangs, is an error page, has the wrong result type,
is partial (``warnings``) or has a sample that is not a number makes the cycle's metrics
unknown, with a reason naming the cause (MetricsAvailable=False, no action): never a crash,
never a spend of 0. Series without an agent or namespace label are dropped and counted.

First on answers recorded from a real Prometheus (data/prometheus_bad_answers.json, each
saying where it comes from), then through the real client against a local HTTP server that
misbehaves on purpose."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetwarden import errors
from fleetwarden.adapters import prometheus
from fleetwarden.core import decision, spec
from fleetwarden.handlers import metrics, runtime

DATA = json.loads((Path(__file__).parent / "data" / "prometheus_bad_answers.json").read_text())
NOW = 1_800_000_000.0
BOT = {"namespace": "shop", "agent": "bot"}
RANGE = [{"metric": BOT, "values": [[NOW - 120, "0.5"], [NOW - 60, "0.5"]]}]
SPEND = [{"metric": BOT, "value": [NOW, "0.5"]}]
FRESH = [{"metric": BOT, "value": [NOW, str(NOW - 5)]}]


# ---------------------------------------------------------------- 1: one answer


@pytest.mark.parametrize("case", DATA["refused"], ids=lambda case: case["name"])
def test_an_unusable_answer_is_refused_saying_why(case: dict[str, Any]) -> None:
    """Each recorded bad answer raises BadAnswerError (a PrometheusError) with a one-line reason naming the cause."""
    with pytest.raises(prometheus.BadAnswerError) as info:
        prometheus.answer_result(case["status"], case["content_type"], case["body"].encode(), case["expected"])
    assert case["says"] in str(info.value)
    assert isinstance(info.value, errors.PrometheusError)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_a_whole_answer_is_its_result() -> None:
    """A success of the expected type, without warnings, is its data.result as Prometheus sent it."""
    [case] = DATA["accepted"]
    result = prometheus.answer_result(200, case["content_type"], case["body"].encode(), "matrix")
    assert [item["metric"] for item in result] == [{}, {"agent": "bot"}]


# ---------------------------------------------------------------- 2: the fetch


class Answers:
    """A client answering every range query with ``ranges`` and every instant one with ``spend``
    (the freshness query with FRESH)."""

    def __init__(self, ranges: Any = RANGE, spend: Any = SPEND) -> None:
        self.ranges, self.spend = ranges, spend

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return FRESH if query == prometheus.FRESHNESS_QUERY else self.spend

    def custom_query_range(self, query: str, start_time: Any, end_time: Any, step: str,
                           params: dict[str, Any] | None = None) -> Any:
        return self.ranges


def fetch(client: Any) -> prometheus.FleetSnapshot:
    return prometheus.Fetcher(client, lookback_minutes=30).fetch(NOW)


@pytest.mark.parametrize(("ranges", "spend", "says"), [
    ([NOW, "1"], SPEND, "query inference_cost: a scalar or string answer where a matrix was expected"),
    (SPEND, SPEND, "query inference_cost: a vector answer where a matrix was expected"),
    ([{"values": [[NOW, "1"]]}], SPEND, "query inference_cost: a malformed answer where a matrix was expected"),
    ({"resultType": "matrix", "result": RANGE}, SPEND, "query inference_cost: an answer of type dict"),
    (RANGE, RANGE, "query spend hour: a matrix answer where a vector was expected"),
    (RANGE, [NOW, "0.5"], "query spend hour: a scalar or string answer where a vector was expected"),
    (RANGE, [{"metric": BOT, "value": [NOW, "NaN"]}], "query spend hour: a sample that is not a number"),
    (RANGE, [{"metric": BOT, "value": [NOW]}], "query spend hour: a sample that is not a number"),
])
def test_a_result_of_the_wrong_shape_is_unknown_naming_the_query(ranges: Any, spend: Any, says: str) -> None:
    """Whatever a client returns, a result that is not a list of series of the query's type is a
    BadAnswerError naming the query (never a crash in the cleaning, never an agent with no spend)."""
    with pytest.raises(prometheus.BadAnswerError, match="Prometheus " + says):
        fetch(Answers(ranges, spend))


def test_a_client_error_names_the_query() -> None:
    """A PrometheusError of the client (a timeout, a refused answer) keeps its class and gains the query's name."""
    class Hung(Answers):
        def custom_query_range(self, *args: Any, **kwargs: Any) -> Any:
            raise prometheus.BadAnswerError("no answer within 0.5 s (timed out)")

    with pytest.raises(prometheus.BadAnswerError, match=r"^Prometheus query inference_cost: no answer within 0.5 s"):
        fetch(Hung())


def test_each_query_of_a_fetch_is_timed_by_name_a_failed_one_too() -> None:
    """The fetcher tells ``on_query`` each query's name and the seconds its answer took, once per
    query (the operator's per-query histogram), the one that failed included."""
    timed: list[tuple[str, float]] = []
    snap = prometheus.Fetcher(Answers(), lookback_minutes=30,
                              on_query=lambda what, seconds: timed.append((what, seconds))).fetch(NOW)
    names = [what for what, _ in timed]
    assert len(names) == snap.queries and len(set(names)) == len(names)
    assert {"inference_cost", "open tasks", "spend hour", "spend month calendar", "freshness"} <= set(names)
    assert all(seconds >= 0 for _, seconds in timed)

    class Failing(Answers):
        def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
            raise prometheus.BadAnswerError("HTTP 503")

    timed.clear()
    with pytest.raises(prometheus.BadAnswerError, match="spend hour"):
        prometheus.Fetcher(Failing(), lookback_minutes=30,
                           on_query=lambda what, seconds: timed.append((what, seconds))).fetch(NOW)
    assert [what for what, _ in timed][-1] == "spend hour"


def test_the_operator_histograms_each_query_by_name() -> None:
    """``fleetwarden_operator_prometheus_query_seconds{query}``: one observation per answer, by query."""
    def count(query: str) -> float:
        return metrics.REGISTRY.get_sample_value("fleetwarden_operator_prometheus_query_seconds_count",
                                                 {"query": query}) or 0.0
    before = count("freshness"), count("tokens")
    runtime.query_timed("freshness", 0.2)
    runtime.query_timed("freshness", 3.0)
    assert (count("freshness"), count("tokens")) == (before[0] + 2, before[1])


UNLABELLED = [{"metric": {}, "values": [[NOW - 60, "7"]]},  # neither label
              {"metric": {"agent": "bot"}, "values": [[NOW - 60, "7"]]}]  # no namespace


def test_series_without_agent_or_namespace_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A series without an agent or namespace label belongs to no budget: dropped (never charged to the
    "default" namespace), counted per query in the snapshot and logged once per fetch."""
    spend = [*SPEND, {"metric": {"agent": "bot"}, "value": [NOW, "100"]}, {"metric": {}, "value": [NOW, "100"]}]
    with caplog.at_level(logging.WARNING, logger="fleetwarden.adapters.prometheus"):
        snap = fetch(Answers(RANGE + UNLABELLED, spend))
    assert snap.unlabelled["inference_cost"] == 2 and snap.unlabelled["spend hour"] == 2
    # every range query (the families and the open tasks) and spend query; freshness: all labelled
    assert len(snap.unlabelled) == len(prometheus.RANGE_FAMILIES) + 1 + 2 * len(spec.Window)
    assert [m.inference_cost_usd for m in snap.agent_minutes("shop", "bot")] == [0.5, 0.5]
    assert snap.agent_spend("shop", "bot", spec.Window.hour) == 0.5
    assert snap.minutes.keys() == {("shop", "bot")} and snap.spend.keys() == {("shop", "bot")}
    [record] = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert "2 series of inference_cost" in record.getMessage()
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "b", "namespace": "default"},
                                              "spec": {"limits": [{"window": "hour", "amountUSD": 1}]}})
    with pytest.raises(prometheus.StaleMetricsError, match="no samples at all for running agent default/bot"):
        snap.for_budget(budget, [decision.AgentDeployment("bot", "default", {}, 1)])


# ---------------------------------------------------------------- 3: a real HTTP server


class Misbehaving(http.server.ThreadingHTTPServer):
    """Prometheus' query API on 127.0.0.1 that answers well (``mode`` "ok") or misbehaves."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "ok"
        self.requests = 0
        self.release = threading.Event()  # ends a hang

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Misbehaving

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self.server.requests += 1
        mode = self.server.mode
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
        ranged = url.path.endswith("/query_range")
        if mode == "hang":
            self.server.release.wait(30)
            return
        if mode == "html500":
            self.answer(500, "text/html", b"<html><head><title>500 Internal Server Error</title></head>"
                                          b"<body><h1>Internal Server Error</h1></body></html>")
            return
        data: dict[str, Any]
        if mode == "scalar" and ranged:
            data = {"resultType": "scalar", "result": [NOW, "1"]}
        elif ranged:
            data = {"resultType": "matrix", "result": RANGE + (UNLABELLED if mode == "unlabelled" else [])}
        else:
            data = {"resultType": "vector", "result": FRESH if query == prometheus.FRESHNESS_QUERY else SPEND}
        doc: dict[str, Any] = {"status": "success", "data": data}
        if mode == "warnings" and not ranged:
            doc["warnings"] = ["remote_read: error sending request: dial tcp 10.0.0.7:9090: i/o timeout"]
        self.answer(200, "application/json", json.dumps(doc).encode())

    def answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        pass


@pytest.fixture()
def server() -> Iterator[Misbehaving]:
    srv = Misbehaving()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


TIMEOUT = 0.5


def real_fetch(server: Misbehaving) -> prometheus.FleetSnapshot:
    return prometheus.Fetcher(prometheus.connect(server.url, timeout=TIMEOUT), lookback_minutes=30).fetch(NOW)


def test_the_real_client_reads_a_good_server(server: Misbehaving) -> None:
    """The baseline: the same server answering well gives a snapshot (16 queries, bot's spend)."""
    snap = real_fetch(server)
    assert server.requests == snap.queries == prometheus.QUERIES_PER_CYCLE
    assert snap.agent_spend("shop", "bot", spec.Window.hour) == 0.5 and snap.unlabelled == {}


@pytest.mark.parametrize(("mode", "says"), [
    ("hang", f"Prometheus query inference_cost: no answer from http://127.0.0.1:PORT within {TIMEOUT:g} s (timed out)"),
    ("html500", "Prometheus query inference_cost: HTTP 500 with an HTML page ('500 Internal Server Error'), "
                "not Prometheus' JSON"),
    ("scalar", "Prometheus query inference_cost: a scalar result where a matrix was expected"),
    ("warnings", "Prometheus query spend hour: partial answer: Prometheus warned 'remote_read: error sending "
                 "request: dial tcp 10.0.0.7:9090: i/o timeout'; a partial sum could under-count spend"),
])
def test_a_misbehaving_server_is_metrics_unknown_with_the_reason(server: Misbehaving, mode: str, says: str) -> None:
    """Through the real client: each misbehaviour is a PrometheusError with the reason, after one
    request (a hung read is not retried: it costs one timeout)."""
    server.mode = mode
    started = time.monotonic()
    with pytest.raises(errors.PrometheusError) as info:
        real_fetch(server)
    assert str(info.value) == says.replace("PORT", str(server.server_address[1]))
    assert server.requests == (1 if mode != "warnings" else len(prometheus.RANGE_FAMILIES) + 2)  # + open tasks
    assert time.monotonic() - started < 10 * TIMEOUT


def test_series_without_labels_from_the_real_server_are_dropped(server: Misbehaving) -> None:
    """Unlabelled series in a real answer are dropped and counted; the labelled ones are read."""
    server.mode = "unlabelled"
    snap = real_fetch(server)
    assert snap.unlabelled == dict.fromkeys([*prometheus.RANGE_FAMILIES, "open tasks"], 2)
    assert snap.agent_spend("shop", "bot", spec.Window.hour) == 0.5


BUDGET = {"apiVersion": spec.API_VERSION, "kind": "AgentBudget",
          "metadata": {"name": "support", "namespace": "shop", "uid": "u-1", "generation": 1},
          "spec": {"selector": {"matchLabels": {"app": "bot"}}, "limits": [{"window": "hour", "amountUSD": 0.1}]}}
DEPLOYMENT = {"metadata": {"name": "bot", "namespace": "shop", "uid": "d-1", "labels": {"app": "bot"}},
              "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "agent", "env": []}]}}}}


@pytest.mark.parametrize(("mode", "says"), [
    ("html500", "HTTP 500 with an HTML page"),
    ("warnings", "partial answer: Prometheus warned"),
    ("scalar", "a scalar result where a matrix was expected"),
])
def test_the_budget_says_metrics_unknown_and_nothing_acts(server: Misbehaving, mode: str, says: str) -> None:
    """Through the Runtime: MetricsAvailable=False with the reason, state Unknown, no action, although
    the same server answering well puts the budget past its kill switch (0.5 USD of a 0.1 USD hour)."""
    def decide() -> decision.Decision:
        fetcher = prometheus.Fetcher(prometheus.connect(server.url, timeout=TIMEOUT), lookback_minutes=30)
        rt = runtime.Runtime(interval=15.0, fetcher=fetcher, clock=lambda: NOW)
        return rt.reconcile(BUDGET, [DEPLOYMENT], apply=False)

    assert decide().status.body()["state"] == "Killed"  # the baseline: known data acts
    server.mode = mode
    decision = decide()
    metrics = next(c for c in decision.status.body()["conditions"] if c["type"] == "MetricsAvailable")
    assert metrics["status"] == "False" and says in metrics["message"]
    assert decision.status.body()["state"] == "Unknown"
    assert list(decision.actions) == []
