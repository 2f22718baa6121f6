"""Prometheus: one batched fetch per cycle for the whole fleet (or a shard's namespaces:
:func:`namespace_scope`), cleaned once, at the edge.

A cycle sends a fixed number of queries whatever the number of agents or budgets (with the
spend ledger, a bounded one: see the spend queries below):

- one range query per metric family over the lookback window, ``sum by (namespace, agent,
  ...) (minute_growth(metric))`` with step 60 s, aligned to whole minutes, which become the
  per-agent, per-minute buckets of :mod:`fleetwarden.core.series` (plus, per minute, the
  outcomes by name and the SDK's guardrail findings by status and tool; the guardrail
  decisions ride on the tool-call query, so they cost no query of their own);
- one range query for the SDK's open-task gauges (open tasks, the largest and the oldest
  running task's tokens and age: the per-task signals of the runaway-loop detector);
- one instant query per spend window (rolling hour, day, 30 days and the calendar hour,
  day and month), spend per agent: inference + tools + human time, what
  ``AgentMinute.cost_usd`` and replay count. With the spend ledger (the operator's fetcher),
  a window longer than an hour is read as pieces that meet end to end, its whole past hours
  kept between fetches (:func:`spend_pieces`): four or five queries of at most an hour and
  two minutes each per fetch, three more of at most 23 hours once an hour and a day's once a
  day, where six read their whole window;
- one instant query for the time of each agent's newest sample (staleness).

Cleaning happens here and only here: string samples become floats, NaN and duplicate
timestamps are dropped, a minute with no sample in any family is a gap (no bucket at
all, never a bucket of zeros), and an agent that should be running but has no sample
newer than ``stale_after`` seconds is unknown. Series without an ``agent`` or
``namespace`` label belong to no budget: they are dropped, counted per query in
``FleetSnapshot.unlabelled`` and logged.

Every answer is checked whole before a number is read (:func:`answer_result`,
:func:`result_problem`). A query that fails, hangs past the timeout, or answers with an
error page, Prometheus' error, a partial answer (``warnings``), another result type or an
instant sample that is not a number raises :class:`fleetwarden.errors.PrometheusError`
(:class:`BadAnswerError` for an answer that came but cannot be used) whose message names
the query and the cause, with the underlying error as ``__cause__``: the cycle's metrics
are unknown, never 0.
"""

from __future__ import annotations

import array
import concurrent.futures as cf
import dataclasses
import datetime as dt
import json
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from fleetwarden import errors
from fleetwarden.adapters import sources as source_queries
from fleetwarden.adapters.promql import START_LOOKBACK, minute_growth
from fleetwarden.core import decision, guardrails, pricing, series, spec, timefmt, windows
from fleetwarden.core import events as core_events
from fleetwarden.core import metricnames as names
from fleetwarden.core import policies as core_policies
from fleetwarden.core import sources as core_sources

Key = tuple[str, str]  # (namespace, agent)

log = logging.getLogger(__name__)

# What a budget's spend counts: the same three parts as ``series.AgentMinute.cost_usd``.
SPEND_METRICS = names.SPEND
TOKEN_METRICS = names.LLM_TOKENS


# ------------------------------------------------------------------ the shard's namespaces

_NAMESPACE_GLOB = re.compile(r"[a-z0-9*?][-a-z0-9*?]{0,62}")


def namespace_scope(namespaces: Sequence[str]) -> str:
    """The label matcher that keeps every query to a shard's namespaces: ``namespace=~"a|b"``
    ("" for none: the whole fleet). Each entry is a namespace name or a glob of kopf's
    ``--namespace`` (``*`` any characters, ``?`` one): ``team-*`` becomes ``team-.*``. PromQL
    anchors a regex at both ends, as kopf anchors a glob. ValueError on anything else (an
    exclusion ``!x`` or a comma list, which kopf reads with its own precedence rules)."""
    regexes = []
    for name in namespaces:
        if not _NAMESPACE_GLOB.fullmatch(name):
            raise ValueError(f"{name!r} is not a namespace name or a glob of one (a-z, 0-9, -, * and ?)")
        regexes.append(name.replace("*", ".*").replace("?", "."))
    return f'namespace=~"{"|".join(sorted(set(regexes)))}"' if regexes else ""


def scoped(metric: str, scope: str = "", *matchers: str) -> str:
    """``metric{matchers, scope}``; ``metric`` alone when there are none."""
    inner = ", ".join(m for m in (*matchers, scope) if m)
    return f"{metric}{{{inner}}}" if inner else metric


def increase_of(metrics: Sequence[str], scope: str = "") -> str:
    """:func:`minute_growth` of several metrics (within ``scope``) as one vector: each is told
    apart by a label, so dropping the metric name (the subtraction does) leaves no duplicate
    series."""
    if len(metrics) == 1:
        return minute_growth(scoped(metrics[0], scope))
    return " or ".join(f'label_replace({minute_growth(scoped(m, scope))}, "fw_metric", "{m}", "", "")'
                       for m in metrics)


# name -> (metrics, extra grouping labels). Each is one range query per cycle.
RANGE_FAMILIES: dict[str, tuple[str | tuple[str, ...], tuple[str, ...]]] = {
    "inference_cost": (names.LLM_COST_USD, ()),
    "llm_calls": (names.LLM_CALLS, ("model", "workflow")),
    "tokens": (TOKEN_METRICS, ()),
    "output_tokens": (names.LLM_OUTPUT_TOKENS, ()),
    "tool_calls": (names.TOOL_CALLS, ("tool",)),
    "tool_cost": (names.TOOL_COST_USD, ("tool",)),
    "human_cost": (names.HUMAN_COST_USD, ()),
    "tasks": (names.TASKS, ("status",)),
    "outcomes": (names.OUTCOMES, ("outcome",)),
}

# The SDK's guardrail decisions that are findings (fleetwarden_guardrail_decisions_total by
# status), the would_* ones of a CostPolicy in DryRun or Warn included; "allowed", "approved",
# "denied" and "halted" are not.
GUARDRAIL_METRIC = names.GUARDRAIL_DECISIONS
GUARDRAIL_STATUSES = guardrails.FINDING_STATUSES
GUARDRAIL_MARK = "fw_family"  # the label that tells the guardrail series apart in the tool-call answer


def guardrail_part(scope: str = "") -> str:
    statuses = f'status=~"{"|".join(GUARDRAIL_STATUSES)}"'
    return (f'label_replace(sum by (namespace, agent, tool, status) '
            f'({minute_growth(scoped(GUARDRAIL_METRIC, scope, statuses))}), "{GUARDRAIL_MARK}", "guardrails", "", "")')


GUARDRAIL_PART = guardrail_part()
# Families whose range query also carries another vector (``or``: their label sets differ).
RIDERS: dict[str, Callable[[str], str]] = {"tool_calls": guardrail_part}

# Metrics a running agent keeps fresh; each one's sample times, told apart by a label so
# that dropping the metric name (timestamp() does) leaves no duplicate series.
FRESHNESS_METRICS = (names.LLM_CALLS, names.LLM_COST_USD, names.TOOL_CALLS, names.TASKS, names.AGENT_MODEL_INFO)


def freshness_query(scope: str = "") -> str:
    has_agent = 'agent!=""'
    return "max by (namespace, agent) (" + " or ".join(
        f'label_replace(timestamp({scoped(m, scope, has_agent)}), "fw_metric", "{m}", "", "")'
        for m in FRESHNESS_METRICS) + ")"


FRESHNESS_QUERY = freshness_query()


