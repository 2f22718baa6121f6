"""The Prometheus adapter on recorded answers of a real Prometheus (data/prometheus_fleet.json).

The recording: agent ``bot`` ran 12 minutes on gpt-4o-mini (0.02 USD, 2 tasks, 3 crm.search
calls a minute), then 5 on gpt-4o (0.06 USD), then 3 more with 90 crm.search calls a
minute; agent ``helper`` spent 0.005 USD a minute throughout. It is replayed through a
fake client keyed by the query text, so a changed query fails loudly here. The six spend
answers were recorded for the earlier increase() form of the spend query and re-keyed to the
current text when it changed; what Prometheus makes of that text is checked on Prometheus's
own engine in test_spend_query_promtool.py. The range answers were recorded for the increase()
form of the per-minute queries and re-keyed likewise (test_minute_growth_promtool.py checks the
current form).
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from fleetwarden import errors
from fleetwarden.adapters import prometheus
from fleetwarden.core import decision, guardrails, spec

DATA = json.loads((Path(__file__).parent / "data" / "prometheus_fleet.json").read_text())
NOW = float(DATA["now"])


class Recorded:
    """Answers each query with what the real Prometheus answered."""

    def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        # the recording predates the open-task gauges: that query finds no series (an older SDK)
        self.overrides = {prometheus.OPEN_TASKS_QUERY: [], **(overrides or {})}

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
        self.calls.append(query)
        return self.overrides.get(query, DATA["instant"][query])

    def custom_query_range(self, query: str, start_time: Any, end_time: Any, step: str,
                           params: dict[str, Any] | None = None) -> Any:
        self.calls.append(query)
        if query in self.overrides:
            return self.overrides[query]
        # the recording predates the would_* guardrail statuses (a policy in DryRun or Warn): its
        # guardrail selector had only the four blocking ones, and no would_* series existed
        return DATA["range"][query.replace("|" + "|".join(guardrails.WOULD_KINDS), "")]


class Down:
    def custom_query(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    def custom_query_range(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")


def fetch(client: Any = None) -> prometheus.FleetSnapshot:
    return prometheus.Fetcher(client or Recorded(), lookback_minutes=30, scrape_interval=2.0).fetch(NOW)


def agent(name: str, replicas: int = 1) -> decision.AgentDeployment:
    return decision.AgentDeployment(name, "shop", {"app": "support"}, replicas, model="gpt-4o")


BUDGET = spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": "shop"},
                                          "spec": {"limits": [{"window": "hour", "amountUSD": 1}]}})


def test_a_fixed_number_of_queries_per_cycle() -> None:
    """One range query per family, one for the open-task gauges, six spend windows and one freshness
    query, whatever the fleet."""
    client = Recorded()
    snap = fetch(client)
    assert snap.queries == len(client.calls) == prometheus.QUERIES_PER_CYCLE == 17


def test_open_task_gauges_fill_the_minutes_replicas_combined() -> None:
    """The open-task gauges of an agent's replicas become its minutes' open tasks (summed) and its
    largest and oldest running task (across replicas, each with its own age); without them, unknown."""
    snap0 = fetch()
    minute = snap0.agent_minutes("shop", "bot")[-1].minute
    t = minute + 60  # the reading at the end of that minute

    def series_(instance: str, which: str, value: float) -> dict[str, Any]:
        return {"metric": {"namespace": "shop", "agent": "bot", "instance": instance, "fw_metric": which},
                "values": [[t, str(value)]]}

    answer = [series_("pod-a", "open", 3), series_("pod-a", "largest_tokens", 90_000),
              series_("pod-a", "largest_age", 600), series_("pod-a", "oldest_tokens", 90_000),
              series_("pod-a", "oldest_age", 600),
              series_("pod-b", "open", 2), series_("pod-b", "largest_tokens", 4_000),
              series_("pod-b", "largest_age", 30), series_("pod-b", "oldest_tokens", 1_000),
              series_("pod-b", "oldest_age", 900)]
    snap = fetch(Recorded({prometheus.OPEN_TASKS_QUERY: answer}))
    m = snap.agent_minutes("shop", "bot")[-1]
    assert m.minute == minute
    assert (m.open_tasks, m.largest_task_tokens, m.largest_task_age) == (5, 90_000, 600)
    assert (m.oldest_task_tokens, m.oldest_task_age) == (1_000, 900)
    earlier = snap.agent_minutes("shop", "bot")[0]
    assert (earlier.open_tasks, earlier.largest_task_tokens) == (None, None)  # no reading: unknown, not 0
    assert snap0.agent_minutes("shop", "bot")[-1].open_tasks is None


def test_minutes_are_per_agent_and_complete() -> None:
    """Range results become one bucket per minute per agent, costs and calls as floats."""
    snap = fetch()
    bot = snap.agent_minutes("shop", "bot")
    assert [m.minute for m in bot] == sorted(m.minute for m in bot)
    assert all(m.minute % 60 == 0 for m in bot)
    mini = [m for m in bot if m.model == "gpt-4o-mini"]
    big = [m for m in bot if m.model == "gpt-4o"]
    assert mini and big
    assert sum(m.tasks_completed for m in bot) == pytest.approx(2 * len(bot), abs=2)
    assert max(m.tool_calls.get("crm.search", 0) for m in bot) == pytest.approx(90, rel=0.1)
    assert big[-1].inference_cost_usd == pytest.approx(0.06, rel=0.1)
    assert all(m.workflow == "support" for m in bot if m.llm_calls)
    assert snap.agent_minutes("shop", "helper")[0].inference_cost_usd == pytest.approx(0.005, rel=0.1)
    assert snap.agent_minutes("shop", "nobody") == []


def test_budget_spend_is_the_sum_over_its_agents() -> None:
    """The budget's spend per window is the sum of its selected agents' spend."""
    snap = fetch()
    both = snap.for_budget(BUDGET, [agent("bot"), agent("helper")])
    bot_only = snap.for_budget(BUDGET, [agent("bot")])
    assert both.spend[spec.Window.hour] == pytest.approx(
        bot_only.spend[spec.Window.hour] + snap.agent_spend("shop", "helper", spec.Window.hour))
    assert bot_only.spend[spec.Window.hour] == pytest.approx(1.04, rel=0.05)  # 0.72 LLM + 0.32 tools


def test_a_stale_running_agent_makes_the_budget_unknown() -> None:
    """No sample newer than 3 scrape intervals for a running agent -> StaleMetricsError (a PrometheusError)."""
    snap = dataclasses.replace(fetch(), fetched_at=NOW + 60)  # the same answers, read a minute later
    with pytest.raises(prometheus.StaleMetricsError, match="shop/bot"):
        snap.for_budget(BUDGET, [agent("bot")])
    stopped = snap.for_budget(BUDGET, [agent("bot", replicas=0)])  # not running: silence is expected
    assert stopped.spend[spec.Window.hour] is not None


def test_a_running_agent_without_samples_is_unknown_not_zero() -> None:
    """A running agent Prometheus never saw is unknown, never a spend of 0."""
    with pytest.raises(errors.PrometheusError, match="no samples"):
        fetch().for_budget(BUDGET, [agent("ghost")])


def test_prometheus_down_raises_prometheus_error_with_the_cause() -> None:
    """A refused connection becomes PrometheusError, the original error kept as __cause__."""
    with pytest.raises(errors.PrometheusError) as info:
        fetch(Down())
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_an_error_answer_is_a_prometheus_error() -> None:
    """Prometheus answering with an error (the client raises) is a PrometheusError."""
    class Refusing(Recorded):
        def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
            raise RuntimeError("HTTP Status Code 422 (execution error)")

    with pytest.raises(errors.PrometheusError, match="422"):
        fetch(Refusing())


@pytest.mark.parametrize(("values", "expected"), [
    ([[60, "1.5"], [120, "2"]], {60: 1.5, 120: 2.0}),
    ([[60, "1.5"], [60, "9"]], {60: 1.5}),  # duplicate timestamp: the first wins
    ([[60, "NaN"], [120, "+Inf"], [180, "x"]], {}),  # not numbers: dropped
    ([[60, "-0.5"]], {60: 0.0}),  # an increase is never negative
    ([[60.0004, "1"]], {60: 1.0}),
])
def test_samples_are_cleaned_once_at_the_edge(values: list[list[Any]], expected: dict[int, float]) -> None:
    """String samples become floats; NaN, garbage and duplicates are dropped."""
    assert prometheus.clean_points(values) == expected


def test_a_minute_without_samples_is_a_gap_not_zero() -> None:
    """A minute missing from every family has no bucket (a gap), unlike a minute of zeros."""
    results = {family: [] for family in prometheus.RANGE_FAMILIES}
    results["inference_cost"] = [{"metric": {"namespace": "shop", "agent": "bot"},
                                  "values": [[1200, "0.1"], [1260, "0"], [1380, "0.2"]]}]
    minutes = prometheus.build_minutes(results, start=1080, end=1440)
    assert [(m.minute, m.inference_cost_usd) for m in minutes[("shop", "bot")]] == [
        (1140, 0.1), (1200, 0.0), (1320, 0.2)]


def test_minutes_of_separate_answers_share_their_label_strings() -> None:
    """Each decoded answer makes its own strings; the minutes the operator keeps fetch after
    fetch hold one string per name, not one per minute."""
    def answer(ts: int) -> dict[str, list[dict[str, Any]]]:
        text = json.dumps({family: [] for family in prometheus.RANGE_FAMILIES} | {
            "inference_cost": [{"metric": {"namespace": "shop", "agent": "bot-7"}, "values": [[ts, "0.1"]]}],
            "llm_calls": [{"metric": {"namespace": "shop", "agent": "bot-7", "model": "gpt-4o-2024",
                                      "workflow": "triage-x"}, "values": [[ts, "2"]]}],
            "tool_calls": [{"metric": {"namespace": "shop", "agent": "bot-7", "tool": "crm.search-x"},
                            "values": [[ts, "3"]]}]})
        return cast(dict[str, list[dict[str, Any]]], json.loads(text))

    (first,) = prometheus.build_minutes(answer(1200), 0, 3600)[("shop", "bot-7")]
    (second,) = prometheus.build_minutes(answer(1260), 0, 3600)[("shop", "bot-7")]
    assert (first.model, first.workflow, second.agent) == ("gpt-4o-2024", "triage-x", "bot-7")
    for a, b in [(first.agent, second.agent), (first.namespace, second.namespace), (first.model, second.model),
                 (first.workflow, second.workflow), (next(iter(first.tool_calls)), next(iter(second.tool_calls)))]:
        assert a is b


def _random_answers(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Range answers of a few agents: families with and without grouping labels, several series of
    one agent and label (two models, one workflow), gaps, samples that are no numbers, a series
    without an agent, and guardrail series inside the tool-call answer."""
    agents = [(f"ns-{i % 2}", f"bot-{i}") for i in range(rng.randint(1, 5))]
    out: dict[str, list[dict[str, Any]]] = {}
    for family, (_, extra) in prometheus.RANGE_FAMILIES.items():
        items: list[dict[str, Any]] = []
        for namespace, agent in agents:
            for _ in range(rng.randint(0, 3)):
                metric = {"namespace": namespace, "agent": agent} | {label: rng.choice(["", "a", "b"]) for label in extra}
                if family == "tool_calls" and rng.random() < 0.3:
                    metric |= {prometheus.GUARDRAIL_MARK: "guardrail", "status": guardrails.FINDING_STATUSES[0]}
                values = [[t, rng.choice(["1", "0", "2.5", "NaN", str(round(rng.random(), 3))])]
                          for t in range(60, 1860, 60) if rng.random() < 0.6]
                items.append({"metric": metric, "values": values})
        items.append({"metric": {"agent": "no-namespace"}, "values": [[120, "1"]]})
        out[family] = items
    return out


