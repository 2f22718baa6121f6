"""Sources other than the SDK: usage counted by OpenTelemetry GenAI or LiteLLM metrics, priced here.

The Prometheus adapter reads what a source counts per agent and minute (and per spend window)
into :class:`Usage`; this module turns it into the :class:`~fleetwarden.core.series.AgentMinute`
buckets and the spend every stage reads, with the price table replay and the SDK use
(:class:`~fleetwarden.core.pricing.PriceTable`: genai-prices, the configured prices, CostPolicy
``toolPricesUSD``) and the one formula, :func:`~fleetwarden.core.pricing.llm_call_cost`. No price
lives in PromQL.

- A model no price covers is never 0ドル: its tokens are kept apart (:attr:`Priced.unpriced`),
  shown in ``status.source.unpricedModels``, a ``PricesKnown=False`` condition naming them and
  the ``fleetwarden_unpriced_tokens`` gauge. The spend shown is then what the priced models
  cost: a lower bound, which the kill switch may act on (real spend is at least that).
- Token counts of a source are per call kind (input, output): cache and reasoning tokens are
  not told apart, so they are priced as input and output tokens; a tiered price applies its
  base tier (the call sizes are not known).
- What a source cannot show (:data:`CANNOT_SHOW`) is reported unknown in
  ``status.source.unknown``; a detector that needs it (the model-update spike needs tasks)
  finds nothing rather than a 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from fleetwarden.core import pricing, series, spec
from fleetwarden.core import status as st

INPUT, OUTPUT = "input", "output"
COMPLETED, FAILED = "completed", "failed"

TASKS = "tasks"
# What each source can never show; "tasks" is added for an OpenTelemetry agent without
# gen_ai.invoke_agent.duration series.
CANNOT_SHOW: dict[spec.SourceType, tuple[str, ...]] = {
    spec.SourceType.fleetwarden: (),
    spec.SourceType.open_telemetry: ("outcomes", "human time", "workflows", "guardrail decisions"),
    spec.SourceType.lite_llm: (TASKS, "tool calls", "outcomes", "human time", "workflows", "guardrail decisions"),
}

REASON_PRICED = "AllModelsPriced"
REASON_UNPRICED = "UnpricedModels"
REASON_PRICED_BY_SOURCE = "PricedBySource"


@dataclasses.dataclass
class Usage:
    """What one agent did in one minute (or one spend window), as a non-SDK source counts it."""

    tokens: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)  # (model, input|output)
    calls: dict[str, float] = dataclasses.field(default_factory=dict)  # model -> model calls
    tools: dict[str, float] = dataclasses.field(default_factory=dict)  # tool -> calls
    tasks: dict[str, float] = dataclasses.field(default_factory=dict)  # completed|failed -> invocations
    spend_usd: float | None = None  # USD the source counts itself (LiteLLM): tokens are then not priced


@dataclasses.dataclass(frozen=True)
class Priced:
    inference_usd: float
    tool_costs: dict[str, float]  # tool -> USD
    unpriced: dict[str, float]  # model -> tokens no price covers

    @property
    def total_usd(self) -> float:
        return self.inference_usd + sum(self.tool_costs.values())


def price(usage: Usage, table: pricing.PriceTable, at: float | None = None) -> Priced:
    """What ``usage`` cost at ``at``: each model's tokens at its rates (per-call price times its
    calls), each tool's calls at its price; the tokens of a model no price covers apart."""
    inference = usage.spend_usd or 0.0
    unpriced: dict[str, float] = {}
    if usage.spend_usd is None:
        for model in sorted({m for m, _ in usage.tokens}):
            n_in, n_out = usage.tokens.get((model, INPUT), 0.0), usage.tokens.get((model, OUTPUT), 0.0)
            if not table.knows(model, at=at):
                if n_in + n_out > 0:
                    unpriced[model] = n_in + n_out
                continue
            r = table.rates(model, at=at).as_tuple()
            rates = (r[0], r[1], r[2], r[3], r[4], r[5] * usage.calls.get(model, 0.0))
            inference += pricing.llm_call_cost(rates, round(n_in), round(n_out))
    tool_costs = {tool: calls * table.tool_cost(tool) for tool, calls in usage.tools.items() if tool}
    return Priced(inference, tool_costs, unpriced)