# The SDK's open-task gauges (docs/metrics.md), one range query per cycle: per agent *and replica*
# (instance), so that a replica's largest task keeps its own age; combined per agent in
# build_minutes (open tasks summed; the largest and the oldest running task across replicas).
OPEN_TASK_GAUGES = {
    "open": names.OPEN_TASKS,
    "largest_tokens": names.LARGEST_RUNNING_TASK_TOKENS,
    "largest_age": names.LARGEST_RUNNING_TASK_AGE_SECONDS,
    "oldest_tokens": names.OLDEST_RUNNING_TASK_TOKENS,
    "oldest_age": names.OLDEST_RUNNING_TASK_AGE_SECONDS,
}


def open_tasks_query(scope: str = "") -> str:
    return " or ".join(
        f'label_replace(max by (namespace, agent, instance) ({scoped(metric, scope)}), "fw_metric", "{key}", "", "")'
        for key, metric in OPEN_TASK_GAUGES.items())


OPEN_TASKS_QUERY = open_tasks_query()


def range_query(metrics: str | Sequence[str], extra: Sequence[str], rider: str | None = None, scope: str = "") -> str:
    labels = ", ".join(("namespace", "agent", *extra))
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    query = f"sum by ({labels}) ({increase_of(names, scope)})"
    return query if rider is None else f"{query} or {rider}"


def family_query(family: str, scope: str = "") -> str:
    """The range query of one of RANGE_FAMILIES (with its rider, if any), kept to ``scope``."""
    selector, extra = RANGE_FAMILIES[family]
    rider = RIDERS.get(family)
    return range_query(selector, extra, None if rider is None else rider(scope), scope)


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


def _spend_expr(window: str, scope: str) -> str:
    parts = [f'label_replace({window_increase(scoped(m, scope), window)}, "fw_metric", "{m}", "", "")'
             for m in SPEND_METRICS]
    return f"sum by (namespace, agent) ({' or '.join(parts)})"


def spend_query(seconds: int, scope: str = "") -> str:
    """Spend per agent over the last ``seconds``: the SPEND_METRICS' growth, summed."""
    return _spend_expr(f"{max(seconds, 60)}s", scope)


def spend_piece_query(ms: int, scope: str = "") -> str:
    """Spend per agent over exactly the last ``ms`` milliseconds (a piece of a window: no floor
    of a minute, which would make the pieces of one window overlap)."""
    return _spend_expr(f"{ms}ms", scope)


HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclasses.dataclass(frozen=True)
class SpendPiece:
    """One instant spend query of a window read in pieces (:func:`spend_pieces`): the growth over
    the ``ms`` milliseconds that end at ``end_ms``. ``whole``: the window in one query, as a fetcher
    without the ledger reads it (``spend_query`` of ``seconds`` at ``now``)."""

    name: str  # the query's name, in errors and in the per-query histogram
    end_ms: int
    ms: int
    kept: bool = False  # whole past hours or days: the answer is kept while a window holds them
    sign: float = 1.0  # -1: a bit before the window's start that its other pieces hold, taken off
    whole: bool = False
    seconds: int = 0  # of a whole window

    def query(self, scope: str) -> str:
        return spend_query(self.seconds, scope) if self.whole else spend_piece_query(self.ms, scope)

    @property
    def at(self) -> str:
        """The evaluation time, exactly (whole milliseconds, written as decimals)."""
        return f"{self.end_ms // 1000}.{self.end_ms % 1000:03d}"


