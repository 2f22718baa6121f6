"""A second, independent generator of labelled fleets: the held-out test bed of the detectors.

    events, fleet = build(seed=1003)          # 25 agents, 6 hours
    fleet.labels   # what a detector must find: kind, agent, onset (and tool / models)
    fleet.benign   # benign changes that must raise nothing: shape, agent, onset

It shares nothing with ``fleetwarden.simulate`` or ``core/scenarios.py`` (``.importlinter``
forbids the import): its own model catalogue and prices, and other distributions:

- task sizes are heavy-tailed, lognormal or Pareto per agent (median 1, capped); a large
  task has more model calls *and* larger contexts, and its context grows call after call
  (the conversation accumulates) up to the model's context window; calls stop at the agent's
  turn limit (15-60, as agent frameworks have), which only a loop ignores;
- agents run one model or route each task to one of two models all the time;
- traffic has Poisson bursts (2-4x for minutes), a slow trend, and agents from one task in
  ten minutes to six a minute; model and tool latencies differ per agent; some tasks wait
  for a human (open for long, burning nothing).

Each agent carries at most one *shape* from ``onset`` on:

======================  ===================  ====================================================
shape                   label kind           what happens
======================  ===================  ====================================================
``task_loop``           runaway_loop         one task loops (calls back to back, context constant
                                             or growing) while the agent's other tasks complete
``retry_storm``         runaway_loop         every task retries at a fixed backoff, nothing
                                             completes: a plateau of tokens, no rise
``loop_accelerating``   runaway_loop         the agent is stuck, calls and context growing
``spike_slow``          model_update_spike   declared model + version change, cost per task
                                             2.2-4x, on an agent with a task every 2-7 minutes
``spike_busy``          model_update_spike   the same on an agent with 1-6 tasks a minute
``spike_surge``         model_update_spike   the same while its traffic surges 3-5x
``tool_ramp``           tool_call_explosion  one tool's calls ramp up 10-20x over 8-12 minutes
``cost_shift``          cost_shift           cost per task 2.2-4x, no declared change (a bigger
                                             prompt, or more calls per task)
``pricier_model``       (benign)             declared change, 1.2-1.3x cost per task
``cheaper_model``       (benign)             declared change, 0.3-0.7x
``idle_return``         (benign)             no traffic for an hour, then as before
``new_tool``            (benign)             a tool never called before, 0.5-3 calls a task
``traffic_surge``       (benign)             3-5x the tasks within minutes, for 40-90 minutes
``newcomer``            (benign)             a new agent appears and ramps up
======================  ===================  ====================================================

Heavy-tailed costs and two-model agents are everywhere, not shapes of one agent.

Seeds are split once and for all (docs/detectors.md, "Evaluation"): ``TUNING_SEEDS`` may be
used while choosing detectors and parameters; ``HELD_OUT_SEEDS`` only to report figures of
a settled version. The same seed and sizes give the same events, byte for byte.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

MINUTE = 60
START = 1_801_008_000.0  # 2027-01-26T00:00:00Z, a round minute

TUNING_SEEDS = range(0, 1000)
HELD_OUT_SEEDS = range(1000, 2000)

POSITIVE = {
    "task_loop": "runaway_loop", "retry_storm": "runaway_loop", "loop_accelerating": "runaway_loop",
    "spike_slow": "model_update_spike", "spike_busy": "model_update_spike", "spike_surge": "model_update_spike",
    "tool_ramp": "tool_call_explosion", "cost_shift": "cost_shift",
}
NEGATIVE = ("pricier_model", "cheaper_model", "idle_return", "new_tool", "traffic_surge", "newcomer")
SHAPES = (*POSITIVE, *NEGATIVE)

# name -> USD per million input, output tokens (a catalogue of its own)
MODELS: dict[str, tuple[float, float]] = {
    "lumen-nano": (0.08, 0.3), "lumen-mini": (0.25, 1.0), "lumen-pro": (1.5, 6.0), "lumen-ultra": (8.0, 30.0),
    "quill-s": (0.5, 1.5), "quill-m": (2.0, 8.0), "quill-l": (6.0, 24.0), "basalt-7": (0.15, 0.15),
    "basalt-70": (0.9, 0.9), "basalt-400": (4.0, 4.0),
}
CONTEXT_WINDOW = 128_000  # input tokens of one call, at most (every model of the catalogue)
TEAMS = ("claims", "billing", "research", "ops", "growth")
ROLES = ("intake", "matcher", "triage", "writer", "analyst", "router", "auditor", "scout")
TOOLS = ("db.query", "search.web", "docs.fetch", "crm.read", "crm.write", "mail.send", "ocr.scan", "sheet.update",
         "vector.lookup", "pay.check", "geo.lookup", "calendar.book")


@dataclasses.dataclass(frozen=True)
class Label:
    """An injected anomaly: what a detector must find."""

    kind: str
    agent: str
    namespace: str
    onset: float
    shape: str
    tool: str | None = None
    model: str | None = None
    previous_model: str | None = None
    tasks_per_minute: float = 0.0  # the agent's usual traffic (time-to-detect goals depend on it)


@dataclasses.dataclass(frozen=True)
class Benign:
    """An injected benign change: nothing may be found on its agent because of it."""

    shape: str
    agent: str
    namespace: str
    onset: float


@dataclasses.dataclass
class Agent:
    """One agent's habits and its shape (times are Unix seconds)."""

    name: str
    namespace: str
    workflow: str
    rate: float  # tasks per minute
    model: str
    second: str | None  # a second model it routes some tasks to, all the time
    second_share: float
    ctx: float  # mean input tokens of a task's first call
    out_ratio: float  # output tokens per input token
    growth: float  # context growth per call within a task (share of the first call's)
    calls: float  # mean model calls of a median task
    split: float  # how a task's size splits: size**split more calls, size**(1-split) bigger contexts
    tail: tuple[str, float]  # ("lognormal", sigma) or ("pareto", alpha)
    cap: float  # the largest task size
    max_turns: int  # model calls of one task, at most (the agent framework's turn limit; a loop ignores it)
    latency: float  # seconds per model call
    tools: tuple[tuple[str, float, float], ...]  # (tool, calls per median task, USD per call)
    outcome_prob: float
    fail_prob: float
    human_prob: float
    version: str
    bursts: tuple[tuple[float, float, float], ...]  # (start, end, factor)
    trend: tuple[float, float]  # amplitude, phase of a slow cycle
    shape: str | None = None
    at: float = 0.0
    until: float = 0.0
    factor: float = 1.0  # the shape's size: cost factor, ramp peak, loop pace, retry backoff
    variant: float = 0.0  # a second draw of the shape (loop growth, retries)
    surge: float = 1.0  # traffic multiplier from ``at`` to ``until`` (traffic_surge, spike_surge)
    ramp: float = 1.0  # minutes to reach it (or the tool ramp's peak, or a newcomer's full traffic)
    tool: str | None = None
    new_model: str | None = None
    token_scale: float = 1.0  # tokens per call after the change (a declared model change, cost_shift)
    calls_scale: float = 1.0  # model calls per task after it


