"""Per-agent, per-minute buckets: the one input every detector folds over.

Replay builds them from usage events; the operator builds them from PromQL range queries
(step 60 s). Both then run the same pure detector steps over them, so a finding in replay
is a finding in the cluster.

A minute with no activity for an agent is a bucket of zeros *when the data source says
so* (replay reads the complete record; Prometheus answered). When the source cannot say
(Prometheus down, stale), there is no bucket at all: callers pass ``None`` for the whole
input, and nothing destructive happens on unknown data.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from types import MappingProxyType

MINUTE = 60

_EMPTY: Mapping[str, float] = MappingProxyType({})
# The one empty tool mapping every minute without tool calls shares (a fleet's minutes are
# mostly without; one empty dict each is 64 bytes, 58 MB over 10,000 agents' 90 minutes x 2).
NO_TOOLS = _EMPTY


def shared(name: str) -> str:
    """One string object for a name however many answers repeat it (``sys.intern``). A decoded
    answer makes new strings each time, and the operator keeps every minute of each agent's
    lookback (its agent, namespace, model, workflow and tool names), fetch after fetch."""
    return sys.intern(name) if type(name) is str else name


def minute_of(ts: float) -> int:
    """The start (Unix seconds) of the minute that ``ts`` falls in."""
    return int(ts // MINUTE) * MINUTE


@dataclasses.dataclass(frozen=True, slots=True)
class AgentMinute:
    """What one agent did in one minute ``[minute, minute + 60)``."""

    agent: str
    namespace: str
    minute: int  # Unix seconds at the start of the minute
    inference_cost_usd: float = 0.0
    tool_cost_usd: float = 0.0
    human_cost_usd: float = 0.0
    tokens: int = 0  # input + output + cache + reasoning tokens of all model calls
    output_tokens: int = 0
    llm_calls: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    tasks_abandoned: int = 0
    outcomes: float = 0.0  # sum of outcome counts
    tool_calls: Mapping[str, float] = dataclasses.field(default_factory=lambda: _EMPTY)  # tool -> calls in the minute
    tool_costs: Mapping[str, float] = dataclasses.field(default_factory=lambda: _EMPTY)  # tool -> USD in the minute
    model: str | None = None  # the model with the most calls this minute (None: no call)
    version: str | None = None  # agent_version seen this minute, when the data names one
    workflow: str | None = None  # the workflow with the most activity this minute
    # Open tasks at the minute's end (None: the source does not say). Bounded per agent, so the
    # SDK exports them live too (docs/metrics.md): how many are open, and of the *running* ones
    # (an event within the last 5 minutes) the largest by tokens and the oldest, each with its
    # tokens so far and age (seconds since its first event); 0 when none runs. Their ids are
    # known in replay only.
    open_tasks: int | None = None
    largest_task_tokens: int | None = None
    largest_task_age: float | None = None
    largest_task_id: str | None = None
    oldest_task_tokens: int | None = None
    oldest_task_age: float | None = None
    oldest_task_id: str | None = None

    @property
    def cost_usd(self) -> float:
        return self.inference_cost_usd + self.tool_cost_usd + self.human_cost_usd

    @property
    def tasks_ended(self) -> int:
        return self.tasks_completed + self.tasks_failed + self.tasks_abandoned

    @property
    def output(self) -> float:
        """Output in the contract's sense: completed tasks plus outcomes."""
        return self.tasks_completed + self.outcomes


def _compile_maker() -> object:
    """``make(agent, namespace, minute, ...every field in order)``: an AgentMinute built without
    the frozen dataclass' ``__init__`` (one ``object.__setattr__`` per field): each slot is set
    through its descriptor. Same object, same fields; for the bucketer's hot path."""
    names = [f.name for f in dataclasses.fields(AgentMinute)]
    setters = {f"_set_{n}": getattr(AgentMinute, n).__set__ for n in names}
    params = ", ".join(names)
    defaults = ", ".join(f"{k}={k}" for k in setters)
    body = "".join(f"    _set_{n}(o, {n})\n" for n in names)
    src = f"def make({params}, *, _new=_new, _cls=_cls, {defaults}):\n    o = _new(_cls)\n{body}    return o\n"
    scope: dict[str, object] = {"_new": object.__new__, "_cls": AgentMinute, **setters}
    exec(src, scope)  # noqa: S102 - generated from the dataclass' own field names
    return scope["make"]


# make(agent, namespace, minute, inference_cost_usd, tool_cost_usd, human_cost_usd, tokens, output_tokens,
#      llm_calls, tasks_completed, tasks_failed, tasks_abandoned, outcomes, tool_calls, tool_costs, model,
#      version, workflow, open_tasks, largest_task_tokens, largest_task_age, largest_task_id,
#      oldest_task_tokens, oldest_task_age, oldest_task_id) -> AgentMinute: every field, positionally,
#      in declaration order
make = _compile_maker()