def spend_pieces(window: spec.Window, calendar: bool, now: float, settle: float) -> tuple[SpendPiece, ...]:
    """How the spend ledger reads one window ending at ``now``: a window that holds no whole hour
    ending ``settle`` seconds ago or earlier in one piece; any other as pieces that meet end to
    end, each read exactly (:func:`window_increase`: its end's value less its start's, so the
    pieces add up to the window):

    - ``start``: from the window's start to the next whole hour (none when it starts on one, as a
      calendar day or month does). In the settle after an hour turned, the hours below still
      start at the hour before a rolling window's start, and this piece is the bit from there to
      the start, taken off (``sign`` -1);
    - the whole hours from there to the last whole hour ``settle`` seconds ago. What Prometheus
      holds of them no longer changes, so each answer is kept while a window holds it. When they
      hold a midnight, they are read as ``hours`` up to the first midnight (read again once an
      hour, as they move), ``spend days``, whole UTC days (each read once, shared by the
      windows) and ``spend today``, from the last midnight on (shared, once an hour); else as
      ``hours`` alone;
    - ``latest``: from there to ``now``, the same piece for every window (and the calendar hour's
      once it is older than the settle), read once per fetch.

    A month window is thus read at every fetch as two pieces of at most an hour and a settle; once
    an hour as two of at most 23 hours (its start's and today's); and each day once."""
    now_ms = round(now * 1000)
    begin = windows.window_start(window, now, calendar=calendar)
    start_ms = round(begin * 1000)
    settle_ms = round(settle * 1000)
    settled = (now_ms - settle_ms) // HOUR_MS * HOUR_MS
    # the hours' start moves when their end does (a settle after the hour turned), so that they are
    # read once an hour: until then a rolling window's start may lie up to a settle after it, and
    # that bit is taken off
    first_hour = (start_ms - settle_ms) // HOUR_MS * HOUR_MS + HOUR_MS
    name = f"spend {window.value}{' calendar' if calendar else ''}"
    if first_hour >= settled:
        # a calendar hour older than the settle is the piece the others share: one name, one query
        return (SpendPiece("spend latest" if start_ms == settled else name, now_ms, now_ms - start_ms),)
    pieces = []
    if first_hour > start_ms:
        pieces.append(SpendPiece(f"{name} start", first_hour, first_hour - start_ms))
    elif first_hour < start_ms:
        pieces.append(SpendPiece(f"{name} start", start_ms, start_ms - first_hour, sign=-1.0))
    first_day = -(-first_hour // DAY_MS) * DAY_MS
    last_day = settled // DAY_MS * DAY_MS
    if first_day <= last_day:  # the hours hold a midnight: whole days, and the hours either side
        if first_day > first_hour:
            pieces.append(SpendPiece(f"{name} hours", first_day, first_day - first_hour, kept=True))
        pieces.extend(SpendPiece("spend days", day + DAY_MS, DAY_MS, kept=True)
                      for day in range(first_day, last_day, DAY_MS))
        if settled > last_day:
            pieces.append(SpendPiece("spend today", settled, settled - last_day, kept=True))
    else:
        pieces.append(SpendPiece(f"{name} hours", settled, settled - first_hour, kept=True))
    pieces.append(SpendPiece("spend latest", now_ms, now_ms - settled))
    return tuple(pieces)


class _Amounts:
    """A kept spend piece's answer, compact (a month's days at 10,000 agents: 31 arrays of 80 kB,
    not 31 dicts of 0.5 MB): the agents, one tuple shared by the kept answers over the same
    agents, and their amounts."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: tuple[Key, ...], values: array.array[float]) -> None:
        self.keys = keys
        self.values = values

    def items(self) -> Iterable[tuple[Key, float]]:
        return zip(self.keys, self.values, strict=True)


class QueryClient(Protocol):
    """How the Fetcher queries Prometheus: :class:`HttpClient` (a fake in unit tests). Both return
    ``data.result``: a list of series, each ``{"metric": {...}, "values": [[t, "v"], ...]}`` (range)
    or ``{"metric": {...}, "value": [t, "v"]}`` (instant)."""

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def custom_query_range(self, query: str, start_time: dt.datetime, end_time: dt.datetime, step: str,
                           params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


class StaleMetricsError(errors.PrometheusError):
    """Prometheus answered, but data a running agent should produce is missing or stale."""


DEFAULT_RETENTION_SECONDS = 15 * 86400  # Prometheus's own, when neither time nor size is set
# What the spend query needs Prometheus to keep: the longest window (a calendar month, up to
# 31 days) plus START_LOOKBACK.
RETENTION_NEEDED_SECONDS = 31 * 86400 + (timefmt.parse_duration(START_LOOKBACK) or 0.0)


def retention_from_flags(flags: Mapping[str, str]) -> float | None:
    """Time-based retention in seconds from Prometheus's /api/v1/status/flags (None: size-based only,
    or not said)."""
    time_flag = timefmt.parse_duration(str(flags.get("storage.tsdb.retention.time", "0s")) or "0s")
    legacy = timefmt.parse_duration(str(flags.get("storage.tsdb.retention", "0s")) or "0s")
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


# ------------------------------------------------------------------ the HTTP client


class BadAnswerError(errors.PrometheusError):
    """Prometheus (or a proxy in front of it) answered, but not a complete result of the type
    the query needs: an error page, an error status, a partial answer, another result type."""


def _gist(content_type: str, body: bytes) -> str:
    """What a body that is not Prometheus' JSON is, in a few words (an HTML page's title)."""
    text = body[:4096].decode("utf-8", "replace")
    if "html" in content_type.lower() or text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        words = " ".join((title.group(1) if title else re.sub(r"<[^>]*>", " ", text)).split())
        return f"an HTML page ({words[:80]!r})" if words else "an HTML page"
    if not text.strip():
        return "an empty body"
    kind = content_type.split(";")[0].strip() or "no type"
    return f"a body of {kind} ({' '.join(text.split())[:80]!r})"


def answer_result(status: int, content_type: str, body: bytes, expected: str) -> list[Any]:
    """``data.result`` of one HTTP answer to a query whose result type must be ``expected``
    ("matrix" for a range query, "vector" for an instant one).

    Raises :class:`BadAnswerError` saying why the answer cannot be used: a body that is not
    Prometheus' JSON (an HTML page of a proxy or load balancer, a cut answer); Prometheus'
    own error (``status`` not "success": a bad query, a query timeout, overload); an HTTP
    status other than 200; ``warnings`` or VictoriaMetrics' ``isPartial`` (a partial answer: a
    store or a remote read failed, and a partial sum could under-count spend, so it is no
    answer at all); another
    ``resultType`` (a scalar or a vector where a matrix belongs)."""
    try:
        doc = core_events.loads_json(body)  # orjson when installed: 10,000 series in 10 ms, not 16 ms
    except ValueError:
        raise BadAnswerError(f"HTTP {status} with {_gist(content_type, body)}, not Prometheus' JSON") from None
    if not isinstance(doc, dict):
        raise BadAnswerError(f"HTTP {status} with JSON that is not Prometheus' answer ({type(doc).__name__})")
    if doc.get("status") != "success":
        raise BadAnswerError(f"HTTP {status}: Prometheus error ({doc.get('errorType') or 'no type'}): "
                             f"{str(doc.get('error') or 'no message')[:200]}")
    if status != 200:
        raise BadAnswerError(f"HTTP {status} with a success body")
    if doc.get("isPartial") is True:  # a VictoriaMetrics cluster missing vmstorage nodes says so, not in warnings
        raise BadAnswerError("partial answer: isPartial is true (some storage nodes did not answer); "
                             "a partial sum could under-count spend")
    warnings = doc.get("warnings")
    if warnings:
        listed = [str(w) for w in warnings] if isinstance(warnings, list) else [str(warnings)]
        more = f" (+{len(listed) - 1} more)" if len(listed) > 1 else ""
        raise BadAnswerError(f"partial answer: Prometheus warned {listed[0][:200]!r}{more}; "
                             f"a partial sum could under-count spend")
    data = doc.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    if kind != expected:
        raise BadAnswerError(f"a {kind or 'missing'} result where a {expected} was expected")
    result = data.get("result")  # type: ignore[union-attr]
    if not isinstance(result, list):
        raise BadAnswerError(f"a {expected} result that is not a list ({type(result).__name__})")
    return result


class HttpClient:
    """The :class:`QueryClient` of the operator and the live report: Prometheus' HTTP API through
    a ``prometheus_api_client.PrometheusConnect``, with a timeout per query, one retry of a
    failed connection or a 502/503/504, and no retry of a read that timed out (a hung
    Prometheus costs one timeout, not two).

    ``PrometheusConnect`` holds the connection (its session with the retry policy mounted for
    the URL, headers, auth, proxies and TLS settings). Its ``custom_query`` returns
    ``data.result`` alone, dropping the ``resultType`` and ``warnings`` that say whether the
    answer is whole, so each query goes out as ``custom_query`` sends it, through the same
    session, headers and auth, and the answer is checked as a whole (:func:`answer_result`).
    Failures raise :class:`fleetwarden.errors.PrometheusError` saying what happened in a few words."""

    def __init__(self, url: str, timeout: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        import requests
        from prometheus_api_client import PrometheusConnect
        from urllib3.util import retry

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = False  # as before: in-cluster Prometheus often serves a self-signed certificate
        policy = retry.Retry(total=1, read=False, backoff_factor=0.2, status_forcelist=[502, 503, 504],
                             raise_on_status=False)
        # headers: sent with every query, e.g. a tenant (X-Scope-OrgID of Mimir and Cortex)
        self.connection = PrometheusConnect(self.url, headers=dict(headers or {}) or None, disable_ssl=True,
                                            retry=policy, session=self.session)

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": query, **(params or {})}, "vector")

    def custom_query_range(self, query: str, start_time: dt.datetime, end_time: dt.datetime, step: str,
                           params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": query, "start": round(start_time.timestamp()),
                                                 "end": round(end_time.timestamp()), "step": step, **(params or {})},
                         "matrix")

    def _get(self, path: str, params: dict[str, Any], expected: str) -> list[Any]:
        import requests

        try:
            response = self.session.request("GET", self.connection.url + path, params=params,
                                            headers=self.connection.headers, auth=self.connection.auth,
                                            verify=self.session.verify, timeout=self.timeout)
        except requests.Timeout as exc:
            raise errors.PrometheusError(f"no answer from {self.url} within {self.timeout:g} s (timed out)") from exc
        except requests.RequestException as exc:
            raise errors.PrometheusError(f"{self.url} unreachable: {_root_cause(exc)}") from exc
        return answer_result(response.status_code, response.headers.get("Content-Type", ""), response.content,
                             expected)


def _root_cause(exc: BaseException) -> str:
    """The innermost error under a requests/urllib3 error (``[Errno 111] Connection refused``),
    without the URL and query text the outer ones repeat."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in current.args if isinstance(a, BaseException)), None) or current.__cause__
        if inner is None:
            break
        current = inner
    return str(current)[:200]


def connect(url: str, timeout: float = 10.0, headers: Mapping[str, str] | None = None) -> QueryClient:
    """The client of the Prometheus at ``url`` (:class:`HttpClient`), sending ``headers`` with each query."""
    return HttpClient(url, timeout=timeout, headers=headers)


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
    """(namespace, agent) of a series; None when either label is missing or empty: such a
    series belongs to no budget (it is dropped, and the fetch says how many it dropped)."""
    agent, namespace = metric.get("agent"), metric.get("namespace")
    if not agent or not namespace:
        return None
    return kept_key(namespace, agent)


def kept_key(namespace: str, agent: str) -> Key:
    """The one tuple kept for the agent's key (:data:`_KEYS`), its names shared."""
    key = (series.shared(namespace), series.shared(agent))
    kept = _KEYS.get(key)
    if kept is None:
        if len(_KEYS) >= _MAX_KEYS:  # agents gone meanwhile: start again
            _KEYS.clear()
        kept = _KEYS[key] = key
    return kept


