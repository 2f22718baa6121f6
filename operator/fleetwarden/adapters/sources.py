"""Prometheus queries of the sources other than the SDK (``spec.source``), cleaned at the edge.

A source's queries run only in a cycle where some budget reads that source, and then a FIXED
number of them (:data:`QUERIES`): one range query per family (step 60 s, the minute buckets:
each counter's whole growth in the minute, read as the SDK's are,
:func:`fleetwarden.adapters.promql.minute_growth`),
one instant query per spend window (the counts per model the operator prices,
:mod:`fleetwarden.core.sources`), and one for each agent's newest sample per family.

OpenTelemetry GenAI, as the OTel SDK's Prometheus exporter names the semantic conventions:
``gen_ai_client_token_usage`` (by ``gen_ai_token_type``), ``gen_ai_client_operation_duration_seconds``
(model calls), ``gen_ai_execute_tool_duration_seconds`` (by ``gen_ai_tool_name``) and
``gen_ai_invoke_agent_duration_seconds`` (agent invocations: the tasks, failed when
``error_type`` is set). Envoy AI Gateway exports the same names. The agent is the
``k8s.deployment.name`` resource attribute (else ``gen_ai.agent.name``) in the namespace
``k8s.namespace.name``, found in either shape:

- the SDK exporter's: resource attributes only on ``target_info``, joined by ``job`` and ``instance``;
- a Collector's that promotes them to labels (``k8s_namespace_name`` on the series itself).

LiteLLM proxy: ``litellm_spend_metric_total`` (USD, LiteLLM's own prices),
``litellm_input_tokens_metric_total`` and ``litellm_output_tokens_metric_total`` by ``model``
and ``api_key_alias``, ``team``, ``end_user``; the budget's ``spec.source.agentLabel`` says
which of them is the agent's Deployment name (the proxy's metrics carry no namespace: the
budget's own is used).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fleetwarden.adapters.promql import minute_growth
from fleetwarden.core import series, spec
from fleetwarden.core import sources as core_sources

Key = tuple[str, str]  # (namespace, agent) for OpenTelemetry; (label, value) for LiteLLM
Run = Callable[[str, str, str], list[dict[str, Any]]]  # (what, query, "matrix"|"vector"|"window:<s>")

OTEL = spec.SourceType.open_telemetry
LITELLM = spec.SourceType.lite_llm

# family -> (metric, labels it is grouped by besides the agent's)
OTEL_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "tokens": ("gen_ai_client_token_usage_sum", ("model", "gen_ai_token_type")),
    "calls": ("gen_ai_client_operation_duration_seconds_count", ("model",)),
    "tools": ("gen_ai_execute_tool_duration_seconds_count", ("gen_ai_tool_name",)),
    "tasks": ("gen_ai_invoke_agent_duration_seconds_count", ("error_type",)),
}
LITELLM_LABELS = tuple(label.value for label in spec.LiteLLMLabel)
UNSET = "None"  # what LiteLLM writes in a label it has no value for (no key alias, no team, no end user)
LITELLM_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "spend": ("litellm_spend_metric_total", ("model",)),
    "input_tokens": ("litellm_input_tokens_metric_total", ("model",)),
    "output_tokens": ("litellm_output_tokens_metric_total", ("model",)),
}
FAMILIES = {OTEL: OTEL_FAMILIES, LITELLM: LITELLM_FAMILIES}
TASK_FAMILY = {OTEL: "tasks", LITELLM: None}
QUERIES = {source: len(families) + 2 * len(spec.Window) + 1 for source, families in FAMILIES.items()}

_PROMOTED = 'k8s_namespace_name!=""'


def otel_vector(metric: str, of: Callable[[str], str]) -> str:
    """``of(selector)`` over ``metric`` in both shapes, labelled ``namespace``, ``agent`` and ``model``:
    series without the resource attributes joined to ``target_info``; series with them as is."""
    bare, promoted = metric + '{k8s_namespace_name=""}', metric + "{" + _PROMOTED + "}"
    joined = (f"({of(bare)} * on (job, instance) group_left (k8s_namespace_name, k8s_deployment_name) "
              f"target_info{{{_PROMOTED}}})")
    vector = f"({joined} or {of(promoted)})"
    for target, source in (("namespace", "k8s_namespace_name"), ("agent", "gen_ai_agent_name"),
                           ("agent", "k8s_deployment_name"), ("model", "gen_ai_request_model"),
                           ("model", "gen_ai_response_model")):
        vector = f'label_replace({vector}, "{target}", "$1", "{source}", "(.+)")'
    return vector


def _vector(source: spec.SourceType, metric: str, of: Callable[[str], str]) -> str:
    return otel_vector(metric, of) if source is OTEL else of(metric)


def _by(source: spec.SourceType, extra: Sequence[str]) -> str:
    who = ("namespace", "agent") if source is OTEL else LITELLM_LABELS
    return ", ".join((*who, *extra))


def range_query(source: spec.SourceType, family: str) -> str:
    metric, extra = FAMILIES[source][family]
    return f"sum by ({_by(source, extra)}) ({_vector(source, metric, minute_growth)})"


def _tagged(source: spec.SourceType, of: Callable[[str], str]) -> str:
    """Each family's ``of(selector)``, told apart by an ``fw_metric`` label, as one vector."""
    return " or ".join(f'label_replace({_vector(source, metric, of)}, "fw_metric", "{family}", "", "")'
                       for family, (metric, _) in FAMILIES[source].items())


