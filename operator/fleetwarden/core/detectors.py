"""Anomaly detectors: pure folds over one agent's per-minute buckets.

    DetectorSet(params, agent, namespace).step(minute) -> [Finding, ...]

``DetectorSet`` runs three detectors over the same ordered stream of
:class:`~fleetwarden.core.series.AgentMinute` buckets of one agent:

- :class:`ModelUpdateSpike` (``model_update_spike``): cost per task (or per outcome)
  after the agent's model or ``agent_version`` changed, against a rolling baseline of the
  tasks before the change.
- :class:`RunawayLoop` (``runaway_loop``): the token rate accelerates while the agent
  produces no output.
- :class:`ToolCallExplosion` (``tool_call_explosion``): one tool's call rate jumps against
  its baseline, normalised by the agent's traffic so that a traffic surge is not one.

All state lives in these objects: the same minutes in give the same findings out; there is
no clock and no I/O, and nothing is shared between agents. Minutes come in order; a
missing minute means "no activity" (replay reads the complete record). A finding's time is
the end of the minute that revealed it; its onset is the detector's best estimate of when
the problem began, stable across refolds of the same data (the operator refolds its
lookback window every cycle and keys incidents by onset).

One problem is one finding: a detector reports a condition when it starts, and again only
after it has ended and started again, or when it has worsened by ``WORSEN_FACTOR`` since it
was last reported. ``docs/detectors.md`` explains each detector, its parameters and its
blind spots.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fleetwarden.core import findings, series, spec

MINUTE = series.MINUTE

# A lasting condition is reported again when its headline ratio reaches this multiple of
# the ratio last reported.
WORSEN_FACTOR = 2.0

# model_update_spike: a model that was the agent's main model within this many minutes is
# part of its usual mix (agents that call two models flip the per-minute main model), not
# an update.
KNOWN_MODEL_MINUTES = 60
# The rolling baseline never spans more than this many active minutes.
MAX_BASELINE_MINUTES = 24 * 60

# tool_call_explosion: a traffic measure (LLM calls, ended tasks) normalises the tool rate
# only when the baseline expects at least this many of them in the short window; fewer are
# too noisy to divide by.
MIN_EXPECTED_TRAFFIC = 5.0
# ... and the tool's calls per unit of traffic must have grown at least this share of
# ``ratio`` (half of it: the other half of the jump may be traffic noise, never the bulk).
NORMALISED_SHARE = 0.5

# runaway_loop: the agent's typical token rate is the mean over its active minutes among
# the TYPICAL_MINUTES before the window; with fewer than MIN_TYPICAL_MINUTES active
# minutes there is no typical rate yet.
TYPICAL_MINUTES = 60
MIN_TYPICAL_MINUTES = 5


def _finding(kind: str, m: series.AgentMinute, *, onset: float, action: spec.Action, message: str,
             evidence: dict[str, Any], tool: str | None = None, model: str | None = None,
             previous_model: str | None = None) -> findings.Finding:
    return findings.Finding(
        kind=kind,
        agent=m.agent,
        namespace=m.namespace,
        workflow=m.workflow,
        time=float(m.minute + MINUTE),
        onset=float(onset),
        action=action.value,
        tool=tool,
        model=model,
        previous_model=previous_model,
        message=message,
        evidence=evidence,
    )


def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None:
        return None
    if math.isinf(x):
        return x
    return round(x, digits)


def _ratio(after: float, before: float) -> float | None:
    """``after / before``; None when ``before`` is 0 (no baseline to compare with)."""
    if before <= 0:
        return None
    return after / before


# ---------------------------------------------------------------- model_update_spike


class _Change:
    """A model or version change being judged against the baseline before it."""

    __slots__ = ("onset", "model", "previous_model", "version", "previous_version",
                 "base_cost", "base_tasks", "base_outcomes", "cost", "tasks", "outcomes",
                 "reported")

    def __init__(self, onset: int, model: str | None, previous_model: str | None,
                 version: str | None, previous_version: str | None,
                 base: tuple[float, int, float]) -> None:
        self.onset = onset
        self.model = model
        self.previous_model = previous_model
        self.version = version
        self.previous_version = previous_version
        self.base_cost, self.base_tasks, self.base_outcomes = base
        self.cost = 0.0
        self.tasks = 0
        self.outcomes = 0.0
        self.reported: float | None = None


class ModelUpdateSpike:
    """Cost per task (or per outcome) after a model/version change against the baseline.

    Cost here is inference cost: the part a model change drives directly. Tool and human
    costs, lumpy and often larger for cheap models, would hide a tripled model bill. The
    baseline is the inference cost, ended tasks and outcomes of the last ``baseline_tasks``
    tasks before the change (totals over whole minutes: robust to task-level noise and
    to where task boundaries fall). From ``min_tasks`` tasks after the change on, the
    totals since the change are compared with it each minute; a ratio of at least
    ``ratio`` in cost per task, or in cost per outcome, is a spike. Judging stops once
    ``baseline_tasks`` tasks have ended after the change (the new model is then the
    baseline) or at the next change.
    """

    kind = "model_update_spike"

    def __init__(self, params: spec.ModelUpdateSpikeParams) -> None:
        self.p = params
        # (minute, cost, tasks ended, outcomes, main model) of recent active minutes
        self._hist: collections.deque[tuple[int, float, int, float, str | None]] = collections.deque()
        self._cost = 0.0
        self._tasks = 0
        self._outcomes = 0.0
        self._models_seen: dict[str, int] = {}  # model -> last minute it was the main model
        self._versions_seen: dict[str, int] = {}
        self._model: str | None = None
        self._version: str | None = None
        self._change: _Change | None = None
        self._next_prune = 0  # the seen maps are pruned at most once per KNOWN_MODEL_MINUTES

    def _baseline(self) -> tuple[float, int, float]:
        return (self._cost, self._tasks, self._outcomes)

    def _usual_model(self, exclude: str | None) -> str | None:
        counts = collections.Counter(mm for *_, mm in self._hist if mm is not None and mm != exclude)
        if not counts:
            return self._model if self._model != exclude else None
        best = max(counts.values())
        # ties: the most recent of the most common
        for *_, mm in reversed(self._hist):
            if mm is not None and counts.get(mm) == best:
                return mm
        return None  # pragma: no cover - counts is not empty

    def _recent(self, seen: Mapping[str, int], key: str, now: int) -> bool:
        last = seen.get(key)
        return last is not None and now - last <= KNOWN_MODEL_MINUTES * MINUTE

    def _detect_change(self, m: series.AgentMinute) -> None:
        model_changed = (m.model is not None and self._model is not None
                         and m.model != self._model
                         and not self._recent(self._models_seen, m.model, m.minute))
        version_changed = (m.version is not None and self._version is not None
                           and m.version != self._version
                           and not self._recent(self._versions_seen, m.version, m.minute))
        if not (model_changed or version_changed):
            return
        ch = self._change
        new_model = m.model if m.model is not None else self._model
        if ch is not None and ch.tasks < self.p.min_tasks:
            # A second change before the first could be judged (a rollout that changes
            # model and version in turn): one change, the first onset and baseline.
            ch.model = new_model
            if version_changed:
                ch.version = m.version
            return
        previous_model = self._usual_model(exclude=new_model) if model_changed else self._model
        self._change = _Change(
            onset=m.minute, model=new_model, previous_model=previous_model,
            version=m.version if version_changed else self._version,
            previous_version=self._version, base=self._baseline())

    def _remember(self, m: series.AgentMinute, cost: float, tasks: int, outcomes: float) -> None:
        t = m.minute
        model = m.model
        if model is not None:
            self._models_seen[model] = t
            self._model = model
        version = m.version
        if version is not None:
            self._versions_seen[version] = t
            self._version = version
        if t >= self._next_prune:
            # Entries older than KNOWN_MODEL_MINUTES are never "recent" again (minutes only move
            # forward), so pruning them is for memory only and need not happen every minute.
            self._next_prune = t + KNOWN_MODEL_MINUTES * MINUTE
            cutoff = t - KNOWN_MODEL_MINUTES * MINUTE
            for seen in (self._models_seen, self._versions_seen):
                if len(seen) > 1:
                    for key in [k for k, v in seen.items() if v < cutoff and k not in (self._model, self._version)]:
                        del seen[key]
        if cost == 0 and tasks == 0 and outcomes == 0 and model is None:
            return
        hist = self._hist
        hist.append((t, cost, tasks, outcomes, model))
        self._cost += cost
        self._tasks += tasks
        self._outcomes += outcomes
        first = hist[0]
        if self._tasks - first[2] < self.p.baseline_tasks and t - first[0] < MAX_BASELINE_MINUTES * MINUTE:
            return
        while hist and (
                self._tasks - hist[0][2] >= self.p.baseline_tasks
                or t - hist[0][0] >= MAX_BASELINE_MINUTES * MINUTE):
            _, c, n, o, _ = hist.popleft()
            self._cost -= c
            self._tasks -= n
            self._outcomes -= o
        if not hist:
            self._cost, self._tasks, self._outcomes = 0.0, 0, 0.0

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        model, version = m.model, m.version
        if (model is not None and model != self._model) or (version is not None and version != self._version):
            self._detect_change(m)
        cost = m.inference_cost_usd
        tasks = m.tasks_ended
        outcomes = m.outcomes
        self._remember(m, cost, tasks, outcomes)
        ch = self._change
        if ch is None:
            return []
        ch.cost += cost
        ch.tasks += tasks
        ch.outcomes += outcomes
        out: list[findings.Finding] = []
        if ch.tasks >= self.p.min_tasks:
            f = self._judge(ch, m)
            if f is not None:
                out.append(f)
        if ch.tasks >= max(self.p.baseline_tasks, self.p.min_tasks) or ch.base_tasks < self.p.min_tasks:
            self._change = None  # settled, or no baseline to judge against (a new agent)
        return out

    def _judge(self, ch: _Change, m: series.AgentMinute) -> findings.Finding | None:
        if ch.base_tasks <= 0 or ch.base_cost <= 0:
            return None
        per_task_before = ch.base_cost / ch.base_tasks
        per_task_after = ch.cost / ch.tasks
        task_ratio = per_task_after / per_task_before
        outcome_ratio = None
        per_outcome_before = per_outcome_after = None
        if ch.base_outcomes > 0 and ch.outcomes > 0:
            per_outcome_before = ch.base_cost / ch.base_outcomes
            per_outcome_after = ch.cost / ch.outcomes
            outcome_ratio = per_outcome_after / per_outcome_before
        headline = max(task_ratio, outcome_ratio if outcome_ratio is not None else 0.0)
        if headline < self.p.ratio:
            return None
        if ch.reported is not None and headline < WORSEN_FACTOR * ch.reported:
            return None
        again = ch.reported is not None
        ch.reported = headline
        what = "model" if ch.model != ch.previous_model else "version"
        if what == "model":
            change = f"{ch.previous_model} -> {ch.model}"
        else:
            change = f"version {ch.previous_version} -> {ch.version} (model {ch.model})"
        basis = "task" if task_ratio >= (outcome_ratio or 0.0) else "outcome"
        rollback = f" (roll back to {ch.previous_model})" if self.p.action is spec.Action.rollback else ""
        message = (f"{'Still rising: ' if again else ''}cost per {basis} of {m.agent} is "
                   f"{headline:.1f}x its baseline since {change}; action {self.p.action.value}{rollback}")
        evidence: dict[str, Any] = {
            "ratio": _round(headline),
            "cost_per_task_ratio": _round(task_ratio),
            "cost_per_outcome_ratio": _round(outcome_ratio),
            "threshold": self.p.ratio,
            "cost_per_task_before_usd": _round(per_task_before, 6),
            "cost_per_task_after_usd": _round(per_task_after, 6),
            "cost_per_outcome_before_usd": _round(per_outcome_before, 6),
            "cost_per_outcome_after_usd": _round(per_outcome_after, 6),
            "tasks_before": ch.base_tasks,
            "tasks_after": ch.tasks,
            "outcomes_before": _round(ch.base_outcomes),
            "outcomes_after": _round(ch.outcomes),
            "version": ch.version,
            "previous_version": ch.previous_version,
        }
        return _finding(self.kind, m, onset=ch.onset, action=self.p.action, message=message,
                        evidence=evidence, model=ch.model, previous_model=ch.previous_model)


# ---------------------------------------------------------------- runaway_loop

_NEVER = float("inf")


class RunawayLoop:
    """Tokens per minute accelerating while the agent's output stays at zero.

    Over the last ``window_minutes`` minutes: tokens in every minute and no output
    (completed tasks plus outcomes) in any; tokens rising from each minute to the next;
    the last minute at least ``acceleration`` times the mean of the window's first half,
    at least ``acceleration`` times the agent's typical rate (the mean of its active
    minutes over the ``TYPICAL_MINUTES`` before the window) and at least
    ``min_tokens_per_minute``. An agent with fewer than ``MIN_TYPICAL_MINUTES`` active
    minutes before the window has no typical rate yet and is not judged (a new agent
    warming up). The onset is the first minute of the rise. The condition ends when output
    appears or the token rate falls under ``min_tokens_per_minute`` (or to zero).

    O(1) amortised per minute fed, nothing per missing minute: only minutes fed are kept
    (a missing minute is an empty one), the windows are cut by time, and the length of the
    trailing run of rising minutes without output is a counter, so the window is only
    looked at when it may fire.
    """

    kind = "runaway_loop"

    __slots__ = ("p", "_w", "_h_span", "_win", "_hist", "_hist_tokens", "_hist_active", "_active", "_run", "_prev",
                 "_last")

    def __init__(self, params: spec.RunawayLoopParams) -> None:
        self.p = params
        self._w = params.window_minutes
        self._h_span = (params.window_minutes + TYPICAL_MINUTES) * MINUTE
        # (minute, tokens, output) of the minutes fed in the window, and in the TYPICAL_MINUTES before it
        self._win: collections.deque[tuple[int, int, float]] = collections.deque()
        self._hist: collections.deque[tuple[int, int, float]] = collections.deque()
        self._hist_tokens = 0
        self._hist_active = 0
        self._active = False
        self._run = 0  # trailing minutes with tokens and no output, each with more tokens than the one before
        self._prev = 0  # tokens of the newest minute
        self._last: int | None = None  # the newest minute fed

    def _advance(self, now: int) -> None:
        """Windows as of minute ``now``: minutes leave the window after ``w`` minutes and the
        history ``TYPICAL_MINUTES`` later, in the order they would one empty minute at a time."""
        w_span = self._w * MINUTE
        h_span = w_span + TYPICAL_MINUTES * MINUTE
        win, hist = self._win, self._hist
        while True:
            move = win[0][0] + w_span if win else _NEVER
            drop = hist[0][0] + h_span if hist else _NEVER
            if move <= drop:
                if move > now:
                    return
                old = win.popleft()
                hist.append(old)
                if old[1] > 0:
                    self._hist_tokens += old[1]
                    self._hist_active += 1
            else:
                if drop > now:
                    return
                gone = hist.popleft()
                if gone[1] > 0:
                    self._hist_tokens -= gone[1]
                    self._hist_active -= 1

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        p = self.p
        t = m.minute
        tokens = m.tokens
        output = m.output
        if self._last is not None and t - self._last > MINUTE:
            # missing minutes were empty: no tokens, so no run and no lasting loop
            self._active = False
            self._run = 0
            self._prev = 0
            if self._win:
                self._advance(t - MINUTE)
        self._last = t
        win = self._win
        win.append((t, tokens, output))
        if win[0][0] + self._w * MINUTE <= t or (self._hist and self._hist[0][0] + self._h_span <= t):
            self._advance(t)
        if tokens > 0 and not output > 0:
            self._run = self._run + 1 if self._run and tokens > self._prev else 1
        else:
            self._run = 0
        self._prev = tokens
        if self._active and (output > 0 or tokens == 0 or tokens < p.min_tokens_per_minute):
            self._active = False
        # a run as long as the window: the window is full, has tokens and no output in every
        # minute, and rises from each minute to the next
        if self._active or self._run < self._w or self._hist_active < MIN_TYPICAL_MINUTES:
            return []
        return self._judge(m)

    def _judge(self, m: series.AgentMinute) -> list[findings.Finding]:
        p = self.p
        tokens = [t for _, t, _ in self._win]
        last = tokens[-1]
        if last < p.min_tokens_per_minute:
            return []
        head = tokens[: max(1, len(tokens) // 2)]
        first = sum(head) / len(head)
        typical = self._hist_tokens / self._hist_active
        if last < p.acceleration * first or last < p.acceleration * typical:
            return []
        self._active = True
        # onset: back from the window's start while the minutes before kept rising
        # without output
        onset = self._win[0][0]
        floor = tokens[0]
        for minute, t, o in reversed(self._hist):
            if o > 0 or t <= 0 or t >= floor or minute != onset - MINUTE:
                break
            onset, floor = minute, t
        evidence = {
            "tokens_per_minute": tokens,
            "acceleration": _round(last / first),
            "vs_typical": _round(last / typical),
            "typical_tokens_per_minute": _round(typical, 1),
            "threshold": p.acceleration,
            "slope_tokens_per_minute2": _round(_slope(tokens), 1),
            "output_in_window": 0,
            "window_minutes": p.window_minutes,
            "min_tokens_per_minute": p.min_tokens_per_minute,
        }
        message = (f"{m.agent} is burning {last} tokens/minute, {last / first:.1f}x "
                   f"{p.window_minutes - 1} minutes earlier and {last / typical:.1f}x its usual rate, "
                   f"with no completed task or outcome; action {p.action.value}")
        return [_finding(self.kind, m, onset=onset, action=p.action, message=message, evidence=evidence)]


def _slope(ys: list[int] | list[float]) -> float:
    n = len(ys)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


# ---------------------------------------------------------------- tool_call_explosion


class _ToolState:
    __slots__ = ("base_rate", "reported")

    def __init__(self, base_rate: float, reported: float) -> None:
        self.base_rate = base_rate
        self.reported = reported


# (minute, tool calls, llm calls, tasks ended, all tool calls) of one minute fed
_ToolEntry = tuple[int, Mapping[str, float], int, int, float]


class ToolCallExplosion:
    """One tool's call rate over ``window_minutes`` against its baseline.

    The baseline is the mean calls per minute over the ``baseline_minutes`` minutes before
    the short window (the short window excluded, so the explosion does not raise its own
    baseline). An explosion needs all of: the short-window rate at least
    ``min_calls_per_minute``; the raw ratio at least ``ratio``; and the ratio of the tool's
    calls *per LLM call or per ended task* at least ``ratio`` (so traffic growth, where
    tasks, LLM calls and tool calls grow together, is not one). A traffic measure is used
    only when the baseline expects at least ``MIN_EXPECTED_TRAFFIC`` of it in the short
    window; with none usable, the raw ratio decides. Nothing is judged before the agent
    has a quarter of the baseline (at least 5 minutes) of history, nor for a tool without
    calls in the baseline.

    While an explosion lasts its baseline is frozen; it ends when the short-window rate
    falls under ``ratio / 2`` times that baseline.

    Cost: only minutes fed are kept (a missing minute is an empty one) and the windows are
    cut by time; a running total of all tool calls in the short window says when no tool
    can reach ``min_calls_per_minute``, which is most minutes, so O(1) amortised per minute.
    Only then are the windows summed per tool (O(window)). A missing minute is judged
    (:meth:`gap`) only while the short window could still hold a tool at that rate, or an
    explosion.
    """

    kind = "tool_call_explosion"

    __slots__ = ("p", "_w", "_b", "_b_span", "_short", "_base", "_short_total", "_active", "min_history", "blank",
                 "_first", "_hot", "_floor")

    def __init__(self, params: spec.ToolCallExplosionParams) -> None:
        self.p = params
        self._w = params.window_minutes
        self._b = params.baseline_minutes
        self._b_span = (params.window_minutes + params.baseline_minutes) * MINUTE
        # (minute, tool calls, llm calls, tasks ended, all tool calls) of the minutes fed
        self._short: collections.deque[_ToolEntry] = collections.deque()
        self._base: collections.deque[_ToolEntry] = collections.deque()
        self._short_total = 0.0  # all tool calls in the short window
        self._active: dict[str, _ToolState] = {}
        self.min_history = max(5, params.baseline_minutes // 4)
        # builds the bucket of an empty minute of this agent (for a finding made in a gap)
        self.blank: Callable[[int], series.AgentMinute] | None = None
        self._first: int | None = None  # the first minute fed: the windows count minutes from it
        self._hot = False  # whether a missing minute now could change anything but the windows
        # under this many calls in the short window no tool is at min_calls_per_minute (a
        # margin for rounding: above it the exact per-tool test decides)
        self._floor = params.min_calls_per_minute * params.window_minutes * (1 - 1e-9)

    def _lengths(self, now: int) -> tuple[int, int]:
        """Minutes in the short window and in the baseline at minute ``now`` (empty ones included)."""
        assert self._first is not None
        seen = (now - self._first) // MINUTE + 1
        return min(self._w, seen), min(self._b, max(0, seen - self._w))

    def _advance(self, now: int) -> None:
        """Windows as of minute ``now``: minutes leave the short window after ``w`` minutes
        and the baseline ``B`` later."""
        s_span = self._w * MINUTE
        b_span = s_span + self._b * MINUTE
        short, base = self._short, self._base
        while short and short[0][0] + s_span <= now:
            old = short.popleft()
            self._short_total -= old[4]
            base.append(old)
        while base and base[0][0] + b_span <= now:
            base.popleft()
        if not short:
            self._short_total = 0.0

    def _sums(self, entries: Iterable[_ToolEntry]) -> tuple[dict[str, float], int, int]:
        """Calls per tool, llm calls and ended tasks of some minutes, added in minute order."""
        calls: dict[str, float] = {}
        llm = tasks = 0
        for _, c, n_llm, n_tasks, _ in entries:
            for tool, n in c.items():
                calls[tool] = calls.get(tool, 0.0) + n
            llm += n_llm
            tasks += n_tasks
        return calls, llm, tasks

    def _short_minutes(self, tool: str, now: int) -> list[tuple[int, float]]:
        """(minute, calls of ``tool``) of every minute of the short window at ``now``, oldest first."""
        n, _ = self._lengths(now)
        fed = {e[0]: float(e[1].get(tool, 0.0)) for e in self._short}
        return [(t, fed.get(t, 0.0)) for t in range(now - (n - 1) * MINUTE, now + 1, MINUTE)]

    def _base_rate(self, tool: str, base_calls: float, n: int) -> float:
        """The tool's baseline calls per minute: the median minute (robust to a burst, or
        to the start of this explosion entering the baseline), or the mean when the
        median minute has no call (a sparse tool)."""
        values = [float(e[1].get(tool, 0.0)) for e in self._base]
        values = sorted(values + [0.0] * (n - len(values)))  # with the missing minutes
        median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        if median > 0:
            return median
        return base_calls / n

    def _normalised(self, rate_s: float, base_rate: float, traffic: tuple[int, int, int, int],
                    n_b: int) -> tuple[float | None, float | None]:
        """The tool's ratio per LLM call and per ended task (None: too little traffic)."""
        short_llm, base_llm, short_tasks, base_tasks = traffic
        per: list[float | None] = []
        for d_s, d_b in ((short_llm, base_llm), (short_tasks, base_tasks)):
            expected = d_b / n_b * self.p.window_minutes
            if expected < MIN_EXPECTED_TRAFFIC:
                per.append(None)
            elif d_s == 0:
                per.append(math.inf)
            else:
                growth = (d_s / self.p.window_minutes) / (d_b / n_b)
                per.append(rate_s / base_rate / growth)
        return per[0], per[1]

    def _explodes(self, rate_s: float, base_rate: float, traffic: tuple[int, int, int, int], n_b: int) -> bool:
        raw = rate_s / base_rate
        if rate_s < self.p.min_calls_per_minute or raw < self.p.ratio:
            return False
        usable = [r for r in self._normalised(rate_s, base_rate, traffic, n_b) if r is not None]
        return not usable or max(usable) >= self.p.ratio * NORMALISED_SHARE

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        t = m.minute
        if self._first is None:
            self._first = t
        calls = m.tool_calls
        total = sum(calls.values()) if calls else 0
        short = self._short
        short.append((t, calls, m.llm_calls, m.tasks_ended, total))
        self._short_total += total
        if short[0][0] + self._w * MINUTE <= t or (self._base and self._base[0][0] + self._b_span <= t):
            self._advance(t)
        if not self._active and self._short_total < self._floor:
            self._hot = False
            return []
        return self._check(m, t)

    def gap(self, first: int, k: int) -> list[findings.Finding]:
        """Judge ``k`` missing minutes from minute ``first`` on, as empty ones: only while the
        short window could still hold a tool at the minimum rate (or an explosion) can anything
        happen (the calls in the short window only fall during a gap)."""
        out: list[findings.Finding] = []
        j = 0
        while self._hot and j < k:
            t = first + j * MINUTE
            self._advance(t)
            out.extend(self._check(None, t))
            j += 1
        return out

    def _check(self, m: series.AgentMinute | None, minute: int) -> list[findings.Finding]:
        active = self._active
        if not active and self._short_total < self._floor:
            self._hot = False
            return []
        self._hot = True
        p = self.p
        w = self._w
        n_short, n_base = self._lengths(minute)
        if n_short < w or n_base < self.min_history:
            return []
        minc = p.min_calls_per_minute
        short_calls, short_llm, short_tasks = self._sums(self._short)
        # tools that may be judged: exploding ones, and those at the minimum rate or more
        cands = [tool for tool, c in short_calls.items() if c / w >= minc]
        if active:
            tools = sorted(set(cands).union(active))
        elif not cands:
            return []
        else:
            tools = sorted(cands) if len(cands) > 1 else cands
        base_calls, base_llm, base_tasks = self._sums(self._base)
        traffic = (short_llm, base_llm, short_tasks, base_tasks)
        out = []
        for tool in tools:
            rate_s = short_calls.get(tool, 0.0) / w
            state = active.get(tool)
            if state is not None:
                if rate_s < (p.ratio / 2) * state.base_rate:
                    del active[tool]  # over: a new jump is a new finding
                elif (rate_s / state.base_rate >= WORSEN_FACTOR * state.reported
                        and self._explodes(rate_s, state.base_rate, traffic, n_base)):
                    state.reported = self._peak(tool, state.base_rate, minute)
                    out.append(self._report(m if m is not None else self._blank(minute), tool, state.base_rate,
                                            traffic, n_base, again=True))
                continue
            tool_base = base_calls.get(tool, 0.0)
            if tool_base <= 0 or rate_s < minc:
                continue
            base_rate = self._base_rate(tool, tool_base, n_base)
            if not self._explodes(rate_s, base_rate, traffic, n_base):
                continue
            active[tool] = _ToolState(base_rate, self._peak(tool, base_rate, minute))
            out.append(self._report(m if m is not None else self._blank(minute), tool, base_rate, traffic, n_base,
                                    again=False))
        return out

    def _blank(self, minute: int) -> series.AgentMinute:
        if self.blank is None:
            raise ValueError("ToolCallExplosion.gap needs `blank` to report a finding in a gap")
        return self.blank(minute)

    def _peak(self, tool: str, base_rate: float, now: int) -> float:
        """The ratio of the short window's busiest minute: the reference for 'worse'."""
        return max(c for _, c in self._short_minutes(tool, now)) / base_rate

    def _report(self, m: series.AgentMinute, tool: str, base_rate: float, traffic: tuple[int, int, int, int],
                n_base: int, *, again: bool) -> findings.Finding:
        p = self.p
        window = self._short_minutes(tool, m.minute)
        per_minute = [c for _, c in window]
        rate = sum(per_minute) / len(per_minute)
        raw = rate / base_rate
        # onset: the first minute of the short window from which every minute is at least
        # sqrt(ratio) times the baseline rate (else the window's start)
        onset = window[0][0]
        level = math.sqrt(p.ratio) * base_rate
        for i in range(len(per_minute) - 1, -1, -1):
            if per_minute[i] < level:
                break
            onset = window[i][0]
        per_llm, per_task = self._normalised(rate, base_rate, traffic, n_base)
        evidence = {
            "tool": tool,
            "calls_per_minute": _round(rate),
            "baseline_calls_per_minute": _round(base_rate),
            "ratio": _round(raw),
            "per_llm_call_ratio": _round(per_llm),
            "per_task_ratio": _round(per_task),
            "threshold": p.ratio,
            "calls_in_window": per_minute,
            "window_minutes": p.window_minutes,
            "baseline_minutes": n_base,
        }
        message = (f"{'Still rising: ' if again else ''}{m.agent} calls {tool} {rate:.0f} times/minute, "
                   f"{raw:.0f}x its baseline of {base_rate:.1f}/minute, without matching traffic; "
                   f"action {p.action.value}")
        return _finding(self.kind, m, onset=onset, action=p.action, message=message,
                        evidence=evidence, tool=tool)