def _expected_minutes(results: dict[str, list[dict[str, Any]]], start: int, end: int
                      ) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """The buckets worked out the plain way: for each agent and minute, every family's samples
    summed (by label where the family has one)."""
    sums: dict[tuple[str, str], dict[int, dict[tuple[str, str], float]]] = {}
    for family, items in results.items():
        _, extra = prometheus.RANGE_FAMILIES[family]
        for item in items:
            metric = item["metric"]
            if "namespace" not in metric or prometheus.GUARDRAIL_MARK in metric:
                continue
            for t, text in item["values"]:
                value = float(text)
                if value != value or not start <= t - 60 < end:
                    continue
                minute = sums.setdefault((metric["namespace"], metric["agent"]), {}).setdefault(t - 60, {})
                for part, label in ((family, metric[extra[0]] if extra else ""),
                                    *(((family + ":2", metric[extra[1]]),) if len(extra) > 1 else ())):
                    minute[(part, label)] = minute.get((part, label), 0.0) + value

    def by_label(b: dict[tuple[str, str], float], part: str) -> dict[str, float]:
        return {label: v for (p, label), v in b.items() if p == part}

    def mode(counts: dict[str, float]) -> str | None:  # the label with the most calls ("" too)
        best = max(((v, k) for k, v in counts.items() if v > 0), default=None)
        return best[1] if best else None

    return {key: {minute: {
        "inference_cost_usd": b.get(("inference_cost", ""), 0.0),
        "tokens": round(b.get(("tokens", ""), 0.0)),
        "human_cost_usd": b.get(("human_cost", ""), 0.0),
        "llm_calls": round(sum(by_label(b, "llm_calls").values())),
        "tasks_completed": round(by_label(b, "tasks").get("completed", 0.0)),
        "outcomes": sum(by_label(b, "outcomes").values()),
        "tool_calls": {k: v for k, v in by_label(b, "tool_calls").items() if k},
        "tool_cost_usd": sum(v for k, v in by_label(b, "tool_cost").items() if k),
        "model": mode(by_label(b, "llm_calls")),
        "workflow": mode({k: v for k, v in by_label(b, "llm_calls:2").items() if k}),
    } for minute, b in sorted(by_minute.items())} for key, by_minute in sums.items()}


