"""Anomaly detectors: pure folds over one agent's per-minute buckets.

    DetectorSet(params, agent, namespace).step(minute) -> [Finding, ...]

``DetectorSet`` runs these detectors over the same ordered stream of
:class:`~fleetwarden.core.series.AgentMinute` buckets of one agent:

- :class:`ModelUpdateSpike` (``model_update_spike``): cost per task, per model call or per
  outcome after the agent's model or ``agent_version`` changed, against the baseline before
  the change, by a sequential test (:mod:`fleetwarden.core.evidence`).
- :class:`CostShift` (``cost_shift``): the same rise with no declared change.
- ``runaway_loop``, three ways: :class:`RunawayLoop` (the token rate accelerates while the
  agent produces no output), :class:`LoopPlateau` (a high, steady token rate without output:
  a retry storm) and :class:`TaskRunaway` (one task burns far past the agent's other tasks,
  from the per-task fields of the minutes).
- :class:`ToolCallExplosion` (``tool_call_explosion``): one tool's call rate jumps, or ramps,
  against its baseline, normalised by the agent's traffic so that a traffic surge is not one.

All state lives in these objects: the same minutes in give the same findings out; there is
no clock and no I/O, and nothing is shared between agents. Minutes come in order; a
missing minute means "no activity" (replay reads the complete record). A finding's time is
the end of the minute that revealed it; its onset is the detector's best estimate of when
the problem began, stable across refolds of the same data (the operator refolds its
lookback window every cycle and keys incidents by onset). Every window a detector looks at
fits in the operator's default lookback of 90 minutes.

One problem is one finding: a detector reports a condition when it starts, and again only
after it has ended and started again, or when it has worsened by ``WORSEN_FACTOR`` since it
was last reported. ``docs/detectors.md`` explains each detector, its parameters and its
blind spots.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fleetwarden.core import evidence, findings, series, spec, timefmt

MINUTE = series.MINUTE

# A lasting condition is reported again when its headline ratio reaches this multiple of
# the ratio last reported.
WORSEN_FACTOR = 2.0

# model_update_spike: a model that was the agent's main model within this many minutes is
# part of its usual mix (agents that call two models flip the per-minute main model), not
# an update.
KNOWN_MODEL_MINUTES = 60
# The rolling baseline never spans more than this many minutes (every window of the detectors
# fits in the operator's default lookback of 90 minutes, so that its refold finds what replay finds).
MAX_BASELINE_MINUTES = 60

# tool_call_explosion: a traffic measure (LLM calls, ended tasks) normalises the tool rate
# only when the baseline expects at least this many of them in the short window; fewer are
# too noisy to divide by.
MIN_EXPECTED_TRAFFIC = 5.0
# ... and the tool's calls per unit of traffic must have grown at least this share of
# ``ratio`` (half of it: the other half of the jump may be traffic noise, never the bulk).
NORMALISED_SHARE = 0.5
# A ramp (calls rising over minutes, not jumping) is found when they rose in each of the last
# RAMP_MINUTES minutes and the last one reaches this share of ``ratio`` (with the minimum rate),
# per unit of traffic too: earlier than the short window's mean reaches ``ratio``.
RAMP_SHARE = 0.5
RAMP_MINUTES = 4

# runaway_loop: one problem is one finding: a loop finding holds the other loop detectors (and
# cost_shift) for this long.
LOOP_HOLD_MINUTES = 60
# runaway_loop: the agent's typical token rate is the mean over its active minutes among
# the TYPICAL_MINUTES before the window; with fewer than MIN_TYPICAL_MINUTES active
# minutes there is no typical rate yet.
TYPICAL_MINUTES = 60
MIN_TYPICAL_MINUTES = 5
# ... and an accelerating loop is judged only when its usual output would have given at least this
# many outputs in the window (no output in it then has a chance under e^-4, 2%; the rise does the rest).
MIN_EXPECTED_OUTPUT_ACCELERATING = 4.0


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

# The sequential test decides a spike (or its absence) at this error rate, per statistic.
SPIKE_ALPHA = 5e-2
# A spike is reported again when each of its latest this many observations reaches WORSEN_FACTOR
# times the ratio reported.
WORSE_OBSERVATIONS = 5
# A change is judged only against a baseline of at least this many ended tasks, over at least
# this many active minutes (a new agent is not judged).
MIN_BASELINE_TASKS = 8
MIN_BASELINE_MINUTES = 5
# An open task counts as this share of a task in "tasks' worth of work" (its cost is spread over
# its life): a minute's task units are its ended tasks + WIP_SHARE x the change in open tasks, so
# that a traffic surge (tasks started, not yet ended) does not look like a costlier task.
WIP_SHARE = 0.5
# The statistics of the cost detectors, each a cost per unit: per model call, per task (work
# in progress counted), per outcome.
STATS = ("call", "task", "outcome")

# (minute, inference cost, llm calls, tasks ended, task units, outcomes, main model) of an active minute
_Row = tuple[int, float, int, int, float, float, "str | None"]


def task_units(m: series.AgentMinute, open_before: int | None) -> float:
    """Tasks' worth of work done in minute ``m``: ended tasks, plus WIP_SHARE x the growth of the
    open tasks when both counts are known."""
    if m.open_tasks is None or open_before is None:
        return float(m.tasks_ended)
    return m.tasks_ended + WIP_SHARE * (m.open_tasks - open_before)


def _units(row: _Row, stat: str) -> float:
    return float(row[2]) if stat == "call" else row[4] if stat == "task" else row[5]


class _Change:
    """A model or version change being judged against the baseline before it."""

    __slots__ = ("onset", "model", "previous_model", "version", "previous_version", "base", "base_sums",
                 "base_tasks", "base_minutes", "post", "post_sums", "blocks", "tasks", "reported")

    def __init__(self, onset: int, model: str | None, previous_model: str | None, version: str | None,
                 previous_version: str | None, rows: Iterable[_Row]) -> None:
        self.onset = onset
        self.model = model
        self.previous_model = previous_model
        self.version = version
        self.previous_version = previous_version
        rows = list(rows)
        # stat -> the baseline's observations summed up, and its (cost, units)
        self.base = {stat: evidence.summary(evidence.observations([(r[1], _units(r, stat)) for r in rows],
                                                                  weighted=stat != "call"))
                     for stat in STATS}
        self.base_sums = {stat: (sum(r[1] for r in rows), sum(_units(r, stat) for r in rows)) for stat in STATS}
        self.base_tasks = sum(r[3] for r in rows)
        self.base_minutes = len(rows)
        # stat -> observations since the change
        self.post: dict[str, list[evidence.Observation]] = {stat: [] for stat in STATS}
        self.post_sums = {stat: [0.0, 0.0] for stat in STATS}
        self.blocks = {stat: evidence.Blocks(weighted=stat != "call") for stat in STATS}
        self.tasks = 0  # tasks ended since the change
        self.reported: float | None = None

    def add(self, row: _Row) -> None:
        for stat in STATS:
            units = _units(row, stat)
            sums = self.post_sums[stat]
            sums[0] += row[1]
            sums[1] += units
            x = self.blocks[stat].add(row[1], units)
            if x is not None:
                self.post[stat].append(x)
        self.tasks += row[3]

    def tests(self, ratio: float) -> dict[str, tuple[float | None, float]]:
        """stat -> (ratio after / before, log-likelihood ratio of the sequential test)."""
        return {stat: evidence.sprt(self.post[stat], self.base[stat], ratio) for stat in STATS}


def decided(tests: Mapping[str, tuple[float | None, float]], ratio: float, alpha: float,
            call_needs: float | None = None) -> list[str]:
    """The statistics whose rise is decided: ratio at least ``ratio`` and LLR at least log(1/alpha).
    Cost per call counts only when cost per task rose to ``call_needs`` (default: past H0; a model
    with pricier but fewer calls per task costs no more per task)."""
    a = evidence.threshold(alpha)
    task_ratio = tests["task"][0]
    needs = ratio ** evidence.NULL_SHARE if call_needs is None else call_needs
    out = []
    for stat, (r, llr) in tests.items():
        if r is None or r < ratio * (1 - 1e-9) or llr < a:  # (a margin for rounding at exactly the ratio)
            continue
        if stat == "call" and (task_ratio is None or task_ratio < needs * (1 - 1e-9)):
            continue
        out.append(stat)
    return out


def rejected(tests: Mapping[str, tuple[float | None, float]], alpha: float) -> bool:
    """Whether every known statistic decided *against* a rise (LLR at most -log(1/alpha))."""
    known = [llr for r, llr in tests.values() if r is not None]
    return bool(known) and all(llr <= -evidence.threshold(alpha) for llr in known)


class ModelUpdateSpike:
    """Cost per task, per call or per outcome after a model/version change, by a sequential test.

    Cost here is inference cost: the part a model change drives directly. Tool and human
    costs, lumpy and often larger for cheap models, would hide a tripled model bill. The
    baseline is the minutes of the last ``baseline_tasks`` ended tasks before the change (at
    most a day of active minutes; at least ``MIN_BASELINE_TASKS`` tasks, else a new agent
    is not judged). From ``min_tasks`` tasks after the change on, every minute, the totals
    since the change are tested against it (:mod:`fleetwarden.core.evidence`): a spike is a
    ratio of at least ``ratio`` whose sequential test decides at ``SPIKE_ALPHA``, in cost per
    task (work in progress counted, so a traffic surge is not one), per outcome, or per model
    call (with cost per task past H0). Judging stops when every statistic decided against a
    spike, when ``baseline_tasks`` tasks have ended after the change (the new model is then
    the baseline), at the next change, or when the previous model comes back as the main
    model before any spike (an agent that uses both models: a mix, not an update).
    """

    kind = "model_update_spike"

    def __init__(self, params: spec.ModelUpdateSpikeParams) -> None:
        self.p = params
        self._hist: collections.deque[_Row] = collections.deque()
        self._tasks = 0  # ended tasks in _hist
        self._models_seen: dict[str, int] = {}  # model -> last minute it was the main model
        self._versions_seen: dict[str, int] = {}
        self._model: str | None = None
        self._version: str | None = None
        self._change: _Change | None = None
        self._next_prune = 0  # the seen maps are pruned at most once per KNOWN_MODEL_MINUTES
        self.changed = False  # whether the last minute stepped declared a change (for cost_shift)

    @property
    def judging(self) -> bool:
        """Whether a declared change is being judged (cost_shift stays out of it)."""
        return self._change is not None

    def _usual_model(self, exclude: str | None) -> str | None:
        counts = collections.Counter(r[6] for r in self._hist if r[6] is not None and r[6] != exclude)
        if not counts:
            return self._model if self._model != exclude else None
        best = max(counts.values())
        # ties: the most recent of the most common
        for r in reversed(self._hist):
            if r[6] is not None and counts.get(r[6]) == best:
                return r[6]
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
        self.changed = True
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
        self._change = _Change(onset=m.minute, model=new_model, previous_model=previous_model,
                               version=m.version if version_changed else self._version,
                               previous_version=self._version, rows=self._hist)

    def _remember(self, m: series.AgentMinute, row: _Row) -> None:
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
        if row[1] == 0 and row[2] == 0 and row[3] == 0 and row[5] == 0 and model is None:
            return
        self._hist.append(row)
        self._tasks += row[3]
        self._forget(t)

    def _forget(self, now: int) -> None:
        """Drop from the baseline what is beyond ``baseline_tasks`` tasks (but keep at least
        MIN_BASELINE_MINUTES minutes: a busy agent ends ``baseline_tasks`` in fewer) or
        MAX_BASELINE_MINUTES."""
        hist = self._hist
        while hist and ((self._tasks - hist[0][3] >= self.p.baseline_tasks and len(hist) > MIN_BASELINE_MINUTES)
                        or now - hist[0][0] >= MAX_BASELINE_MINUTES * MINUTE):
            self._tasks -= hist.popleft()[3]

    def step(self, m: series.AgentMinute, units: float | None = None) -> list[findings.Finding]:
        """Fold minute ``m``; ``units``: its task units (:func:`task_units`), else its ended tasks."""
        self.changed = False
        model, version = m.model, m.version
        if (model is not None and model != self._model) or (version is not None and version != self._version):
            self._forget(m.minute)  # the baseline is the last MAX_BASELINE_MINUTES (none after an idle hour)
            self._detect_change(m)
        row: _Row = (m.minute, m.inference_cost_usd, m.llm_calls, m.tasks_ended,
                     float(m.tasks_ended) if units is None else units, m.outcomes, model)
        self._remember(m, row)
        ch = self._change
        if ch is None:
            return []
        if (ch.reported is None and ch.model != ch.previous_model and model is not None
                and model == ch.previous_model and m.minute != ch.onset):
            self._change = None  # the previous model is back before any spike: a mix, not an update
            return []
        ch.add(row)
        out: list[findings.Finding] = []
        # no baseline: a new agent
        settled = ch.base_tasks < max(self.p.min_tasks, MIN_BASELINE_TASKS) or ch.base_minutes < MIN_BASELINE_MINUTES
        if not settled and ch.tasks >= self.p.min_tasks:
            tests = ch.tests(self.p.ratio)
            f = self._judge(ch, m, tests)
            if f is not None:
                out.append(f)
            settled = ch.reported is None and rejected(tests, SPIKE_ALPHA)
        if settled or ch.tasks >= max(self.p.baseline_tasks, self.p.min_tasks):
            self._change = None
        return out

    def _judge(self, ch: _Change, m: series.AgentMinute,
               tests: Mapping[str, tuple[float | None, float]]) -> findings.Finding | None:
        passed = decided(tests, self.p.ratio, SPIKE_ALPHA, call_needs=self.p.ratio)
        if not passed:
            return None
        basis = max(passed, key=lambda s: tests[s][0] or 0.0)
        headline = tests[basis][0] or 0.0
        again = ch.reported is not None
        if ch.reported is not None:
            # worse: every one of the latest observations at WORSEN_FACTOR times the report (a giant
            # task is one observation; all of the latest costing more is a worsening)
            base = ch.base[basis]
            latest = ch.post[basis][-WORSE_OBSERVATIONS:]
            if base is None or len(latest) < WORSE_OBSERVATIONS:
                return None
            headline = math.exp(min(x for x, _ in latest) - base.mean)
            if headline < WORSEN_FACTOR * ch.reported:
                return None
        ch.reported = headline
        what = "model" if ch.model != ch.previous_model else "version"
        if what == "model":
            change = f"{ch.previous_model} -> {ch.model}"
        else:
            change = f"version {ch.previous_version} -> {ch.version} (model {ch.model})"
        rollback = f" (roll back to {ch.previous_model})" if self.p.action is spec.Action.rollback else ""
        message = (f"{'Still rising: ' if again else ''}cost per {basis} of {m.agent} is "
                   f"{headline:.1f}x its baseline since {change}, after {ch.tasks} tasks; "
                   f"action {self.p.action.value}{rollback}")
        evidence_ = _cost_evidence(ch.base, ch.base_sums, ch.post_sums, tests, self.p.ratio, basis, SPIKE_ALPHA)
        evidence_["ratio"] = _round(headline)
        evidence_.update({"tasks_before": ch.base_tasks, "tasks_after": ch.tasks, "version": ch.version,
                          "previous_version": ch.previous_version})
        return _finding(self.kind, m, onset=ch.onset, action=self.p.action, message=message,
                        evidence=evidence_, model=ch.model, previous_model=ch.previous_model)


def _cost_evidence(base: Mapping[str, evidence.Summary | None], base_sums: Mapping[str, Sequence[float]],
                   post_sums: Mapping[str, Sequence[float]], tests: Mapping[str, tuple[float | None, float]],
                   ratio: float, basis: str, alpha: float) -> dict[str, Any]:
    """The numbers behind a cost finding: per statistic the ratio (of geometric means, what the test
    judges) and the cost per unit before and after (totals, what a person checks)."""
    out: dict[str, Any] = {"ratio": _round(tests[basis][0]), "basis": basis, "threshold": ratio,
                           "log_likelihood_ratio": _round(tests[basis][1], 2),
                           "evidence_threshold": _round(evidence.threshold(alpha), 2)}
    for stat in STATS:
        cost0, units0 = base_sums[stat]
        cost1, units1 = post_sums[stat]
        summary = base[stat]
        out[f"cost_per_{stat}_ratio"] = _round(tests[stat][0])
        out[f"cost_per_{stat}_before_usd"] = _round(cost0 / units0, 6) if units0 > 0 else None
        out[f"cost_per_{stat}_after_usd"] = _round(cost1 / units1, 6) if units1 > 0 else None
        out[f"{stat}s_before" if stat != "task" else "task_units_before"] = _round(units0)
        out[f"{stat}s_after" if stat != "task" else "task_units_after"] = _round(units1)
        out[f"log_sd_{stat}"] = _round(math.sqrt(summary.variance)) if summary is not None else None
    return out


# ---------------------------------------------------------------- cost_shift

# The baseline of a cost shift: the active minutes of this long before the candidate change.
SHIFT_BASELINE_MINUTES = 60
# Candidate changes: this many minutes ago (the window after them is tested against the baseline
# before them; several lengths, as a change point is not declared).
SHIFT_WINDOWS = (10, 20, 30)
# Tested every minute over several windows: a far smaller error rate than a declared change's
# (1e-4 before: on tuning seeds 110-134, 1e-3 found 14 of 25 cost shifts instead of 12, with the
# same false alarms; the sign test below is the guard against a run of giant tasks).
SHIFT_ALPHA = 1e-3
# ... and the typical unit must have risen too: most observations above the baseline's median, by a
# sign test at this error rate.
SIGN_ALPHA = 1e-3
# A baseline needs this many active minutes (and MIN_BASELINE_TASKS ended tasks); a window this
# many observations.
SHIFT_MIN_BASELINE_MINUTES = 20
SHIFT_MIN_OBSERVATIONS = 6
# How far (in log cost per task) a bound of CostShift._task_rose stays on the safe side of ``ratio``:
# a weighted mean of at most 60 log costs (each under 800 in size) is rounded by less than 1e-10.
_BOUND_SLACK = 1e-6


class _Baseline:
    """The baseline before a cut: the level of its cost per task (what a window must reach before
    anything else is worth computing: see CostShift._test), its observations per statistic and its
    summaries, each worked out the first time a window needs it. Its observations are sliced from
    the cost-shift detector's own, which keeps every minute before a cut unchanged while the cut is
    kept (see CostShift._baseline): most baselines only ever need their cost per task, and a kept
    state (core/warmfold.py) pickles no observation twice and restores none of them. No lock: each
    value depends on the baseline and the detector alone, so two threads working one out at once
    store equal values."""

    __slots__ = ("cut", "_known", "_level", "_pre", "_summaries")

    def __init__(self, cut: int) -> None:
        self.cut = cut
        self._known = False  # whether _level is worked out (None is a level: too few observations)
        self._level: evidence.Level | None = None
        self._pre: dict[str, list[evidence.Observation]] | None = None
        self._summaries: dict[str, evidence.Summary | None] | None = None

    def _since(self, shift: CostShift, stat: str) -> list[evidence.Observation]:
        return shift._since(stat, self.cut - SHIFT_BASELINE_MINUTES * MINUTE, self.cut)

    @property
    def known(self) -> bool:
        """Whether the level is worked out (task_level gives it without reading the observations)."""
        return self._known

    def task_level(self, shift: CostShift) -> evidence.Level | None:
        if not self._known:
            self._level = evidence.level_of(*shift._columns("task", self.cut - SHIFT_BASELINE_MINUTES * MINUTE,
                                                            self.cut))
            self._known = True
        return self._level

    def pre(self, shift: CostShift) -> dict[str, list[evidence.Observation]]:
        if self._pre is None:
            self._pre = {stat: self._since(shift, stat) for stat in STATS}
        return self._pre

    def summaries(self, shift: CostShift) -> dict[str, evidence.Summary | None]:
        if self._summaries is None:
            pre, level = self.pre(shift), self.task_level(shift)
            self._summaries = {stat: evidence.summary(pre[stat], level if stat == "task" else None) for stat in STATS}
        return self._summaries

    def __getstate__(self) -> tuple[int, bool, evidence.Level | None, dict[str, evidence.Summary | None] | None]:
        return self.cut, self._known, self._level, self._summaries  # not the observations: sliced again

    def __setstate__(self, state: tuple[int, bool, evidence.Level | None, dict[str, evidence.Summary | None] | None]
                     ) -> None:
        self.cut, self._known, self._level, self._summaries = state
        self._pre = None


_minute_of = operator.itemgetter(0)  # of a _Row
_tasks_of = operator.itemgetter(3)  # (ended) of a _Row


class CostShift:
    """Cost per task, per call or per outcome rose sharply with no declared change.

    The same observations and sequential test as :class:`ModelUpdateSpike`
    (:mod:`fleetwarden.core.evidence`), without a known change point: every minute, for each
    window of ``SHIFT_WINDOWS`` minutes ending now, the window's observations are tested
    against those of the ``SHIFT_BASELINE_MINUTES`` before it (at least ``MIN_BASELINE_TASKS``
    tasks over ``SHIFT_MIN_BASELINE_MINUTES`` active minutes), at ``SHIFT_ALPHA`` (the
    strongest of the candidate change points decides: a generalised likelihood ratio). A
    shift is a ratio of at least ``ratio`` that the test decides; its onset is the start of
    the window with the strongest evidence. A declared change of model or version starts the
    history over (judging it is the spike detector's), and nothing is judged while the spike
    detector judges one. While a shift lasts its baseline is frozen; it ends when the last ten
    minutes fall under ``ratio ** NULL_SHARE`` times it.
    """

    kind = "cost_shift"

    def __init__(self, params: spec.CostShiftParams) -> None:
        self.p = params
        self._span = (SHIFT_BASELINE_MINUTES + max(SHIFT_WINDOWS)) * MINUTE
        self.reset()

    def reset(self) -> None:
        """A declared change: the history before it is no baseline for what follows."""
        self._rows: list[_Row] = []  # the active minutes of the last _span, in order
        # stat -> the minutes of its observations (in order), and the observations as columns
        # (evidence.columns: log costs, units, square roots of the units)
        self._times: dict[str, list[int]] = {stat: [] for stat in STATS}
        self._xs: dict[str, list[float]] = {stat: [] for stat in STATS}
        self._us: dict[str, list[float]] = {stat: [] for stat in STATS}
        self._roots: dict[str, list[float]] = {stat: [] for stat in STATS}
        self._blocks = {stat: evidence.Blocks(weighted=stat != "call") for stat in STATS}
        self._frozen: dict[str, evidence.Summary | None] | None = None  # baseline of the lasting shift
        self._bases: dict[int, _Baseline | None] = {}  # cut -> its baseline (see _baseline)

    def step(self, m: series.AgentMinute, units: float | None = None, judge: bool = True) -> list[findings.Finding]:
        """Fold minute ``m`` (``units``: its task units); ``judge`` False: remember it only (a declared
        change is being judged by the spike detector)."""
        row: _Row = (m.minute, m.inference_cost_usd, m.llm_calls, m.tasks_ended,
                     float(m.tasks_ended) if units is None else units, m.outcomes, m.model)
        if row[1] == 0 and row[2] == 0 and row[3] == 0 and row[5] == 0:
            return []  # an empty minute changes nothing (as a gap)
        fresh = self._remember(row)
        if self._frozen is not None:
            self._lasting(m)
            return []
        if not judge or not fresh:
            return []  # (nothing new to judge: the windows' observations are those of the last judgement)
        best: tuple[float, int, dict[str, tuple[float | None, float]], dict[str, Any]] | None = None
        bases = self._bases
        first_cut = m.minute - (max(SHIFT_WINDOWS) - 1) * MINUTE
        for old in [cut for cut in bases if cut < first_cut]:
            del bases[old]
        for w in SHIFT_WINDOWS:
            cut = m.minute - (w - 1) * MINUTE  # the window: minutes from `cut` on
            found = self._test(cut)
            if found is not None and (best is None or found[0] > best[0]):
                best = (found[0], cut, found[1], found[2])
        if best is None:
            return []
        _, cut, tests, base = best
        self._frozen = base
        return [self._report(m, cut, tests, base)]

    def _remember(self, row: _Row) -> bool:
        """Keep the minute and its observations; whether it gave a new call or task observation."""
        rows = self._rows
        rows.append(row)
        oldest = row[0] - self._span
        k = 0
        while rows[k][0] <= oldest:
            k += 1
        if k:
            del rows[:k]
        fresh = False
        for stat in STATS:
            times, xs, us, roots = self._times[stat], self._xs[stat], self._us[stat], self._roots[stat]
            x = self._blocks[stat].add(row[1], _units(row, stat))
            if x is not None:
                times.append(row[0])
                xs.append(x[0])
                us.append(x[1])
                roots.append(math.sqrt(x[1]))
                fresh = fresh or stat != "outcome"
            k = bisect.bisect_right(times, oldest)
            if k:
                del times[:k], xs[:k], us[:k], roots[:k]
        return fresh

    def _since(self, stat: str, start: int, end: int | None = None) -> list[evidence.Observation]:
        """The observations of ``stat`` made in the minutes from ``start`` on (before ``end``)."""
        xs, us, _ = self._columns(stat, start, end)
        return list(zip(xs, us, strict=True))

    def _columns(self, stat: str, start: int, end: int | None = None
                 ) -> tuple[list[float], list[float], list[float]]:
        """:meth:`_since` as columns (``evidence.columns``)."""
        times = self._times[stat]
        i = bisect.bisect_left(times, start)
        j = len(times) if end is None else bisect.bisect_left(times, end, i)
        return self._xs[stat][i:j], self._us[stat][i:j], self._roots[stat][i:j]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_roots"]  # (sqrt of the units: worked out again)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._roots = {stat: list(map(math.sqrt, us)) for stat, us in self._us.items()}

    def _test(self, cut: int) -> tuple[float, dict[str, tuple[float | None, float]], dict[str, Any]] | None:
        """(strongest LLR, tests, baseline summaries) of a change at ``cut``, if one is decided.

        Nothing is decided unless the cost per task rose to ``ratio`` (per call counts only with it,
        per outcome is not tested here: see ``decided``), so that ratio is screened first, with the
        numbers of the test itself; the baseline's noise (its variance and autocorrelation, the
        costly part) and the other statistics are computed only for a window that passes it."""
        found = self._bases[cut] if cut in self._bases else self._baseline(cut)
        if found is None or not self._task_rose(cut, found):
            return None
        pre, base = found.pre(self), found.summaries(self)
        post = {stat: self._since(stat, cut) for stat in STATS}
        # per outcome is left to the spike detector: outcomes are too sparse to watch without a change point
        tests = {stat: evidence.sprt(post[stat], base[stat], self.p.ratio)
                 if stat != "outcome" and len(post[stat]) >= SHIFT_MIN_OBSERVATIONS else (None, 0.0)
                 for stat in STATS}
        passed = decided(tests, self.p.ratio, SHIFT_ALPHA, call_needs=self.p.ratio)
        # ... and the typical unit rose too (a sign test on the medians): a run of giant tasks is no shift
        passed = [stat for stat in passed if self._typical_rose(post[stat], pre[stat], base[stat])]
        if not passed:
            return None
        return max(tests[s][1] for s in passed), tests, base

    def _task_rose(self, cut: int, found: _Baseline) -> bool:
        """Whether the window from ``cut`` could pass ``decided``: its ratio of cost per task (that of
        the test itself, ``evidence.sprt``'s, from the baseline's level only) reached ``ratio``.

        Most windows are far from it, and two bounds say so before the means are worked out: a
        winsorised mean is a mean of values each clipped into the sample's range or to its median,
        so the window's is at most its largest observation, and the baseline's at least its
        smallest. A window whose largest observation is not ``ratio`` above the baseline's
        smallest (or its level, once known) cannot have reached it, by more than ``_BOUND_SLACK``
        (far more than the rounding of those means): the same answer, without the window's
        median and winsorised sum, and without the baseline's level while no window needs it."""
        post = self._columns("task", cut)
        if len(post[0]) < SHIFT_MIN_OBSERVATIONS:
            return False
        reach = math.log(self.p.ratio) - _BOUND_SLACK
        top = max(post[0])
        if not found.known:
            lows = self._columns("task", cut - SHIFT_BASELINE_MINUTES * MINUTE, cut)[0]
            if len(lows) < 2 or top - min(lows) < reach:
                return False  # (fewer than two: no level, as evidence.level_of says)
        base = found.task_level(self)
        if base is None or top - base.mean < reach:
            return False
        return math.exp(evidence.shift_of(*post, base)[1]) >= self.p.ratio * (1 - 1e-9)

    def _baseline(self, cut: int) -> _Baseline | None:
        """The baseline before ``cut`` (None: too few minutes or tasks), kept for
        the next windows that end there: the minutes before a cut never change once it is passed
        (rows and observations only come later, and none before a window's baseline is dropped), so
        each cut is summarised once instead of once per window, with the same result."""
        lo = cut - SHIFT_BASELINE_MINUTES * MINUTE
        rows = self._rows
        i = bisect.bisect_left(rows, lo, key=_minute_of)
        j = bisect.bisect_left(rows, cut, i, key=_minute_of)
        found: _Baseline | None = None
        if j - i >= SHIFT_MIN_BASELINE_MINUTES and sum(map(_tasks_of, rows[i:j])) >= MIN_BASELINE_TASKS:
            found = _Baseline(cut)
        self._bases[cut] = found
        return found

    def _typical_rose(self, post: Sequence[evidence.Observation], pre: Sequence[evidence.Observation],
                      base: evidence.Summary | None) -> bool:
        median_ratio, llr = evidence.sign_test(post, pre, base.inflation if base is not None else 1.0)
        return (median_ratio is not None and median_ratio >= self.p.ratio ** evidence.NULL_SHARE
                and llr >= evidence.threshold(SIGN_ALPHA))

    def _lasting(self, m: series.AgentMinute) -> None:
        """A lasting shift ends when the last ten minutes cost under ratio ** NULL_SHARE times its baseline."""
        assert self._frozen is not None
        level = math.log(self.p.ratio) * evidence.NULL_SHARE
        for stat in ("call", "task"):
            base = self._frozen[stat]
            xs, us, _ = self._columns(stat, m.minute - 9 * MINUTE)  # (this minute and the nine before)
            if base is None or not xs:
                continue
            if sum(map(operator.mul, xs, us)) / sum(us) - base.mean >= level:
                return
        self.reset()

    def _report(self, m: series.AgentMinute, cut: int, tests: Mapping[str, tuple[float | None, float]],
                base: Mapping[str, evidence.Summary | None]) -> findings.Finding:
        passed = decided(tests, self.p.ratio, SHIFT_ALPHA, call_needs=self.p.ratio)
        basis = max(passed, key=lambda s: tests[s][0] or 0.0)
        headline = tests[basis][0] or 0.0
        message = (f"cost per {basis} of {m.agent} is {headline:.1f}x its baseline since "
                   f"{timefmt.rfc3339(cut)} with no change of model or version declared (a prompt or "
                   f"tool change shipped without a version?); action {self.p.action.value}")
        lo = cut - SHIFT_BASELINE_MINUTES * MINUTE
        pre = [r for r in self._rows if lo <= r[0] < cut]
        post = [r for r in self._rows if r[0] >= cut]
        sums = [{stat: (sum(r[1] for r in part), sum(_units(r, stat) for r in part)) for stat in STATS}
                for part in (pre, post)]
        evidence_ = _cost_evidence(base, sums[0], sums[1], tests, self.p.ratio, basis, SHIFT_ALPHA)
        evidence_["window_minutes"] = (m.minute - cut) // MINUTE + 1
        evidence_["model"] = m.model
        return _finding(self.kind, m, onset=cut, action=self.p.action, message=message, evidence=evidence_)


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

    __slots__ = ("p", "_w", "_h_span", "_win", "_hist", "_hist_tokens", "_hist_active", "_hist_output", "_active",
                 "_run", "_prev", "_first",
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
        self._hist_output = 0.0
        self._active = False
        self._run = 0  # trailing minutes with tokens and no output, each with more tokens than the one before
        self._prev = 0  # tokens of the newest minute
        self._last: int | None = None  # the newest minute fed
        self._first: int | None = None  # the first minute fed

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
                self._hist_output += old[2]
                if old[1] > 0:
                    self._hist_tokens += old[1]
                    self._hist_active += 1
            else:
                if drop > now:
                    return
                gone = hist.popleft()
                self._hist_output -= gone[2]
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
        if self._first is None:
            self._first = t
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
        assert self._first is not None
        span = min(TYPICAL_MINUTES, (self._win[0][0] - self._first) // MINUTE)  # minutes of history
        if span <= 0 or self._hist_output / span * self._w < MIN_EXPECTED_OUTPUT_ACCELERATING:
            return []  # an agent that often goes this long without output (long tasks): not judged
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


# ---------------------------------------------------------------- runaway_loop: a plateau (retry storm)

# A dry spell (tokens, no output) is judged only once the agent's usual output would have given
# at least this many outputs in it (Poisson: no output has a chance under e^-8, 0.03%).
MIN_EXPECTED_OUTPUT = 8.0
# ... and never over more than this many minutes (a slower agent's plateau is not judged).
PLATEAU_MAX_MINUTES = 30


class LoopPlateau:
    """Tokens at a high, steady rate while nothing is produced: a retry storm, a loop at a fixed pace.

    A *dry spell* is a run of minutes, each with tokens and no output (completed tasks plus
    outcomes). It is judged once it lasts ``max(window_minutes, MIN_EXPECTED_OUTPUT / usual
    output per minute)`` minutes (at most ``PLATEAU_MAX_MINUTES``), the usual rates being the
    means over the ``TYPICAL_MINUTES`` before the spell (at least ``MIN_TYPICAL_MINUTES``
    active ones): a loop when over that span the mean and the last minute are both at least
    ``acceleration`` times the usual token rate and at least ``min_tokens_per_minute``. No
    rise is needed: that is :class:`RunawayLoop`'s case. The onset is the spell's first
    minute; the condition ends with output or when tokens stop.
    """

    kind = "runaway_loop"

    def __init__(self, params: spec.RunawayLoopParams) -> None:
        self.p = params
        # (minute, tokens, output) of the minutes fed, over the spell's longest span and the history before it
        self._rows: collections.deque[tuple[int, int, float]] = collections.deque()
        self._dry_since: int | None = None  # first minute of the current dry spell
        self._active = False
        self._span = (PLATEAU_MAX_MINUTES + TYPICAL_MINUTES) * MINUTE
        self._first: int | None = None  # the first minute fed

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        t = m.minute
        rows = self._rows
        last = rows[-1][0] if rows else None
        if self._first is None:
            self._first = t
        rows.append((t, m.tokens, m.output))
        while rows[0][0] <= t - self._span:
            rows.popleft()
        if m.tokens <= 0 or m.output > 0:
            self._dry_since = None
            self._active = False
            return []
        if self._dry_since is None or last != t - MINUTE:
            self._dry_since = t
            self._active = False
        if self._active:
            return []
        return self._judge(m)

    def _judge(self, m: series.AgentMinute) -> list[findings.Finding]:
        p = self.p
        assert self._dry_since is not None
        since = self._dry_since
        dry = (m.minute - since) // MINUTE + 1
        if dry < p.window_minutes:
            return []
        before = [r for r in self._rows if since - TYPICAL_MINUTES * MINUTE <= r[0] < since]
        active = [r for r in before if r[1] > 0]
        if len(active) < MIN_TYPICAL_MINUTES:
            return []
        typical = sum(r[1] for r in active) / len(active)
        assert self._first is not None
        history = min(TYPICAL_MINUTES, (since - self._first) // MINUTE)  # minutes of history before the spell
        output_rate = sum(r[2] for r in before) / history if history > 0 else 0.0
        if output_rate <= 0:
            return []
        needed = max(p.window_minutes, math.ceil(MIN_EXPECTED_OUTPUT / output_rate))
        if needed > PLATEAU_MAX_MINUTES or dry < needed:
            return []
        span = [r[1] for r in self._rows if r[0] > m.minute - needed * MINUTE]
        mean = sum(span) / needed  # (a missing minute burned nothing)
        level = max(p.acceleration * typical, p.min_tokens_per_minute)
        if mean < level or m.tokens < level:
            return []
        self._active = True
        evidence_ = {
            "tokens_per_minute": span,
            "mean_tokens_per_minute": _round(mean, 1),
            "typical_tokens_per_minute": _round(typical, 1),
            "vs_typical": _round(mean / typical),
            "threshold": p.acceleration,
            "dry_minutes": dry,
            "usual_output_per_minute": _round(output_rate, 3),
            "output_in_window": 0,
            "window_minutes": needed,
        }
        message = (f"{m.agent} has burned {mean:.0f} tokens/minute, {mean / typical:.1f}x its usual rate, "
                   f"for {dry} minutes without a completed task or outcome (it usually has "
                   f"{output_rate:.1f} a minute); action {p.action.value}")
        return [_finding(self.kind, m, onset=since, action=p.action, message=message, evidence=evidence_)]


# ---------------------------------------------------------------- runaway_loop: one task

# The baseline of a task: the agent's minutes in this long before the task began, reaching back
# at least TASK_MIN_BASELINE_MINUTES.
TASK_BASELINE_MINUTES = 60
TASK_MIN_BASELINE_MINUTES = 30
# The task must also reach this many times the agent's mean tokens per ended task ...
TASK_TYPICAL_RATIO = 10.0
# ... or, when it has burned this many times longer than any task of the baseline (and passed
# the largest of them), it loops too: a loop at a modest pace is found by its length.
TASK_RUN_RATIO = 3.0
_NO_ROW = 1 << 62  # the minute of "no row": after any other
# Two readings of a task are the same task when their start times (minute end - age) differ by at
# most this (the live gauge is read up to a scrape interval, 15 s by default, before the minute ends;
# two tasks that start closer than this and take turns as the largest look like one).
SAME_TASK_SECONDS = 20.0


class _Track:
    """One reading of a running task (the largest, or the oldest) minute after minute: when that task
    began, how many minutes in a row it has burned (its tokens rose), and its tokens."""

    __slots__ = ("start", "run", "tokens")

    def __init__(self) -> None:
        self.start: float | None = None
        self.run = 0
        self.tokens = 0

    def update(self, tokens: int | None, age: float | None, minute: int, contiguous: bool) -> None:
        if tokens is None or age is None or tokens <= 0:
            self.start, self.run, self.tokens = None, 0, 0
            return
        start = minute + MINUTE - age
        if contiguous and self.start is not None and abs(start - self.start) <= SAME_TASK_SECONDS:
            self.run = self.run + 1 if tokens > self.tokens else 0
        else:
            self.start, self.run = start, 1
        self.tokens = tokens


class TaskRunaway:
    """One task keeps burning tokens far beyond the agent's other tasks, while they may complete.

    Fed two readings of the agent's *running* open tasks per minute (``AgentMinute``'s
    ``largest_task_*`` and ``oldest_task_*``: tokens and age at the minute's end; replay derives
    them from the events' task ids, the SDK exports them live with bounded labels). A reading
    is the same task from one minute to the next when its start (minute end - age) moves by
    at most ``SAME_TASK_SECONDS``; it *burns* while its tokens rise every minute. Against the
    ``TASK_BASELINE_MINUTES`` before the task began (at least ``MIN_BASELINE_TASKS`` ended
    tasks: a new agent, or one back from idle, is not judged), a task loops when it has burned
    ``window_minutes`` or more and its tokens reach ``TASK_TYPICAL_RATIO`` times the agent's
    mean tokens per ended task, and either

    - its tokens reach ``task_ratio`` times the largest running task of the baseline (a loop
      that grows, or burns fast), or
    - it has burned ``TASK_RUN_RATIO`` times longer than any task of the baseline (a loop at a
      task's usual pace: found by its length).

    A task is reported once; the onset is its start.
    """

    kind = "runaway_loop"

    def __init__(self, params: spec.RunawayLoopParams) -> None:
        self.p = params
        # (minute, tokens, tasks ended, largest running task's tokens, longest burn run) of the minutes fed
        self._rows: collections.deque[tuple[int, int, int, int, int]] = collections.deque()
        self._largest = _Track()
        self._oldest = _Track()
        self._last: int | None = None
        self._reported: collections.deque[float] = collections.deque(maxlen=16)  # starts of tasks reported
        self._keep = 6 * 3600  # rows kept: a task's baseline may lie this far back
        # (start, first row's minute, ended, tokens, largest, longest) of the last baseline summed: a
        # task is judged every minute it burns, and its baseline (rows before its start) stays the same
        # while its first row is kept (rows fed later are after the start)
        self._base: tuple[float, int, int, int, int, int] | None = None

    def step(self, m: series.AgentMinute) -> list[findings.Finding]:
        t = m.minute
        contiguous = self._last == t - MINUTE
        self._last = t
        self._largest.update(m.largest_task_tokens, m.largest_task_age, t, contiguous)
        self._oldest.update(m.oldest_task_tokens, m.oldest_task_age, t, contiguous)
        rows = self._rows
        rows.append((t, m.tokens, m.tasks_ended, m.largest_task_tokens or 0, max(self._largest.run, self._oldest.run)))
        while rows[0][0] <= t - self._keep:
            rows.popleft()
        for track, task_id in ((self._largest, m.largest_task_id), (self._oldest, m.oldest_task_id)):
            if track.run >= self.p.window_minutes and track.start is not None and track.start not in self._reported:
                found = self._judge(m, track, task_id)
                if found:
                    return found
        return []

    def _judge(self, m: series.AgentMinute, track: _Track, task_id: str | None) -> list[findings.Finding]:
        p = self.p
        assert track.start is not None
        start = track.start
        kept = self._base
        if kept is None or kept[0] != start or self._rows[0][0] > kept[1]:
            base = [r for r in self._rows if start - TASK_BASELINE_MINUTES * MINUTE <= r[0] < start - MINUTE]
            # no row before the start: none can join later, so that stays (the first row "never")
            first: int = base[0][0] if base else _NO_ROW
            ended: int = sum(r[2] for r in base)
            base_tokens: int = sum(r[1] for r in base)
            largest: int = max((r[3] for r in base), default=0)
            longest: int = max((r[4] for r in base), default=0)
            self._base = (start, first, ended, base_tokens, largest, longest)
        else:
            _, first, ended, base_tokens, largest, longest = kept
        if ended < MIN_BASELINE_TASKS or first > start - TASK_MIN_BASELINE_MINUTES * MINUTE:
            return []  # a new agent, or one back from idle: its longest and largest tasks are not known yet
        typical = base_tokens / ended
        tokens = track.tokens
        if tokens < TASK_TYPICAL_RATIO * typical:
            return []
        by_size = tokens >= p.task_ratio * largest
        by_length = track.run >= max(p.window_minutes, TASK_RUN_RATIO * longest)
        if not (by_size or by_length):
            return []
        self._reported.append(start)
        for other in (self._largest, self._oldest):  # the same task in the other reading
            if other is not track and other.start is not None and abs(other.start - start) <= SAME_TASK_SECONDS:
                self._reported.append(other.start)
        evidence_ = {
            "task_tokens": tokens,
            "task_age_seconds": _round(m.minute + MINUTE - start, 1),
            "burning_minutes": track.run,
            "typical_task_tokens": _round(typical, 1),
            "largest_task_tokens_before": largest,
            "longest_burn_minutes_before": longest,
            "vs_typical": _round(tokens / typical),
            "vs_largest": _round(tokens / largest) if largest else None,
            "threshold": p.task_ratio,
            "open_tasks": m.open_tasks,
            "found_by": "size" if by_size else "length",
        }
        which = f"task {task_id}" if task_id is not None else "one task"
        beyond = (f"{tokens / largest:.1f}x the largest task" if by_size and largest
                  else f"{track.run / max(longest, 1):.1f}x longer than any task")
        message = (f"{which} of {m.agent} has burned {tokens} tokens for {track.run} minutes in a row, "
                   f"{tokens / typical:.0f}x its usual task and {beyond} of the hour before, while other "
                   f"tasks go on; action {p.action.value}")
        f = _finding(self.kind, m, onset=series.minute_of(start), action=p.action, message=message,
                     evidence=evidence_)
        return [dataclasses.replace(f, task_id=task_id)] if task_id is not None else [f]


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
        # under this many calls in the short window no tool is at min_calls_per_minute, neither over
        # the window nor in its last minute (a margin for rounding: above it the exact tests decide)
        self._floor = params.min_calls_per_minute * (1 - 1e-9)

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

    def _explodes(self, rate_s: float, base_rate: float, traffic: tuple[int, int, int, int], n_b: int,
                  share: float = 1.0) -> bool:
        """A jump: the short window at ``share`` x ``ratio`` times the baseline, traffic not explaining it."""
        raw = rate_s / base_rate
        if rate_s < self.p.min_calls_per_minute or raw < self.p.ratio * share:
            return False
        usable = [r for r in self._normalised(rate_s, base_rate, traffic, n_b) if r is not None]
        if not usable:
            # no traffic to divide by in the baseline: the raw ratio decides, unless traffic is there
            # now (an agent back from idle, or new: its baseline says nothing of its usual rate)
            return traffic[0] + traffic[2] < MIN_EXPECTED_TRAFFIC
        return max(usable) >= self.p.ratio * share * NORMALISED_SHARE

    def _ramps(self, tool: str, now: int, base_rate: float, traffic: tuple[int, int, int, int], n_b: int) -> bool:
        """A ramp: calls rising in each of the last ``RAMP_MINUTES`` minutes (a missing minute has none),
        the last one at the minimum rate and at ``RAMP_SHARE`` x ``ratio`` times the baseline, also per
        unit of traffic (its growth over those minutes): found before the window's mean reaches ``ratio``."""
        fed = {e[0]: e for e in (*self._base, *self._short) if e[0] > now - RAMP_MINUTES * MINUTE}
        span = [fed.get(t) for t in range(now - (RAMP_MINUTES - 1) * MINUTE, now + 1, MINUTE)]
        calls = [float(e[1].get(tool, 0.0)) if e is not None else 0.0 for e in span]
        if any(b <= a for a, b in zip(calls, calls[1:], strict=False)):
            return False
        level = self.p.ratio * RAMP_SHARE
        if calls[-1] < self.p.min_calls_per_minute or calls[-1] < level * base_rate:
            return False
        _, base_llm, _, base_tasks = traffic
        fed_span = [e for e in span if e is not None]
        now_traffic = 0
        usable = False
        for d_s, d_b in ((sum(e[2] for e in fed_span), base_llm), (sum(e[3] for e in fed_span), base_tasks)):
            now_traffic += d_s
            expected = d_b / n_b * RAMP_MINUTES
            if expected < MIN_EXPECTED_TRAFFIC:
                continue
            usable = True
            growth = d_s / expected
            if growth > 0 and calls[-1] / base_rate / growth < level:
                return False  # traffic explains it
        return usable or now_traffic < MIN_EXPECTED_TRAFFIC  # (as in _explodes)

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
        newest = self._short[-1][1] if self._short and self._short[-1][0] == minute else {}
        cands = [tool for tool, c in short_calls.items() if c / w >= minc or newest.get(tool, 0.0) >= minc]
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
            if not (self._explodes(rate_s, base_rate, traffic, n_base)
                    or self._ramps(tool, minute, base_rate, traffic, n_base)):
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


def _blank_minute(agent: str, namespace: str, minute: int) -> series.AgentMinute:
    """An empty minute of the agent (what ``tool_call_explosion`` reports in a gap)."""
    return series.AgentMinute(agent=agent, namespace=namespace, minute=minute)


class DetectorSet:
    """The detectors of one agent, fed its minutes in order (gaps allowed).

    ``runaway_loop`` has three detectors (:class:`RunawayLoop`, :class:`LoopPlateau`,
    :class:`TaskRunaway`); one problem is one finding, so a loop finding holds the others (and
    ``cost_shift``, which a loop also drives) for ``LOOP_HOLD_MINUTES``. A declared change of
    model or version starts ``cost_shift``'s history over.

    A gap of ``k`` minutes is the same as ``k`` empty minutes and costs nothing per minute:
    the cost detectors ignore empty minutes, ``runaway_loop`` cannot fire in one, and
    ``tool_call_explosion`` judges them only while its short window still holds a tool at
    its minimum rate (``tests/unit/core/test_detectors.py`` checks that a gap and its empty
    minutes fed one by one give the same findings).
    """

    __slots__ = ("params", "agent", "namespace", "spike", "loop", "plateau", "task", "tools", "shift", "_spike_on",
                 "_loop_on", "_tools_on", "_shift_on", "_last", "_open", "_loop_at")

    def __init__(self, params: spec.AnomalyParams, agent: str, namespace: str) -> None:
        self.params = params
        self.agent = agent
        self.namespace = namespace
        self.spike = ModelUpdateSpike(params.model_update_spike)
        self.loop = RunawayLoop(params.runaway_loop)
        self.plateau = LoopPlateau(params.runaway_loop)
        self.task = TaskRunaway(params.runaway_loop)
        self.tools = ToolCallExplosion(params.tool_call_explosion)
        # (a partial, not the bound method self._blank: that would be a reference cycle, and every
        # DetectorSet dropped, as each kept state restored for a cycle is, would wait for the
        # garbage collector instead of going at once: tests/unit/core/test_warmfold.py)
        self.tools.blank = functools.partial(_blank_minute, agent, namespace)
        self.shift = CostShift(params.cost_shift)
        self._spike_on = params.model_update_spike.enabled
        self._loop_on = params.runaway_loop.enabled
        self._tools_on = params.tool_call_explosion.enabled
        self._shift_on = params.cost_shift.enabled
        self._last: int | None = None
        self._open: int | None = None  # open tasks at the end of the last minute that said
        self._loop_at: dict[str, float] = {}  # runaway_loop detector -> time of its last finding

    def _held(self, now: float, by: str | None = None) -> bool:
        """Whether a runaway_loop finding of another detector than ``by`` was made within LOOP_HOLD_MINUTES."""
        return any(name != by and now - at < LOOP_HOLD_MINUTES * MINUTE for name, at in self._loop_at.items())

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
        units = task_units(minute, self._open)
        if minute.open_tasks is not None:
            self._open = minute.open_tasks
        if self._spike_on:
            found = self.spike.step(minute, units)
            if found:
                out.extend(found)
            if self.spike.changed:
                self.shift.reset()
        if self._loop_on:
            self._loops(minute, out)
        if self._tools_on:
            found = self.tools.step(minute)
            if found:
                out.extend(found)
        if self._shift_on:
            found = self.shift.step(minute, units, judge=not self.spike.judging)
            if found and not self._held(found[0].time):
                out.extend(found)
        return out

    def _loops(self, minute: series.AgentMinute, out: list[findings.Finding]) -> None:
        """The three runaway_loop detectors; a finding of one holds the others (one problem, one finding)."""
        for name, detector in (("accelerating", self.loop), ("plateau", self.plateau), ("task", self.task)):
            for f in detector.step(minute):
                if not self._held(f.time, name):
                    self._loop_at[name] = f.time
                    out.append(f)


# ---------------------------------------------------------------- the operator's refold

def reach_start(f: findings.Finding, params: spec.AnomalyParams) -> float:
    """The start of the earliest minute the detector of ``f`` weighed to make it: for a change,
    a loop or a task (by its onset), the hour before the onset (the baseline, the known models,
    the typical rate, the tasks before the task began); for a tool, its short window and
    baseline; for a cost shift, its longest window and the baseline before it."""
    if f.kind == findings.TOOL_CALL_EXPLOSION:
        p = params.tool_call_explosion
        return f.time - (p.window_minutes + p.baseline_minutes) * MINUTE
    if f.kind == findings.COST_SHIFT or f.onset is None:
        return f.time - (max(SHIFT_WINDOWS) + SHIFT_BASELINE_MINUTES) * MINUTE
    return f.onset - max(MAX_BASELINE_MINUTES, KNOWN_MODEL_MINUTES, TYPICAL_MINUTES, TASK_BASELINE_MINUTES) * MINUTE


def in_view(found: Iterable[findings.Finding], start: float, params: spec.AnomalyParams) -> list[findings.Finding]:
    """The findings of a refold that begins at ``start`` (the operator's lookback) whose detector saw
    all it weighs, as replay did (reach_start). One judged on a history cut short by the lookback
    may differ from replay's: a loop, a spike or a shift against a truncated baseline (found when
    replay found nothing, or with another onset: another incident), a hold or a frozen baseline
    whose reason fell out of the window. The operator refolds every cycle, so the minute that
    reveals a finding is judged in view when it is the last one (a lookback of at least the
    detectors' reach, 90 minutes: the default)."""
    return [f for f in found if reach_start(f, params) >= start]


# (kind, agent, tool, onset) of an incident the operator already reported
Reported = tuple[str, str, str | None, float]


def keep_reported(found: Iterable[findings.Finding], reported: Sequence[Reported],
                  params: spec.AnomalyParams) -> list[findings.Finding]:
    """What replay's fold carries that a refold of the lookback forgets, from the incidents already
    reported: one problem is one finding (a refold that no longer sees a problem's start finds it
    again with a later onset; a finding of the same kind, agent and tool whose reach holds a reported
    onset is that incident, given its onset), and a loop holds the cost shift it drives
    (``LOOP_HOLD_MINUTES`` from the loop's onset: replay holds from its finding, later)."""
    out = []
    for f in found:
        if f.kind in findings.ANOMALY_KINDS and f.onset is not None:
            start = reach_start(f, params)
            same = [o for kind, agent, tool, o in reported
                    if (kind, agent, tool) == (f.kind, f.agent, f.tool) and start <= o <= f.time]
            if same:
                f = dataclasses.replace(f, onset=min(same, key=lambda o: abs(o - (f.onset or 0.0))))
            elif f.kind == findings.COST_SHIFT and any(
                    kind == findings.RUNAWAY_LOOP and agent == f.agent and 0 <= f.time - o < LOOP_HOLD_MINUTES * MINUTE
                    for kind, agent, _, o in reported):
                continue
        out.append(f)
    return out