def _mode(counts: Mapping[str, float]) -> str | None:
    best = [(v, k) for k, v in counts.items() if v > 0 and k]
    return max(best)[1] if best else None


def agent_minute(agent: str, namespace: str, minute: int, usage: Usage, table: pricing.PriceTable
                 ) -> tuple[series.AgentMinute, Priced]:
    """The bucket of one minute of ``usage`` (priced at that minute) and its pricing."""
    p = price(usage, table, float(minute))
    by_model: dict[str, float] = {}
    for (model, _), n in usage.tokens.items():
        by_model[model] = by_model.get(model, 0.0) + n
    shared = series.shared
    return series.AgentMinute(
        agent=shared(agent), namespace=shared(namespace), minute=minute,
        inference_cost_usd=p.inference_usd,
        tool_cost_usd=sum(p.tool_costs.values()),
        tokens=int(round(sum(usage.tokens.values()))),
        output_tokens=int(round(sum(n for (_, kind), n in usage.tokens.items() if kind == OUTPUT))),
        llm_calls=int(round(sum(usage.calls.values()))),
        tasks_completed=int(round(usage.tasks.get(COMPLETED, 0.0))),
        tasks_failed=int(round(usage.tasks.get(FAILED, 0.0))),
        tool_calls={shared(k): v for k, v in usage.tools.items() if k},
        tool_costs={shared(k): v for k, v in p.tool_costs.items()},
        model=shared(m) if (m := _mode(usage.calls) or _mode(by_model)) is not None else None,
    ), p


@dataclasses.dataclass(frozen=True)
class SourceReport:
    """A budget's source and its health in one cycle (``status.source``, ``PricesKnown``)."""

    type: spec.SourceType
    families: tuple[str, ...] = ()  # the source's metric families found for the budget's agents
    last_sample: float | None = None
    unpriced: Mapping[str, float] = dataclasses.field(default_factory=dict)  # model -> tokens
    unknown: tuple[str, ...] = ()  # what the source cannot show for these agents

    def status(self) -> st.SourceStatus:
        return st.SourceStatus(
            type=self.type.value, series=len(self.families), families=list(self.families) or None,
            last_sample=st.at(self.last_sample) if self.last_sample is not None else None,
            unpriced_models=[st.UnpricedModel(model=m, tokens=round(n)) for m, n in sorted(self.unpriced.items())]
            or None,
            unknown=list(self.unknown) or None)


def unknown_for(source: spec.SourceType, families: Iterable[str], task_family: str | None) -> tuple[str, ...]:
    """What ``source`` cannot show, given the families found (tasks need ``task_family``)."""
    out = list(CANNOT_SHOW[source])
    if task_family is not None and task_family not in set(families) and TASKS not in out:
        out.insert(0, TASKS)
    return tuple(out)


def merge_unpriced(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parts:
        for model, n in part.items():
            out[model] = out.get(model, 0.0) + n
    return out


Cond = tuple[str, Literal["True", "False", "Unknown"], str, str]


def prices_condition(report: SourceReport | None) -> Cond | None:
    """``PricesKnown``: False naming the models no price covers (None: the SDK prices its own calls)."""
    if report is None or report.type is spec.SourceType.fleetwarden:
        return None
    if report.type is spec.SourceType.lite_llm:
        return (st.PRICES_KNOWN, "True", REASON_PRICED_BY_SOURCE, "LiteLLM counts the dollars itself")
    if not report.unpriced:
        return (st.PRICES_KNOWN, "True", REASON_PRICED, "every model seen has a price")
    named = ", ".join(f"{m} ({n:.0f} tokens)" for m, n in sorted(report.unpriced.items())[:10])
    return (st.PRICES_KNOWN, "False", REASON_UNPRICED,
            f"no price for {named}: their cost is not in spend (a lower bound); add them to the operator's "
            f"prices (docs/metrics.md, Prices)")


def with_condition(conditions: Sequence[st.Condition], report: SourceReport | None, now: float,
                   generation: int | None) -> list[st.Condition]:
    """``conditions`` with PricesKnown set from ``report`` (left as is when there is no report)."""
    row = prices_condition(report)
    if row is None:
        return list(conditions)
    new = st.set_condition(conditions, *row, now=now, generation=generation)
    return [*(c for c in conditions if c.type != st.PRICES_KNOWN), new]
