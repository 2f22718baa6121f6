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

Open tasks: each agent's tasks are followed from their first model, tool or human event to
their ``task`` event (or ``TASK_IDLE_SECONDS`` without an event: a task cut off without an
end). A minute's bucket says, as of the minute's end, how many are open and, of the running
ones, the largest and the oldest with their tokens, age and id (``AgentMinute.open_tasks``,
``largest_task_*``, ``oldest_task_*``): the per-task signals of the runaway-loop detector,
which the SDK exports live (docs/metrics.md). A minute's
events change the open tasks when the minute closes, so an event that arrives late but
still in its minute counts as if it had come in order.

Memory is flat in the length of the input: one small accumulator per agent per open
minute (at most ``LATENESS / 60 + 1`` of them), and each agent's open tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from fleetwarden import errors
from fleetwarden.core import events, series

MINUTE = series.MINUTE
LATENESS = 120.0
# A task with no event for this long is no longer open (it was cut off without a ``task`` event).
TASK_IDLE_SECONDS = 3600.0
# The "top task" is the largest *running* open task: one with an event within this long (a
# task waiting for a human burns nothing and must not hide a loop behind its size).
TASK_RUNNING_SECONDS = 300


class Prices(Protocol):
    def llm_cost(self, model: str, *, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
                 cache_write_tokens: int = 0, reasoning_tokens: int = 0, provider: str | None = None,
                 at: float | None = None) -> float: ...

    def tool_cost(self, tool: str) -> float: ...

    def human_cost(self, minutes: float, hourly_rate: float | None = None) -> float: ...


class _Acc:
    """What one agent did so far in one open minute (mutable; frozen into an AgentMinute)."""

    __slots__ = ("inference", "tool_cost", "human", "tokens", "output_tokens", "llm_calls", "completed", "failed",
                 "abandoned", "outcomes", "tool_total", "tool_calls", "tool_costs", "models", "version", "workflows",
                 "at", "tasks", "ended")

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
        self.at = 0.0  # the time of the event being counted (set by Bucketer.place)
        self.tasks: dict[str, list[float]] = {}  # task id -> [tokens in the minute, its first event's time]
        self.ended: list[str] | None = None  # tasks whose ``task`` event is in the minute

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
            if self.ended is None:
                self.ended = [raw["task_id"]]
            else:
                self.ended.append(raw["task_id"])
            return 0
        elif etype == "outcome":
            self.outcomes += raw.get("count", 1)
            return 0
        else:
            self.human += cost
        task_id = raw.get("task_id")
        if task_id is not None:
            seen = self.tasks.get(task_id)
            if seen is None:
                self.tasks[task_id] = [float(tokens), self.at]
            else:
                seen[0] += tokens
                if self.at < seen[1]:
                    seen[1] = self.at
        return tokens

    def freeze(self, agent: str, namespace: str, minute: int, tasks: OpenTasks) -> series.AgentMinute:
        """The minute's bucket; ``tasks`` (the agent's open tasks) take the minute's task events first."""
        models, workflows = self.models, self.workflows
        largest, oldest = tasks.close_minute(self, minute)
        return _make_minute(
            agent, namespace, minute, self.inference, self.tool_cost, self.human, self.tokens, self.output_tokens,
            self.llm_calls, self.completed, self.failed, self.abandoned, self.outcomes,
            MappingProxyType(self.tool_calls) if self.tool_calls else series._EMPTY,
            MappingProxyType(self.tool_costs) if self.tool_costs else series._EMPTY,
            max(models, key=models.__getitem__) if models else None,
            self.version,
            max(workflows, key=workflows.__getitem__) if workflows else None,
            len(tasks.open), *largest, *oldest,
        )


_Reading = tuple[int, float, "str | None"]  # (tokens, age in seconds, task id) of one running task


class OpenTasks:
    """One agent's open tasks: task id -> [tokens so far, first event's time, last minute with an event]."""

    __slots__ = ("open", "_next_expiry")

    def __init__(self) -> None:
        self.open: dict[str, list[float]] = {}
        self._next_expiry = 0

    def close_minute(self, acc: _Acc, minute: int) -> tuple[_Reading, _Reading]:
        """Apply a closing minute's task events; of the tasks running at its end (an event in the last
        ``TASK_RUNNING_SECONDS``, to the minute), the largest and the oldest: (tokens, age, id) each;
        (0, 0.0, None) when none runs (a known zero, as the SDK exports it). O(open tasks)."""
        open_ = self.open
        for task_id, (tokens, first) in acc.tasks.items():
            task = open_.get(task_id)
            if task is None:
                open_[task_id] = [tokens, first, float(minute)]
            else:
                task[0] += tokens
                task[2] = float(minute)
                if first < task[1]:
                    task[1] = first
        if acc.ended is not None:
            for task_id in acc.ended:
                open_.pop(task_id, None)
        if minute >= self._next_expiry:  # at most once per 10 minutes: O(1) amortised
            self._next_expiry = minute + 600
            cutoff = minute - TASK_IDLE_SECONDS
            for task_id in [k for k, v in open_.items() if v[2] < cutoff]:
                del open_[task_id]
        running = minute - TASK_RUNNING_SECONDS
        largest: tuple[float, float, str] | None = None
        oldest: tuple[float, float, str] | None = None
        for task_id, (tokens, first, last) in open_.items():
            if last <= running:
                continue
            if largest is None or tokens > largest[0] or (tokens == largest[0] and first < largest[1]):
                largest = (tokens, first, task_id)
            if oldest is None or first < oldest[1] or (first == oldest[1] and tokens > oldest[0]):
                oldest = (tokens, first, task_id)
        end = minute + MINUTE
        return _reading(largest, end), _reading(oldest, end)


def _reading(task: tuple[float, float, str] | None, end: int) -> _Reading:
    return (0, 0.0, None) if task is None else (int(task[0]), round(end - task[1], 3), task[2])
_make_minute: Callable[..., series.AgentMinute] = series.make  # type: ignore[assignment]


class AgentState:
    """One agent as the bucketer knows it. ``ctx`` is free for the caller (replay keeps its
    per-agent policy state there); ``tool_prices``/``human_rate`` are set by the caller from
    the CostPolicy/AgentBudget that applies."""

    __slots__ = ("agent", "namespace", "labels", "open", "last_minute", "tool_prices", "human_rate", "ctx",
                 "_tool_cache", "tasks")

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
        self.tasks = OpenTasks()

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
        (counted in ``late``). ``add`` and replay's inlined loop both call it, then ``count`` on the
        accumulator (which reads the event's time from it)."""
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
        acc.at = ts
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
                out.append((st, acc.freeze(st.agent, st.namespace, minute, st.tasks)))
        return out

    def finish(self) -> list[series.AgentMinute]:
        """Close every open minute (end of input)."""
        return [am for _, am in self._finish()]

    def _finish(self) -> list[tuple[AgentState, series.AgentMinute]]:
        if self.watermark is None:
            return []
        end = max(self._pending, default=int(self.watermark // MINUTE) * MINUTE) + MINUTE
        return self._close(float(end))
