"""A fleet of simulated agents built on the SDK: a discrete-event simulation.

Every agent and every task is a generator that yields the seconds until its next action;
one heap orders all of them, so a run is deterministic for a seed (ties are broken by
insertion order, and each agent draws from its own seeded random generator). The same
engine runs on a simulated clock as fast as it can (``run_fast``) or paced to the wall
clock (``run_realtime``), with the Prometheus metrics of the SDK served meanwhile.

Scenarios change one agent (the *target*, by default the first agent of the first
profile) from minute ``at`` on, or on request while the fleet runs
(:meth:`Fleet.request_scenario`, thread-safe: the Deployment follower uses it):

- ``model-update-spike``: it moves to its profile's pricier model (and a new
  ``agent_version``): model cost per task about 3x.
- ``runaway-loop``: it gets stuck in one task whose model calls come faster and grow
  larger every minute; no task completes.
- ``tool-call-explosion``: calls of its profile's explosion tool ramp up to about 12x
  per task within two minutes.
- ``traffic-surge``: 3x the tasks at the same cost per task (benign).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

from fleetwarden.core import pricing
from fleetwarden.sdk import _events, _guardrails, _tracker
from fleetwarden.simulate import profiles as prof

log = logging.getLogger("fleetwarden.simulate")

Process = Generator[float, None, None]

EXPLOSION_PEAK = 12.0
EXPLOSION_RAMP_SECONDS = 120.0
SURGE_FACTOR = 3.0


class SimAgent:
    """One simulated agent (one Deployment) and its state, which scenarios and the
    Deployment follower change."""

    def __init__(self, fleet: Fleet, profile: prof.Profile, index: int, name: str | None = None) -> None:
        self.fleet = fleet
        self.profile = profile
        self.name = name if name is not None else f"{profile.agent_prefix}-{index}"
        self.rng = random.Random(f"{fleet.seed}:{self.name}")
        self.tracker = _tracker.Tracker(
            self.name, namespace=fleet.namespace, labels=dict(profile.labels), registry=fleet.registry,
            events=fleet.events, price_table=fleet.prices, policy=fleet.policy, agent_version="v1",
            model=profile.model, clock=fleet.clock)
        self.model = profile.model
        self.verbosity = 1.0
        self.paused = False  # the Deployment is at zero replicas
        self.stuck = False  # in a runaway loop
        self.surge = False
        self.explosion_since: float | None = None
        self._ids = itertools.count(1)

    def next_task_id(self) -> str:
        return f"{self.name}-{next(self._ids)}"

    def use_model(self, model: str, *, version: str | None = None) -> None:
        """Run ``model`` from now on (its price applies; a profile's spike model is more verbose)."""
        if model == self.model:
            return
        self.model = model
        self.verbosity = self.profile.spike_verbosity if model == self.profile.spike_model else 1.0
        self.tracker.set_model(model)
        if version is not None:
            self.tracker.set_agent_version(version)

    def explosion_factor(self, now: float) -> float:
        if self.explosion_since is None or now < self.explosion_since:
            return 1.0
        ramp = min(1.0, (now - self.explosion_since) / EXPLOSION_RAMP_SECONDS)
        return 1.0 + (EXPLOSION_PEAK - 1.0) * ramp


class Fleet:
    """The simulated fleet. ``now`` is the simulated clock (Unix seconds)."""

    def __init__(self, *, profiles: Iterable[str] = tuple(prof.PROFILES), agents_per_profile: int = 2,
                 namespace: str = "default", scenario: str = "normal", at_minutes: float = 60.0,
                 target: str | None = None, seed: int = 1, start: float = 0.0, registry: Any | None = None,
                 events: _events.EventWriter | None = None, prices: pricing.PriceTable | None = None,
                 policy: _guardrails.GuardrailPolicy | None = None, names: Sequence[str] | None = None) -> None:
        """``names``: the agents' names in order (profile by profile), instead of
        ``<prefix>-<index>``; name them after their Deployments to follow those."""
        if scenario not in prof.SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        self.seed = seed
        self.namespace = namespace
        self.scenario = scenario
        self.start = start
        self.now = start
        self.at = start + at_minutes * 60.0
        self.registry = registry
        self.events = events
        self.prices = prices if prices is not None else pricing.PriceTable.from_config(
            {"tools": prof.TOOL_PRICES_USD})
        self.policy = policy
        self.clock: Callable[[], float] = lambda: self.now
        slots = [(prof.PROFILES[name], i) for name in profiles for i in range(agents_per_profile)]
        if names is not None:
            names = list(names)
            if len(names) != len(slots):
                raise ValueError(f"{len(names)} names for {len(slots)} agents "
                                 f"({agents_per_profile} per profile of {', '.join(profiles)})")
            if len(set(names)) != len(names):
                raise ValueError("agent names must differ")
        self.agents = [SimAgent(self, profile, i, None if names is None else names[k])
                       for k, (profile, i) in enumerate(slots)]
        if not self.agents:
            raise ValueError("no agents: give at least one profile and --agents >= 1")
        by_name = {a.name: a for a in self.agents}
        if target is not None and target not in by_name:
            raise ValueError(f"target {target!r} is not one of {', '.join(by_name)}")
        self.target = by_name[target] if target is not None else self.agents[0]
        for agent in self.agents:  # every agent is priced before the first event, not mid-run
            self.prices.rates(agent.profile.model)
            self.prices.rates(agent.profile.spike_model)
        self.open_tasks: dict[str, _tracker.Task] = {}
        self._heap: list[tuple[float, int, Process]] = []
        self._seq = itertools.count()
        self._requests: list[tuple[str, SimAgent]] = []  # scenarios asked for by another thread
        self._requests_lock = threading.Lock()
        for agent in self.agents:
            self._spawn(self._agent_loop(agent), 0.0)
        if scenario != "normal":
            self._spawn(self._scenario(self.scenario, self.target), self.at - start)

    # ---------------------------------------------------------------- the engine

    def _spawn(self, process: Process, delay: float) -> None:
        heapq.heappush(self._heap, (self.now + delay, next(self._seq), process))

    def request_scenario(self, scenario: str, agent_name: str) -> None:
        """Start ``scenario`` on the agent ``agent_name`` now (callable from any thread;
        the engine starts it before its next step)."""
        if scenario not in prof.SCENARIOS or scenario == "normal":
            raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(prof.SCENARIOS[1:])})")
        agent = next((a for a in self.agents if a.name == agent_name), None)
        if agent is None:
            raise ValueError(f"no agent {agent_name!r}")
        with self._requests_lock:
            self._requests.append((scenario, agent))

    def _take_requests(self) -> None:
        with self._requests_lock:
            requests, self._requests = self._requests, []
        for scenario, agent in requests:
            self._spawn(self._scenario(scenario, agent), 0.0)

    def _step(self) -> None:
        self._take_requests()
        when, _, process = heapq.heappop(self._heap)
        self.now = when
        try:
            delay = next(process)
        except StopIteration:
            return
        heapq.heappush(self._heap, (when + delay, next(self._seq), process))

    def run_fast(self, duration_seconds: float) -> None:
        """Simulate ``duration_seconds`` from the start as fast as possible, then finish."""
        end = self.start + duration_seconds
        while self._heap and self._heap[0][0] < end:
            self._step()
        self.now = max(self.now, end)
        self.finish()

    def run_realtime(self, duration_seconds: float | None, *, speed: float = 1.0,
                     stop: threading.Event | None = None) -> None:
        """Run paced to the wall clock (``speed`` simulated seconds per second) until
        ``duration_seconds`` of simulated time pass or ``stop`` is set, then finish."""
        stop = stop or threading.Event()
        wall0, sim0 = time.time(), self.now
        end = None if duration_seconds is None else sim0 + duration_seconds
        while self._heap and not stop.is_set():
            self._take_requests()
            when = self._heap[0][0]
            if end is not None and when >= end:
                break
            delay = wall0 + (when - sim0) / speed - time.time()
            if delay > 0:
                stop.wait(min(delay, 0.25))
                continue
            self._step()
        self.finish()

    def finish(self) -> None:
        """End every open task as abandoned (the agent stopped) and flush the events."""
        for task in list(self.open_tasks.values()):
            task.end("abandoned")
        self.open_tasks.clear()
        self._heap.clear()
        if self.events is not None:
            self.events.flush()

    # ---------------------------------------------------------------- processes

    def _scenario(self, scenario: str, agent: SimAgent) -> Process:
        if scenario == "model-update-spike":
            agent.use_model(agent.profile.spike_model, version="v2")
        elif scenario == "runaway-loop":
            agent.stuck = True
            self._spawn(self._runaway(agent), 0.0)
        elif scenario == "tool-call-explosion":
            agent.explosion_since = self.now
        elif scenario == "traffic-surge":
            agent.surge = True
        log.info("scenario %s started on %s at %.0f", scenario, agent.name, self.now)
        return
        yield 0.0  # a generator that does its work on the first step

    def _agent_loop(self, agent: SimAgent) -> Process:
        rng = agent.rng
        while True:
            if agent.paused or agent.stuck:
                yield 1.0
                continue
            rate = agent.profile.tasks_per_minute * (SURGE_FACTOR if agent.surge else 1.0) / 60.0
            yield rng.expovariate(rate)
            if not (agent.paused or agent.stuck):
                self._spawn(self._task(agent), 0.0)

    def _start(self, agent: SimAgent, workflow: str) -> _tracker.Task | None:
        try:
            task = agent.tracker.start_task(workflow, agent.next_task_id())
        except _guardrails.Halted:
            return None
        self.open_tasks[task.task_id] = task
        return task

    def _end(self, task: _tracker.Task, status: str) -> None:
        task.end(status)
        self.open_tasks.pop(task.task_id, None)

    def _task(self, agent: SimAgent) -> Process:
        rng = agent.rng
        profile = agent.profile
        workflow = rng.choices(profile.workflows, weights=[w.weight for w in profile.workflows])[0]
        task = self._start(agent, workflow.name)
        if task is None:
            return
        gap_lo, gap_hi = profile.action_gap_seconds
        try:
            for step in workflow.steps:
                for action in step.actions:
                    calls = rng.randint(int(action.calls[0]), int(action.calls[1]))
                    if action.tool == profile.explosion_tool:
                        factor = agent.explosion_factor(self.now)
                        if factor > 1.0:
                            calls = round(max(calls, 1) * factor)
                    for _ in range(calls):
                        yield rng.uniform(gap_lo, gap_hi)
                        if agent.paused:
                            self._end(task, "abandoned")
                            return
                        self._act(agent, task, step.name, action)
            yield rng.uniform(gap_lo, gap_hi)
            if agent.paused:
                self._end(task, "abandoned")
                return
            roll = rng.random()
            if roll < workflow.fail_rate:
                self._end(task, "failed")
                return
            if roll < workflow.fail_rate + workflow.abandon_rate:
                self._end(task, "abandoned")
                return
            if rng.random() < workflow.human_rate:
                task.human(round(rng.uniform(*workflow.human_minutes), 2))
            if rng.random() < workflow.outcome_rate:
                value = None if workflow.outcome_value_usd is None else round(
                    rng.uniform(*workflow.outcome_value_usd), 2)
                task.outcome(workflow.outcome, value_usd=value)
            self._end(task, "completed")
        except _guardrails.GuardrailError as exc:
            log.debug("%s: %s", agent.name, exc)
            self._end(task, "abandoned" if isinstance(exc, _guardrails.Halted) else "failed")

    def _act(self, agent: SimAgent, task: _tracker.Task, step: str, action: prof.Action) -> None:
        rng = agent.rng
        if action.kind == "llm":
            prompt = rng.randint(int(action.input_tokens[0]), int(action.input_tokens[1]))
            cached = int(prompt * action.cache_read_share * rng.random())
            output = int(rng.randint(int(action.output_tokens[0]), int(action.output_tokens[1])) * agent.verbosity)
            if self.policy is not None:
                task.check_llm(prompt + output)
            task.llm_call(agent.model, input_tokens=prompt - cached, output_tokens=output,
                          cache_read_tokens=cached, step=step)
            return
        assert action.tool is not None
        amount = None if action.amount_usd is None else round(rng.uniform(*action.amount_usd), 2)
        status = "error" if rng.random() < action.error_rate else "ok"
        task.tool_call(action.tool, status=status, amount_usd=amount, step=step, check=self.policy is not None)

    def _runaway(self, agent: SimAgent) -> Process:
        """One task that never ends: model calls every ``8 / 1.35^m`` s (at least 0.5 s) of
        ``3000 * 1.25^m`` input tokens (at most 200k), ``m`` minutes into the loop."""
        rng = agent.rng
        task = self._start(agent, agent.profile.workflows[0].name)
        if task is None:
            return
        began = self.now
        try:
            while True:
                minutes = (self.now - began) / 60.0
                yield max(0.5, 8.0 / 1.35 ** minutes) * rng.uniform(0.9, 1.1)
                if agent.paused:
                    self._end(task, "abandoned")
                    agent.stuck = False
                    return
                minutes = (self.now - began) / 60.0
                prompt = min(200_000, int(3000 * 1.25 ** minutes * rng.uniform(0.9, 1.1)))
                if self.policy is not None:
                    task.check_llm(prompt + prompt // 8)
                task.llm_call(agent.model, input_tokens=prompt, output_tokens=prompt // 8, step="loop")
        except _guardrails.GuardrailError as exc:
            log.debug("%s: %s", agent.name, exc)
            self._end(task, "failed")
            agent.stuck = False