@dataclasses.dataclass
class Fleet:
    seed: int
    start: float
    minutes: int
    agents: list[Agent]
    labels: list[Label]
    benign: list[Benign]


def _blended(model: str, out_ratio: float) -> float:
    pin, pout = MODELS[model]
    return (pin + out_ratio * pout) / 1e6


def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _rate_for(shape: str | None, rng: random.Random) -> float:
    if shape == "spike_slow":
        return rng.uniform(1 / 7, 1 / 2)
    if shape in ("spike_busy", "spike_surge", "tool_ramp", "retry_storm", "loop_accelerating"):
        return _loguniform(rng, 1.0, 6.0)
    return _loguniform(rng, 0.1, 6.0)


def _agent(rng: random.Random, i: int, shape: str | None, start: float, minutes: int) -> Agent:
    team = TEAMS[i % len(TEAMS)]
    model = rng.choice(list(MODELS))
    second = rng.choice([m for m in MODELS if m != model]) if rng.random() < 0.3 else None
    tail = ("lognormal", rng.uniform(0.5, 1.2)) if rng.random() < 0.6 else ("pareto", rng.uniform(1.4, 2.5))
    n_tools = rng.randint(1, 5)
    tools = tuple((t, rng.uniform(0.2, 2.0), rng.choice([0.0, 0.0, 0.001, 0.005, 0.02]))
                  for t in rng.sample(TOOLS[:-2], n_tools))
    end = start + minutes * MINUTE
    bursts = []
    t = start + rng.expovariate(1 / 7200)
    while t < end:
        length = rng.uniform(3, 15) * MINUTE
        bursts.append((t, t + length, rng.uniform(2.0, 4.0)))
        t += length + rng.expovariate(1 / 7200)
    return Agent(
        name=f"{team}-{ROLES[(i // len(TEAMS)) % len(ROLES)]}-{i:02d}", namespace=team,
        workflow=rng.choice(("review", "resolve", "enrich", "draft", "match")), rate=_rate_for(shape, rng),
        model=model, second=second, second_share=rng.uniform(0.2, 0.5), ctx=_loguniform(rng, 600, 8000),
        out_ratio=rng.uniform(0.05, 0.3), growth=rng.uniform(0.0, 0.3), calls=rng.uniform(1.5, 8.0),
        split=rng.uniform(0.3, 0.8), tail=tail, cap=rng.uniform(20, 60), max_turns=rng.randint(15, 60),
        latency=rng.uniform(1.5, 10.0),
        tools=tools, outcome_prob=rng.uniform(0.3, 0.95), fail_prob=rng.uniform(0.0, 0.06),
        human_prob=rng.choice([0.0, 0.0, 0.05, 0.2]), version=f"{rng.randint(1, 4)}.{rng.randint(0, 30)}.0",
        bursts=tuple(bursts), trend=(rng.uniform(0.0, 0.5), rng.uniform(0, 2 * math.pi)))