@pytest.mark.parametrize("seed", range(40))
def test_the_minutes_folded_answer_by_answer_are_the_samples_summed(seed: int) -> None:
    """The fetcher folds each range answer as it arrives (MinuteBuilder) and keeps sums per agent,
    family and label: each minute is what summing the answers' samples gives, a minute no family
    has a sample for is no bucket, and an agent with none in the span has no minutes at all."""
    rng = random.Random(seed)
    results = _random_answers(rng)
    start, end = rng.choice([(0, 1800), (300, 1200), (600, 660)])
    built = prometheus.build_minutes(results, start, end)
    expected = _expected_minutes(results, start, end)
    assert set(built) == set(expected)
    for key, minutes in built.items():
        assert [m.minute for m in minutes] == list(expected[key])
        for m in minutes:
            want = expected[key][m.minute]
            numbers = [f for f, v in want.items() if isinstance(v, (int, float))]
            assert {f: getattr(m, f) for f in numbers} == pytest.approx({f: want[f] for f in numbers})
            assert (m.model, m.workflow) == (want["model"], want["workflow"])
            assert dict(m.tool_calls) == pytest.approx(want["tool_calls"])


class Overlapping(Recorded):
    """Each range query waits (up to 10 s) until an instant query has come, and says whether one did."""

    def __init__(self) -> None:
        super().__init__()
        self.instant = threading.Event()
        self.waited: list[bool] = []

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
        self.instant.set()
        return super().custom_query(query, params)

    def custom_query_range(self, query: str, start_time: Any, end_time: Any, step: str,
                           params: dict[str, Any] | None = None) -> Any:
        self.waited.append(all(self.waited) and self.instant.wait(10))  # (one wait in vain is enough)
        return super().custom_query_range(query, start_time, end_time, step, params)


