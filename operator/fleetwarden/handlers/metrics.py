"""The operator's own metrics (``docs/design.md``), served on ``FLEETWARDEN_METRICS_PORT``."""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float

from fleetwarden.core import decision, spec
from fleetwarden.core import metricnames as names

REGISTRY = pc.CollectorRegistry()


_float: Callable[[float], str] = _untyped_float  # the text format's float (1.0, +Inf, NaN)


def _escape(value: str) -> str:
    """A label value as the text format writes it (prometheus_client's escaping of label values)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


class Rendered(Collector):
    """A gauge family with a series per budget or agent, kept as its exposition lines.

    ``prometheus_client`` renders every sample at every scrape (building each sample, sorting
    and escaping its labels, formatting its value): at 10,000 budgets the seven series a budget
    are 70,000 lines, 1.4 s of a core per scrape on an idle machine, under the GIL the
    evaluations need. Here a series' line is rendered when its value is set (an evaluation
    sets them only when they changed), and a scrape joins the kept lines (:func:`serve`). The
    lines are those ``prometheus_client`` writes (``tests/unit/operator/test_metrics_rendered.py``
    compares them), and :meth:`collect` serves everything else that reads a registry
    (``REGISTRY.get_sample_value``).

    Thread-safe without a lock: a budget's series are set by one evaluation at a time (the
    runtime's per-budget lock), and a scrape copies a dict's entries in one C call, which holds
    the GIL throughout (``list(d.values())``), so it never sees a dict change size while it
    reads. (A lock taken at every set, by 16 evaluation threads, was some 5% of the operator's
    interpreter at 10,000 budgets: docs/operator.md, "The fetch in a process of its own".)"""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str], registry: Any) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        order = sorted(range(len(self.labelnames)), key=lambda i: self.labelnames[i])  # the text format sorts
        self._order = tuple(order)
        self._values: dict[tuple[str, ...], float] = {}
        self._lines: dict[tuple[str, ...], str] = {}
        help_text = documentation.replace("\\", r"\\").replace("\n", r"\n")
        self.header = f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"
        registry.register(self)

    def set(self, labels: tuple[str, ...], value: float) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(labels)} label values for {self.labelnames}")
        value = float(value)
        if self._values.get(labels) == value:
            return
        pairs = ",".join(f'{self.labelnames[i]}="{_escape(labels[i])}"' for i in self._order)
        self._values[labels] = value
        self._lines[labels] = f"{self.name}{{{pairs}}} {_float(value)}\n"

    def labels(self, *labels: str) -> _Child:
        """``family.labels(...).set(v)``, as with a ``prometheus_client`` gauge."""
        return _Child(self, tuple(labels))

    def remove(self, *labels: str) -> None:
        """Drop a series (KeyError when there is none)."""
        del self._values[labels], self._lines[labels]

    def render(self) -> str:
        return self.header + "".join(list(self._lines.values()))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        items = list(self._values.items())
        for labels, value in items:
            family.add_metric(list(labels), value)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)


class _Child:
    __slots__ = ("family", "labels")

    def __init__(self, family: Rendered, labels: tuple[str, ...]) -> None:
        self.family, self.labels = family, labels

    def set(self, value: float) -> None:
        self.family.set(self.labels, value)


BUDGET_SPEND = Rendered(names.BUDGET_SPEND_USD, "Spend of a budget over a window, USD.",
                        ["budget", "namespace", "window"], registry=REGISTRY)
BUDGET_LIMIT = Rendered(names.BUDGET_LIMIT_USD, "A budget's cap over a window, USD.",
                        ["budget", "namespace", "window"], registry=REGISTRY)
KILL_SWITCH = Rendered(names.BUDGET_KILL_SWITCH_ENGAGED, "1 while a budget's kill switch is engaged.",
                       ["budget", "namespace"], registry=REGISTRY)
OWNER_INFO = Rendered(names.AGENT_OWNER_INFO, "The budget and owner of each agent (always 1).",
                      ["agent", "namespace", "budget", "team", "project", "cost_center"], registry=REGISTRY)
_RENDERED = (BUDGET_SPEND, BUDGET_LIMIT, KILL_SWITCH, OWNER_INFO)
FINDINGS = pc.Counter(names.FINDINGS, "Findings reported for the first time.",
                      ["namespace", "kind", "action"], registry=REGISTRY)
EVALUATION_SECONDS = pc.Histogram(names.EVALUATION_SECONDS, "Time to evaluate one AgentBudget.",
                                  registry=REGISTRY,
                                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROMETHEUS_QUERIES = pc.Counter(names.OPERATOR_PROMETHEUS_QUERIES,
                                "PromQL queries sent (a fixed number per cycle, whatever the fleet size).",
                                registry=REGISTRY)
PROMETHEUS_FETCHES = pc.Counter(names.OPERATOR_PROMETHEUS_FETCHES,
                                "Fleet-wide Prometheus fetches (one per cycle), by result.", ["result"],
                                registry=REGISTRY)
PROMETHEUS_BRIDGED = pc.Counter("fleetwarden_operator_prometheus_bridged_total",
                                "Failed fleet-wide fetches bridged by the last good snapshot (--prometheus-grace).",
                                registry=REGISTRY)
PROMETHEUS_FAILING = pc.Gauge("fleetwarden_operator_prometheus_failing_seconds",
                              "Seconds since the first of the failed fetches in a row (0: the last one was good).",
                              registry=REGISTRY)
PROMETHEUS_FETCH_SECONDS = pc.Histogram(
    names.OPERATOR_PROMETHEUS_FETCH_SECONDS,
    "Time a fleet-wide Prometheus fetch took, its queries and the reading of their answers (failed ones too).",
    registry=REGISTRY, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60))
PROMETHEUS_QUERY_SECONDS = pc.Histogram(
    names.OPERATOR_PROMETHEUS_QUERY_SECONDS,
    "Time one query of a fleet-wide fetch took to answer (asked, received, decoded; failed ones too), by query.",
    ["query"], registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UNIT_ECONOMICS_TARGET = pc.Gauge(
    names.UNIT_ECONOMICS_TARGET_USD,
    "A budget's unit-economics targets (spec.unitEconomics), USD per outcome: kind=target (targetCostUSD) "
    "or human_baseline (humanBaselineUSD).",
    ["namespace", "budget", "workflow", "outcome", "kind"], registry=REGISTRY)
ACTIONS = pc.Counter(names.OPERATOR_ACTIONS, "Actions applied, by kind.", ["action"],
                     registry=REGISTRY)
HELD_ACTIONS = pc.Gauge("fleetwarden_budget_held_actions",
                        "Actions a budget in DryRun or Warn mode would take now but holds back, by action.",
                        ["budget", "namespace", "mode", "action"], registry=REGISTRY)
ACTION_FAILURES = pc.Counter("fleetwarden_operator_action_failures_total",
                             "Actions that did not take effect, by kind and HTTP status (or reason).",
                             ["action", "status"], registry=REGISTRY)
CYCLE_SECONDS = pc.Histogram("fleetwarden_operator_cycle_seconds",
                             "Time to evaluate every AgentBudget once (FLEETWARDEN_EVALUATION=fleet).",
                             registry=REGISTRY, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 60, 120))
CYCLE_SECONDS_BY_DATA = pc.Summary(
    "fleetwarden_operator_cycle_by_data_seconds",
    "Time to evaluate every AgentBudget once (fleet mode), by what the cycle's data brought: first (the "
    "first pass), new_minute (the data's last complete minute is later than after the cycle before), "
    "same_minute (nothing new), unknown (no data: Prometheus failed).", ["data"], registry=REGISTRY)
CYCLE_EARLY_SECONDS = pc.Gauge("fleetwarden_operator_cycle_early_seconds",
                              "How much less than one interval after the last cycle's start the next starts "
                              "(fleet mode with a pace: FLEETWARDEN_PACE), so no budget waits longer than the "
                              "interval.", registry=REGISTRY)
LAST_CYCLE_SECONDS = pc.Gauge("fleetwarden_operator_last_cycle_seconds",
                              "Duration of the last fleet-wide evaluation cycle.", registry=REGISTRY)
OLDEST_EVALUATION = pc.Gauge("fleetwarden_operator_oldest_evaluation_seconds",
                             "Seconds since the budget evaluated longest ago was last evaluated.",
                             registry=REGISTRY)
FIGURES_OVERDUE = pc.Gauge("fleetwarden_operator_figures_overdue_seconds",
                            "A large fleet (figure writes at their turn): how long the budget whose figures have "
                            "waited longest past their turn has waited, since the first evaluation that held them "
                            "(the evaluations ran behind, or the fleet's figure writes were at their rate); 0: none "
                            "waits.", registry=REGISTRY)
FIGURES_HELD = pc.Gauge("fleetwarden_operator_figures_overdue_budgets",
                        "How many budgets' figures wait past their turn (..._figures_overdue_seconds).",
                        registry=REGISTRY)
INDEXED_OBJECTS = pc.Gauge("fleetwarden_operator_indexed_objects",
                           "Objects in the operator's own indexes, by kind (FLEETWARDEN_EVALUATION=fleet).",
                           ["kind"], registry=REGISTRY)
INDEXES_COMPLETE = pc.Gauge("fleetwarden_operator_indexes_complete",
                            "1 once every watched object has been listed and indexed (FLEETWARDEN_EVALUATION="
                            "fleet): no budget is evaluated before.", registry=REGISTRY)
UNPRICED_TOKENS = pc.Gauge(names.UNPRICED_TOKENS,
                           "Tokens of a budget's agents (spec.source OpenTelemetry) over its longest limit window "
                           "that no price covers, by model: their cost is not in spend.",
                           ["budget", "namespace", "model"], registry=REGISTRY)


class _Folds(Collector):
    """The detector folds of the runtime's kept states (``core/warmfold.Folds``), by what each cost:
    ``anchor`` (a whole window folded from an empty state at its anchor: the costly one),
    ``restored`` (a kept state restored and stepped on), ``unchanged`` (nothing new: the kept
    findings, no state restored), ``ahead`` (folded ahead from the next anchor, late in a minute).
    Absent before a runtime sets ``source``."""

    def __init__(self) -> None:
        self.source: Any = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        folds = self.source
        if folds is None:
            return
        family = CounterMetricFamily("fleetwarden_operator_detector_folds",
                                     "Detector folds of the agents' windows, by what each cost: anchor (a whole "
                                     "window from its anchor), restored (a kept state stepped on), unchanged (nothing "
                                     "new, no state restored), ahead (folded ahead of an anchor's move).",
                                     labels=["how"])
        for how, count in (("anchor", folds.cold), ("restored", folds.warm - folds.unchanged),
                           ("unchanged", folds.unchanged), ("ahead", folds.prepared)):
            family.add_metric([how], count)
        yield family


FOLDS = _Folds()
REGISTRY.register(FOLDS)

_owners: dict[tuple[str, str], set[tuple[str, str, str, str, str, str]]] = {}
_targets: dict[tuple[str, str], set[tuple[str, str, str, str, str]]] = {}


class _Others:
    """The registry without the :class:`Rendered` families (what ``prometheus_client`` renders)."""

    def collect(self) -> Iterator[Any]:
        for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - the registry's collectors
            if not isinstance(collector, Rendered):
                yield from collector.collect()


def exposition() -> bytes:
    """The whole /metrics page (text format 0.0.4): the other metrics as ``prometheus_client``
    renders them, then the kept lines of the per-budget families."""
    return pc.generate_latest(_Others()) + "".join(f.render() for f in _RENDERED).encode()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """/metrics (any path), gzipped when the scraper accepts it."""
    body = exposition()
    headers = [("Content-Type", pc.CONTENT_TYPE_LATEST)]
    if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
        body = gzip.compress(body, compresslevel=1)
        headers.append(("Content-Encoding", "gzip"))
    start_response("200 OK", headers)
    return [body]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class' name
        pass


def serve(port: int) -> None:
    if port > 0:
        server = make_server("", port, app, ThreadingWSGIServer, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


_recorded: dict[tuple[str, str], tuple[Any, ...]] = {}  # (namespace, budget) -> what its other gauges say
_spent: dict[tuple[str, str], tuple[float | None, ...]] = {}  # (namespace, budget) -> its spend gauges, by window
_held: dict[tuple[str, str, str], str] = {}  # (namespace, budget, action) -> the mode of its held-actions gauge
_WINDOWS = tuple(spec.Window)


def record(budget: spec.AgentBudget, verdict: decision.Decision, agents: Iterable[decision.AgentDeployment]) -> None:
    """A budget's gauges after an evaluation. Only what moved is set: a live budget's hour spend
    moves at almost every fetch (its window slides past a sample), the rest (its caps, kill
    switch, owners, targets) seldom, and at 10,000 budgets setting every series each evaluation
    was about a tenth of the operator's time (docs/operator.md, Scale)."""
    name, namespace = budget.metadata.name, budget.metadata.namespace
    status = verdict.status
    spent = status.spend
    engaged = bool(status.kill_switch is not None and status.kill_switch.engaged)
    for f in verdict.new_findings:
        FINDINGS.labels(f.namespace, f.kind, f.action).inc()
    mode = budget.spec.enforcement.value
    held: dict[str, int] = {}
    for action in verdict.held:
        held[type(action).__name__] = held.get(type(action).__name__, 0) + 1
    for kind in ("ScaleToZero", "SetModel"):
        old_mode = _held.get((namespace, name, kind))
        if old_mode is not None and old_mode != mode:
            _remove(HELD_ACTIONS, name, namespace, old_mode, kind)
        if held.get(kind) or old_mode is not None:
            HELD_ACTIONS.labels(name, namespace, mode, kind).set(held.get(kind, 0))
            _held[(namespace, name, kind)] = mode
    _record_unpriced(name, namespace, verdict.status)
    key = (namespace, name)
    values = tuple(None if spent is None else getattr(spent, w.value) for w in _WINDOWS)
    before = _spent.get(key)
    if values != before:
        for i, window in enumerate(_WINDOWS):
            value = values[i]
            if before is not None and before[i] == value:
                continue
            if value is not None:
                BUDGET_SPEND.set((name, namespace, window.value), value)
            else:
                _remove(BUDGET_SPEND, name, namespace, window.value)
        _spent[key] = values
    agent_names = tuple(sorted(a.name for a in agents))
    seen = (budget.spec, agent_names, engaged)
    if _recorded.get(key) == seen:
        return  # the other gauges already say this
    _recorded[key] = seen
    for window in _WINDOWS:
        limit = budget.spec.limit_for(window)
        if limit is not None:
            BUDGET_LIMIT.labels(name, namespace, window.value).set(limit.amount_usd)
        else:
            _remove(BUDGET_LIMIT, name, namespace, window.value)
    KILL_SWITCH.labels(name, namespace).set(1 if engaged else 0)
    owner = budget.spec.owner
    rows = {(a, namespace, name, owner.team or "", owner.project or "", owner.cost_center or "")
            for a in agent_names}
    for gone in _owners.get(key, set()) - rows:
        _remove(OWNER_INFO, *gone)
    for row in rows:
        OWNER_INFO.labels(*row).set(1)
    _owners[key] = rows
    record_targets(budget)


