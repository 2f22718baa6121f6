"""The simulated agent profiles: what each kind of agent does in a task, and what it costs.

Models are real ones that genai-prices knows, so real prices apply. Each profile names
the model its agents run and the pricier (or more verbose) model a "model update" moves
them to; ``spike_verbosity`` scales output tokens after the update so that the model cost
per task is about 3x (see ``tests/unit/simulate``).
"""

from __future__ import annotations

import dataclasses

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Action:
    """One action of a step: ``calls`` model or tool calls (a range, drawn per task)."""

    kind: str  # "llm" or "tool"
    calls: Range = (1, 1)
    tool: str | None = None
    input_tokens: Range = (0, 0)
    output_tokens: Range = (0, 0)
    cache_read_share: float = 0.0  # share of the prompt served from the cache
    amount_usd: Range | None = None  # money the tool call moves (purchases)
    error_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    actions: tuple[Action, ...]


@dataclasses.dataclass(frozen=True)
class Workflow:
    name: str
    weight: float
    steps: tuple[Step, ...]
    outcome: str
    outcome_rate: float  # chance that a completed task yields the outcome
    outcome_value_usd: Range | None = None
    human_rate: float = 0.0  # chance of a human-in-the-loop escalation
    human_minutes: Range = (0, 0)
    fail_rate: float = 0.03
    abandon_rate: float = 0.02


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    agent_prefix: str
    labels: dict[str, str]
    model: str
    spike_model: str
    spike_verbosity: float
    tasks_per_minute: float  # per agent
    workflows: tuple[Workflow, ...]
    explosion_tool: str  # the tool whose calls explode in the tool-call-explosion scenario
    action_gap_seconds: Range = (0.5, 3.0)


def _llm(calls: Range, inp: Range, out: Range, cache: float = 0.3) -> Action:
    return Action("llm", calls=calls, input_tokens=inp, output_tokens=out, cache_read_share=cache)


def _tool(tool: str, calls: Range = (1, 1), amount: Range | None = None, error_rate: float = 0.02) -> Action:
    return Action("tool", calls=calls, tool=tool, amount_usd=amount, error_rate=error_rate)


SUPPORT = Profile(
    name="support",
    agent_prefix="support-agent",
    labels={"team": "customer-experience", "project": "helpdesk", "cost_center": "CC-1042"},
    model="gpt-4o-mini",
    spike_model="gpt-4.1-mini",  # 2.67x the price per token
    spike_verbosity=1.4,
    tasks_per_minute=6.0,
    explosion_tool="crm.search",
    workflows=(
        Workflow("triage", 0.6, (
            Step("plan", (_llm((1, 1), (1500, 3000), (150, 400)),)),
            Step("lookup", (_tool("crm.search", (1, 2)), _tool("kb.lookup", (1, 3)))),
            Step("answer", (_llm((1, 2), (3000, 6000), (300, 700)),)),
            Step("update", (_tool("ticket.update"),)),
        ), outcome="resolved_ticket", outcome_rate=0.85),
        Workflow("refund", 0.4, (
            Step("plan", (_llm((1, 1), (2000, 3500), (200, 500)),)),
            Step("lookup", (_tool("crm.search", (1, 3)),)),
            Step("decide", (_llm((1, 2), (3000, 5000), (200, 600)),)),
            Step("update", (_tool("ticket.update", (1, 2)),)),
        ), outcome="resolved_ticket", outcome_rate=0.8, human_rate=0.003, human_minutes=(1, 3)),
    ),
)

PROCUREMENT = Profile(
    name="procurement",
    agent_prefix="procurement-agent",
    labels={"team": "finance-ops", "project": "sourcing", "cost_center": "CC-2210"},
    model="claude-3-5-haiku",
    spike_model="claude-sonnet-4",  # 3.75x the price per token
    spike_verbosity=0.8,
    tasks_per_minute=2.0,
    explosion_tool="vendor.search",
    workflows=(
        Workflow("sourcing", 1.0, (
            Step("plan", (_llm((1, 1), (1500, 2500), (200, 400)),)),
            Step("search", (_tool("vendor.search", (2, 4)),)),
            Step("quote", (_tool("quote.request", (1, 3)), _llm((1, 1), (3000, 6000), (300, 600)))),
            Step("purchase", (_tool("purchase.create", (1, 1), amount=(40.0, 2500.0), error_rate=0.01),)),
        ), outcome="purchase_decision", outcome_rate=0.9, outcome_value_usd=(20.0, 200.0),
            human_rate=0.002, human_minutes=(2, 5)),
    ),
)

LEAD_GENERATION = Profile(
    name="lead-generation",
    agent_prefix="leadgen-agent",
    labels={"team": "growth", "project": "pipeline", "cost_center": "CC-3307"},
    model="gpt-4.1-mini",
    spike_model="gpt-4.1",  # 5x the price per token
    spike_verbosity=0.6,
    tasks_per_minute=4.0,
    explosion_tool="enrich.premium",
    workflows=(
        Workflow("prospecting", 1.0, (
            Step("search", (_tool("web.search", (1, 3)), _llm((1, 1), (2000, 4000), (200, 500)))),
            Step("enrich", (_tool("enrich.basic", (1, 2)), _tool("enrich.premium", (0, 1)))),
            Step("qualify", (_llm((1, 2), (2500, 5000), (300, 800)),)),
        ), outcome="qualified_lead", outcome_rate=0.35, outcome_value_usd=(5.0, 50.0)),
    ),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SUPPORT, PROCUREMENT, LEAD_GENERATION)}

# USD per call of the simulated tools (the simulator's price table; override with --prices).
TOOL_PRICES_USD: dict[str, float] = {
    "crm.search": 0.0001,
    "kb.lookup": 0.00005,
    "ticket.update": 0.0,
    "vendor.search": 0.0002,
    "quote.request": 0.0005,
    "purchase.create": 0.001,
    "web.search": 0.0002,
    "enrich.basic": 0.0005,
    "enrich.premium": 0.003,
}

SCENARIOS = ("normal", "model-update-spike", "runaway-loop", "tool-call-explosion", "traffic-surge")