def _pick_model(rng: random.Random, a: Agent, factor: float) -> tuple[str, float]:
    """A new model for a declared change and the token scale that makes cost per call ``factor``x."""
    old = _blended(a.model, a.out_ratio)
    choices = [m for m in MODELS if m not in (a.model, a.second)]
    rng.shuffle(choices)
    for m in choices:
        scale = factor * old / _blended(m, a.out_ratio)
        if 0.4 <= scale <= 2.5:
            return m, scale
    # none in range: the model needing the smallest change of verbosity
    m = min(choices, key=lambda c: abs(math.log(factor * old / _blended(c, a.out_ratio))))
    return m, factor * old / _blended(m, a.out_ratio)


def _shape(rng: random.Random, a: Agent, shape: str, start: float, minutes: int) -> Label | Benign:
    """Give agent ``a`` its shape; its label (or benign record)."""
    a.shape = shape
    lo = 90 if shape != "newcomer" else 20
    a.at = start + MINUTE * rng.randint(lo, max(lo + 1, minutes - 75))
    a.until = a.at + MINUTE * rng.uniform(40, 90)
    kind = POSITIVE.get(shape)
    if shape in ("spike_slow", "spike_busy", "spike_surge", "pricier_model", "cheaper_model"):
        a.second = None  # a declared change of a one-model agent (two-model agents are plain)
        a.factor = {"pricier_model": rng.uniform(1.2, 1.3), "cheaper_model": rng.uniform(0.3, 0.7)}.get(
            shape, rng.uniform(2.2, 4.0))
        # a spike is pricier calls, or (three in ten) a chattier model: more calls, a little pricier
        a.calls_scale = rng.uniform(2.0, 2.5) if shape in POSITIVE and rng.random() < 0.3 else 1.0
        a.new_model, a.token_scale = _pick_model(rng, a, a.factor / a.calls_scale)
        if shape == "spike_surge":
            a.surge, a.ramp = rng.uniform(3.0, 5.0), rng.uniform(1.0, 3.0)
    elif shape == "cost_shift":
        a.factor = rng.uniform(2.2, 4.0)
        a.calls_scale, a.token_scale = (a.factor, 1.0) if rng.random() < 0.5 else (1.0, a.factor)
    elif shape == "task_loop":
        a.variant = rng.choice([0.0, rng.uniform(0.02, 0.15)])  # context growth per call of the loop
        a.factor = rng.uniform(1.0, 3.0)  # seconds between calls, in multiples of the agent's latency
    elif shape == "retry_storm":
        a.factor = rng.uniform(5.0, 20.0)  # backoff seconds
        a.variant = max(4, round(rng.uniform(2.5, 6.0) * a.calls))  # retries before a task fails
    elif shape == "tool_ramp":
        a.tool = rng.choice(a.tools)[0]
        a.factor = rng.uniform(10.0, 20.0)
        a.ramp = rng.uniform(8.0, 12.0)
    elif shape == "new_tool":
        a.tool = TOOLS[-1] if rng.random() < 0.5 else TOOLS[-2]
        a.factor = rng.uniform(0.5, 3.0)
    elif shape == "traffic_surge":
        a.surge, a.ramp = rng.uniform(3.0, 5.0), rng.uniform(1.0, 5.0)
    elif shape == "idle_return":
        a.until = a.at + 60 * MINUTE
    elif shape == "newcomer":
        a.ramp = rng.uniform(5.0, 20.0)
    if kind is None:
        return Benign(shape, a.name, a.namespace, a.at)
    model_change = shape.startswith("spike")
    return Label(kind, a.name, a.namespace, a.at, shape, tool=a.tool if shape == "tool_ramp" else None,
                 model=a.new_model if model_change else None, previous_model=a.model if model_change else None,
                 tasks_per_minute=a.rate)


