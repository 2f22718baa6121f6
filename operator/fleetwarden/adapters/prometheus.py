"""Prometheus: one batched fetch per cycle for the whole fleet, cleaned once, at the edge.

A cycle sends a FIXED number of queries whatever the number of agents or budgets:

- one range query per metric family over the lookback window, ``sum by (namespace, agent,
  ...) (increase(metric[1m]))`` with step 60 s, aligned to whole minutes, which become the
  per-agent, per-minute buckets of :mod:`fleetwarden.core.series` (plus, per minute, the
  outcomes by name and the SDK's guardrail findings by status and tool; the guardrail
  decisions ride on the tool-call query, so they cost no query of their own);
- one range query for the SDK's open-task gauges (open tasks, the largest and the oldest
  running task's tokens and age: the per-task signals of the runaway-loop detector);
- one instant query per spend window (rolling hour, day, 30 days and the calendar hour,
  day and month), spend per agent: inference + tools + human time, what
  ``AgentMinute.cost_usd`` and replay count;
- one instant query for the time of each agent's newest sample (staleness).

Cleaning happens here and only here: string samples become floats, NaN and duplicate
timestamps are dropped, a minute with no sample in any family is a gap (no bucket at
all, never a bucket of zeros), and an agent that should be running but has no sample
newer than ``stale_after`` seconds is unknown. A failed or refused query raises
:class:`fleetwarden.errors.PrometheusError` with the underlying error as ``__cause__``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from fleetwarden import errors
from fleetwarden.core import decision, series, spec

Key = tuple[str, str]  # (namespace, agent)

# What a budget's spend counts: the same three parts as ``series.AgentMinute.cost_usd``.
SPEND_METRICS = ("fleetwarden_llm_cost_usd_total", "fleetwarden_tool_cost_usd_total",
                 "fleetwarden_human_cost_usd_total")
TOKEN_METRICS = tuple(f"fleetwarden_llm_{kind}_tokens_total"
                      for kind in ("input", "output", "cache_read", "cache_write", "reasoning"))


def increase_of(metrics: Sequence[str], window: str) -> str:
    """``increase(m[window])`` of several metrics as one vector: each is told apart by a label,
    so dropping the metric name (increase() does) leaves no duplicate series."""
    if len(metrics) == 1:
        return f"increase({metrics[0]}[{window}])"
    return " or ".join(f'label_replace(increase({m}[{window}]), "fw_metric", "{m}", "", "")' for m in metrics)


# name -> (metrics, extra grouping labels). Each is one range query per cycle.
RANGE_FAMILIES: dict[str, tuple[str | tuple[str, ...], tuple[str, ...]]] = {
    "inference_cost": ("fleetwarden_llm_cost_usd_total", ()),
    "llm_calls": ("fleetwarden_llm_calls_total", ("model", "workflow")),
    "tokens": (TOKEN_METRICS, ()),
    "output_tokens": ("fleetwarden_llm_output_tokens_total", ()),
    "tool_calls": ("fleetwarden_tool_calls_total", ("tool",)),
    "tool_cost": ("fleetwarden_tool_cost_usd_total", ("tool",)),
    "human_cost": ("fleetwarden_human_cost_usd_total", ()),
    "tasks": ("fleetwarden_tasks_total", ("status",)),
    "outcomes": ("fleetwarden_outcomes_total", ("outcome",)),
}

# The SDK's guardrail decisions that are findings (fleetwarden_guardrail_decisions_total by
# status); "allowed", "approved", "denied" and "halted" are not.
GUARDRAIL_METRIC = "fleetwarden_guardrail_decisions_total"
GUARDRAIL_STATUSES = ("token_cap_exceeded", "rate_limit_exceeded", "tool_not_allowed", "approval_required")
GUARDRAIL_MARK = "fw_family"  # the label that tells the guardrail series apart in the tool-call answer
GUARDRAIL_PART = (f'label_replace(sum by (namespace, agent, tool, status) (increase({GUARDRAIL_METRIC}'
                  f'{{status=~"{"|".join(GUARDRAIL_STATUSES)}"}}[1m])), "{GUARDRAIL_MARK}", "guardrails", "", "")')
# Families whose range query also carries another vector (``or``: their label sets differ).
RIDERS = {"tool_calls": GUARDRAIL_PART}

# Metrics a running agent keeps fresh; each one's sample times, told apart by a label so
# that dropping the metric name (timestamp() does) leaves no duplicate series.
FRESHNESS_METRICS = ("fleetwarden_llm_calls_total", "fleetwarden_llm_cost_usd_total", "fleetwarden_tool_calls_total",
                     "fleetwarden_tasks_total", "fleetwarden_agent_model_info")
FRESHNESS_QUERY = "max by (namespace, agent) (" + " or ".join(
    f'label_replace(timestamp({m}{{agent!=""}}), "fw_metric", "{m}", "", "")' for m in FRESHNESS_METRICS) + ")"


# The SDK's open-task gauges (docs/metrics.md), one range query per cycle: per agent *and replica*
# (instance), so that a replica's largest task keeps its own age; combined per agent in
# build_minutes (open tasks summed; the largest and the oldest running task across replicas).
OPEN_TASK_GAUGES = {
    "open": "fleetwarden_open_tasks",
    "largest_tokens": "fleetwarden_largest_running_task_tokens",
    "largest_age": "fleetwarden_largest_running_task_age_seconds",
    "oldest_tokens": "fleetwarden_oldest_running_task_tokens",
    "oldest_age": "fleetwarden_oldest_running_task_age_seconds",
}
OPEN_TASKS_QUERY = " or ".join(
    f'label_replace(max by (namespace, agent, instance) ({metric}), "fw_metric", "{key}", "", "")'
    for key, metric in OPEN_TASK_GAUGES.items())


def range_query(metrics: str | Sequence[str], extra: Sequence[str], rider: str | None = None) -> str:
    labels = ", ".join(("namespace", "agent", *extra))
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    query = f"sum by ({labels}) ({increase_of(names, '1m')})"
    return query if rider is None else f"{query} or {rider}"


def family_query(family: str) -> str:
    """The range query of one of RANGE_FAMILIES (with its rider, if any)."""
    selector, extra = RANGE_FAMILIES[family]
    return range_query(selector, extra, RIDERS.get(family))


# How far before a window's start a counter's last sample may lie and still be its value at the
# start: a scrape that failed at that instant (a staleness marker) must not make an old series
# look newly born.
START_LOOKBACK = "1h"


def window_increase(metric: str, window: str) -> str:
    """How much ``metric`` grew over ``window`` ending now, per series, WITHOUT increase()'s
    extrapolation (which reads a series a few scrapes old at up to twice its growth, enough to
    trip a kill switch on a new pod):

    - a series with a sample in the hour before the window and no reset in it: now minus that
      sample, exact;
    - a series born in the window (no such sample) and present now: its value now, counted from
      zero (increase() would lose its first sample);
    - anything else (a reset, a series that ended in the window): increase().

    The middle case assumes Prometheus keeps the longest window plus an hour (docs/operator.md)."""
    at_start = f"last_over_time({metric}[{START_LOOKBACK}] offset {window})"
    exact = f"(({metric} - {at_start}) >= 0) unless (resets({metric}[{window}]) > 0)"
    born = f"({metric} unless {at_start})"
    return f"({exact} or {born} or increase({metric}[{window}]))"


def spend_query(seconds: int) -> str:
    """Spend per agent over the last ``seconds``: the SPEND_METRICS' growth, summed."""
    window = f"{max(seconds, 60)}s"
    parts = [f'label_replace({window_increase(m, window)}, "fw_metric", "{m}", "", "")' for m in SPEND_METRICS]
    return f"sum by (namespace, agent) ({' or '.join(parts)})"


