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
from collections.abc import Mapping
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

    def _remember(self, m: series.AgentMinute) -> None:
        if m.model is not None:
            self._models_seen[m.model] = m.minute
            self._model = m.model
        if m.version is not None:
            self._versions_seen[m.version] = m.minute
            self._version = m.version
        cutoff = m.minute - KNOWN_MODEL_MINUTES * MINUTE
        for seen in (self._models_seen, self._versions_seen):
            for key in [k for k, t in seen.items() if t < cutoff and k not in (self._model, self._version)]:
                del seen[key]
        cost = m.inference_cost_usd
        if cost == 0 and m.tasks_ended == 0 and m.outcomes == 0 and m.model is None:
            return
        self._hist.append((m.minute, cost, m.tasks_ended, m.outcomes, m.model))
        self._cost += cost
        self._tasks += m.tasks_ended
        self._outcomes += m.outcomes
        while self._hist and (
                self._tasks - self._hist[0][2] >= self.p.baseline_tasks
                or m.minute - self._hist[0][0] >= MAX_BASELINE_MINUTES * MINUTE):
            _, c, t, o, _ = self._hist.popleft()
            self._cost -= c
            self._tasks -= t
            self._outcomes -= o
        if not self._hist:
            self._cost, self._tasks, self._outcomes = 0.0, 0, 0.0

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        self._detect_change(m)
        self._remember(m)
        ch = self._change
        if ch is None:
            return []
        ch.cost += m.inference_cost_usd
        ch.tasks += m.tasks_ended
        ch.outcomes += m.outcomes
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
    """

    kind = "runaway_loop"

    def __init__(self, params: spec.RunawayLoopParams) -> None:
        self.p = params
        # (minute, tokens, output) of the window plus the minutes before it
        self._win: collections.deque[tuple[int, int, float]] = collections.deque()
        self._hist: collections.deque[tuple[int, int, float]] = collections.deque()
        self._hist_tokens = 0
        self._hist_active = 0
        self._active = False

    def _push(self, m: series.AgentMinute) -> None:
        self._win.append((m.minute, m.tokens, m.output))
        if len(self._win) > self.p.window_minutes:
            old = self._win.popleft()
            self._hist.append(old)
            if old[1] > 0:
                self._hist_tokens += old[1]
                self._hist_active += 1
            if len(self._hist) > TYPICAL_MINUTES:
                gone = self._hist.popleft()
                if gone[1] > 0:
                    self._hist_tokens -= gone[1]
                    self._hist_active -= 1

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        p = self.p
        self._push(m)
        if self._active and (m.output > 0 or m.tokens == 0 or m.tokens < p.min_tokens_per_minute):
            self._active = False
        if self._active or len(self._win) < p.window_minutes or self._hist_active < MIN_TYPICAL_MINUTES:
            return []
        tokens = [t for _, t, _ in self._win]
        if any(o > 0 for *_, o in self._win) or any(t <= 0 for t in tokens):
            return []
        last = tokens[-1]
        if last < p.min_tokens_per_minute:
            return []
        if any(b <= a for a, b in zip(tokens, tokens[1:], strict=False)):
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
    """

    kind = "tool_call_explosion"

    def __init__(self, params: spec.ToolCallExplosionParams) -> None:
        self.p = params
        self._short: collections.deque[tuple[int, Mapping[str, float], int, int]] = collections.deque()
        self._base: collections.deque[tuple[int, Mapping[str, float], int, int]] = collections.deque()
        self._short_calls: dict[str, float] = {}
        self._base_calls: dict[str, float] = {}
        self._short_llm = 0
        self._short_tasks = 0
        self._base_llm = 0
        self._base_tasks = 0
        self._active: dict[str, _ToolState] = {}
        self.min_history = max(5, params.baseline_minutes // 4)

    def _push(self, m: series.AgentMinute) -> None:
        entry = (m.minute, m.tool_calls, m.llm_calls, m.tasks_ended)
        self._short.append(entry)
        _add(self._short_calls, m.tool_calls, 1)
        self._short_llm += m.llm_calls
        self._short_tasks += m.tasks_ended
        if len(self._short) > self.p.window_minutes:
            old = self._short.popleft()
            _add(self._short_calls, old[1], -1)
            self._short_llm -= old[2]
            self._short_tasks -= old[3]
            self._base.append(old)
            _add(self._base_calls, old[1], 1)
            self._base_llm += old[2]
            self._base_tasks += old[3]
            if len(self._base) > self.p.baseline_minutes:
                gone = self._base.popleft()
                _add(self._base_calls, gone[1], -1)
                self._base_llm -= gone[2]
                self._base_tasks -= gone[3]

    def _base_rate(self, tool: str) -> float:
        """The tool's baseline calls per minute: the median minute (robust to a burst, or
        to the start of this explosion entering the baseline), or the mean when the
        median minute has no call (a sparse tool)."""
        values = sorted(float(calls.get(tool, 0.0)) for _, calls, _, _ in self._base)
        n = len(values)
        median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        if median > 0:
            return median
        return self._base_calls.get(tool, 0.0) / n

    def _normalised(self, rate_s: float, base_rate: float) -> tuple[float | None, float | None]:
        """The tool's ratio per LLM call and per ended task (None: too little traffic)."""
        n_b = len(self._base)
        per: list[float | None] = []
        for d_s, d_b in ((self._short_llm, self._base_llm), (self._short_tasks, self._base_tasks)):
            expected = d_b / n_b * self.p.window_minutes
            if expected < MIN_EXPECTED_TRAFFIC:
                per.append(None)
            elif d_s == 0:
                per.append(math.inf)
            else:
                growth = (d_s / self.p.window_minutes) / (d_b / n_b)
                per.append(rate_s / base_rate / growth)
        return per[0], per[1]

    def _explodes(self, rate_s: float, base_rate: float) -> bool:
        raw = rate_s / base_rate
        if rate_s < self.p.min_calls_per_minute or raw < self.p.ratio:
            return False
        usable = [r for r in self._normalised(rate_s, base_rate) if r is not None]
        return not usable or max(usable) >= self.p.ratio * NORMALISED_SHARE

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        p = self.p
        self._push(m)
        if len(self._short) < p.window_minutes or len(self._base) < self.min_history:
            return []
        out = []
        for tool in sorted(set(self._short_calls) | set(self._active)):
            rate_s = self._short_calls.get(tool, 0.0) / p.window_minutes
            state = self._active.get(tool)
            if state is not None:
                if rate_s < (p.ratio / 2) * state.base_rate:
                    del self._active[tool]  # over: a new jump is a new finding
                elif (rate_s / state.base_rate >= WORSEN_FACTOR * state.reported
                        and self._explodes(rate_s, state.base_rate)):
                    state.reported = self._peak(tool, state.base_rate)
                    out.append(self._report(m, tool, state.base_rate, again=True))
                continue
            if self._base_calls.get(tool, 0.0) <= 0 or rate_s < p.min_calls_per_minute:
                continue
            base_rate = self._base_rate(tool)
            if not self._explodes(rate_s, base_rate):
                continue
            self._active[tool] = _ToolState(base_rate, self._peak(tool, base_rate))
            out.append(self._report(m, tool, base_rate, again=False))
        return out

    def _peak(self, tool: str, base_rate: float) -> float:
        """The ratio of the short window's busiest minute: the reference for 'worse'."""
        return max(float(calls.get(tool, 0.0)) for _, calls, _, _ in self._short) / base_rate

    def _report(self, m: series.AgentMinute, tool: str, base_rate: float, *, again: bool) -> findings.Finding:
        p = self.p
        per_minute = [float(calls.get(tool, 0.0)) for _, calls, _, _ in self._short]
        rate = sum(per_minute) / len(per_minute)
        raw = rate / base_rate
        # onset: the first minute of the short window from which every minute is at least
        # sqrt(ratio) times the baseline rate (else the window's start)
        onset = self._short[0][0]
        level = math.sqrt(p.ratio) * base_rate
        for i in range(len(per_minute) - 1, -1, -1):
            if per_minute[i] < level:
                break
            onset = self._short[i][0]
        per_llm, per_task = self._normalised(rate, base_rate)
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
            "baseline_minutes": len(self._base),
        }
        message = (f"{'Still rising: ' if again else ''}{m.agent} calls {tool} {rate:.0f} times/minute, "
                   f"{raw:.0f}x its baseline of {base_rate:.1f}/minute, without matching traffic; "
                   f"action {p.action.value}")
        return _finding(self.kind, m, onset=onset, action=p.action, message=message,
                        evidence=evidence, tool=tool)