def plan(seed: int, *, agents: int = 25, hours: float = 6.0, start: float = START,
         shapes: tuple[str, ...] = SHAPES) -> Fleet:
    """The agents of fleet ``seed`` with their shapes, and its labels. Every shape in
    ``shapes`` is given to one agent (as long as there are agents); the rest are plain."""
    if agents < 1 or hours <= 0:
        raise ValueError("a fleet needs at least one agent and some hours")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape {unknown[0]!r}; one of {', '.join(SHAPES)}")
    minutes = int(hours * 60)
    rng = random.Random(f"fleetgen:{seed}:{agents}:{minutes}")
    given: list[str | None] = [*shapes[:agents]] + [None] * max(0, agents - len(shapes))
    rng.shuffle(given)
    fleet = Fleet(seed=seed, start=start, minutes=minutes, agents=[], labels=[], benign=[])
    for i, shape in enumerate(given):
        a = _agent(rng, i, shape, start, minutes)
        fleet.agents.append(a)
        if shape is not None:
            record = _shape(rng, a, shape, start, minutes)
            (fleet.labels if isinstance(record, Label) else fleet.benign).append(record)  # type: ignore[arg-type]
    fleet.labels.sort(key=lambda lb: (lb.onset, lb.agent))
    fleet.benign.sort(key=lambda b: (b.onset, b.agent))
    return fleet


def build(seed: int, **kw: Any) -> tuple[Iterator[dict[str, Any]], Fleet]:
    """The events (time order, streaming) and the plan of fleet ``seed`` (see :func:`plan`)."""
    fleet = plan(seed, **kw)
    end = fleet.start + fleet.minutes * MINUTE
    streams = [_Run(a, fleet.start, end, f"{seed}:{i}").events() for i, a in enumerate(fleet.agents)]
    return heapq.merge(*streams, key=lambda e: e["time"]), fleet