def window_start(window: spec.Window, calendar: bool, now: float) -> float:
    """Start of the window ending at ``now``: rolling, or the calendar hour/day/month (UTC)."""
    if not calendar:
        return now - spec.WINDOW_SECONDS[window]
    at = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc)
    if window == spec.Window.hour:
        at = at.replace(minute=0, second=0, microsecond=0)
    elif window == spec.Window.day:
        at = at.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        at = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return at.timestamp()


class QueryClient(Protocol):
    """What we use of ``prometheus_api_client.PrometheusConnect`` (a fake in unit tests)."""

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def custom_query_range(self, query: str, start_time: dt.datetime, end_time: dt.datetime, step: str,
                           params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


class StaleMetricsError(errors.PrometheusError):
    """Prometheus answered, but data a running agent should produce is missing or stale."""


DEFAULT_RETENTION_SECONDS = 15 * 86400  # Prometheus's own, when neither time nor size is set
_DURATION_UNITS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0,
                   "ms": 0.001}
_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Seconds of a Prometheus duration ("15d", "1y", "2w3d", "1h30m", "500ms"); None if it is not one."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * _DURATION_UNITS[u] for n, u in parts)


# What the spend query needs Prometheus to keep: the longest window (a calendar month, up to
# 31 days) plus START_LOOKBACK.
RETENTION_NEEDED_SECONDS = 31 * 86400 + (parse_duration(START_LOOKBACK) or 0.0)


