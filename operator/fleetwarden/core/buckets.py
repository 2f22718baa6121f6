"""Events -> per-agent, per-minute buckets (:class:`~fleetwarden.core.series.AgentMinute`), streaming.

``Bucketer.add(event)`` prices the event and counts it in its agent's open minute;
``Bucketer.close(horizon)`` returns the buckets of every minute that ended at or before
``horizon``, oldest first. Replay closes at ``latest event time - LATENESS``:

- events may arrive up to ``LATENESS`` (120 s) behind the latest event seen and still
  land in their own minute;
- an event later than that is *still counted* (its cost is never lost) in the oldest
  minute still open, and counted in ``Bucketer.late`` so replay can report how many.

Prices: an llm event without ``cost_usd`` is priced with the :class:`PriceTable` at the
event's time; a model with no known price raises :class:`~fleetwarden.errors.PricingError`
naming the model (the caller reports the line; it is never priced at 0ドル). A tool call
without ``cost_usd`` costs the CostPolicy's ``toolPricesUSD[tool]`` (set per agent in
``AgentState.tool_prices``), else ``PriceTable.tool_cost(tool)``. Human minutes without
``cost_usd`` cost ``minutes / 60 * humanHourlyRateUSD`` of the agent's AgentBudget
(``AgentState.human_rate``), else the table's default rate.

Memory is flat in the length of the input: one small accumulator per agent per open
minute (at most ``LATENESS / 60 + 1`` of them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from fleetwarden import errors
from fleetwarden.core import events, series

MINUTE = series.MINUTE
LATENESS = 120.0


class Prices(Protocol):
    def llm_cost(self, model: str, *, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
                 cache_write_tokens: int = 0, reasoning_tokens: int = 0, provider: str | None = None,
                 at: float | None = None) -> float: ...

    def tool_cost(self, tool: str) -> float: ...

    def human_cost(self, minutes: float, hourly_rate: float | None = None) -> float: ...


class _Acc:
    """What one agent did so far in one open minute (mutable; frozen into an AgentMinute)."""

    __slots__ = ("inference", "tool_cost", "human", "tokens", "output_tokens", "llm_calls", "completed", "failed",
                 "abandoned", "outcomes", "tool_total", "tool_calls", "tool_costs", "models", "version", "workflows")

    def __init__(self) -> None:
        self.inference = 0.0
        self.tool_cost = 0.0
        self.human = 0.0
        self.tokens = 0
        self.output_tokens = 0
        self.llm_calls = 0
        self.completed = 0
        self.failed = 0
        self.abandoned = 0
        self.outcomes = 0.0
        self.tool_total = 0  # tool calls of every tool
        self.tool_calls: dict[str, float] = {}
        self.tool_costs: dict[str, float] = {}
        self.models: dict[str, int] = {}
        self.version: str | None = None
        self.workflows: dict[str, int] = {}

    def count(self, etype: str, raw: dict[str, Any], cost: float) -> int:
        """Add one valid event (already priced: ``cost``) to the minute; the tokens of a model
        call are returned (0 for other types). The one place events are counted into buckets:
        ``Bucketer.add`` and replay's inlined loop both call it."""
        tokens = 0
        workflow = raw.get("workflow")
        if workflow is not None:
            wf = self.workflows
            wf[workflow] = wf.get(workflow, 0) + 1
        version = raw.get("agent_version")
        if version is not None:
            self.version = version
        if etype == "llm":
            self.inference += cost
            out = raw["output_tokens"]
            tokens = int(raw["input_tokens"] + out + raw.get("cache_read_tokens", 0)
                         + raw.get("cache_write_tokens", 0) + raw.get("reasoning_tokens", 0))
            self.tokens += tokens
            self.output_tokens += int(out)
            self.llm_calls += 1
            models = self.models
            model = raw["model"]
            models[model] = models.get(model, 0) + 1
        elif etype == "tool":
            tool = raw["tool"]
            self.tool_cost += cost
            self.tool_total += 1
            calls = self.tool_calls
            calls[tool] = calls.get(tool, 0) + 1
            if cost:
                costs = self.tool_costs
                costs[tool] = costs.get(tool, 0.0) + cost
        elif etype == "task":
            status = raw["status"]
            if status == "completed":
                self.completed += 1
            elif status == "failed":
                self.failed += 1
            else:
                self.abandoned += 1
        elif etype == "outcome":
            self.outcomes += raw.get("count", 1)
        else:
            self.human += cost
        return tokens

    def freeze(self, agent: str, namespace: str, minute: int) -> series.AgentMinute:
        models, workflows = self.models, self.workflows
        return _make_minute(
            agent, namespace, minute, self.inference, self.tool_cost, self.human, self.tokens, self.output_tokens,
            self.llm_calls, self.completed, self.failed, self.abandoned, self.outcomes,
            MappingProxyType(self.tool_calls) if self.tool_calls else series._EMPTY,
            MappingProxyType(self.tool_costs) if self.tool_costs else series._EMPTY,
            max(models, key=models.__getitem__) if models else None,
            self.version,
            max(workflows, key=workflows.__getitem__) if workflows else None,
        )


