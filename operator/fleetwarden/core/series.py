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
from collections.abc import Mapping
from types import MappingProxyType

MINUTE = 60

_EMPTY: Mapping[str, float] = MappingProxyType({})


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