def retention_from_flags(flags: Mapping[str, str]) -> float | None:
    """Time-based retention in seconds from Prometheus's /api/v1/status/flags (None: size-based only,
    or not said)."""
    time_flag = parse_duration(str(flags.get("storage.tsdb.retention.time", "0s")) or "0s")
    legacy = parse_duration(str(flags.get("storage.tsdb.retention", "0s")) or "0s")
    size = str(flags.get("storage.tsdb.retention.size", "0B") or "0B")
    for value in (time_flag, legacy):
        if value:
            return value
    if size in ("0", "0B"):
        return float(DEFAULT_RETENTION_SECONDS)
    return None


def retention_warning(url: str, timeout: float = 5.0) -> str | None:
    """A warning when Prometheus at ``url`` keeps less than the spend query needs (None: enough,
    or not known). Raises PrometheusError when the flags cannot be read."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/status/flags", timeout=timeout) as resp:  # noqa: S310
            flags = json.load(resp).get("data") or {}
    except Exception as exc:  # URL, HTTP and JSON errors alike
        raise errors.PrometheusError(f"Prometheus flags not read: {exc}") from exc
    kept = retention_from_flags(flags)
    if kept is None or kept >= RETENTION_NEEDED_SECONDS:
        return None
    return (f"Prometheus at {url} has a {kept / 86400:g}-day retention; month budgets need "
            f"{RETENTION_NEEDED_SECONDS / 86400:.2f} (--storage.tsdb.retention.time=32d): until then a month "
            f"window's series older than the retention count whole (docs/operator.md, How spend is read)")


def connect(url: str, timeout: float = 10.0) -> QueryClient:
    """A ``PrometheusConnect`` with a short timeout and a single retry."""
    from prometheus_api_client import PrometheusConnect
    from urllib3.util import retry

    return PrometheusConnect(url=url, disable_ssl=True, timeout=timeout,  # type: ignore[no-any-return]
                             retry=retry.Retry(total=1, backoff_factor=0.2, status_forcelist=[502, 503, 504]))


# ------------------------------------------------------------------ cleaning


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def clean_points(values: Iterable[Sequence[Any]]) -> dict[int, float]:
    """``[[ts, "1.5"], ...]`` -> {int ts: float}, NaN/garbage and duplicate timestamps dropped."""
    points: dict[int, float] = {}
    for pair in values:
        if len(pair) != 2:
            continue
        ts, number = _float(pair[0]), _float(pair[1])
        if ts is None or number is None:
            continue
        points.setdefault(int(round(ts)), max(number, 0.0))  # first wins; increase() is never < 0
    return points


def _key(metric: Mapping[str, str]) -> Key | None:
    agent = metric.get("agent")
    if not agent:
        return None
    return (metric.get("namespace") or "default", agent)


# ------------------------------------------------------------------ the snapshot


# minute -> name -> count in that minute (only minutes and names with a count above 0)
PerMinute = dict[int, dict[str, float]]
# minute -> (guardrail status, tool) -> decisions in that minute
GuardrailMinutes = dict[int, dict[tuple[str, str], float]]


@dataclasses.dataclass(frozen=True)
class BudgetData:
    """What one budget sees of a snapshot: its agents' minutes and its spend per window."""

    minutes: dict[str, list[series.AgentMinute]]
    spend: dict[spec.Window, float | None]
    spend_by_agent: dict[str, float]  # rolling hour, per agent
    lookback_start: float  # the first minute the buckets cover
    outcomes: dict[str, PerMinute] = dataclasses.field(default_factory=dict)  # agent -> outcomes by name
    guardrails: dict[str, GuardrailMinutes] = dataclasses.field(default_factory=dict)  # agent -> decisions


