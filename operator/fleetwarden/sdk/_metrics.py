"""The Prometheus metrics an agent exports (names, types and labels as in docs/design.md).

One :class:`MetricStore` per prometheus-client registry, shared by every Tracker on that
registry. It is a custom collector: the hot path adds floats to a list cached per label
tuple under one lock (no per-sample lock, no label validation per call), and the scrape
turns the lists into metric families. Labels are only agent, namespace, workflow, step,
model, tool, outcome and status; never a task id (the open-task gauges are per agent: the count,
and the largest and the oldest running task's tokens and age).
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import registry as prom_registry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fleetwarden.core import metricnames as names

COST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0)
TOKEN_BUCKETS = (100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0, 250000.0,
                 500000.0, 1000000.0, 2500000.0)

# Counters: name -> (help, label names). The order of the label names is the order of the
# key tuples below.
LLM_LABELS = ("agent", "namespace", "workflow", "step", "model")
LLM_COUNTERS = (  # index in the per-labels list -> metric
    (names.LLM_COST_USD, "USD spent on model calls (priced by the SDK's price table)."),
    (names.LLM_INPUT_TOKENS, "Input tokens of model calls, not counting cache reads and writes."),
    (names.LLM_OUTPUT_TOKENS, "Output tokens of model calls, not counting reasoning tokens."),
    (names.LLM_CACHE_READ_TOKENS, "Input tokens read from the provider's prompt cache."),
    (names.LLM_CACHE_WRITE_TOKENS, "Input tokens written to the provider's prompt cache."),
    (names.LLM_REASONING_TOKENS, "Reasoning (thinking) tokens of model calls."),
)
TOOL_LABELS = ("agent", "namespace", "workflow", "step", "tool", "status")
TOOL_COST_LABELS = ("agent", "namespace", "workflow", "tool")
WORKFLOW_LABELS = ("agent", "namespace", "workflow")
TASK_LABELS = ("agent", "namespace", "workflow", "status")
OUTCOME_LABELS = ("agent", "namespace", "workflow", "outcome")
GUARDRAIL_LABELS = ("agent", "namespace", "workflow", "tool", "status")
MODEL_INFO_LABELS = ("agent", "namespace", "model")

GUARDRAIL_STATUSES = ("allowed", "token_cap_exceeded", "rate_limit_exceeded", "tool_not_allowed",
                      "approval_required", "approved", "denied", "halted")
# A policy in DryRun or Warn blocks nothing: a decision that would have blocked is counted as
# its status with this prefix (``would_rate_limit_exceeded``...): four more bounded values.
WOULD = "would_"
WOULD_STATUSES = tuple(WOULD + s for s in ("token_cap_exceeded", "rate_limit_exceeded", "tool_not_allowed",
                                          "approval_required"))

METRIC_NAMES = (
    names.LLM_CALLS, *(name for name, _ in LLM_COUNTERS),
    names.TOOL_CALLS, names.TOOL_COST_USD,
    names.HUMAN_MINUTES, names.HUMAN_COST_USD,
    names.TASKS, names.OUTCOMES, names.OUTCOME_VALUE_USD,
    names.TASK_COST_USD, names.TASK_TOKENS,
    names.GUARDRAIL_DECISIONS, names.AGENT_MODEL_INFO,
    names.OPEN_TASKS, names.LARGEST_RUNNING_TASK_TOKENS, names.LARGEST_RUNNING_TASK_AGE_SECONDS,
    names.OLDEST_RUNNING_TASK_TOKENS, names.OLDEST_RUNNING_TASK_AGE_SECONDS,
)

# Open tasks (per agent: labels agent and namespace only; never a task id). A task is open from
# its start to its end, and counted no more after TASK_IDLE_SECONDS without a record (a task
# cut off without an end); it is *running* while it recorded something in the last
# TASK_RUNNING_SECONDS. The largest running task (by tokens) and the oldest running one are the
# runaway-loop detector's per-task signals (docs/metrics.md; replay derives the same from events).
OPEN_TASK_LABELS = ("agent", "namespace")
TASK_IDLE_SECONDS = 3600.0
TASK_RUNNING_SECONDS = 300.0


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class MetricStore:
    """Every fleetwarden metric of one registry. All methods are thread-safe; the per-call
    ones take ``lock`` once. Callers on the hot path may hold ``lock`` and update the lists
    returned by the ``*_cell`` methods directly (that is what the Tracker does)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # LLM: labels -> [calls_ok, calls_error, cost, input, output, cache_read, cache_write, reasoning]
        self.llm: dict[tuple[str, ...], list[float]] = {}
        self.tool_calls: dict[tuple[str, ...], list[float]] = {}  # TOOL_LABELS -> [calls]
        self.tool_cost: dict[tuple[str, ...], list[float]] = {}  # TOOL_COST_LABELS -> [usd]
        self.human: dict[tuple[str, ...], list[float]] = {}  # WORKFLOW_LABELS -> [minutes, usd]
        self.tasks: dict[tuple[str, ...], list[float]] = {}  # TASK_LABELS -> [count]
        self.outcomes: dict[tuple[str, ...], list[float]] = {}  # OUTCOME_LABELS -> [count, value]
        self.task_cost: dict[tuple[str, ...], _Histogram] = {}  # WORKFLOW_LABELS
        self.task_tokens: dict[tuple[str, ...], _Histogram] = {}
        self.guardrails: dict[tuple[str, ...], list[float]] = {}  # GUARDRAIL_LABELS -> [count]
        self.models: dict[tuple[str, str], str] = {}  # (agent, namespace) -> model
        # (agent, namespace) -> (its clock, its open tasks: id(task) -> [tokens, started, last record, records])
        self.open_tasks: dict[tuple[str, str], tuple[Callable[[], float], dict[int, list[float]]]] = {}

    # ---------------------------------------------------------------- cells (call with lock held)

    def llm_cell(self, key: tuple[str, ...]) -> list[float]:
        cell = self.llm.get(key)
        if cell is None:
            cell = self.llm[key] = [0.0] * 8
        return cell

    def cell(self, family: dict[tuple[str, ...], list[float]], key: tuple[str, ...], size: int = 1) -> list[float]:
        cell = family.get(key)
        if cell is None:
            cell = family[key] = [0.0] * size
        return cell

    def observe_task(self, key: tuple[str, ...], cost: float, tokens: int) -> None:
        hist = self.task_cost.get(key)
        if hist is None:
            hist = self.task_cost[key] = _Histogram(COST_BUCKETS)
            self.task_tokens[key] = _Histogram(TOKEN_BUCKETS)
        hist.observe(cost)
        self.task_tokens[key].observe(float(tokens))

    def task_cell(self, agent: str, namespace: str, clock: Callable[[], float], key: int,
                  now: float) -> list[float]:
        """The open-task cell ``[tokens, started, last record, records]`` of a task that starts (call
        with lock held); ``started`` moves to its first record (as replay counts a task's age)."""
        entry = self.open_tasks.get((agent, namespace))
        if entry is None:
            entry = self.open_tasks[(agent, namespace)] = (clock, {})
        cell = entry[1][key] = [0.0, now, now, 0.0]
        return cell

    def end_task(self, agent: str, namespace: str, key: int) -> None:
        """The task ended: no longer open (call with lock held)."""
        entry = self.open_tasks.get((agent, namespace))
        if entry is not None:
            entry[1].pop(key, None)

    # ---------------------------------------------------------------- convenience (take the lock)

    def count_guardrail(self, agent: str, namespace: str, workflow: str, tool: str, status: str) -> None:
        with self.lock:
            self.cell(self.guardrails, (agent, namespace, workflow, tool, status))[0] += 1

    def set_model(self, agent: str, namespace: str, model: str) -> None:
        with self.lock:
            self.models[(agent, namespace)] = model

    # ---------------------------------------------------------------- the scrape

    def describe(self) -> Iterator[Any]:
        return iter(())  # metric families appear as data arrives; nothing to check up front

    def collect(self) -> Iterator[Any]:
        with self.lock:
            llm = {k: list(v) for k, v in self.llm.items()}
            simple = {name: {k: list(v) for k, v in getattr(self, name).items()}
                      for name in ("tool_calls", "tool_cost", "human", "tasks", "outcomes", "guardrails")}
            hists = {name: {k: (h.buckets(), h.sum) for k, h in getattr(self, name).items()}
                     for name in ("task_cost", "task_tokens")}
            models = dict(self.models)
            open_tasks = {key: _open_task_readings(clock, tasks) for key, (clock, tasks) in self.open_tasks.items()}

        calls = CounterMetricFamily(names.LLM_CALLS, "Model calls.", labels=(*LLM_LABELS, "status"))
        per_kind = [CounterMetricFamily(name, doc, labels=LLM_LABELS) for name, doc in LLM_COUNTERS]
        for key, v in llm.items():
            calls.add_metric((*key, "ok"), v[0])
            if v[1]:
                calls.add_metric((*key, "error"), v[1])
            for i, family in enumerate(per_kind):
                family.add_metric(key, v[2 + i])
        yield calls
        yield from per_kind

        yield _counter(names.TOOL_CALLS, "Tool calls by status (ok/error).", TOOL_LABELS,
                       simple["tool_calls"], 0)
        yield _counter(names.TOOL_COST_USD, "USD spent on tool calls.", TOOL_COST_LABELS,
                       simple["tool_cost"], 0)
        yield _counter(names.HUMAN_MINUTES, "Minutes of human-in-the-loop time.", WORKFLOW_LABELS,
                       simple["human"], 0)
        yield _counter(names.HUMAN_COST_USD, "USD of human-in-the-loop time.", WORKFLOW_LABELS,
                       simple["human"], 1)
        yield _counter(names.TASKS, "Tasks ended, by status (completed/failed/abandoned).",
                       TASK_LABELS, simple["tasks"], 0)
        yield _counter(names.OUTCOMES, "Business outcomes of tasks.", OUTCOME_LABELS,
                       simple["outcomes"], 0)
        yield _counter(names.OUTCOME_VALUE_USD, "USD value of outcomes, when the agent states it.",
                       OUTCOME_LABELS, simple["outcomes"], 1)
        for name, doc, data in (
                (names.TASK_COST_USD, "USD per task (model + tool + human), observed when a task ends.",
                 hists["task_cost"]),
                (names.TASK_TOKENS, "Tokens per task (all kinds), observed when a task ends.",
                 hists["task_tokens"])):
            histogram = HistogramMetricFamily(name, doc, labels=WORKFLOW_LABELS)
            for key, (buckets, total) in data.items():
                histogram.add_metric(key, buckets, total)
            yield histogram
        yield _counter(names.GUARDRAIL_DECISIONS, "Guardrail decisions in the agent, by status.",
                       GUARDRAIL_LABELS, simple["guardrails"], 0)
        info = GaugeMetricFamily(names.AGENT_MODEL_INFO, "The model the agent runs (value 1).",
                                 labels=MODEL_INFO_LABELS)
        for (agent, namespace), model in models.items():
            info.add_metric((agent, namespace, model), 1.0)
        yield info
        yield from _open_task_families(open_tasks)