def window_query(source: spec.SourceType, seconds: int, increase: Callable[[str, str], str]) -> str:
    """Each family's growth over the last ``seconds`` (``increase(selector, window)``), by family."""
    extra = sorted({label for _, labels in FAMILIES[source].values() for label in labels} | {"fw_metric"})
    window = f"{max(seconds, 60)}s"
    return f"sum by ({_by(source, extra)}) ({_tagged(source, lambda s: increase(s, window))})"


def freshness_query(source: spec.SourceType) -> str:
    return f"max by ({_by(source, ('fw_metric',))}) ({_tagged(source, lambda s: f'timestamp({s})')})"


# ------------------------------------------------------------------ the answers


@dataclasses.dataclass(frozen=True)
class SourceData:
    """What one source said in one cycle, per agent key, cleaned (counts not yet priced)."""

    type: spec.SourceType
    minutes: dict[Key, dict[int, core_sources.Usage]]
    windows: dict[Key, dict[tuple[spec.Window, bool], core_sources.Usage]]
    families: dict[Key, set[str]]
    last_sample: dict[Key, float]


def _keys(source: spec.SourceType, metric: Mapping[str, str]) -> list[Key]:
    if source is OTEL:
        ns, agent = metric.get("namespace"), metric.get("agent")
        return [(ns, agent)] if ns and agent else []
    return [(label, metric[label]) for label in LITELLM_LABELS if metric.get(label) not in (None, "", UNSET)]


def _count(usage: core_sources.Usage, source: spec.SourceType, family: str, metric: Mapping[str, str],
           value: float) -> None:
    """Add one sample of ``family`` to ``usage``."""
    model = metric.get("model", "")
    if source is OTEL:
        if family == "tokens":
            kind = metric.get("gen_ai_token_type", "")
            key = (model, core_sources.OUTPUT if kind in ("output", "completion") else core_sources.INPUT)
            usage.tokens[key] = usage.tokens.get(key, 0.0) + value
        elif family == "calls":
            usage.calls[model] = usage.calls.get(model, 0.0) + value
        elif family == "tools":
            tool = metric.get("gen_ai_tool_name", "")
            usage.tools[tool] = usage.tools.get(tool, 0.0) + value
        elif family == "tasks":
            status = core_sources.FAILED if metric.get("error_type") else core_sources.COMPLETED
            usage.tasks[status] = usage.tasks.get(status, 0.0) + value
        return
    if family == "spend":
        usage.spend_usd = (usage.spend_usd or 0.0) + value
    else:
        key = (model, core_sources.INPUT if family == "input_tokens" else core_sources.OUTPUT)
        usage.tokens[key] = usage.tokens.get(key, 0.0) + value
        if family == "input_tokens":
            usage.calls.setdefault(model, 0.0)


def fetch(source: spec.SourceType, run: Run, window_seconds: Mapping[tuple[spec.Window, bool], int],
          increase: Callable[[str, str], str], start: int, end: int,
          clean: Callable[[Iterable[Sequence[Any]]], dict[int, float]], number: Callable[[Any], float | None]
          ) -> SourceData:
    """Run the source's queries through ``run`` and fold the answers (``clean`` a range series'
    points, ``number`` an instant sample's value: the Prometheus adapter's own cleaning)."""
    minutes: dict[Key, dict[int, core_sources.Usage]] = {}
    for family in FAMILIES[source]:
        for item in run(f"{source.value} {family}", range_query(source, family), "matrix"):
            for key in _keys(source, item["metric"]):
                for ts, value in clean(item.get("values") or ()).items():
                    minute = series.minute_of(ts - series.MINUTE)
                    if start <= minute < end and value >= 0:
                        usage = minutes.setdefault(key, {}).setdefault(minute, core_sources.Usage())
                        _count(usage, source, family, item["metric"], value)
    windows: dict[Key, dict[tuple[spec.Window, bool], core_sources.Usage]] = {}
    for (window, calendar), seconds in window_seconds.items():
        what = f"{source.value} spend {window.value}{' calendar' if calendar else ''}"
        for item in run(what, window_query(source, seconds, increase), "vector"):
            amount = number(item["value"][1])
            for key in _keys(source, item["metric"]):
                if amount is not None and amount >= 0:
                    usage = windows.setdefault(key, {}).setdefault((window, calendar), core_sources.Usage())
                    _count(usage, source, item["metric"].get("fw_metric", ""), item["metric"], amount)
    families: dict[Key, set[str]] = {}
    last: dict[Key, float] = {}
    for item in run(f"{source.value} freshness", freshness_query(source), "vector"):
        newest = number(item["value"][1])
        for key in _keys(source, item["metric"]):
            families.setdefault(key, set()).add(item["metric"].get("fw_metric", ""))
            if newest is not None:
                last[key] = max(last.get(key, newest), newest)
    return SourceData(source, minutes, windows, families, last)