# ---------------------------------------------------------------- the set


class DetectorSet:
    """The three detectors of one agent, fed its minutes in order (gaps allowed).

    A gap of ``k`` minutes is the same as ``k`` empty minutes and costs nothing per minute:
    ``model_update_spike`` ignores empty minutes, ``runaway_loop`` cannot fire in one, and
    ``tool_call_explosion`` judges them only while its short window still holds a tool at
    its minimum rate (``tests/unit/core/test_detectors.py`` checks that a gap and its empty
    minutes fed one by one give the same findings).
    """

    __slots__ = ("params", "agent", "namespace", "spike", "loop", "tools", "_spike_on", "_loop_on", "_tools_on",
                 "_last")

    def __init__(self, params: spec.AnomalyParams, agent: str, namespace: str) -> None:
        self.params = params
        self.agent = agent
        self.namespace = namespace
        self.spike = ModelUpdateSpike(params.model_update_spike)
        self.loop = RunawayLoop(params.runaway_loop)
        self.tools = ToolCallExplosion(params.tool_call_explosion)
        self.tools.blank = self._blank
        self._spike_on = params.model_update_spike.enabled
        self._loop_on = params.runaway_loop.enabled
        self._tools_on = params.tool_call_explosion.enabled
        self._last: int | None = None

    def _blank(self, minute: int) -> series.AgentMinute:
        return series.AgentMinute(agent=self.agent, namespace=self.namespace, minute=minute)

    def step(self, minute: series.AgentMinute) -> list[findings.Finding]:
        if minute.agent != self.agent or minute.namespace != self.namespace:
            raise ValueError(f"minute of {minute.namespace}/{minute.agent} fed to the detectors of "
                             f"{self.namespace}/{self.agent}")
        t = minute.minute
        if t % MINUTE:
            raise ValueError(f"minute {t} is not at the start of a minute")
        out: list[findings.Finding] = []
        last = self._last
        if last is not None:
            if t <= last:
                raise ValueError(f"minute {t} of {self.agent} fed after {last}")
            if t - last > MINUTE and self._tools_on:
                out.extend(self.tools.gap(last + MINUTE, (t - last) // MINUTE - 1))
        self._last = t
        if self._spike_on:
            found = self.spike.step(minute)
            if found:
                out.extend(found)
        if self._loop_on:
            found = self.loop.step(minute)
            if found:
                out.extend(found)
        if self._tools_on:
            found = self.tools.step(minute)
            if found:
                out.extend(found)
        return out