# ---------------------------------------------------------------- one agent


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class _Run:
    """The events of one agent."""

    def __init__(self, a: Agent, start: float, end: float, seed: str) -> None:
        self.a = a
        self.start = start
        self.end = end
        self.rng = random.Random(seed)
        self.heap: list[tuple[float, int, dict[str, Any]]] = []
        self.seq = itertools.count()
        self.ids = itertools.count(1)
        self.base = {"agent": a.name, "namespace": a.namespace, "labels": {"team": a.namespace}}

    def push(self, t: float, ev: dict[str, Any]) -> None:
        ev = {"time": round(t, 3), **ev, **self.base}
        heapq.heappush(self.heap, (ev["time"], next(self.seq), ev))

    def events(self) -> Iterator[dict[str, Any]]:
        a = self.a
        m0 = self.start
        if a.shape in ("task_loop", "loop_accelerating"):
            self.loop(a.at)
        while m0 < self.end:
            self.minute(m0)
            horizon = m0 + MINUTE
            while self.heap and self.heap[0][0] < horizon:
                yield heapq.heappop(self.heap)[2]
            m0 = horizon
        while self.heap and self.heap[0][0] < self.end:
            yield heapq.heappop(self.heap)[2]

    # ------------------------------------------------------------ traffic

    def multiplier(self, t: float) -> float:
        a = self.a
        amp, phase = a.trend
        x = 1.0 + amp * math.sin(phase + 2 * math.pi * (t - self.start) / 86400.0)
        for b0, b1, f in a.bursts:
            if b0 <= t < b1:
                x *= f
        if a.shape is None or t < a.at:
            return 0.0 if a.shape == "newcomer" else x
        if a.surge != 1.0 and t < a.until:
            return x * (1 + (a.surge - 1) * min(1.0, (t - a.at) / (a.ramp * MINUTE)))
        if a.shape == "idle_return" and t < a.until:
            return 0.0
        if a.shape == "newcomer":
            return x * min(1.0, 0.1 + (t - a.at) / (a.ramp * MINUTE))
        if a.shape == "loop_accelerating" and t < a.until:
            return 0.0  # the agent is stuck in its loop
        return x

    def minute(self, m0: float) -> None:
        a, rng = self.a, self.rng
        for _ in range(_poisson(rng, a.rate * self.multiplier(m0))):
            self.task(m0 + rng.random() * MINUTE)
        if a.shape == "tool_ramp" and a.at <= m0 < a.until:
            self.ramp_minute(m0)

    # ------------------------------------------------------------ one task

    def size(self) -> float:
        a, rng = self.a, self.rng
        kind, p = a.tail
        if kind == "lognormal":
            s = math.exp(rng.gauss(0.0, p))
        else:
            s = 2 ** (-1 / p) / max(1e-12, 1 - rng.random()) ** (1 / p)  # Pareto with median 1
        return min(s, a.cap)

    def shifted(self, t: float) -> bool:
        a = self.a
        return a.shape is not None and t >= a.at and (
            a.shape in ("spike_slow", "spike_busy", "spike_surge", "pricier_model", "cheaper_model", "cost_shift"))

    def task(self, s: float) -> None:
        a, rng = self.a, self.rng
        task_id = f"{a.name}-{next(self.ids)}"
        storm = a.shape == "retry_storm" and a.at <= s < a.until
        if storm:
            self.retries(s, task_id)
            return
        size = self.size()
        model = a.second if a.second is not None and rng.random() < a.second_share else a.model
        scale, calls_scale, version = 1.0, 1.0, a.version
        if self.shifted(s):
            scale, calls_scale = a.token_scale, a.calls_scale
            if a.new_model is not None:
                model, version = a.new_model, a.version + "-next"
        n = min(a.max_turns, 1 + _poisson(rng, max(0.0, a.calls * calls_scale * size ** a.split - 1)))
        first = a.ctx * size ** (1 - a.split) * scale
        t = s
        tools = list(a.tools)
        if a.shape == "new_tool" and s >= a.at and a.tool is not None:
            tools.append((a.tool, a.factor, 0.001))
        for k in range(n):
            t += a.latency * rng.uniform(0.5, 1.5)
            self.llm(t, task_id, model, first * (1 + a.growth * k) * rng.uniform(0.8, 1.25), version)
            for tool, per_task, cost in tools:
                for _ in range(_poisson(rng, per_task * size ** a.split / n)):
                    t += rng.uniform(0.3, 4.0)
                    self.push(t, {"type": "tool", "workflow": a.workflow, "task_id": task_id, "tool": tool,
                                  "cost_usd": cost, "status": "ok"})
        if a.human_prob and rng.random() < a.human_prob:
            minutes = rng.uniform(2, 30)
            t += minutes * MINUTE
            self.push(t, {"type": "human", "workflow": a.workflow, "task_id": task_id, "minutes": round(minutes, 2),
                          "cost_usd": round(minutes, 2)})
        self.end_task(t + rng.uniform(0.5, 3.0), task_id)

    def end_task(self, t: float, task_id: str, status: str | None = None) -> None:
        a, rng = self.a, self.rng
        if status is None:
            status = "failed" if rng.random() < a.fail_prob else "completed"
            if a.shape == "retry_storm" and a.at <= t < a.until:
                status = "failed"  # what was open when the storm began fails in it too
        self.push(t, {"type": "task", "workflow": a.workflow, "task_id": task_id, "status": status})
        if status == "completed" and rng.random() < a.outcome_prob:
            self.push(t, {"type": "outcome", "workflow": a.workflow, "task_id": task_id, "outcome": "done",
                          "count": 1})

    def llm(self, t: float, task_id: str, model: str, tokens_in: float, version: str) -> None:
        a = self.a
        tin = max(1, int(min(tokens_in, CONTEXT_WINDOW)))
        tout = max(1, int(tokens_in * a.out_ratio * self.rng.uniform(0.7, 1.3)))
        pin, pout = MODELS[model]
        self.push(t, {"type": "llm", "workflow": a.workflow, "task_id": task_id, "agent_version": version,
                      "model": model, "input_tokens": tin, "output_tokens": tout,
                      "cost_usd": round((tin * pin + tout * pout) / 1e6, 8)})

    # ------------------------------------------------------------ shapes

    def loop(self, s: float) -> None:
        """One task that loops from ``s`` to ``until``: calls back to back; the agent's other
        tasks go on (``task_loop``), or the agent is stuck and the loop accelerates."""
        a, rng = self.a, self.rng
        task_id = f"{a.name}-loop"
        t, k = s, 0
        while t < a.until:
            if a.shape == "task_loop":
                gap = a.latency * a.factor * rng.uniform(0.8, 1.2)
                tokens = a.ctx * (1 + a.variant * k)
            else:
                j = (t - s) / MINUTE
                gap = max(0.5, a.latency / 1.2 ** j) * rng.uniform(0.8, 1.2)
                tokens = a.ctx * min(8.0, 1 + 0.15 * j)
            t += gap
            self.llm(t, task_id, a.model, tokens * rng.uniform(0.9, 1.1), a.version)
            k += 1
        self.end_task(a.until, task_id, "abandoned")

    def retries(self, s: float, task_id: str) -> None:
        """A task of a retry storm: the same call every ``factor`` seconds until it gives up."""
        a, rng = self.a, self.rng
        tokens = a.ctx * self.size() ** (1 - a.split)
        t = s
        for _ in range(int(a.variant)):
            t += a.factor * rng.uniform(0.8, 1.2)
            self.llm(t, task_id, a.model, tokens, a.version)
        self.end_task(t, task_id, "failed")

    def ramp_minute(self, m0: float) -> None:
        """Extra calls of the ramping tool: up to ``factor`` x its usual rate (at least 30 a minute) over ``ramp`` minutes."""
        a, rng = self.a, self.rng
        per_task = next(p for tool, p, _ in a.tools if tool == a.tool)
        usual = a.rate * per_task
        target = max(a.factor * usual, 30.0)
        ramp = min(1.0, (m0 - a.at + MINUTE) / (a.ramp * MINUTE))
        n = _poisson(rng, (target - usual) * ramp)
        for k in range(n):
            t = m0 + MINUTE * (k + rng.random()) / n
            self.push(t, {"type": "tool", "workflow": a.workflow, "task_id": f"{a.name}-retry-{int(m0)}",
                          "tool": a.tool, "cost_usd": 0.0, "status": "error"})