def test_with_overlap_the_spend_and_freshness_queries_go_out_while_the_ranges_are_read() -> None:
    """The operator's fetcher (``overlap``) sends the spend and freshness queries on a thread of its
    own while it reads the range queries, so Prometheus answers both at once. Here every range query
    waits for an instant query to come: one after the other, none would. The snapshot is the one a
    fetch of one query after the other builds."""
    client = Overlapping()
    got = prometheus.Fetcher(client, lookback_minutes=30, scrape_interval=2.0, overlap=True).fetch(NOW)
    assert client.waited and all(client.waited)
    want = fetch()
    assert (got.spend, got.last_sample, got.queries, got.unlabelled) == \
        (want.spend, want.last_sample, want.queries, want.unlabelled)
    assert {k: list(v) for k, v in got.minutes.items()} == {k: list(v) for k, v in want.minutes.items()}
    assert sorted(client.calls) == sorted(_calls_of_one_fetch())


def _calls_of_one_fetch() -> list[str]:
    client = Recorded()
    prometheus.Fetcher(client, lookback_minutes=30, scrape_interval=2.0).fetch(NOW)
    return client.calls


class Paired(Recorded):
    """Each instant query waits (up to 10 s) until two have been asked at once, and says whether they were."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.asked = 0
        self.two = threading.Event()
        self.waited: list[bool] = []

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
        with self.lock:
            self.asked += 1
            if self.asked >= 2:
                self.two.set()
        try:
            self.waited.append(all(self.waited) and self.two.wait(10))  # (one wait in vain is enough)
            return super().custom_query(query, params)
        finally:
            with self.lock:
                self.asked -= 1


def test_a_fetch_that_reads_no_range_query_sends_the_spend_and_freshness_queries_two_at_a_time() -> None:
    """A fetch with no minute ended since the last read sends no range query (the kept buckets are
    its own), and with ``overlap`` sends its instant queries two at a time on the fetcher's own
    threads: its snapshot is the one of a fetch of one query after the other."""
    client = Paired()
    fetcher = prometheus.Fetcher(client, lookback_minutes=30, scrape_interval=2.0, overlap=True, incremental=True)
    first = fetcher.fetch(NOW)  # (34.5 s into its minute: the ranges, and the instants beside them)
    client.calls.clear()
    client.waited.clear()
    got = fetcher.fetch(NOW)
    assert all(query in DATA["instant"] for query in client.calls)  # no range query
    assert len(client.waited) >= 2 and all(client.waited)
    want = fetch()
    assert (got.spend, got.last_sample, got.unlabelled) == (want.spend, want.last_sample, want.unlabelled)
    assert got.queries == want.queries - len(prometheus.RANGE_FAMILIES) - 1 == len(client.calls)
    assert got.minutes is first.minutes


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_a_failed_query_of_two_at_a_time_is_the_fetchs_prometheus_error_once_both_ended(failing: int) -> None:
    class Refusing(Recorded):
        def __init__(self) -> None:
            super().__init__()
            self.lock, self.running, self.most = threading.Lock(), 0, 0
            self.refuse = False

        def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
            with self.lock:
                self.running += 1
                k = len(self.calls)
                self.calls.append(query)
            try:
                if self.refuse and k == failing:
                    raise RuntimeError("HTTP Status Code 422 (execution error)")
                threading.Event().wait(0.05)  # (a slow answer: the refused query ends before it)
                return DATA["instant"][query]
            finally:
                with self.lock:
                    self.running -= 1

    client = Refusing()
    fetcher = prometheus.Fetcher(client, lookback_minutes=30, scrape_interval=2.0, overlap=True, incremental=True)
    fetcher.fetch(NOW)
    client.calls.clear()
    client.refuse = True
    with pytest.raises(errors.PrometheusError, match="422"):
        fetcher.fetch(NOW)
    assert client.running == 0  # no query of the failed fetch still running


@pytest.mark.parametrize("failing", ["instant", "range"])
def test_with_overlap_a_failed_query_of_either_thread_is_the_fetchs_prometheus_error(failing: str) -> None:
    class Refusing(Recorded):
        def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
            if failing == "instant":
                raise RuntimeError("HTTP Status Code 422 (execution error)")
            return super().custom_query(query, params)

        def custom_query_range(self, query: str, start_time: Any, end_time: Any, step: str,
                               params: dict[str, Any] | None = None) -> Any:
            if failing == "range":
                raise RuntimeError("HTTP Status Code 422 (execution error)")
            return super().custom_query_range(query, start_time, end_time, step, params)

    fetcher = prometheus.Fetcher(Refusing(), lookback_minutes=30, scrape_interval=2.0, overlap=True)
    with pytest.raises(errors.PrometheusError, match="422"):
        fetcher.fetch(NOW)