_unpriced: dict[tuple[str, str], set[str]] = {}  # (namespace, budget) -> models in the gauge


def _record_unpriced(name: str, namespace: str, status: Any) -> None:
    """``fleetwarden_unpriced_tokens`` from ``status.source.unpricedModels`` (a model priced again leaves)."""
    source = status.source
    if source is None:
        return  # metrics unknown this cycle (or the SDK's source): the gauge keeps what it said
    rows = {m.model: m.tokens or 0.0 for m in source.unpriced_models or () if m.model}
    for gone in _unpriced.get((namespace, name), set()) - set(rows):
        _remove(UNPRICED_TOKENS, name, namespace, gone)
    for model, tokens in rows.items():
        UNPRICED_TOKENS.labels(name, namespace, model).set(tokens)
    _unpriced[(namespace, name)] = set(rows)


def record_targets(budget: spec.AgentBudget) -> None:
    """``fleetwarden_unit_economics_target_usd`` from the budget's ``spec.unitEconomics``."""
    name, namespace = budget.metadata.name, budget.metadata.namespace
    values: dict[tuple[str, str, str, str, str], float] = {}
    for entry in budget.spec.unit_economics:
        for kind, value in (("target", entry.target_cost_usd), ("human_baseline", entry.human_baseline_usd)):
            if value is not None:
                values[(namespace, name, entry.workflow or "", entry.outcome, kind)] = value
    for gone in _targets.get((namespace, name), set()) - set(values):
        _remove(UNIT_ECONOMICS_TARGET, *gone)
    for row, value in values.items():
        UNIT_ECONOMICS_TARGET.labels(*row).set(value)
    _targets[(namespace, name)] = set(values)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted budget."""
    _recorded.pop((namespace, name), None)
    _spent.pop((namespace, name), None)
    for window in spec.Window:
        _remove(BUDGET_SPEND, name, namespace, window.value)
        _remove(BUDGET_LIMIT, name, namespace, window.value)
    _remove(KILL_SWITCH, name, namespace)
    for kind in ("ScaleToZero", "SetModel"):
        mode = _held.pop((namespace, name, kind), None)
        if mode is not None:
            _remove(HELD_ACTIONS, name, namespace, mode, kind)
    for row in _owners.pop((namespace, name), set()):
        _remove(OWNER_INFO, *row)
    for model in _unpriced.pop((namespace, name), set()):
        _remove(UNPRICED_TOKENS, name, namespace, model)
    for target in _targets.pop((namespace, name), set()):
        _remove(UNIT_ECONOMICS_TARGET, *target)


def _remove(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