def _add(acc: dict[str, float], calls: Mapping[str, float], sign: int) -> None:
    for tool, n in calls.items():
        v = acc.get(tool, 0.0) + sign * n
        if v <= 0:
            acc.pop(tool, None)
        else:
            acc[tool] = v


# ---------------------------------------------------------------- the set


class DetectorSet:
    """The three detectors of one agent, fed its minutes in order (gaps allowed)."""

    def __init__(self, params: spec.AnomalyParams, agent: str, namespace: str) -> None:
        self.params = params
        self.agent = agent
        self.namespace = namespace
        self.spike = ModelUpdateSpike(params.model_update_spike)
        self.loop = RunawayLoop(params.runaway_loop)
        self.tools = ToolCallExplosion(params.tool_call_explosion)
        # the longest per-minute memory of a detector: a gap longer than this is the same
        # as this many empty minutes
        self._memory = max(params.runaway_loop.window_minutes,
                           params.tool_call_explosion.window_minutes
                           + params.tool_call_explosion.baseline_minutes) + 1
        self._last: int | None = None

    def step(self, minute: series.AgentMinute) -> list[findings.Finding]:
        if minute.agent != self.agent or minute.namespace != self.namespace:
            raise ValueError(f"minute of {minute.namespace}/{minute.agent} fed to the detectors of "
                             f"{self.namespace}/{self.agent}")
        if minute.minute % MINUTE:
            raise ValueError(f"minute {minute.minute} is not at the start of a minute")
        out: list[findings.Finding] = []
        if self._last is not None:
            if minute.minute <= self._last:
                raise ValueError(f"minute {minute.minute} of {self.agent} fed after {self._last}")
            gap = (minute.minute - self._last) // MINUTE - 1
            first_empty = max(self._last + MINUTE, minute.minute - self._memory * MINUTE)
            if gap > 0:
                for t in range(first_empty, minute.minute, MINUTE):
                    out.extend(self._step(series.AgentMinute(agent=self.agent, namespace=self.namespace,
                                                             minute=t)))
        self._last = minute.minute
        out.extend(self._step(minute))
        return out

    def _step(self, m: series.AgentMinute) -> list[findings.Finding]:
        out: list[findings.Finding] = []
        if self.params.model_update_spike.enabled:
            out.extend(self.spike.step(m))
        if self.params.runaway_loop.enabled:
            out.extend(self.loop.step(m))
        if self.params.tool_call_explosion.enabled:
            out.extend(self.tools.step(m))
        return out
