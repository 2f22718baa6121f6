"""The per-budget metric families kept as rendered lines (handlers/metrics.Rendered): the same
exposition as prometheus_client's gauges, served with the rest of the registry."""

from __future__ import annotations

import gzip
import math
from typing import Any

import prometheus_client as pc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetwarden.handlers import metrics

LABELS = ["agent", "namespace", "budget", "team", "project", "cost_center"]  # not in sorted order
ROWS: list[tuple[tuple[str, ...], float]] = [
    (("bot", "ns", "support", "", "", ""), 1),
    (("a\\b", "ns", 'say "hi"', "line\nbreak", "ünïcode ✓", "cc-1"), 0.1 + 0.2),
    (("big", "ns", "b", "t", "p", "c"), 1.5e300),
    (("tiny", "ns", "b", "t", "p", "c"), -2.5e-12),
    (("inf", "ns", "b", "t", "p", "c"), math.inf),
    (("nan", "ns", "b", "t", "p", "c"), math.nan),
    (("int", "ns", "b", "t", "p", "c"), 12345678901234),
]


def pair(doc: str = "The budget of an agent.\nSecond line \\ with a backslash.") -> tuple[Any, Any]:
    ours = metrics.Rendered("fleetwarden_test_rendered", doc, LABELS, registry=pc.CollectorRegistry())
    theirs_registry = pc.CollectorRegistry()
    theirs = pc.Gauge("fleetwarden_test_rendered", doc, LABELS, registry=theirs_registry)
    return ours, (theirs, theirs_registry)


def test_lines_are_prometheus_clients_own() -> None:
    ours, (theirs, registry) = pair()
    for labels, value in ROWS:
        ours.labels(*labels).set(value)
        theirs.labels(*labels).set(value)
    assert ours.render() == pc.generate_latest(registry).decode()


def test_a_changed_value_and_a_removed_series() -> None:
    ours, (theirs, registry) = pair("Short.")
    for labels, value in ROWS:
        ours.labels(*labels).set(value)
        theirs.labels(*labels).set(value)
    ours.labels(*ROWS[2][0]).set(7.25)
    theirs.labels(*ROWS[2][0]).set(7.25)
    ours.remove(*ROWS[1][0])
    theirs.remove(*ROWS[1][0])
    assert ours.render() == pc.generate_latest(registry).decode()
    with pytest.raises(KeyError):
        ours.remove(*ROWS[1][0])
    with pytest.raises(ValueError, match="label values"):
        ours.set(("only", "two"), 1.0)


def test_the_registry_still_reads_them() -> None:
    """REGISTRY.get_sample_value and any other reader of the registry see the kept values."""
    registry = pc.CollectorRegistry()
    ours = metrics.Rendered("fleetwarden_test_read", "Doc.", ["budget", "namespace"], registry=registry)
    ours.labels("b", "ns").set(3.5)
    assert registry.get_sample_value("fleetwarden_test_read", {"budget": "b", "namespace": "ns"}) == 3.5
    ours.remove("b", "ns")
    assert registry.get_sample_value("fleetwarden_test_read", {"budget": "b", "namespace": "ns"}) is None


def _families(text: str) -> dict[str, list[tuple[str, list[tuple[str, str]], float]]]:
    out: dict[str, list[tuple[str, list[tuple[str, str]], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = sorted((s.name, sorted(s.labels.items()), s.value) for s in family.samples
                                  if not s.name.endswith("_created"))
    return out


def test_the_page_holds_every_family_once() -> None:
    """/metrics: the operator's other metrics as prometheus_client renders them, and the kept
    families once each; the same samples as rendering the whole registry the slow way."""
    metrics.BUDGET_SPEND.labels("rendered-test", "ns-r", "hour").set(1.25)
    metrics.OWNER_INFO.labels("agent-r", "ns-r", "rendered-test", "team \"a\"", "", "").set(1)
    metrics.EVALUATION_SECONDS.observe(0.01)
    try:
        page = metrics.exposition().decode()
        slow = pc.generate_latest(metrics.REGISTRY).decode()
        assert _families(page) == _families(slow)
        assert page.count("# TYPE fleetwarden_budget_spend_usd gauge") == 1
        assert 'fleetwarden_budget_spend_usd{budget="rendered-test",namespace="ns-r",window="hour"} 1.25' in page
        assert "fleetwarden_evaluation_seconds_bucket" in page
    finally:
        metrics.forget("ns-r", "rendered-test")
        metrics.OWNER_INFO.remove("agent-r", "ns-r", "rendered-test", "team \"a\"", "", "")
    assert "rendered-test" not in metrics.exposition().decode()


def test_the_app_serves_the_page_gzipped_when_asked() -> None:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    plain = b"".join(metrics.app({}, start_response))
    assert seen["status"] == "200 OK" and "Content-Encoding" not in seen["headers"]
    assert seen["headers"]["Content-Type"] == pc.CONTENT_TYPE_LATEST
    zipped = b"".join(metrics.app({"HTTP_ACCEPT_ENCODING": "gzip, deflate"}, start_response))
    assert seen["headers"]["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped).split(b"\n")[:3] == plain.split(b"\n")[:3]


def test_the_detector_folds_are_counted_by_what_each_cost() -> None:
    """``fleetwarden_operator_detector_folds_total{how}`` reads the runtime's kept folds: a kept state
    used with nothing to step is ``unchanged``, not ``restored``; absent before a runtime is set."""
    from fleetwarden.core import warmfold

    was = metrics.FOLDS.source
    try:
        metrics.FOLDS.source = None
        assert metrics.REGISTRY.get_sample_value("fleetwarden_operator_detector_folds_total", {"how": "anchor"}) is None
        folds = warmfold.Folds()
        folds.cold, folds.warm, folds.unchanged, folds.prepared = 3, 7, 5, 2
        metrics.FOLDS.source = folds
        got = {how: metrics.REGISTRY.get_sample_value("fleetwarden_operator_detector_folds_total", {"how": how})
               for how in ("anchor", "restored", "unchanged", "ahead")}
    finally:
        metrics.FOLDS.source = was
    assert got == {"anchor": 3, "restored": 2, "unchanged": 5, "ahead": 2}


def test_scrapes_while_many_threads_set_read_whole_lines() -> None:
    """Sixteen threads set series (new ones and changed values) while scrapes render and collect
    the family: no scrape fails, every line it reads is whole, and the last holds every series
    at its last value."""
    import sys
    import threading

    ours = metrics.Rendered("fleetwarden_test_rendered", "doc", ["budget", "namespace"], registry=pc.CollectorRegistry())
    done = threading.Event()
    errors: list[BaseException] = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can

    def setter(t: int) -> None:
        try:
            for i in range(6000):
                ours.set((f"b{t}-{i % 3000}", "ns"), float(i))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    def scraper() -> None:
        try:
            while not done.is_set():
                text = ours.render()
                for family in text_string_to_metric_families(text):
                    assert all(s.labels["namespace"] == "ns" for s in family.samples)
                list(ours.collect())
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    try:
        scrapers = [threading.Thread(target=scraper) for _ in range(2)]
        setters = [threading.Thread(target=setter, args=(t,)) for t in range(16)]
        for thread in scrapers + setters:
            thread.start()
        for thread in setters:
            thread.join()
        done.set()
        for thread in scrapers:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    [family] = text_string_to_metric_families(ours.render())
    values = {s.labels["budget"]: s.value for s in family.samples}
    assert len(values) == 16 * 3000
    assert values["b3-2999"] == 5999.0 and values["b15-0"] == 3000.0