@dataclasses.dataclass(frozen=True)
class FleetSnapshot:
    """Everything Prometheus said in one cycle, per agent, already cleaned."""

    fetched_at: float
    start: int  # first minute bucket (Unix seconds)
    end: int  # end of the last complete minute (exclusive)
    minutes: dict[Key, list[series.AgentMinute]]
    spend: dict[Key, dict[tuple[spec.Window, bool], float]]
    last_sample: dict[Key, float]
    stale_after: float
    queries: int
    outcomes: dict[Key, PerMinute] = dataclasses.field(default_factory=dict)
    guardrails: dict[Key, GuardrailMinutes] = dataclasses.field(default_factory=dict)

    def agent_minutes(self, namespace: str, agent: str) -> list[series.AgentMinute]:
        return list(self.minutes.get((namespace, agent), ()))

    def agent_spend(self, namespace: str, agent: str, window: spec.Window, calendar: bool = False) -> float:
        """Spend of one agent; an agent with no series spent nothing (Prometheus answered)."""
        return self.spend.get((namespace, agent), {}).get((window, calendar), 0.0)

    def staleness(self, agent: decision.AgentDeployment) -> str | None:
        """Why ``agent``'s data is unknown, or None when it is fresh or not expected."""
        if agent.replicas <= 0:
            return None  # not running: silence is expected
        last = self.last_sample.get((agent.namespace, agent.name))
        if last is None:
            return f"no samples at all for running agent {agent.namespace}/{agent.name}"
        age = self.fetched_at - last
        if age > self.stale_after:
            return (f"newest sample of agent {agent.namespace}/{agent.name} is {age:.0f}s old "
                    f"(stale after {self.stale_after:.0f}s)")
        return None

    def for_budget(self, budget: spec.AgentBudget, agents: Sequence[decision.AgentDeployment]) -> BudgetData:
        """The budget's view: spend summed over its selected ``agents``.

        Raises :class:`StaleMetricsError` when a running agent's data is stale or missing."""
        reasons = [r for r in (self.staleness(a) for a in agents) if r is not None]
        if reasons:
            raise StaleMetricsError("; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)"
                                                               if len(reasons) > 3 else ""))
        calendar = {lim.window: lim.calendar for lim in budget.spec.limits}
        spend: dict[spec.Window, float | None] = {}
        for window in spec.Window:
            cal = calendar.get(window, False)
            spend[window] = sum(self.agent_spend(a.namespace, a.name, window, cal) for a in agents)
        return BudgetData(
            minutes={a.name: self.agent_minutes(a.namespace, a.name) for a in agents},
            spend=spend,
            spend_by_agent={a.name: self.agent_spend(a.namespace, a.name, spec.Window.hour) for a in agents},
            lookback_start=float(self.start),
            outcomes={a.name: self.outcomes[(a.namespace, a.name)] for a in agents
                      if (a.namespace, a.name) in self.outcomes},
            guardrails={a.name: self.guardrails[(a.namespace, a.name)] for a in agents
                        if (a.namespace, a.name) in self.guardrails},
        )


def _mode(counts: Mapping[str, float]) -> str | None:
    best = [(v, k) for k, v in counts.items() if v > 0]
    return max(best)[1] if best else None


# (open tasks, largest running task's tokens, its age, oldest running task's tokens, its age) of a minute
TaskReading = tuple[int, int, float, int, float]