# One tuple per agent for the keys of every dict a fetch fills (its minutes, spend, freshness,
# outcomes...): a decoded answer makes a new one each time, and each snapshot keeps several.
_KEYS: dict[Key, Key] = {}
_MAX_KEYS = 1 << 18


def _answer_kind(item: object) -> str:
    """What an item of a result is: "matrix" (a series), "vector" (a sample), or what else."""
    if not isinstance(item, dict):
        return "scalar or string"  # their result is [time, "value"], not a list of series
    if not isinstance(item.get("metric"), dict):
        return "malformed"
    return "matrix" if isinstance(item.get("values"), list) else "vector" if "value" in item else "malformed"


def result_problem(result: object, expected: str) -> str | None:
    """Why ``result`` is not a list of series of the ``expected`` type, or None.

    A matrix series is ``{"metric": {...}, "values": [...]}``; a vector sample is ``{"metric":
    {...}, "value": [time, "number"]}`` whose number must be one (an instant value read as
    missing would be a spend of 0)."""
    if not isinstance(result, list):
        return f"an answer of type {type(result).__name__} where a {expected} was expected"
    for item in result:
        kind = _answer_kind(item)
        if kind != expected:
            return f"a {kind} answer where a {expected} was expected"
        if expected == "vector":
            value = item["value"]
            if not isinstance(value, list) or len(value) != 2 or _float(value[1]) is None:
                return f"a sample that is not a number for {item['metric'] or '{}'}: {str(value)[:80]}"
    return None


# ------------------------------------------------------------------ the snapshot


# minute -> name -> count in that minute (only minutes and names with a count above 0)
PerMinute = dict[int, dict[str, float]]
# minute -> (guardrail status, tool) -> decisions in that minute
GuardrailMinutes = dict[int, dict[tuple[str, str], float]]


@dataclasses.dataclass(frozen=True)
class BudgetData:
    """What one budget sees of a snapshot: its agents' minutes and its spend per window."""

    minutes: dict[str, Sequence[series.AgentMinute]]
    spend: dict[spec.Window, float | None]
    lookback_start: float  # the first minute the buckets cover
    # the detectors fold from an anchor this many minutes after lookback_start at most (core/warmfold.py)
    anchor_minutes: int = 0
    end: int | None = None  # the end of the last complete minute the buckets cover (exclusive)
    outcomes: dict[str, PerMinute] = dataclasses.field(default_factory=dict)  # agent -> outcomes by name
    guardrails: dict[str, GuardrailMinutes] = dataclasses.field(default_factory=dict)  # agent -> decisions
    source: core_sources.SourceReport | None = None  # a budget whose spec.source is not the SDK


@dataclasses.dataclass(frozen=True)
class FleetSnapshot:
    """Everything Prometheus said in one cycle, per agent, already cleaned."""

    fetched_at: float
    start: int  # first minute bucket (Unix seconds)
    end: int  # end of the last complete minute (exclusive)
    minutes: Mapping[Key, Sequence[series.AgentMinute]]  # the fetcher's: compact runs (series.MinuteRun)
    spend: dict[Key, dict[tuple[spec.Window, bool], float]]
    last_sample: dict[Key, float]
    stale_after: float
    queries: int
    outcomes: dict[Key, PerMinute] = dataclasses.field(default_factory=dict)
    guardrails: dict[Key, GuardrailMinutes] = dataclasses.field(default_factory=dict)
    unlabelled: dict[str, int] = dataclasses.field(default_factory=dict)  # query -> series dropped, no agent/ns
    # the other sources read this cycle (spec.source), and the prices their tokens are priced with
    sources: dict[spec.SourceType, source_queries.SourceData] = dataclasses.field(default_factory=dict)
    prices: pricing.PriceTable | None = None
    anchor_minutes: int = 0  # of the minutes from ``start``, the first ones only the anchored detector fold needs

    def agent_minutes(self, namespace: str, agent: str) -> Sequence[series.AgentMinute]:
        """The agent's minutes: the fetcher's compact run itself (read-only; its minutes are built
        as they are read), or a list of a snapshot made of lists."""
        got = self.minutes.get((namespace, agent), ())
        return got if isinstance(got, series.MinuteRun) else list(got)

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

    def for_budget(self, budget: spec.AgentBudget, agents: Sequence[decision.AgentDeployment],
                   policies: Sequence[spec.CostPolicy] = ()) -> BudgetData:
        """The budget's view: spend summed over its selected ``agents`` (from its ``spec.source``;
        ``policies`` price the tool calls of a source that counts no dollars).

        Raises :class:`StaleMetricsError` when a running agent's data is stale or missing."""
        if budget.spec.source.type is not spec.SourceType.fleetwarden:
            return source_budget(self, budget, agents, policies)
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
            lookback_start=float(self.start),
            anchor_minutes=self.anchor_minutes,
            end=self.end,
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


