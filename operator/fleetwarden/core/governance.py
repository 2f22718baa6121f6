"""Governance hygiene: agents no AgentBudget governs, and budgets with no unit-economics target.

Pure: the caller lists the agents (offline: the agents seen in usage events, with the
labels the events carry; live: the agent Deployments and their labels) and the
AgentBudgets; :func:`ungoverned` says which agents are not under governance and why. The
operator may flag them with an Event; ``fleetwarden report`` lists them.

An agent is governed by a budget when both are in the same namespace and the budget's
selector matches the agent's labels (an empty selector matches every agent there), as
the operator decides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from fleetwarden.core import spec

NO_BUDGET = "no_budget"
NO_UNIT_ECONOMICS = "no_unit_economics"


@dataclasses.dataclass(frozen=True, slots=True)
class Agent:
    """An agent as governance sees it: its Deployment's name, namespace and labels."""

    name: str
    namespace: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    """One agent outside governance: ``problem`` is NO_BUDGET or NO_UNIT_ECONOMICS."""

    agent: str
    namespace: str
    problem: str
    message: str
    budgets: tuple[str, ...] = ()  # the budgets that govern it (for NO_UNIT_ECONOMICS)

    def to_dict(self) -> dict[str, object]:
        return {"agent": self.agent, "namespace": self.namespace, "problem": self.problem,
                "budgets": list(self.budgets), "message": self.message}


def governing(agent: Agent, budgets: Iterable[spec.AgentBudget]) -> list[spec.AgentBudget]:
    """The budgets whose selector matches ``agent`` in its namespace, by name."""
    found = [b for b in budgets
             if b.metadata.namespace == agent.namespace and b.spec.selector.matches(dict(agent.labels))]
    return sorted(found, key=lambda b: b.metadata.name)


def _has_target(budget: spec.AgentBudget) -> bool:
    return any(t.target_cost_usd is not None or t.human_baseline_usd is not None
               for t in budget.spec.unit_economics)


def ungoverned(agents: Iterable[Agent], budgets: Iterable[spec.AgentBudget]) -> list[Gap]:
    """Agents that no budget governs, or whose budgets set no unit-economics target.

    A unit-economics target is an entry of ``spec.unitEconomics`` with ``targetCostUSD`` or
    ``humanBaselineUSD``. Sorted by namespace, then agent; each agent once.
    """
    budget_list = list(budgets)
    gaps: dict[tuple[str, str], Gap] = {}
    seen: set[tuple[str, str]] = set()
    for agent in agents:
        key = (agent.namespace, agent.name)
        if key in seen:  # the first listing of an agent decides
            continue
        seen.add(key)
        matched = governing(agent, budget_list)
        if not matched:
            gaps[key] = Gap(agent.name, agent.namespace, NO_BUDGET,
                            f"no AgentBudget in namespace {agent.namespace!r} selects agent {agent.name!r}: "
                            "its spend has no cap and no kill switch")
        elif not any(_has_target(b) for b in matched):
            names = tuple(b.metadata.name for b in matched)
            gaps[key] = Gap(agent.name, agent.namespace, NO_UNIT_ECONOMICS,
                            f"budget {', '.join(names)} sets no unitEconomics target "
                            "(targetCostUSD or humanBaselineUSD): its cost per outcome cannot be judged",
                            names)
    return [gaps[k] for k in sorted(gaps)]