def build_task_readings(items: Iterable[Mapping[str, Any]], start: int, end: int
                        ) -> dict[Key, dict[int, TaskReading]]:
    """The open-task gauges per agent and minute (the reading at T is the state at the end of the
    minute [T-60, T)), replicas combined: open tasks summed, the largest and the oldest running
    task across them. A minute lacking any of the five gauges of a replica is not known for it."""
    per: dict[tuple[Key, str], dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for item in items:
        metric = item.get("metric", {})
        key, which = _key(metric), metric.get("fw_metric")
        if key is None or which not in OPEN_TASK_GAUGES:
            continue
        for ts, value in clean_points(item.get("values") or ()).items():
            minute = series.minute_of(ts - series.MINUTE)
            if start <= minute < end:
                per[(key, str(metric.get("instance", "")))][minute][which] = value
    out: dict[Key, dict[int, TaskReading]] = defaultdict(dict)
    for (key, _), by_minute in per.items():
        for minute, g in by_minute.items():
            if len(g) < len(OPEN_TASK_GAUGES):
                continue
            mine = (int(g["open"]), int(g["largest_tokens"]), g["largest_age"], int(g["oldest_tokens"]),
                    g["oldest_age"])
            seen = out[key].get(minute)
            if seen is None:
                out[key][minute] = mine
                continue
            largest = mine[1:3] if mine[1] > seen[1] else seen[1:3]
            oldest = mine[3:5] if mine[4] > seen[4] else seen[3:5]
            out[key][minute] = (seen[0] + mine[0], *largest, *oldest)
    return dict(out)


def build_minutes(results: Mapping[str, list[dict[str, Any]]], start: int, end: int,
                  tasks: Mapping[Key, Mapping[int, TaskReading]] | None = None) -> dict[Key, list[series.AgentMinute]]:
    """Per-agent minute buckets from the range results (sample at T covers [T-60, T)), with the
    open-task readings of ``tasks`` where the agent exports them (else unknown: None).

    A bucket exists for a minute where at least one family has a sample for the agent;
    minutes with none are gaps (scrape failures, or the agent not exporting yet)."""
    fields: dict[Key, dict[int, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for family, items in results.items():
        _, extra = RANGE_FAMILIES[family]
        for item in items:
            key = _key(item.get("metric", {}))
            if key is None or GUARDRAIL_MARK in item["metric"]:
                continue
            label = item["metric"].get(extra[0], "") if extra else None
            label2 = item["metric"].get(extra[1], "") if len(extra) > 1 else None
            for ts, value in clean_points(item.get("values") or ()).items():
                minute = series.minute_of(ts - series.MINUTE)
                if minute < start or minute >= end:
                    continue
                bucket = fields[key][minute]
                if label is None:
                    bucket[family] = bucket.get(family, 0.0) + value
                else:
                    sub = bucket.setdefault(family, {})
                    sub[label] = sub.get(label, 0.0) + value
                    if label2 is not None:
                        sub2 = bucket.setdefault(family + ":2", {})
                        sub2[label2] = sub2.get(label2, 0.0) + value
    out: dict[Key, list[series.AgentMinute]] = {}
    for (namespace, agent), by_minute in fields.items():
        buckets = []
        readings = (tasks or {}).get((namespace, agent), {})
        for minute in sorted(by_minute):
            b = by_minute[minute]
            reading = readings.get(minute)
            ended = b.get("tasks", {})
            tool_calls = {k: v for k, v in b.get("tool_calls", {}).items() if k}
            tool_costs = {k: v for k, v in b.get("tool_cost", {}).items() if k}
            buckets.append(series.AgentMinute(
                agent=agent,
                namespace=namespace,
                minute=minute,
                inference_cost_usd=b.get("inference_cost", 0.0),
                tool_cost_usd=sum(tool_costs.values()),
                human_cost_usd=b.get("human_cost", 0.0),
                tokens=int(round(b.get("tokens", 0.0))),
                output_tokens=int(round(b.get("output_tokens", 0.0))),
                llm_calls=int(round(sum(b.get("llm_calls", {}).values()))),
                tasks_completed=int(round(ended.get("completed", 0.0))),
                tasks_failed=int(round(ended.get("failed", 0.0))),
                tasks_abandoned=int(round(ended.get("abandoned", 0.0))),
                outcomes=sum(b.get("outcomes", {}).values()),
                tool_calls=tool_calls,
                tool_costs=tool_costs,
                model=_mode(b.get("llm_calls", {})),
                workflow=_mode({k: v for k, v in b.get("llm_calls:2", {}).items() if k}),
                open_tasks=reading[0] if reading is not None else None,
                largest_task_tokens=reading[1] if reading is not None else None,
                largest_task_age=reading[2] if reading is not None else None,
                oldest_task_tokens=reading[3] if reading is not None else None,
                oldest_task_age=reading[4] if reading is not None else None,
            ))
        out[(namespace, agent)] = buckets
    return out


def _per_minute(items: Iterable[Mapping[str, Any]], labels: Sequence[str], start: int, end: int
                ) -> dict[Key, dict[int, dict[tuple[str, ...], float]]]:
    """Range results per agent and minute, by the values of ``labels`` (counts above 0 only)."""
    out: dict[Key, dict[int, dict[tuple[str, ...], float]]] = {}
    for item in items:
        metric = item.get("metric", {})
        key = _key(metric)
        if key is None:
            continue
        name = tuple(str(metric.get(label, "")) for label in labels)
        for ts, value in clean_points(item.get("values") or ()).items():
            minute = series.minute_of(ts - series.MINUTE)
            if value <= 0 or minute < start or minute >= end:
                continue
            counts = out.setdefault(key, {}).setdefault(minute, {})
            counts[name] = counts.get(name, 0.0) + value
    return out


def build_outcomes(results: Mapping[str, list[dict[str, Any]]], start: int, end: int) -> dict[Key, PerMinute]:
    """Outcomes by name, per agent and minute (an outcome without a name is not named)."""
    named = _per_minute(results.get("outcomes") or (), ("outcome",), start, end)
    return {key: {minute: {name: n for (name,), n in counts.items() if name}
                  for minute, counts in by_minute.items()}
            for key, by_minute in named.items()}


def build_guardrails(results: Mapping[str, list[dict[str, Any]]], start: int, end: int
                     ) -> dict[Key, GuardrailMinutes]:
    """The SDK's guardrail findings (GUARDRAIL_STATUSES) per agent and minute, by (status, tool)."""
    items = [i for i in results.get("tool_calls") or () if GUARDRAIL_MARK in (i.get("metric") or {})]
    named = _per_minute(items, ("status", "tool"), start, end)
    return {key: {minute: {(status, tool): n for (status, tool), n in counts.items()
                           if status in GUARDRAIL_STATUSES}
                  for minute, counts in by_minute.items()}
            for key, by_minute in named.items()}


def _instant_by_agent(items: Iterable[Mapping[str, Any]], combine: Callable[[float, float], float] = max
                      ) -> dict[Key, float]:
    """Instant-vector results per agent (duplicates combined: sum for spend, max for times)."""
    out: dict[Key, float] = {}
    for item in items:
        key = _key(item.get("metric", {}))
        value: Sequence[Any] = item.get("value") or ()
        number = _float(value[1]) if len(value) == 2 else None
        if key is not None and number is not None:
            number = max(number, 0.0)
            out[key] = combine(out[key], number) if key in out else number
    return out


# ------------------------------------------------------------------ fetching


class Fetcher:
    """Runs the fixed set of queries and returns a :class:`FleetSnapshot`."""

    def __init__(self, client: QueryClient, *, lookback_minutes: int = 90, scrape_interval: float = 15.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.lookback_minutes = lookback_minutes
        self.stale_after = 3 * scrape_interval
        self.clock = clock

    def _run(self, what: str, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        try:
            result = fn()
        except errors.PrometheusError:
            raise
        except Exception as exc:  # requests' and the client's errors: connection, HTTP status, JSON
            raise errors.PrometheusError(f"Prometheus query failed ({what}): {exc}") from exc
        if not isinstance(result, list):
            raise errors.PrometheusError(f"Prometheus query {what}: unexpected answer {type(result).__name__}")
        return result

    def fetch(self, now: float | None = None) -> FleetSnapshot:
        now = self.clock() if now is None else now
        end = series.minute_of(now)  # last complete minute ends here
        start = end - self.lookback_minutes * series.MINUTE
        start_time = dt.datetime.fromtimestamp(start + series.MINUTE, tz=dt.timezone.utc)
        end_time = dt.datetime.fromtimestamp(end, tz=dt.timezone.utc)
        queries = 0
        ranges: dict[str, list[dict[str, Any]]] = {}
        for family in RANGE_FAMILIES:
            query = family_query(family)
            ranges[family] = self._run(family, lambda q=query: self.client.custom_query_range(  # type: ignore[misc]
                q, start_time=start_time, end_time=end_time, step="60"))
            queries += 1
        open_tasks = self._run("open tasks", lambda: self.client.custom_query_range(
            OPEN_TASKS_QUERY, start_time=start_time, end_time=end_time, step="60"))
        queries += 1
        spend: dict[Key, dict[tuple[spec.Window, bool], float]] = defaultdict(dict)
        for window in spec.Window:
            for calendar in (False, True):
                seconds = int(round(now - window_start(window, calendar, now)))
                query = spend_query(seconds)
                items = self._run(f"spend {window.value}{' calendar' if calendar else ''}",
                                  lambda q=query: self.client.custom_query(q, params={"time": now}))  # type: ignore[misc]
                queries += 1
                for key, value in _instant_by_agent(items, lambda a, b: a + b).items():
                    spend[key][(window, calendar)] = value
        fresh = self._run("freshness", lambda: self.client.custom_query(FRESHNESS_QUERY, params={"time": now}))
        queries += 1
        return FleetSnapshot(
            fetched_at=now,
            start=start,
            end=end,
            minutes=build_minutes(ranges, start, end, build_task_readings(open_tasks, start, end)),
            spend=dict(spend),
            last_sample=_instant_by_agent(fresh),
            stale_after=self.stale_after,
            queries=queries,
            outcomes=build_outcomes(ranges, start, end),
            guardrails=build_guardrails(ranges, start, end),
        )


QUERIES_PER_CYCLE = len(RANGE_FAMILIES) + 1 + 2 * len(spec.Window) + 1