def _open_task_readings(clock: Callable[[], float], tasks: dict[int, list[float]]) -> tuple[float, ...]:
    """(open, largest running tokens, its age, oldest running tokens, its age); forgets idle tasks
    (call with the lock held)."""
    now = clock()
    for key in [k for k, cell in tasks.items() if now - cell[2] > TASK_IDLE_SECONDS]:
        del tasks[key]
    running = [cell for cell in tasks.values() if now - cell[2] <= TASK_RUNNING_SECONDS]
    if not running:
        return (float(len(tasks)), 0.0, 0.0, 0.0, 0.0)
    largest = max(running, key=lambda c: (c[0], -c[1]))
    oldest = min(running, key=lambda c: (c[1], -c[0]))
    return (float(len(tasks)), largest[0], max(0.0, now - largest[1]), oldest[0], max(0.0, now - oldest[1]))


def _open_task_families(readings: dict[tuple[str, str], tuple[float, ...]]) -> Iterator[Any]:
    docs = (
        (names.OPEN_TASKS, "Tasks started and not ended (nor idle for an hour)."),
        (names.LARGEST_RUNNING_TASK_TOKENS,
         "Tokens so far of the largest running task (one with a record in the last 5 minutes); 0 when none."),
        (names.LARGEST_RUNNING_TASK_AGE_SECONDS, "Seconds since that task's first record."),
        (names.OLDEST_RUNNING_TASK_TOKENS, "Tokens so far of the oldest running task; 0 when none."),
        (names.OLDEST_RUNNING_TASK_AGE_SECONDS, "Seconds since that task's first record."),
    )
    for i, (name, doc) in enumerate(docs):
        family = GaugeMetricFamily(name, doc, labels=OPEN_TASK_LABELS)
        for key, values in readings.items():
            family.add_metric(key, values[i])
        yield family


def _counter(name: str, doc: str, labels: tuple[str, ...], data: dict[tuple[str, ...], list[float]],
             index: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, values in data.items():
        family.add_metric(key, values[index])
    return family


_stores: weakref.WeakKeyDictionary[Any, MetricStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def store_for(registry: Any | None) -> MetricStore:
    """The one MetricStore of ``registry`` (default: prometheus-client's global registry),
    registering it on first use."""
    registry = prom_registry.REGISTRY if registry is None else registry
    with _stores_lock:
        store = _stores.get(registry)
        if store is None:
            store = _stores[registry] = MetricStore()
            registry.register(store)
        return store


def start_metrics_server(port: int, addr: str = "127.0.0.1", registry: Any | None = None) -> Any:
    """Serve ``/metrics`` of ``registry`` on ``addr:port`` in a daemon thread. Returns the
    server (``server.shutdown()`` stops it); ``port=0`` picks a free port
    (``server.server_port``)."""
    from prometheus_client import exposition

    reg = prom_registry.REGISTRY if registry is None else registry
    server, _thread = exposition.start_http_server(port, addr=addr, registry=reg)
    return server