_make_minute: Callable[..., series.AgentMinute] = series.make  # type: ignore[assignment]


class AgentState:
    """One agent as the bucketer knows it. ``ctx`` is free for the caller (replay keeps its
    per-agent policy state there); ``tool_prices``/``human_rate`` are set by the caller from
    the CostPolicy/AgentBudget that applies."""

    __slots__ = ("agent", "namespace", "labels", "open", "last_minute", "tool_prices", "human_rate", "ctx",
                 "_tool_cache")

    def __init__(self, agent: str, namespace: str) -> None:
        self.agent = agent
        self.namespace = namespace
        self.labels: dict[str, str] = {}
        self.open: dict[int, _Acc] = {}
        self.last_minute: int | None = None  # the newest minute with activity
        self.tool_prices: Mapping[str, float] = {}
        self.human_rate: float | None = None
        self.ctx: Any = None
        self._tool_cache: dict[str, float] = {}

    def set_prices(self, tool_prices: Mapping[str, float], human_rate: float | None) -> None:
        self.tool_prices = tool_prices
        self.human_rate = human_rate
        self._tool_cache = {}


class Bucketer:
    """Streams events into per-agent minutes. See the module docstring for lateness and prices."""

    def __init__(self, prices: Prices, *, lateness: float = LATENESS,
                 on_new_agent: Callable[[AgentState], None] | None = None,
                 on_labels: Callable[[AgentState], None] | None = None) -> None:
        self.prices = prices
        self.lateness = lateness
        self.agents: dict[tuple[str, str], AgentState] = {}
        self.watermark: float | None = None  # the latest event time seen
        self.closed_until: int | None = None  # every minute ending at or before this is closed
        self.late = 0  # events counted in a later minute than their own
        self._pending: dict[int, list[AgentState]] = {}  # minute -> agents with an open bucket there
        self._llm_price_cache: dict[tuple[str, str | None], bool] = {}
        self._on_new_agent = on_new_agent
        self._on_labels = on_labels

    # ------------------------------------------------------------ prices

    def llm_cost(self, ev: events.Event) -> float:
        raw = ev.raw
        cost = raw.get("cost_usd")
        if cost is not None:
            return float(cost)
        model = raw["model"]
        provider = raw.get("provider")
        try:
            return self.prices.llm_cost(
                model, input_tokens=int(raw["input_tokens"]), output_tokens=int(raw["output_tokens"]),
                cache_read_tokens=int(raw.get("cache_read_tokens", 0)),
                cache_write_tokens=int(raw.get("cache_write_tokens", 0)),
                reasoning_tokens=int(raw.get("reasoning_tokens", 0)), provider=provider, at=ev.time)
        except errors.PricingError:
            raise
        except (KeyError, LookupError) as exc:  # a price table that refuses the model in its own way
            raise errors.PricingError(f"no price known for model {model!r}") from exc

    def tool_cost(self, st: AgentState, tool: str, cost: object) -> float:
        if cost is not None:
            return float(cost)  # type: ignore[arg-type]
        price = st._tool_cache.get(tool)
        if price is None:
            price = st.tool_prices.get(tool)
            if price is None:
                price = self.prices.tool_cost(tool)
            st._tool_cache[tool] = price
        return price

    def human_cost(self, st: AgentState, minutes: float, cost: object) -> float:
        if cost is not None:
            return float(cost)  # type: ignore[arg-type]
        return self.prices.human_cost(minutes, st.human_rate)

    # ------------------------------------------------------------ events

    def agent(self, namespace: str, agent: str) -> AgentState:
        st = self.agents.get((namespace, agent))
        if st is None:
            st = self.agents[(namespace, agent)] = AgentState(agent, namespace)
            if self._on_new_agent is not None:
                self._on_new_agent(st)
        return st

    def add(self, ev: events.Event) -> float:
        """Count one event; return its cost in USD. Raises PricingError for an unpriceable llm call
        (nothing of the event is counted then)."""
        raw = ev.raw
        key = (ev.namespace, ev.agent)
        st = self.agents.get(key)
        if st is None:
            st = self.agent(ev.namespace, ev.agent)
        labels = raw.get("labels")
        if labels and labels != st.labels and not labels.items() <= st.labels.items():
            st.labels = {**st.labels, **labels}
            if self._on_labels is not None:
                self._on_labels(st)
        etype = ev.type
        if etype == "llm":
            cost = self.llm_cost(ev)
        elif etype == "tool":
            cost = self.tool_cost(st, raw["tool"], raw.get("cost_usd"))
        elif etype == "human":
            cost = self.human_cost(st, raw["minutes"], raw.get("cost_usd"))
        else:
            cost = 0.0

        acc = self.place(st, ev.time)
        acc.count(etype, raw, cost)
        return cost

    def place(self, st: AgentState, ts: float) -> _Acc:
        """The open accumulator of this agent for an event at ``ts`` (opened if need be), the
        watermark moved on: its own minute, or the oldest open one when it is too late for it
        (counted in ``late``). ``add`` and replay's inlined loop both call it."""
        wm = self.watermark
        if wm is None or ts > wm:
            self.watermark = ts
        minute = int(ts // MINUTE) * MINUTE
        closed = self.closed_until
        if closed is not None and minute < closed:
            minute = closed  # too late for its own minute: counted in the oldest open one
            self.late += 1
        acc = st.open.get(minute)
        if acc is None:
            acc = st.open[minute] = _Acc()
            pending = self._pending.get(minute)
            if pending is None:
                self._pending[minute] = [st]
            else:
                pending.append(st)
            if st.last_minute is None or minute > st.last_minute:
                st.last_minute = minute
        return acc

    def horizon(self) -> float | None:
        """Up to when the data is complete: the latest event time minus the lateness allowed."""
        return None if self.watermark is None else self.watermark - self.lateness

    def close(self, horizon: float | None = None) -> list[series.AgentMinute]:
        """Buckets of every minute that ended at or before ``horizon`` (default: the data's horizon,
        ``None`` after ``finish``), oldest minute first, agents in first-seen order within a minute."""
        if horizon is None:
            horizon = self.horizon()
            if horizon is None:
                return []
        return [am for _, am in self._close(horizon)]

    def _close(self, horizon: float) -> list[tuple[AgentState, series.AgentMinute]]:
        """``close`` with each bucket's agent state (for replay)."""
        upto = int(horizon // MINUTE) * MINUTE  # minutes starting before `upto` have ended by `horizon`
        if self.closed_until is not None and upto <= self.closed_until:
            return []
        self.closed_until = upto
        if not self._pending:
            return []
        out: list[tuple[AgentState, series.AgentMinute]] = []
        for minute in sorted(m for m in self._pending if m < upto):
            for st in self._pending.pop(minute):
                acc = st.open.pop(minute)
                out.append((st, acc.freeze(st.agent, st.namespace, minute)))
        return out

    def finish(self) -> list[series.AgentMinute]:
        """Close every open minute (end of input)."""
        return [am for _, am in self._finish()]

    def _finish(self) -> list[tuple[AgentState, series.AgentMinute]]:
        if self.watermark is None:
            return []
        end = max(self._pending, default=int(self.watermark // MINUTE) * MINUTE) + MINUTE
        return self._close(float(end))
