"""Labelled fleets of usage events: the test bed of the anomaly detectors.

    events, labels = build("tool_call_explosion", seed=7, agents=3)

``build`` returns a streaming iterator of usage events (dicts per the usage-event
contract, in time order, times as Unix seconds) and the list of anomalies injected into
them (:class:`Label`: kind, agent, namespace, onset, tool, model, previous_model). The same
name, seed and sizes give the same events and labels, byte for byte. Every ``llm`` and
``tool`` event carries ``cost_usd``, so nothing here depends on a price table.

Scenarios (``SCENARIOS``):

- ``normal``: steady Poisson traffic.
- ``model_update_spike``: one agent switches model; cost per task triples (labelled).
- ``model_update_cheaper``: one agent switches to a cheaper model (benign).
- ``runaway_loop``: one agent's work gets stuck in a loop whose context (tokens per call)
  and call rate grow while nothing completes (labelled), for 30 minutes.
- ``tool_call_explosion``: one tool's calls jump to ten times their rate (at least 40 a
  minute), failing retries, for 20 minutes (labelled).
- ``traffic_surge``: one agent's traffic triples within 3 minutes (benign).
- ``daily_cycle``: smooth sinusoidal traffic over 24 hours (benign).
- ``new_agent``: an agent appears and ramps up over 20 minutes (benign).
- ``mixed``: every agent draws its own case from all of the above but the daily cycle.

In every scenario but ``mixed`` the first agent gets the case and the others are normal.
Agents follow three profiles with realistic models, tools and outcomes: ``support``
(tickets), ``procurement`` (purchase decisions) and ``lead_gen`` (qualified leads).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

# 2026-11-02T00:00:00Z: a round start keeps the minutes aligned
START = 1_793_491_200.0
MINUTE = 60

SCENARIOS = ("normal", "model_update_spike", "model_update_cheaper", "runaway_loop",
             "tool_call_explosion", "traffic_surge", "daily_cycle", "new_agent", "mixed")
ANOMALIES = ("model_update_spike", "runaway_loop", "tool_call_explosion")
BENIGN = ("normal", "model_update_cheaper", "traffic_surge", "daily_cycle", "new_agent")

# USD per million input/output tokens (list prices; only used to set cost_usd)
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "o1": (15.0, 60.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-3-5-haiku": (0.8, 4.0),
}
PROVIDERS = {"gpt": "openai", "o1": "openai", "claude": "anthropic"}

SPIKE_RATIO = 3.0  # cost per LLM call after a spiking update, against before
EXPLOSION_RATIO = 10.0
EXPLOSION_MIN_RATE = 40.0  # calls per minute during an explosion, at least
SURGE_RATIO = 3.0
LOOP_MINUTES = 30
LOOP_GROWTH = 1.25  # calls per minute in a loop, minute over minute (up to 8x the usual rate)
HUMAN_USD_PER_MINUTE = 1.0  # 60 USD an hour
EXPLOSION_MINUTES = 20


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    calls_per_task: float  # mean, Poisson
    cost_usd: float
    step: str


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    namespace: str
    team: str
    workflows: tuple[str, ...]
    model: str
    spike_model: str  # a model update that triples cost per call
    cheaper_model: str  # a model update that lowers cost
    tasks_per_minute: float
    llm_calls: tuple[int, int]  # per task, inclusive
    input_tokens: int  # mean per call
    output_tokens: int
    tools: tuple[Tool, ...]
    duration_s: tuple[float, float]  # task duration range
    outcome: str
    outcome_prob: float
    outcome_value_usd: float
    fail_prob: float
    abandon_prob: float
    human_prob: float  # share of tasks with a human review
    human_minutes: float


PROFILES: dict[str, Profile] = {
    "support": Profile(
        name="support", namespace="support", team="cx", workflows=("refund", "triage"),
        model="gpt-4o-mini", spike_model="gpt-4.1-mini", cheaper_model="gpt-4.1-nano",
        tasks_per_minute=3.0, llm_calls=(2, 4), input_tokens=1500, output_tokens=250,
        tools=(Tool("crm.search", 1.2, 0.002, "lookup"), Tool("kb.search", 0.8, 0.001, "search"),
               Tool("ticket.update", 1.0, 0.0, "answer")),
        duration_s=(20.0, 100.0), outcome="resolved_ticket", outcome_prob=0.85,
        outcome_value_usd=0.0, fail_prob=0.05, abandon_prob=0.02, human_prob=0.05, human_minutes=4.0),
    "procurement": Profile(
        name="procurement", namespace="procurement", team="finance-ops", workflows=("purchase",),
        model="claude-sonnet-4", spike_model="claude-opus-4", cheaper_model="claude-3-5-haiku",
        tasks_per_minute=0.8, llm_calls=(4, 6), input_tokens=3000, output_tokens=500,
        tools=(Tool("erp.lookup", 1.5, 0.0, "lookup"), Tool("supplier.search", 1.0, 0.01, "search"),
               Tool("quote.request", 0.5, 0.05, "act")),
        duration_s=(60.0, 200.0), outcome="purchase_decision", outcome_prob=0.75,
        outcome_value_usd=120.0, fail_prob=0.06, abandon_prob=0.03, human_prob=0.2, human_minutes=6.0),
    "lead_gen": Profile(
        name="lead_gen", namespace="sales", team="growth", workflows=("qualify",),
        model="gpt-4o", spike_model="o1", cheaper_model="gpt-4o-mini",
        tasks_per_minute=2.0, llm_calls=(2, 4), input_tokens=2000, output_tokens=300,
        tools=(Tool("web.search", 2.0, 0.005, "search"), Tool("enrich.company", 0.7, 0.05, "enrich"),
               Tool("crm.create_lead", 0.4, 0.0, "act")),
        duration_s=(30.0, 150.0), outcome="qualified_lead", outcome_prob=0.4,
        outcome_value_usd=35.0, fail_prob=0.08, abandon_prob=0.02, human_prob=0.0, human_minutes=0.0),
}


@dataclasses.dataclass(frozen=True)
class Label:
    """One anomaly injected into a scenario: what a detector should find."""

    kind: str
    agent: str
    namespace: str
    onset: float  # Unix seconds
    tool: str | None = None
    model: str | None = None
    previous_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Case:
    """What happens to one agent in a scenario (times are Unix seconds)."""

    kind: str  # a scenario name but "mixed"
    at: float | None = None  # when the case starts
    model: str | None = None  # the model after an update
    token_scale: float = 1.0  # tokens per call after an update, against before
    tool: str | None = None
    extra_rate: float = 0.0  # extra calls per minute of ``tool`` during an explosion
    until: float | None = None


@dataclasses.dataclass(frozen=True)
class AgentPlan:
    name: str
    profile: Profile
    seed: str
    version: str
    rate_scale: float
    case: Case


def _call_cost(model: str, input_tokens: int, output_tokens: int) -> float:
    pin, pout = PRICES[model]
    return (input_tokens * pin + output_tokens * pout) / 1e6


def _mean_call_cost(profile: Profile, model: str) -> float:
    return _call_cost(model, profile.input_tokens, profile.output_tokens)


def _provider(model: str) -> str:
    for prefix, provider in PROVIDERS.items():
        if model.startswith(prefix):
            return provider
    return "unknown"


def default_minutes(name: str) -> int:
    return 24 * 60 if name == "daily_cycle" else 240


def plan(name: str, seed: int, *, agents: int = 1, start: float = START,
         minutes: int | None = None) -> tuple[list[AgentPlan], list[Label]]:
    """The agents of a scenario, each with its case, and the labels of the anomalies."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    if agents < 1:
        raise ValueError("agents must be at least 1")
    total = minutes if minutes is not None else default_minutes(name)
    rng = random.Random(f"scenario:{name}:{seed}:{agents}")
    profiles = list(PROFILES.values())
    plans: list[AgentPlan] = []
    labels: list[Label] = []
    mixed_kinds = [k for k in SCENARIOS if k not in ("mixed", "daily_cycle")]
    for i in range(agents):
        profile = profiles[(i + seed) % len(profiles)] if name != "mixed" else rng.choice(profiles)
        agent = f"{profile.name.replace('_', '-')}-agent-{i}"
        kind = name if i == 0 else "normal"
        if name == "mixed":
            kind = rng.choice(mixed_kinds)
        # anomalies start after a baseline long enough for every detector
        at = start + MINUTE * rng.randint(max(10, int(total * 0.45)), max(11, int(total * 0.6)))
        case = Case(kind="normal")
        if kind in ("model_update_spike", "model_update_cheaper"):
            new = profile.spike_model if kind == "model_update_spike" else profile.cheaper_model
            scale = (SPIKE_RATIO * _mean_call_cost(profile, profile.model) / _mean_call_cost(profile, new)
                     if kind == "model_update_spike" else 1.0)
            case = Case(kind=kind, at=at, model=new, token_scale=scale)
            if kind == "model_update_spike":
                labels.append(Label(kind, agent, profile.namespace, at, model=new,
                                    previous_model=profile.model))
        elif kind == "runaway_loop":
            case = Case(kind=kind, at=at, until=at + LOOP_MINUTES * MINUTE)
            labels.append(Label(kind, agent, profile.namespace, at))
        elif kind == "tool_call_explosion":
            tool = rng.choice(profile.tools)
            base = profile.tasks_per_minute * tool.calls_per_task
            target = max(EXPLOSION_RATIO * base, EXPLOSION_MIN_RATE)
            case = Case(kind=kind, at=at, tool=tool.name, extra_rate=target - base,
                        until=at + EXPLOSION_MINUTES * MINUTE)
            labels.append(Label(kind, agent, profile.namespace, at, tool=tool.name))
        elif kind in ("traffic_surge", "daily_cycle"):
            case = Case(kind=kind, at=at)
        elif kind == "new_agent":
            case = Case(kind=kind, at=start + MINUTE * rng.randint(10, max(11, total // 4)))
        plans.append(AgentPlan(name=agent, profile=profile, seed=f"{name}:{seed}:{agents}:{i}",
                               version=f"1.{rng.randint(0, 9)}.{rng.randint(0, 20)}",
                               rate_scale=rng.uniform(0.7, 1.4), case=case))
    labels.sort(key=lambda lb: (lb.onset, lb.agent))
    return plans, labels


def build(name: str, seed: int, *, agents: int = 1, start: float = START,
          minutes: int | None = None) -> tuple[Iterator[dict[str, Any]], list[Label]]:
    """The events (time order, streaming) and the labels of scenario ``name``."""
    plans, labels = plan(name, seed, agents=agents, start=start, minutes=minutes)
    total = minutes if minutes is not None else default_minutes(name)
    end = start + total * MINUTE
    streams = [_agent_events(p, start, end) for p in plans]
    merged = heapq.merge(*streams, key=lambda e: e["time"])
    return merged, labels


# ---------------------------------------------------------------- one agent


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _rate_multiplier(case: Case, t: float, start: float) -> float:
    if case.kind == "traffic_surge" and case.at is not None and t >= case.at:
        ramp = min(1.0, (t - case.at) / (3 * MINUTE))
        return 1.0 + (SURGE_RATIO - 1.0) * ramp
    if case.kind == "daily_cycle":
        # peak mid-afternoon, trough at night: from 0.2x to 1.8x
        phase = 2 * math.pi * ((t - start) / 86400.0 - 0.375)
        return 1.0 + 0.8 * math.sin(phase)
    if case.kind == "new_agent" and case.at is not None:
        if t < case.at:
            return 0.0
        return min(1.0, 0.05 + (t - case.at) / (20 * MINUTE))
    return 1.0


class _Agent:
    def __init__(self, plan: AgentPlan, start: float) -> None:
        self.plan = plan
        self.p = plan.profile
        self.rng = random.Random(plan.seed)
        self.start = start
        self.heap: list[tuple[float, int, dict[str, Any]]] = []
        self.seq = itertools.count()
        self.tasks = itertools.count(1)
        self.base = {"agent": plan.name, "namespace": self.p.namespace,
                     "labels": {"team": self.p.team, "project": self.p.name,
                                "cost_center": f"CC-{1000 + len(self.p.name) * 7}"}}

    def push(self, t: float, event: dict[str, Any]) -> None:
        event = {"time": round(t, 3), **event, **self.base}
        heapq.heappush(self.heap, (event["time"], next(self.seq), event))

    def model_at(self, t: float) -> tuple[str, float, str]:
        case = self.plan.case
        if case.kind in ("model_update_spike", "model_update_cheaper") and case.at is not None \
                and t >= case.at and case.model is not None:
            return case.model, case.token_scale, self.plan.version + "-next"
        return self.p.model, 1.0, self.plan.version

    def stuck(self, t: float) -> bool:
        case = self.plan.case
        return (case.kind == "runaway_loop" and case.at is not None and case.until is not None
                and case.at <= t < case.until)

    def llm(self, t: float, task_id: str, workflow: str, step: str, input_scale: float = 1.0,
            noise: float = 0.2) -> None:
        model, scale, version = self.model_at(t)
        r = self.rng
        tin = max(1, int(r.gauss(self.p.input_tokens, self.p.input_tokens * noise) * scale * input_scale))
        tout = max(1, int(r.gauss(self.p.output_tokens, self.p.output_tokens * 0.3) * scale))
        self.push(t, {"type": "llm", "workflow": workflow, "task_id": task_id, "step": step,
                      "agent_version": version, "model": model, "provider": _provider(model),
                      "input_tokens": tin, "output_tokens": tout,
                      "cost_usd": round(_call_cost(model, tin, tout), 8)})

    def task(self, s: float) -> None:
        p, r = self.p, self.rng
        n = next(self.tasks)
        task_id = f"{self.plan.name}-t{n}"
        workflow = p.workflows[n % len(p.workflows)] if len(p.workflows) > 1 else p.workflows[0]
        d = r.uniform(*p.duration_s)
        calls = r.randint(*p.llm_calls)
        steps: list[tuple[float, str, Any]] = []
        for k in range(calls):
            steps.append((s + d * (k + r.random() * 0.5) / (calls + 0.5), "llm",
                          ("plan", "reason", "answer")[min(2, k)]))
        for tool in p.tools:
            for _ in range(_poisson(r, tool.calls_per_task)):
                steps.append((s + d * r.uniform(0.05, 0.95), "tool", tool))
        steps.sort(key=lambda x: x[0])
        for t, what, arg in steps:
            if self.stuck(t):
                return  # the task hangs: the loop holds the agent
            if what == "llm":
                self.llm(t, task_id, workflow, arg)
            else:
                tool = arg
                self.push(t, {"type": "tool", "workflow": workflow, "task_id": task_id, "step": tool.step,
                              "tool": tool.name, "cost_usd": tool.cost_usd, "status": "ok"})
        end = s + d
        if self.stuck(end):
            return
        u = r.random()
        status = ("failed" if u < p.fail_prob else
                  "abandoned" if u < p.fail_prob + p.abandon_prob else "completed")
        if p.human_prob > 0 and r.random() < p.human_prob:
            minutes = round(r.uniform(0.5, 2.0) * p.human_minutes, 2)
            self.push(end - 1.0, {"type": "human", "workflow": workflow, "task_id": task_id,
                                  "minutes": minutes, "cost_usd": round(minutes * HUMAN_USD_PER_MINUTE, 4)})
        self.push(end, {"type": "task", "workflow": workflow, "task_id": task_id, "status": status})
        if status == "completed" and r.random() < p.outcome_prob:
            ev: dict[str, Any] = {"type": "outcome", "workflow": workflow, "task_id": task_id,
                                  "outcome": p.outcome, "count": 1}
            if p.outcome_value_usd:
                ev["value_usd"] = p.outcome_value_usd
            self.push(end, ev)

    def loop_minute(self, m0: float) -> None:
        """One minute of the runaway loop: more calls each minute, each with a longer context."""
        case = self.plan.case
        assert case.at is not None
        j = int((m0 - case.at) // MINUTE)
        base_calls = self.p.tasks_per_minute * self.plan.rate_scale * sum(self.p.llm_calls) / 2
        calls = max(2, math.ceil(base_calls * min(8.0, LOOP_GROWTH ** j)))
        task_id = f"{self.plan.name}-loop"
        workflow = self.p.workflows[0]
        for k in range(calls):
            t = m0 + MINUTE * (k + self.rng.random() * 0.9) / calls
            # the context grows with every turn of the loop, up to a context window
            self.llm(t, task_id, workflow, "reason", input_scale=min(6.0, 1.0 + 0.15 * j + 0.01 * k),
                     noise=0.05)
        if case.until is not None and m0 + MINUTE >= case.until:
            self.push(case.until - 0.001, {"type": "task", "workflow": workflow, "task_id": task_id,
                                           "status": "abandoned"})

    def explosion_minute(self, m0: float) -> None:
        case = self.plan.case
        assert case.tool is not None
        tool = next(t for t in self.p.tools if t.name == case.tool)
        n = _poisson(self.rng, case.extra_rate * self.plan.rate_scale)
        for k in range(n):
            t = m0 + MINUTE * (k + self.rng.random()) / max(n, 1)
            self.push(t, {"type": "tool", "workflow": self.p.workflows[0],
                          "task_id": f"{self.plan.name}-retry-{int(m0)}", "step": tool.step,
                          "tool": tool.name, "cost_usd": tool.cost_usd, "status": "error"})

    def minute(self, m0: float) -> None:
        case = self.plan.case
        lam = self.p.tasks_per_minute * self.plan.rate_scale * _rate_multiplier(case, m0, self.start)
        if self.stuck(m0):
            self.loop_minute(m0)
        else:
            for _ in range(_poisson(self.rng, lam)):
                self.task(m0 + self.rng.random() * MINUTE)
        if (case.kind == "tool_call_explosion" and case.at is not None and case.until is not None
                and case.at <= m0 < case.until):
            self.explosion_minute(m0)


def _agent_events(plan: AgentPlan, start: float, end: float) -> Iterator[dict[str, Any]]:
    a = _Agent(plan, start)
    m0 = start
    while m0 < end:
        a.minute(m0)
        horizon = m0 + MINUTE
        while a.heap and a.heap[0][0] < horizon:
            yield heapq.heappop(a.heap)[2]
        m0 = horizon
    # tasks still running at the end of the scenario are cut off there
    while a.heap and a.heap[0][0] < end:
        yield heapq.heappop(a.heap)[2]


# ---------------------------------------------------------------- scoring


@dataclasses.dataclass
class Match:
    """Findings against labels: which labels were found (and how fast), which findings
    matched nothing (false positives)."""

    found: list[tuple[Label, Any]] = dataclasses.field(default_factory=list)  # (label, first finding)
    missed: list[Label] = dataclasses.field(default_factory=list)
    extra: list[Any] = dataclasses.field(default_factory=list)  # findings of no label

    def delays(self, kind: str | None = None) -> list[float]:
        """Seconds from each found label's onset to its first finding."""
        return [f.time - lb.onset for lb, f in self.found if kind is None or lb.kind == kind]


def match(labels: list[Label], found: list[Any], *, max_delay_s: dict[str, float] | float) -> Match:
    """Pair findings (objects with kind, agent, namespace, time, tool) with labels.

    A finding matches a label of the same kind, agent, namespace (and tool, when the label
    names one) made no earlier than ``onset - 60`` and no later than ``onset +
    max_delay_s[kind]``. Every finding matching a label is attributed to it (later ones
    count as extra: one problem should be one finding); findings of kinds other than the
    anomaly kinds are ignored.
    """
    out = Match()
    used: set[int] = set()
    for lb in labels:
        limit = max_delay_s[lb.kind] if isinstance(max_delay_s, dict) else max_delay_s
        hits = [i for i, f in enumerate(found)
                if i not in used and f.kind == lb.kind and f.agent == lb.agent
                and f.namespace == lb.namespace and (lb.tool is None or f.tool == lb.tool)
                and lb.onset - MINUTE <= f.time <= lb.onset + limit]
        if hits:
            first = min(hits, key=lambda i: found[i].time)
            used.add(first)
            out.found.append((lb, found[first]))
        else:
            out.missed.append(lb)
    out.extra = [f for i, f in enumerate(found) if i not in used and f.kind in ANOMALIES]
    return out