class MinuteBuilder:
    """The SDK's per-minute buckets of the minutes ``[start, end)``, folded from the range answers
    one answer at a time (:meth:`add`), so that the fetcher holds one decoded answer at once and
    not every family's: a 15-minute answer of 10,000 series decodes to some 35 MB of lists.

    What an answer leaves is kept per agent, family, label and minute (the label: the family's
    grouping label, e.g. a minute's model, or None): a few dicts per agent, not one dict per
    agent and minute with one more per labelled family inside it (the layout before). The sums
    are those of the answers' points, added in the answers' order, as before.
    :meth:`agents` then yields each agent's minutes in order, and forgets the agent."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        # agent -> family (and family + ":2": the second grouping label) -> label -> minute -> sum
        self._fields: dict[Key, dict[str, dict[str | None, dict[int, float]]]] = {}
        self._minutes: dict[int, int] = {}  # one int object per minute for the whole fleet, not one per agent
        self.outcomes: dict[Key, PerMinute] = {}
        self.guardrails: dict[Key, GuardrailMinutes] = {}

    def add(self, family: str, items: Sequence[Mapping[str, Any]]) -> None:
        """Fold the answer of ``family``'s range query (a RANGE_FAMILIES name; read twice for the
        outcome and guardrail families)."""
        _, extra = RANGE_FAMILIES[family]
        start, end, shared_minutes, fields = self.start, self.end, self._minutes, self._fields
        for item in items:
            metric = item.get("metric", {})
            key = _key(metric)
            if key is None or GUARDRAIL_MARK in metric:
                continue
            sums: dict[int, float] | None = None
            sums2: dict[int, float] | None = None
            for ts, value in clean_points(item.get("values") or ()).items():
                minute = series.minute_of(ts - series.MINUTE)
                if minute < start or minute >= end:
                    continue
                if sums is None:  # (an agent, a family or a label with no minute in the span is not kept)
                    label = series.shared(metric.get(extra[0], "")) if extra else None
                    mine = fields.get(key)
                    if mine is None:
                        mine = fields[key] = {}
                    sums = mine.setdefault(family, {}).setdefault(label, {})
                    if len(extra) > 1:
                        label2 = series.shared(metric.get(extra[1], ""))
                        sums2 = mine.setdefault(family + ":2", {}).setdefault(label2, {})
                minute = shared_minutes.setdefault(minute, minute)
                sums[minute] = sums.get(minute, 0.0) + value
                if sums2 is not None:
                    sums2[minute] = sums2.get(minute, 0.0) + value
        if family == "outcomes":
            self.outcomes.update(build_outcomes({family: items}, start, end))
        elif family == "tool_calls":
            self.guardrails.update(build_guardrails({family: items}, start, end))

    def agents(self, tasks: Mapping[Key, Mapping[int, TaskReading]] | None = None
               ) -> Iterator[tuple[Key, Iterator[series.AgentMinute]]]:
        """Each agent's minutes (a minute where at least one family has a sample for the agent;
        minutes with none are gaps: scrape failures, or the agent not exporting yet), with the
        open-task readings of ``tasks`` where the agent exports them (else unknown: None). Each
        agent is forgotten once yielded."""
        fields = self._fields
        while fields:
            key = next(iter(fields))
            yield key, self._minutes_of(key, fields.pop(key), (tasks or {}).get(key, {}))

    @staticmethod
    def _minutes_of(key: Key, fams: dict[str, dict[str | None, dict[int, float]]],
                    readings: Mapping[int, TaskReading]) -> Iterator[series.AgentMinute]:
        namespace, agent = key
        minutes: set[int] = set()
        for by_label in fams.values():
            for sums in by_label.values():
                minutes.update(sums)
        empty: dict[str | None, dict[int, float]] = {}

        def plain(family: str, minute: int) -> float:
            sums = fams.get(family, empty).get(None)
            return sums.get(minute, 0.0) if sums is not None else 0.0

        def named(family: str, minute: int) -> dict[str, float]:
            return {label: sums[minute] for label, sums in fams.get(family, empty).items()
                    if label is not None and minute in sums}

        for minute in sorted(minutes):
            reading = readings.get(minute)
            ended = named("tasks", minute)
            calls = named("llm_calls", minute)
            tool_calls = {k: v for k, v in named("tool_calls", minute).items() if k} or series.NO_TOOLS
            tool_costs = {k: v for k, v in named("tool_cost", minute).items() if k} or series.NO_TOOLS
            yield series.AgentMinute(
                agent=agent,
                namespace=namespace,
                minute=minute,
                inference_cost_usd=plain("inference_cost", minute),
                tool_cost_usd=sum(tool_costs.values()),
                human_cost_usd=plain("human_cost", minute),
                tokens=int(round(plain("tokens", minute))),
                output_tokens=int(round(plain("output_tokens", minute))),
                llm_calls=int(round(sum(calls.values()))),
                tasks_completed=int(round(ended.get("completed", 0.0))),
                tasks_failed=int(round(ended.get("failed", 0.0))),
                tasks_abandoned=int(round(ended.get("abandoned", 0.0))),
                outcomes=sum(named("outcomes", minute).values()),
                tool_calls=tool_calls,
                tool_costs=tool_costs,
                model=_mode(calls),
                workflow=_mode({k: v for k, v in named("llm_calls:2", minute).items() if k}),
                open_tasks=reading[0] if reading is not None else None,
                largest_task_tokens=reading[1] if reading is not None else None,
                largest_task_age=reading[2] if reading is not None else None,
                oldest_task_tokens=reading[3] if reading is not None else None,
                oldest_task_age=reading[4] if reading is not None else None,
            )


def build_minutes(results: Mapping[str, list[dict[str, Any]]], start: int, end: int,
                  tasks: Mapping[Key, Mapping[int, TaskReading]] | None = None) -> dict[Key, list[series.AgentMinute]]:
    """Per-agent minute buckets from the range results (sample at T covers [T-60, T)), with the
    open-task readings of ``tasks`` where the agent exports them (else unknown: None): what
    :class:`MinuteBuilder` gives, as lists.

    A bucket exists for a minute where at least one family has a sample for the agent;
    minutes with none are gaps (scrape failures, or the agent not exporting yet)."""
    builder = MinuteBuilder(start, end)
    for family, items in results.items():
        builder.add(family, items)
    return {key: list(minutes) for key, minutes in builder.agents(tasks)}


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


def build_outcomes(results: Mapping[str, Sequence[Mapping[str, Any]]], start: int, end: int) -> dict[Key, PerMinute]:
    """Outcomes by name, per agent and minute (an outcome without a name is not named)."""
    named = _per_minute(results.get("outcomes") or (), ("outcome",), start, end)
    return {key: {minute: {name: n for (name,), n in counts.items() if name}
                  for minute, counts in by_minute.items()}
            for key, by_minute in named.items()}


def build_guardrails(results: Mapping[str, Sequence[Mapping[str, Any]]], start: int, end: int
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


@dataclasses.dataclass
class _KeptRanges:
    """The SDK's per-minute buckets of the complete minutes ``[start, end)``: minutes, outcomes and
    guardrail decisions per agent, each agent's minutes in order.

    A range query's points are evaluated one by one, each at its own time, so the buckets of a
    span read in pieces are those of the span read whole, as long as what Prometheus holds for
    the earlier pieces did not change since they were read: the fetcher reads again the last
    ``settle_minutes`` of what it keeps (tests/unit/operator/test_prometheus_incremental.py)."""

    start: int
    end: int
    minutes: dict[Key, series.MinuteRun] = dataclasses.field(default_factory=dict)
    outcomes: dict[Key, PerMinute] = dataclasses.field(default_factory=dict)
    guardrails: dict[Key, GuardrailMinutes] = dataclasses.field(default_factory=dict)

    def extend(self, minutes: Iterable[tuple[Key, Iterable[series.AgentMinute]]], outcomes: Mapping[Key, PerMinute],
               guardrails_: Mapping[Key, GuardrailMinutes]) -> None:
        """Add the buckets of the next slice (all later than those held), kept as compact runs:
        ``minutes`` gives each agent's minutes in order (:meth:`MinuteBuilder.agents`), packed as
        they come."""
        for key, ms in minutes:
            namespace, agent = key
            run = series.MinuteRun.of(agent, namespace, ms)
            held = self.minutes.get(key)
            self.minutes[key] = run if held is None else held + run
        for key, named in outcomes.items():
            self.outcomes.setdefault(key, {}).update(named)
        for key, decisions in guardrails_.items():
            self.guardrails.setdefault(key, {}).update(decisions)

    def add(self, later: _KeptRanges) -> None:
        """Add the buckets of ``later``, the next slice, read by the reader process
        (``adapters/reader.py``): its names shared again as this process's own answers share
        them (:meth:`series.MinuteRun.reshared`, :func:`kept_key`)."""
        for (namespace, agent), run in later.minutes.items():
            key = kept_key(namespace, agent)
            run = run.reshared()
            held = self.minutes.get(key)
            self.minutes[key] = run if held is None else held + run
        for (namespace, agent), named in later.outcomes.items():
            self.outcomes.setdefault(kept_key(namespace, agent), {}).update(
                {minute: {series.shared(k): v for k, v in by_name.items()} for minute, by_name in named.items()})
        for (namespace, agent), decisions in later.guardrails.items():
            self.guardrails.setdefault(kept_key(namespace, agent), {}).update(
                {minute: {(series.shared(status), series.shared(tool)): v for (status, tool), v in counts.items()}
                 for minute, counts in decisions.items()})

    def joined(self, later: _KeptRanges, start: int, since: int) -> _KeptRanges:
        """These buckets from ``start`` up to ``since``, then ``later``'s (read from ``since`` on):
        new lists and dicts, so a snapshot handed out before is never changed."""
        out = _KeptRanges(start, later.end)
        for key in self.minutes.keys() | later.minutes.keys():
            held, read = self.minutes.get(key), later.minutes.get(key)
            run: series.MinuteRun | None
            if held is not None and read is not None:
                if read.between(since, self.end) == held.between(since, self.end):
                    # the minutes read again are as kept: only the later ones are added (in place,
                    # after the kept rows: series.MinuteRun.__add__), none copied
                    run = held.between(start, self.end) + read.between(self.end, later.end)
                else:
                    run = held.between(start, since) + read
            else:
                run = held.between(start, since) if held is not None else read
            if run:
                out.minutes[key] = run
        for name in ("outcomes", "guardrails"):
            mine, theirs, joined = getattr(self, name), getattr(later, name), getattr(out, name)
            for key in mine.keys() | theirs.keys():
                by_minute = {m: v for m, v in mine.get(key, {}).items() if start <= m < since}
                by_minute.update(theirs.get(key, {}))
                if by_minute:
                    joined[key] = by_minute
        return out


COMBINE: dict[str, Callable[[float, float], float]] = {"sum": lambda a, b: a + b, "max": max}


class Reader(Protocol):
    """Where a :class:`Fetcher` sends its queries to be read off this process
    (``adapters/reader.py``)."""

    def ask(self, request: tuple[Any, ...]) -> tuple[bool, Any, dict[str, int], list[tuple[str, float]]]:
        """(failed, the answer or the PrometheusError, unlabelled series by query, each query's
        seconds) of ``request`` (:meth:`Fetcher.answer`); raises PrometheusError when the
        reader itself failed."""
        ...


class Fetcher:
    """Runs the fixed set of queries and returns a :class:`FleetSnapshot`. With ``namespaces``
    (a shard's: names or globs, :func:`namespace_scope`) every query of the SDK's series carries
    their matcher, so a shard reads only its own series; the other sources' queries do not
    (a LiteLLM proxy's series carry no namespace)."""

    def __init__(self, client: QueryClient, *, lookback_minutes: int = 90, scrape_interval: float = 15.0,
                 clock: Callable[[], float] = time.time, prices: pricing.PriceTable | None = None,
                 namespaces: Sequence[str] = (), incremental: bool = False,
                 slice_minutes: int | None = None, anchor_minutes: int = 0,
                 on_query: Callable[[str, float], None] | None = None, spend_ledger: bool = False,
                 reader: Reader | None = None, overlap: bool = False) -> None:
        self.client = client
        # Overlap (the operator's, without a reader): the spend and freshness queries are sent on a
        # thread of their own while the range queries are read, so Prometheus answers both at once
        # and a fetch takes about the longer of the two rather than their sum. The client must
        # take queries from two threads at once (HttpClient's pooled session does).
        self.overlap = overlap
        # ... and a fetch that reads no range query (_ranges_final) sends those two at a time. Both on
        # the fetcher's own two threads (_threads), made at the first fetch that needs them.
        self._pool: cf.ThreadPoolExecutor | None = None
        # With a reader (adapters/reader.py: a process of its own), the SDK's range queries and the
        # spend and freshness queries are sent, decoded and folded there, off this interpreter:
        # what comes back is what this process would have built (the buckets of a slice, each
        # agent's amounts). The other sources' queries are this process's.
        self.reader = reader
        # told each query's name and the seconds its answer took (asked, received, decoded; failed
        # ones too), for the operator's per-query histogram
        self.on_query = on_query
        self.scope = namespace_scope(namespaces)
        self.prices = prices if prices is not None else pricing.PriceTable()
        self.lookback_minutes = lookback_minutes
        # The detectors fold from an anchor that moves every ``anchor_minutes`` (core/warmfold.py): a
        # fetch covers that many minutes more than the lookback, so the fold always sees the lookback.
        self.anchor_minutes = anchor_minutes
        self.stale_after = 3 * scrape_interval
        self.clock = clock
        # Incremental: the SDK's per-minute buckets of complete minutes are kept between fetches,
        # and each fetch reads only the minutes since, and again the last ``settle_minutes`` (a
        # sample scraped late for its minute is still seen): _KeptRanges.
        self.incremental = incremental
        self.settle_minutes = math.ceil(self.stale_after / series.MINUTE) + 1
        # A minute is read once it is complete: a fetch's minutes end at the last minute that ended a
        # scrape interval or more before it (a scrape ends within its interval, so every sample
        # stamped in the minute is in by then). So the minutes are read once a minute, at the first
        # fetch past that point, and a fetch with no minute ended since the last read sends no range
        # query (_ranges_final). A sample later still is read with the next minute's settle.
        self.scrape_interval = scrape_interval
        # The range queries of a long span (the first fetch) are run this many minutes at a time, so
        # that the raw answers and the half-built buckets of one slice at most are held at once.
        self.slice_minutes = slice_minutes
        self._kept: _KeptRanges | None = None
        # The spend ledger (a long-lived fetcher's: the operator's): each window longer than an hour
        # is read in pieces (spend_pieces), its whole past hours and days kept between fetches.
        self.spend_ledger = spend_ledger
        self._spend_kept: dict[tuple[int, int], _Amounts] = {}
        self._kept_agents: tuple[Key, ...] = ()

    def _run(self, what: str, expected: str, fn: Callable[[], list[dict[str, Any]]], unlabelled: dict[str, int]
             ) -> list[dict[str, Any]]:
        """The answer of one query, checked to be a ``expected`` ("matrix" or "vector"), or a
        PrometheusError naming the query. Series without an agent or namespace label are
        counted in ``unlabelled`` (the builders drop them)."""
        started = time.perf_counter()
        try:
            result = fn()
        except errors.PrometheusError as exc:
            raise type(exc)(f"Prometheus query {what}: {exc}") from exc
        except Exception as exc:  # anything else a client raises: connection, HTTP status, JSON
            raise errors.PrometheusError(f"Prometheus query failed ({what}): {exc}") from exc
        finally:
            if self.on_query is not None:
                self.on_query(what, time.perf_counter() - started)
        problem = result_problem(result, expected)
        if problem is not None:
            raise BadAnswerError(f"Prometheus query {what}: {problem}")
        dropped = sum(1 for item in result if _key(item["metric"]) is None)
        if dropped:
            unlabelled[what] = dropped
        return result

    def fetch(self, now: float | None = None, sources: Iterable[spec.SourceType] = ()) -> FleetSnapshot:
        """The cycle's snapshot: the SDK's series, and those of each other source in ``sources``."""
        now = self.clock() if now is None else now
        end = series.minute_of(now - self.scrape_interval)  # the last complete minute ends here
        start = end - (self.lookback_minutes + self.anchor_minutes) * series.MINUTE
        start_time = dt.datetime.fromtimestamp(start + series.MINUTE, tz=dt.timezone.utc)
        end_time = dt.datetime.fromtimestamp(end, tz=dt.timezone.utc)
        unlabelled: dict[str, int] = {}
        side: cf.Future[tuple[dict[Key, dict[tuple[spec.Window, bool], float]], int, dict[Key, float]]] | None = None
        side_unlabelled: dict[str, int] = {}
        final = self._ranges_final(start, end)
        if self.overlap and self.reader is None and final is None:
            side = self._threads().submit(self._instants, now, side_unlabelled)
        try:
            if final is not None:
                kept, queries = final, 0  # the same buckets as the last fetch's: no range query
            else:
                since = self._ranges_since(start, end)
                kept, queries = self._read_ranges(since, end, unlabelled)
                if since > start:
                    assert self._kept is not None
                    kept = self._kept.joined(kept, start, since)
        finally:
            if side is not None:
                cf.wait([side])  # (a failed range query leaves no query of this fetch running)
        if side is None:
            spend, sent, last_sample = self._instants(now, unlabelled, two=self.overlap and final is not None)
        else:
            spend, sent, last_sample = side.result()  # its PrometheusError raised here
            unlabelled.update(side_unlabelled)
        queries += sent
        others = self._fetch_sources(sources, now, start, end, start_time, end_time, unlabelled)
        queries += sum(source_queries.QUERIES[kind] for kind in others)
        if self.incremental:
            self._kept = kept
        if unlabelled:
            log.warning("Prometheus: %s dropped: series without an agent or namespace label belong to no "
                        "budget (docs/operator.md, When Prometheus misbehaves)",
                        ", ".join(f"{n} series of {what}" for what, n in unlabelled.items()))
        return FleetSnapshot(
            fetched_at=now,
            start=start,
            end=end,
            minutes=kept.minutes,
            spend=dict(spend),
            last_sample=last_sample,
            stale_after=self.stale_after,
            queries=queries,
            outcomes=kept.outcomes,
            guardrails=kept.guardrails,
            unlabelled=unlabelled,
            sources=others,
            prices=self.prices,
            anchor_minutes=self.anchor_minutes,
        )

    def _instants(self, now: float, unlabelled: dict[str, int], two: bool = False
                  ) -> tuple[dict[Key, dict[tuple[spec.Window, bool], float]], int, dict[Key, float]]:
        """The spend (:meth:`_spend_plan`, :meth:`_spend_of`) and each agent's newest sample, and the
        number of queries sent; ``two``: two of these queries at a time (:meth:`_gather`)."""
        plan, asks = self._spend_plan(now)
        freshness = len(asks)
        asks.append(("freshness", freshness_query(self.scope), now, "max"))
        answers = self._gather(asks, unlabelled, two)
        return self._spend_of(plan, answers[:freshness]), len(asks), answers[freshness]

    def _gather(self, asks: Sequence[tuple[str, str, float | str, str]], unlabelled: dict[str, int], two: bool
                ) -> list[dict[Key, float]]:
        """The answers of the instant queries ``asks`` (:meth:`_instant`'s arguments), in order: one
        after the other, or with ``two`` (and no reader) two at a time, on the fetcher's own
        threads; the first failed query's PrometheusError raised once none of them runs any more."""
        if not two or self.reader is not None or len(asks) < 2:
            return [self._instant(what, query, at, combine, unlabelled) for what, query, at, combine in asks]
        futures = [self._threads().submit(self._instant, what, query, at, combine, unlabelled)
                   for what, query, at, combine in asks]
        cf.wait(futures)
        return [future.result() for future in futures]

    def _threads(self) -> cf.ThreadPoolExecutor:
        """The fetcher's two threads for the queries it sends beside others (``overlap``)."""
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(2, thread_name_prefix="prometheus-query")
        return self._pool

    def _spend_plan(self, now: float) -> tuple[list[tuple[tuple[spec.Window, bool], SpendPiece, int]],
                                               list[tuple[str, str, float | str, str]]]:
        """How this fetch reads each window's spend: (its slot, a piece, the piece's answer: -1 kept
        from an earlier fetch, else the index of its query in the list returned beside). Without
        the ledger each window is one query over all of it; with it, :func:`spend_pieces`, a piece
        asked once however many windows hold it."""
        plan: list[tuple[tuple[spec.Window, bool], SpendPiece, int]] = []
        asks: list[tuple[str, str, float | str, str]] = []
        asked: dict[tuple[int, int], int] = {}  # (end_ms, ms) -> its query's index
        for window in spec.Window:
            for calendar in (False, True):
                if self.spend_ledger:
                    pieces = spend_pieces(window, calendar, now, self.settle_minutes * series.MINUTE)
                else:
                    seconds = int(round(now - windows.window_start(window, now, calendar=calendar)))
                    pieces = (SpendPiece(f"spend {window.value}{' calendar' if calendar else ''}", 0, 0,
                                         whole=True, seconds=seconds),)
                slot = (window, calendar)  # one tuple for every agent's entry
                for piece in pieces:
                    ident = (piece.end_ms, piece.ms)
                    index = None if piece.whole else asked.get(ident)
                    if index is None and piece.kept and ident in self._spend_kept:
                        index = -1
                    if index is None:
                        index = len(asks)
                        asks.append((piece.name, piece.query(self.scope), now if piece.whole else piece.at, "sum"))
                        if not piece.whole:
                            asked[ident] = index
                    plan.append((slot, piece, index))
        return plan, asks

    def _spend_of(self, plan: Sequence[tuple[tuple[spec.Window, bool], SpendPiece, int]],
                  answers: Sequence[dict[Key, float]]) -> dict[Key, dict[tuple[spec.Window, bool], float]]:
        """Each agent's spend per window and calendar from the pieces of ``plan`` and the answers of its
        queries; the ledger keeps the answers of whole past hours and days for the next fetches."""
        spend: dict[Key, dict[tuple[spec.Window, bool], float]] = defaultdict(dict)
        compact: dict[int, _Amounts] = {}
        kept: dict[tuple[int, int], _Amounts] = {}
        for slot, piece, index in plan:
            ident = (piece.end_ms, piece.ms)
            got: dict[Key, float] | _Amounts
            if index < 0:
                got = self._spend_kept[ident]
            elif piece.kept:
                amounts = compact.get(index)
                if amounts is None:
                    amounts = compact[index] = self._compact(answers[index])
                got = amounts
            else:
                got = answers[index]
            if piece.kept:
                assert isinstance(got, _Amounts)
                kept[ident] = got
            sign = piece.sign
            for key, value in got.items():
                mine = spend[key]
                mine[slot] = mine.get(slot, 0.0) + sign * value
        if self.spend_ledger:
            self._spend_kept = kept  # the hours this fetch's windows still hold; the rest is dropped
            for slots in spend.values():  # a bit taken off may leave a rounding below 0
                for slot, value in slots.items():
                    if value < 0.0:
                        slots[slot] = 0.0
        return spend

    def _instant(self, what: str, query: str, at: float | str, combine: str, unlabelled: dict[str, int]
                 ) -> dict[Key, float]:
        """Each agent's value in the answer of the instant query ``query`` at ``at``, duplicates
        combined by ``combine`` ("sum" or "max": :data:`COMBINE`)."""
        if self.reader is not None:
            got: dict[Key, float] = self._ask(("instant", what, query, at, combine), unlabelled)
            return {kept_key(namespace, agent): value for (namespace, agent), value in got.items()}
        items = self._run(what, "vector", lambda: self.client.custom_query(query, params={"time": at}), unlabelled)
        return _instant_by_agent(items, COMBINE[combine])

    def _ask(self, request: tuple[Any, ...], unlabelled: dict[str, int]) -> Any:
        """The reader's answer to ``request`` (:meth:`answer`), its queries' times told to
        ``on_query``; the PrometheusError of a failed query, or of a failed reader, raised here."""
        assert self.reader is not None
        failed, value, dropped, timings = self.reader.ask(request)
        if self.on_query is not None:
            for what, seconds in timings:
                self.on_query(what, seconds)
        unlabelled.update(dropped)
        if failed:
            raise value
        return value

    def answer(self, request: tuple[Any, ...], unlabelled: dict[str, int]) -> Any:
        """What the reader process answers to ``request`` with this fetcher (its own, there):
        ``("slice", a, b)``, the SDK's buckets of the minutes ``[a, b)`` (a :class:`_KeptRanges`);
        ``("instant", what, query, at, combine)``, :meth:`_instant`'s amounts."""
        if request[0] == "slice":
            _, a, b = request
            out = _KeptRanges(a, b)
            self._read_slice(a, b, out, unlabelled)
            return out
        if request[0] == "instant":
            _, what, query, at, combine = request
            return self._instant(what, query, at, combine, unlabelled)
        raise ValueError(f"no such request: {request[0]!r}")

    def _compact(self, amounts: dict[Key, float]) -> _Amounts:
        keys = tuple(amounts)
        if keys == self._kept_agents:
            keys = self._kept_agents  # the same agents as the last kept answer: one tuple for both
        else:
            self._kept_agents = keys
        return _Amounts(keys, array.array("d", amounts.values()))

    def _ranges_final(self, start: int, end: int) -> _KeptRanges | None:
        """The buckets kept from the last read when they are this fetch's (no minute ended since):
        read a scrape interval or more after their end, as a read now would read them. None: the
        ranges are read."""
        kept = self._kept
        if not self.incremental or kept is None or (kept.start, kept.end) != (start, end):
            return None
        return kept

    def _ranges_since(self, start: int, end: int) -> int:
        """The first minute this fetch's range queries read: ``start`` unless the buckets kept from
        the last fetch cover the lookback from ``start`` on, then the kept end less the settle."""
        kept = self._kept
        if not self.incremental or kept is None or kept.start > start or kept.end > end or kept.end <= start:
            return start
        return max(start, kept.end - self.settle_minutes * series.MINUTE)

    def _read_ranges(self, since: int, end: int, unlabelled: dict[str, int]) -> tuple[_KeptRanges, int]:
        """The SDK's buckets of the minutes from ``since`` to ``end`` (range queries, a slice of
        ``slice_minutes`` at a time), and the number of queries run."""
        out = _KeptRanges(since, end)
        queries = 0
        step = (self.slice_minutes or self.lookback_minutes) * series.MINUTE
        for a in range(since, end, step):
            queries += self._read_slice(a, min(end, a + step), out, unlabelled)
        return out, queries

    def _read_slice(self, a: int, b: int, out: _KeptRanges, unlabelled: dict[str, int]) -> int:
        """Add the buckets of the minutes ``[a, b)`` to ``out``; returns the number of queries run."""
        if self.reader is not None:
            out.add(self._ask(("slice", a, b), unlabelled))
            return len(RANGE_FAMILIES) + 1
        start_time = dt.datetime.fromtimestamp(a + series.MINUTE, tz=dt.timezone.utc)
        end_time = dt.datetime.fromtimestamp(b, tz=dt.timezone.utc)

        def matrix(query: str) -> Callable[[], list[dict[str, Any]]]:
            return lambda: self.client.custom_query_range(
                query, start_time=start_time, end_time=end_time, step="60")

        builder = MinuteBuilder(a, b)
        for family in RANGE_FAMILIES:  # (each answer folded, then dropped, before the next is read)
            builder.add(family, self._run(family, "matrix", matrix(family_query(family, self.scope)), unlabelled))
        open_tasks = self._run("open tasks", "matrix", matrix(open_tasks_query(self.scope)), unlabelled)
        out.extend(builder.agents(build_task_readings(open_tasks, a, b)), builder.outcomes, builder.guardrails)
        return len(RANGE_FAMILIES) + 1

    def _fetch_sources(self, sources: Iterable[spec.SourceType], now: float, start: int, end: int,
                       start_time: dt.datetime, end_time: dt.datetime, unlabelled: dict[str, int]
                       ) -> dict[spec.SourceType, source_queries.SourceData]:
        """The fixed queries of each source other than the SDK's (adapters/sources.py)."""
        def run(what: str, query: str, expected: str) -> list[dict[str, Any]]:
            if expected == "matrix":
                return self._run(what, expected, lambda: self.client.custom_query_range(
                    query, start_time=start_time, end_time=end_time, step="60"), {})
            return self._run(what, expected, lambda: self.client.custom_query(query, params={"time": now}), {})

        seconds = {(w, cal): int(round(now - windows.window_start(w, now, calendar=cal)))
                   for w in spec.Window for cal in (False, True)}
        return {kind: source_queries.fetch(kind, run, seconds, window_increase, start, end, clean_points, _float)
                for kind in sorted(set(sources) - {spec.SourceType.fleetwarden}, key=lambda k: k.value)}


QUERIES_PER_CYCLE = len(RANGE_FAMILIES) + 1 + 2 * len(spec.Window) + 1


# ------------------------------------------------------------------ other sources (spec.source)


def _source_key(budget: spec.AgentBudget, agent: decision.AgentDeployment) -> source_queries.Key:
    if budget.spec.source.type is spec.SourceType.open_telemetry:
        return (agent.namespace, agent.name)
    label = budget.spec.source.agent_label or spec.LiteLLMLabel.api_key_alias
    return (label.value, agent.name)


def _source_staleness(snap: FleetSnapshot, data: source_queries.SourceData, key: source_queries.Key,
                      agent: decision.AgentDeployment) -> str | None:
    if agent.replicas <= 0:
        return None
    last = data.last_sample.get(key)
    if last is None:
        return f"no {data.type.value} samples at all for running agent {agent.namespace}/{agent.name}"
    if snap.fetched_at - last > snap.stale_after:
        return (f"newest {data.type.value} sample of agent {agent.namespace}/{agent.name} is "
                f"{snap.fetched_at - last:.0f}s old (stale after {snap.stale_after:.0f}s)")
    return None


def source_budget(snap: FleetSnapshot, budget: spec.AgentBudget, agents: Sequence[decision.AgentDeployment],
                  policies: Sequence[spec.CostPolicy] = ()) -> BudgetData:
    """A budget's view of its ``spec.source``: the source's counts priced by the operator
    (:mod:`fleetwarden.core.sources`), and the source's health in ``BudgetData.source``."""
    kind = budget.spec.source.type
    data = snap.sources.get(kind)
    if data is None:
        raise StaleMetricsError(f"source {kind.value} was not read this cycle")
    keys = {a.name: _source_key(budget, a) for a in agents}
    reasons = [r for r in (_source_staleness(snap, data, keys[a.name], a) for a in agents) if r is not None]
    if reasons:
        raise StaleMetricsError("; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""))
    base = snap.prices if snap.prices is not None else pricing.PriceTable()
    calendar = {lim.window: lim.calendar for lim in budget.spec.limits}
    longest = max((lim.window for lim in budget.spec.limits), key=lambda w: spec.WINDOW_SECONDS[w],
                  default=spec.Window.hour)
    spend: dict[spec.Window, float | None] = dict.fromkeys(spec.Window, 0.0)
    minutes: dict[str, Sequence[series.AgentMinute]] = {}
    unpriced: list[Mapping[str, float]] = []
    for a in agents:
        tools, _ = core_policies.agent_prices([], core_policies.applicable(policies, a.namespace, a.labels))
        table = base.with_tool_prices(tools) if tools else base
        key = keys[a.name]
        for window in spec.Window:
            usage = data.windows.get(key, {}).get((window, calendar.get(window, False)))
            if usage is not None:
                priced = core_sources.price(usage, table, snap.fetched_at)
                spend[window] = (spend[window] or 0.0) + priced.total_usd
                if window is longest:
                    unpriced.append(priced.unpriced)
        by_minute = data.minutes.get(key, {})
        minutes[a.name] = [core_sources.agent_minute(a.name, a.namespace, m, by_minute[m], table)[0]
                           for m in sorted(by_minute)]
    found = sorted(set().union(*(data.families.get(keys[a.name], set()) for a in agents)) - {""})
    lasts = [data.last_sample[keys[a.name]] for a in agents if keys[a.name] in data.last_sample]
    report = core_sources.SourceReport(
        type=kind, families=tuple(found), last_sample=max(lasts) if lasts else None,
        unpriced=core_sources.merge_unpriced(unpriced),
        unknown=core_sources.unknown_for(kind, found, source_queries.TASK_FAMILY[kind]))
    return BudgetData(minutes=minutes, spend=spend, lookback_start=float(snap.start),
                      anchor_minutes=snap.anchor_minutes, end=snap.end, source=report)
