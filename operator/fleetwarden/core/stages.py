"""The stages of the operator's decision, in order: each a small named pure function.

    findings -> kill switch -> steps -> suspend -> model -> notify -> approvals -> [act] -> settle -> conditions

Each stage reads the :class:`~fleetwarden.core.decision.EvaluationInput` and the
:class:`Draft` the stages before it left, and adds to the draft: findings, actions, Events,
parts of the status. None reads a clock or talks to anything. Each stage's Reason constants
are the ``reason`` of the Events (and conditions) it writes; each has a table test in
``tests/unit/operator/test_stages.py``. :func:`fleetwarden.core.evaluate.evaluate` runs
:data:`STAGES` and returns the draft as a :class:`~fleetwarden.core.decision.Decision`.

The rules:

1. findings: unknown data (no per-minute buckets, or the spend of a limit's window unknown)
   -> no finding at all, and no destructive action below. Known data -> the budget rules of
   :mod:`~fleetwarden.core.policies`, the detectors of :mod:`~fleetwarden.core.detectors`
   refolded over each agent's lookback window, and the guardrail problems of
   :mod:`~fleetwarden.core.guardrails`, exactly as ``fleetwarden replay`` finds them.
2. kill switch: a finding with action ``kill`` engages it -> ScaleToZero for the agents
   (every selected agent for the budget's spend rule; the one agent for a detector),
   remembering their replicas; Killed until ``spec.killSwitch.acknowledge`` equals
   ``status.killSwitch.incident`` -> RestoreReplicas exactly, ``resumedAt`` recorded, and
   spend before ``resumedAt`` no longer counts for the kill rule. While killed, an agent
   scaled back up (GitOps self-heal, a person) is scaled to zero again.
2b. steps (the graduated response, ``spec.steps``): each step whose window's spend is at or past
   ``atPercent`` of its cap is in force, unless a person acknowledged it (``spec.acknowledgeSteps``
   equal to ``status.steps.engagement``; it lapses once spend falls under the threshold or a higher
   step engages). CheaperModel -> SetModel (the replaced model remembered and restored on undo,
   both recorded in ``status.model.rollbacks``); ScaleToZero -> the agents held at zero (replicas
   remembered, restored on undo); CapOutputTokens and StopNewTasks reach the SDK through the policy
   ConfigMap. DryRun and Warn say what would be done and act on nothing. StepActive says why.
3. suspend: ``spec.suspend`` true -> ScaleToZero (remembered on the Deployment); false ->
   restore what was remembered.
4. model: ``spec.model.desired`` set -> every agent runs it (it wins). Else a
   ``model_update_spike`` with action ``rollback`` and ``spec.model.rollbackOnSpike`` ->
   SetModel(previous), recorded in ``status.model.rollbacks``; a Deployment that drifts back
   from an automatic rollback is set again.
5. notify: each finding not reported before -> an alert (Notify) and a Warning Event.
6. approvals: pending CostApprovals of the budget's agents -> ApprovalPending=True.
7. settle (after the handler acted): an action the API server refused, or that did not read
   back as done, is not recorded as done (see :func:`settle_stage`) and is retried.
8. conditions: the state (Suspended, Killed, Unknown, Exceeded, Warning, Active) and the
   metav1 conditions, lastTransitionTime kept unless a status really changes; a failed action
   makes Ready=False (and KillSwitchEngaged=False, ScaleFailed, for a refused stop).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from fleetwarden.core import (
    decision,
    detectors,
    findings,
    guardrails,
    policies,
    series,
    spec,
    timefmt,
    warmfold,
)
from fleetwarden.core import status as st
from fleetwarden.core.decision import EvaluationInput

MAX_ROLLBACKS = 20
MAX_INCIDENTS = 20
# An anomaly keeps AnomalyDetected=True for this long after it was last reported.
ANOMALY_HOLD_SECONDS = 15 * 60


@dataclasses.dataclass
class Draft:
    """What the stages have decided so far (owned by one evaluation; stages add to it)."""

    agents: list[decision.AgentDeployment]
    previous: st.AgentBudgetStatus
    known: bool = False
    reason_unknown: str = ""
    found: list[findings.Finding] = dataclasses.field(default_factory=list)
    new: list[findings.Finding] = dataclasses.field(default_factory=list)
    actions: list[decision.Action] = dataclasses.field(default_factory=list)
    events: list[decision.Event] = dataclasses.field(default_factory=list)
    kill_switch: st.KillSwitchStatus | None = None
    engaged: bool = False
    model: st.ModelStatus | None = None
    pending: list[decision.PendingApproval] = dataclasses.field(default_factory=list)
    state: st.State = st.State.active
    conditions: list[st.Condition] = dataclasses.field(default_factory=list)
    failures: list[decision.ActionFailure] = dataclasses.field(default_factory=list)
    # actions the budget's enforcement mode (DryRun, Warn) held back: what would have been done
    held: list[decision.Action] = dataclasses.field(default_factory=list)
    steps: st.StepsStatus | None = None
    step_rollbacks: list[st.Rollback] = dataclasses.field(default_factory=list)  # model changes of steps
    step_held: set[str] = dataclasses.field(default_factory=set)  # agents a ScaleToZero step keeps at zero

    @property
    def by_name(self) -> dict[str, decision.AgentDeployment]:
        return {a.name: a for a in self.agents}

    def act(self, action: decision.Action, event: decision.Event | None = None) -> None:
        self.actions.append(action)
        if event is not None:
            self.events.append(event)


Stage = Callable[[EvaluationInput, Draft], None]


# ---------------------------------------------------------------- 1: findings

REASON_METRICS_FRESH = "MetricsFresh"
REASON_METRICS_UNAVAILABLE = "MetricsUnavailable"
REASON_METRICS_AVAILABLE = "MetricsAvailable"

_DEFAULT_ANOMALIES = spec.AnomalyParams()


def anomaly_params(policies_: Sequence[spec.CostPolicy], agent: decision.AgentDeployment) -> spec.AnomalyParams:
    """The anomaly parameters of the first CostPolicy (by name) that applies to ``agent``; else defaults."""
    if not policies_:
        return _DEFAULT_ANOMALIES
    chosen = policies.applicable(policies_, agent.namespace, agent.labels)
    return chosen[0].spec.anomalies if chosen else _DEFAULT_ANOMALIES


def detector_findings(agent: decision.AgentDeployment, minutes: Sequence[series.AgentMinute],
                      params: spec.AnomalyParams) -> list[findings.Finding]:
    """Fold the replay detectors over one agent's lookback window, from an empty state."""
    detector_set = detectors.DetectorSet(params, agent.name, agent.namespace)
    out: list[findings.Finding] = []
    for minute in sorted(minutes, key=lambda m: m.minute):
        out.extend(detector_set.step(minute))
    return out


def cached_detector_findings(memo: decision.Memo | None, agent: decision.AgentDeployment,
                             minutes: Sequence[series.AgentMinute],
                             params: spec.AnomalyParams, source: str = "",
                             minute: int | None = None) -> Sequence[findings.Finding]:
    """:func:`detector_findings`, kept in ``memo`` per (source, agent, minutes covered, params): complete
    minutes do not change, so the refold runs once per minute per agent, not every cycle. Kept for
    ``minute``, the data's (:func:`data_minute`; default: the last minute covered, which an agent
    quiet for more than a minute has left behind: it would be folded again at every cycle)."""
    if memo is None or not minutes:
        return detector_findings(agent, minutes, params)
    first, last = minutes[0].minute, minutes[-1].minute  # the adapter's buckets are in order
    if first > last:
        first, last = last, first
    key = ("detectors", source, agent.namespace, agent.name, first, last, len(minutes), params)
    return memo.get(last if minute is None else minute, key,  # type: ignore[no-any-return]
                    lambda: tuple(detector_findings(agent, minutes, params)))


def _minute(m: series.AgentMinute) -> int:
    return m.minute


def data_minute(inp: EvaluationInput) -> int:
    """The minute of the evaluation's data: the end of the last complete minute it covers, or
    without it the clock's minute. An evaluation soon after the minute turned may still have the
    data read before the turn: its detectors' results are those of that data, computed (and kept
    in the memo) under the minute before, not again for the clock's new minute."""
    return inp.data_end if inp.data_end is not None else series.minute_of(inp.now)


def anchored_detector_findings(inp: EvaluationInput, agent: decision.AgentDeployment,
                               minutes: Sequence[series.AgentMinute], params: spec.AnomalyParams,
                               fold_start: int, source: str) -> Sequence[findings.Finding]:
    """The findings of a fold of the detectors from an empty state at the agent's anchor
    ``fold_start`` over its minutes from there on: from the state kept in ``inp.folds`` when it
    holds (core/warmfold.py), kept in ``inp.memo`` for the other cycles of the minute. An agent
    of a waiting share (``warmfold.wait_share`` 1 or 2) is given the findings of the minute
    before, from the same anchor, until an evaluation ``warmfold.WAIT_SECONDS[share]`` or more
    after its first of the new minute: a new minute's folds are spread over three cycles. (A
    minute whose wait no later evaluation ends is folded with the next one, from the same anchor:
    in view from the same start.) When the anchor moves at the next minute, from the agent's
    second of this minute on (``warmfold.prepare_second``), the new anchor's fold is done ahead
    (``Folds.prepare``)."""
    assert inp.folds is not None and inp.lookback_start is not None
    window: Sequence[series.AgentMinute]
    if isinstance(minutes, series.MinuteRun):  # in order; sliced without building a minute
        window = minutes[minutes.first_at(fold_start):]
    else:
        ordered = sorted(minutes, key=_minute)  # the adapter's buckets are in order already: linear
        window = ordered[bisect.bisect_left(ordered, fold_start, key=_minute):]
    if not window:
        return ()
    end = data_minute(inp)
    folds = inp.folds

    def fold() -> tuple[findings.Finding, ...]:
        return tuple(folds.findings(agent.namespace, agent.name, window, end, params, fold_start, source))
    ahead = warmfold.anchor(inp.lookback_start + series.MINUTE, inp.anchor_minutes, agent.namespace, agent.name)
    if inp.memo is None:
        out: Sequence[findings.Finding] = fold()
    else:
        memo = inp.memo
        last = window.minute_at(-1) if isinstance(window, series.MinuteRun) else window[-1].minute
        key = ("anchored", source, agent.namespace, agent.name, fold_start, last, len(window), params)
        latest = ("anchored, latest", source, agent.namespace, agent.name, fold_start, params)
        before = None
        share = warmfold.wait_share(agent.namespace, agent.name)
        if share and ahead == fold_start and memo.peek(end, key) is None:
            # (not when the anchor moves at the next minute: a minute this agent's evaluations never
            # came back to would be judged in view from the next anchor, not this one)
            before = memo.peek(end - series.MINUTE, latest)
        if before is not None and inp.now - memo.first(end, ("anchored, waited", *latest), inp.now) \
                < warmfold.WAIT_SECONDS[share]:
            out = before  # the minute before's findings, from the same anchor; folded at a later evaluation
        else:
            def folded() -> tuple[findings.Finding, ...]:
                found = fold()
                memo.put(end, latest, found)  # what an evaluation of the next minute may wait with
                return found
            out = memo.get(end, key, folded)  # kept for the data's minute: also an agent quiet since
    if ahead != fold_start and inp.now - end >= warmfold.prepare_second(agent.namespace, agent.name):
        folds.prepare(agent.namespace, agent.name, window, end, params, ahead, source)
    return out


def spend_since(minutes: Mapping[str, Sequence[series.AgentMinute]], since: float) -> float:
    """Spend in the complete minutes that start at or after the minute of ``since``."""
    start = series.minute_of(since)
    return sum(m.cost_usd for ms in minutes.values() for m in ms if m.minute >= start)


def kill_rule_spend(inp: EvaluationInput) -> float | None:
    """Spend as the kill rule counts it: after a resume, only what was spent since then.

    Two lower bounds, the larger wins (neither counts spend from before the resume):
    the window's spend now less the window's spend at the resume
    (``status.killSwitch.spendAtResumeUSD``; fresh at once), and the complete minutes
    wholly after the resume (catches up as pre-resume spend slides out of the window)."""
    window = inp.budget.spec.kill_switch.window
    spend = inp.spend.get(window)
    prev_ks = inp.previous.kill_switch or st.KillSwitchStatus()
    resumed = prev_ks.resumed_at.timestamp() if prev_ks.resumed_at is not None else None
    if resumed is None or inp.minutes is None or spend is None or inp.now - resumed >= spec.WINDOW_SECONDS[window]:
        return spend
    bounds = [spend_since(inp.minutes, series.minute_of(resumed) + series.MINUTE)]
    if prev_ks.spend_at_resume_usd is not None:
        bounds.append(spend - prev_ks.spend_at_resume_usd)
    return max(0.0, min(spend, max(bounds)))


def _continuing_onset(inp: EvaluationInput, kind: str) -> float | None:
    """When a lasting budget condition that was already reported began (None: it is new).

    Budget rules are checked at ``now``; giving a lasting condition the onset of its first
    report keeps its incident id, so it is reported once, not every cycle."""
    prev = inp.previous
    if kind == findings.KILL_SWITCH and inp.budget.spec.kill_switch.action is spec.KillAction.scale_to_zero:
        # a kill lasts while engaged; after a resume (or an acknowledgement), a new kill is a new
        # incident; a kill that never engaged (its scales failed, or a mode held it) goes on as the
        # incident it was reported as while spend stays past the threshold
        ks = prev.kill_switch
        if ks is not None and ks.engaged:
            return ks.engaged_at.timestamp() if ks.engaged_at is not None else None
        ended = {ks.incident if ks is not None else None, inp.budget.spec.kill_switch.acknowledge}
        last = [i for i in prev.incidents or () if i.kind == kind and i.time is not None]
        if not last or last[-1].id in ended or not prev.is_true(st.BUDGET_EXCEEDED):
            return None
        return last[-1].time.timestamp()  # type: ignore[union-attr]
    if kind == findings.BUDGET_WARNING:
        active = prev.state in (st.State.warning, st.State.exceeded, st.State.killed)
    else:
        active = prev.is_true(st.BUDGET_EXCEEDED)
    if not active:
        return None
    known = [i.time.timestamp() for i in prev.incidents or () if i.kind == kind and i.time is not None]
    return known[-1] if known else None


def budget_findings(inp: EvaluationInput) -> list[findings.Finding]:
    """The budget rules of ``policies`` at ``now`` (agent: the budget's name), onsets kept while they last."""
    budget, now = inp.budget, inp.now
    name, namespace = budget.metadata.name, budget.metadata.namespace
    subject = policies.Subject(agent=name, namespace=namespace, now=now)
    out: list[findings.Finding] = []
    for limit in budget.spec.limits:
        limit_input = policies.LimitInput(subject, name, limit, inp.spend.get(limit.window))
        f = policies.budget_exceeded(limit_input) or policies.budget_warning(limit_input)
        if f is not None:
            out.append(f)
    kill = policies.kill_switch(policies.KillSwitchInput(subject, name, budget.spec, kill_rule_spend(inp)))
    if kill is not None:
        out.append(kill)
    kept = []
    prev_ks = inp.previous.kill_switch
    handled = {prev_ks.incident if prev_ks is not None else None, budget.spec.kill_switch.acknowledge}
    for f in out:
        onset = _continuing_onset(inp, f.kind)
        f = dataclasses.replace(f, onset=onset if onset is not None else now)
        if onset is None and f.kind == findings.KILL_SWITCH and findings.incident_id(f) in handled:
            # a new kill in the same minute as the one just acknowledged: ids are minute-grained,
            # so it takes the next minute's id rather than the resolved incident's
            f = dataclasses.replace(f, onset=float(series.minute_of(now) + series.MINUTE))
        kept.append(f)
    return kept


def _agent_findings(inp: EvaluationInput, agent: decision.AgentDeployment,
                    seen: set[str | None]) -> list[findings.Finding]:
    """The detectors' and the guardrails' findings of one agent over its lookback window. Of the
    detectors' (with what the incidents already reported carry: detectors.keep_reported), those
    already reported (``seen``), and new ones only when the lookback held all their detector
    weighed (detectors.in_view: judged on a history cut short, a refold can find what replay does
    not, or the same problem with another onset, another incident)."""
    assert inp.minutes is not None
    minutes = inp.minutes.get(agent.name, ())
    params = anomaly_params(inp.policies, agent)
    source = inp.budget.spec.source.type.value  # two budgets may read one agent from two sources
    fold_start = inp.lookback_start
    if inp.folds is not None and inp.anchor_minutes > 0 and fold_start is not None:
        fold_start = warmfold.anchor(fold_start, inp.anchor_minutes, agent.namespace, agent.name)
        out = list(anchored_detector_findings(inp, agent, minutes, params, fold_start, source))
    else:
        out = list(cached_detector_findings(inp.memo, agent, minutes, params, source, data_minute(inp)))
    if fold_start is not None:
        reported = [(str(i.kind), str(i.agent), i.tool, i.time.timestamp()) for i in inp.previous.incidents or ()
                    if i.kind in findings.ANOMALY_KINDS and i.agent == agent.name and i.time is not None]
        out = detectors.keep_reported(out, reported, params)
        fresh = {id(f) for f in detectors.in_view(out, fold_start, params)}
        out = [f for f in out if id(f) in fresh or findings.incident_id(f) in seen]
    decisions = (inp.guardrails or {}).get(agent.name) or {}
    out.extend(guardrails.agent_findings(agent, minutes, decisions, inp.policies))
    return out


def seen_incidents(prev: st.AgentBudgetStatus) -> set[str | None]:
    """The incident ids the previous status already reported (incidents, rollbacks, the kill switch)."""
    seen: set[str | None] = {i.id for i in prev.incidents or ()}
    if prev.model is not None:
        seen |= {r.incident for r in prev.model.rollbacks or ()}
    seen.add(prev.kill_switch.incident if prev.kill_switch is not None else None)
    return seen


def findings_stage(inp: EvaluationInput, d: Draft) -> None:
    """Is the data known? Then the findings, from the same rules and detectors as replay."""
    needed = {lim.window for lim in inp.budget.spec.limits}
    unknown_windows = sorted(w.value for w in needed if inp.spend.get(w) is None)
    d.known = inp.minutes is not None and not unknown_windows
    d.reason_unknown = inp.metrics_reason or (
        "no per-minute data" if inp.minutes is None else f"spend unknown for {', '.join(unknown_windows)}")
    found: list[findings.Finding] = []
    seen = seen_incidents(d.previous)
    if d.known:
        if inp.folds is not None and inp.lookback_start is not None:
            inp.folds.sweep(inp.lookback_start)
        found.extend(budget_findings(inp))
        for agent in d.agents:
            found.extend(_agent_findings(inp, agent, seen))
        found = guardrails.keep_onsets(found, d.previous.incidents or (), inp.lookback_start)
    name = inp.budget.metadata.name
    found = [dataclasses.replace(f, budget=f.budget or name) for f in found]
    found.sort(key=findings.sort_key)
    d.found = found
    d.new = [f for f in found if findings.incident_id(f) not in seen]


# ---------------------------------------------------------------- 2: kill switch

REASON_KILL_SWITCH_ENGAGED = "KillSwitchEngaged"  # the condition's and the Event's
REASON_KILL_SWITCH_HELD = "KillSwitchHeld"
REASON_RESUMED = "Resumed"
REASON_NOT_ENGAGED = "NotEngaged"


def _resume(inp: EvaluationInput, d: Draft, prev_ks: st.KillSwitchStatus) -> st.KillSwitchStatus:
    """The acknowledged kill ends: replicas restored exactly, the spend at the resume remembered."""
    at_resume = inp.spend.get(inp.budget.spec.kill_switch.window)
    ks = prev_ks.model_copy(update={
        "engaged": False, "resumed_at": st.at(inp.now),
        "spend_at_resume_usd": round(at_resume, 4) if at_resume is not None else None})
    remembered = dict(prev_ks.replicas or {})
    by_name = d.by_name
    for agent_name, replicas in sorted(remembered.items()):
        if agent_name in by_name and not inp.budget.spec.suspend:
            d.act(decision.RestoreReplicas(agent_name, int(replicas), "resume", by_name[agent_name].resource_version))
    d.events.append(decision.Event("Normal", REASON_RESUMED,
                                   f"kill switch {prev_ks.incident} acknowledged: restoring replicas "
                                   + ", ".join(f"{k}={v}" for k, v in sorted(remembered.items()))))
    return ks


def _hold(inp: EvaluationInput, d: Draft, prev_ks: st.KillSwitchStatus) -> st.KillSwitchStatus:
    """While engaged, an agent scaled back up is scaled to zero again (the budget's own kill: every
    agent), and one whose scale failed (``pending``) is tried again, remembering its replicas now."""
    remembered = dict(prev_ks.replicas or {})
    pending = set(prev_ks.pending or ())
    budget_wide = any(i.id == prev_ks.incident and i.kind == findings.KILL_SWITCH
                      for i in d.previous.incidents or ())
    for agent in d.agents:
        if agent.replicas > 0 and (agent.name in remembered or agent.name in pending or budget_wide):
            keep = int(remembered.get(agent.name, agent.replicas))
            remembered[agent.name] = keep
            d.act(decision.ScaleToZero(agent.name, keep, "killed-again", agent.resource_version),
                  decision.Event("Warning", REASON_KILL_SWITCH_HELD,
                                 f"{agent.name} was scaled to {agent.replicas} while kill switch "
                                 f"{prev_ks.incident} is engaged; scaled to zero again", agent=agent.name))
    return prev_ks.model_copy(update={"replicas": remembered, "pending": None})


def _engage(inp: EvaluationInput, d: Draft, kills: Sequence[findings.Finding]) -> st.KillSwitchStatus:
    """A kill finding: scale its agents (every agent for the budget's own rule) to zero."""
    first = next((f for f in kills if f.kind == findings.KILL_SWITCH), kills[0])
    incident = findings.incident_id(first)
    by_name = d.by_name
    if any(f.kind == findings.KILL_SWITCH for f in kills):
        targets = d.agents
    else:
        targets = [by_name[f.agent] for f in kills if f.agent in by_name]
    replicas = {a.name: a.replicas for a in targets if a.replicas > 0}
    for agent_name, count in sorted(replicas.items()):
        d.act(decision.ScaleToZero(agent_name, count, "kill", by_name[agent_name].resource_version))
    # Already at zero with the count recorded on the Deployment at kill time: a kill whose
    # status write was lost (the operator restarted, or the leader died mid-kill). The count
    # stored in the cluster is kept, so the resume restores exactly that.
    replicas.update({a.name: a.replicas_before for a in targets
                     if a.replicas <= 0 and a.replicas_before is not None and a.replicas_before > 0})
    d.events.append(decision.Event(
        "Warning", REASON_KILL_SWITCH_ENGAGED,
        f"kill switch engaged ({incident}): {first.message}; scaled to zero: "
        + (", ".join(f"{k} (was {v})" for k, v in sorted(replicas.items())) or "none")
        + f". Resume: set spec.killSwitch.acknowledge to {incident}"))
    return st.KillSwitchStatus(engaged=True, incident=incident, engaged_at=st.at(inp.now), replicas=replicas)


def kill_switch_stage(inp: EvaluationInput, d: Draft) -> None:
    prev_ks = d.previous.kill_switch
    ks_spec = inp.budget.spec.kill_switch
    d.kill_switch = prev_ks
    d.engaged = bool(prev_ks is not None and prev_ks.engaged)
    if prev_ks is not None and d.engaged:
        if ks_spec.acknowledge is not None and ks_spec.acknowledge == prev_ks.incident:
            d.engaged = False
            d.kill_switch = _resume(inp, d, prev_ks)
        else:
            d.kill_switch = _hold(inp, d, prev_ks)
        return
    handled = (ks_spec.acknowledge, prev_ks.incident if prev_ks is not None else None)
    kills = [f for f in d.found if f.action == findings.KILL and findings.incident_id(f) not in handled]
    if d.known and kills:
        if inp.budget.spec.enforcement is spec.Enforcement.enforce:
            d.engaged = True
            d.kill_switch = _engage(inp, d, kills)
        else:
            _would_kill(inp, d, kills)


REASON_WOULD_KILL = "WouldKill"
REASON_WOULD_ROLL_BACK = "WouldRollBack"


def _would(inp: EvaluationInput) -> tuple[str, str]:
    """(Event type, words) of a held action in the budget's mode."""
    mode = inp.budget.spec.enforcement
    return ("Warning" if mode is spec.Enforcement.warn else "Normal"), f"spec.enforcement is {mode.value}"


def _would_kill(inp: EvaluationInput, d: Draft, kills: Sequence[findings.Finding]) -> None:
    """DryRun or Warn: the kill the switch would make is held; said once per incident."""
    first = next((f for f in kills if f.kind == findings.KILL_SWITCH), kills[0])
    by_name = d.by_name
    targets = d.agents if any(f.kind == findings.KILL_SWITCH for f in kills) else \
        [by_name[f.agent] for f in kills if f.agent in by_name]
    held = [decision.ScaleToZero(a.name, a.replicas, "kill", a.resource_version) for a in targets if a.replicas > 0]
    d.held.extend(held)
    incident = findings.incident_id(first)
    if incident in {findings.incident_id(f) for f in d.new}:
        type_, why = _would(inp)
        d.events.append(decision.Event(
            type_, REASON_WOULD_KILL,
            f"{why}: the kill switch would have engaged ({incident}): {first.message}; it would have scaled "
            "to zero: " + (", ".join(f"{a.agent} (was {a.replicas_to_remember})" for a in held) or "none")))


# ---------------------------------------------------------------- 2b: steps (the graduated response)

REASON_STEP_ENGAGED = "StepEngaged"  # the condition's and the Event's
REASON_STEP_UNDONE = "StepUndone"
REASON_STEP_ACKNOWLEDGED = "StepAcknowledged"
REASON_NO_STEP_ACTIVE = "NoStepActive"

_STEP_EFFECTS: Mapping[spec.StepAction, str] = {
    spec.StepAction.cheaper_model: "the agents run {model}",
    spec.StepAction.cap_output_tokens: "each model call is capped at {tokens} output tokens",
    spec.StepAction.stop_new_tasks: "no new task starts; running tasks finish",
    spec.StepAction.scale_to_zero: "the agents are scaled to zero",
}


def step_percent(inp: EvaluationInput, step: spec.Step) -> float | None:
    """Spend over the step's window as a percentage of that window's cap (None: unknown)."""
    window = inp.budget.spec.step_window(step)
    limit = inp.budget.spec.limit_for(window) if window is not None else None
    spend = inp.spend.get(window) if window is not None else None
    if limit is None or spend is None:
        return None
    return 100.0 * spend / limit.amount_usd


def engagement_id(budget: spec.AgentBudget, active: Sequence[st.ActiveStep]) -> str:
    """``steps-`` + 10 hex naming the steps in force and when each engaged: a later engagement has a
    new id, so an old acknowledgement never undoes it."""
    key = f"{budget.metadata.namespace}/{budget.metadata.name}/" + ",".join(
        f"{a.name}@{st.rfc3339_of(a.since) if a.since is not None else ''}" for a in active)
    return "steps-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def _new_step(inp: EvaluationInput, step: spec.Step, percent: float) -> st.ActiveStep:
    window = inp.budget.spec.step_window(step)
    assert window is not None
    limit = inp.budget.spec.limit_for(window)
    assert limit is not None
    effect = _STEP_EFFECTS[step.action].format(model=step.model, tokens=step.max_output_tokens)
    why = (f"spend over the {window.value} is {percent:.0f}% of the {limit.amount_usd:g} USD cap, "
           f"at or past {step.at_percent:g}%: {effect}")
    return st.ActiveStep(name=step.key, action=step.action.value, window=window, at_percent=step.at_percent,
                         percent_used=round(percent, 1), since=st.at(inp.now), why=why, model=step.model,
                         max_output_tokens=step.max_output_tokens)


def _acknowledged(inp: EvaluationInput, prev: st.StepsStatus, triggered: set[str]) -> set[str]:
    """The steps a person undid: those in force when spec.acknowledgeSteps named their engagement,
    for as long as spend stays past their threshold and no higher step engages."""
    by_key = {s.key: s for s in inp.budget.spec.steps}
    prev_active = {a.name or "" for a in prev.active or ()}
    acked = set(prev.acknowledged or ())
    ack = inp.budget.spec.acknowledge_steps
    if ack is not None and prev_active and ack == prev.engagement:
        acked |= prev_active
    acked &= triggered  # fell back under (a new window, a raised cap): the acknowledgement lapses
    rising = [by_key[k].at_percent for k in triggered - acked - prev_active]
    if rising:  # a higher step engages: the acknowledgements below it lapse
        acked = {k for k in acked if by_key[k].at_percent >= max(rising)}
    return acked


def steps_stage(inp: EvaluationInput, d: Draft) -> None:
    """The steps past their threshold and not acknowledged are in force; each engages and is undone
    once (StepEngaged / StepUndone Events); CheaperModel and ScaleToZero act on the Deployments
    (:func:`_step_models`, :func:`_step_replicas`), CapOutputTokens and StopNewTasks reach the SDK
    through the policy ConfigMap. Unknown data engages and undoes nothing."""
    prev = d.previous.steps or st.StepsStatus()
    steps = inp.budget.spec.steps
    if not steps and not (prev.active or prev.models or prev.replicas):
        return
    if not d.known:
        d.steps = prev
        d.step_held = set(prev.replicas or {}) if any(
            a.action == spec.StepAction.scale_to_zero.value for a in prev.active or ()) else set()
        return
    percents = {s.key: step_percent(inp, s) for s in steps}
    triggered = {s.key for s in steps if (p := percents[s.key]) is not None and p >= s.at_percent}
    acked = _acknowledged(inp, prev, triggered)
    prev_active = {a.name or "": a for a in prev.active or ()}
    active: list[st.ActiveStep] = []
    type_, why = _would(inp)
    said = "" if inp.budget.spec.enforcement is spec.Enforcement.enforce else why + ": would have: "
    for step in steps:
        if step.key not in triggered or step.key in acked:
            continue
        old = prev_active.get(step.key)
        active.append(old if old is not None else _new_step(inp, step, percents[step.key] or 0.0))
        if old is None:
            d.events.append(decision.Event("Warning", REASON_STEP_ENGAGED,
                                           f"{said}step {step.key} engaged: {active[-1].why}"))
    kept = {a.name for a in active}
    for name in prev_active:
        if name not in kept:
            cause = ("acknowledged (spec.acknowledgeSteps)" if name in acked else
                     "spend fell back under its threshold" if name in percents else "removed from spec.steps")
            d.events.append(decision.Event("Normal", REASON_STEP_UNDONE, f"{said}step {name} undone: {cause}"))
    models = _step_models(inp, d, active, prev)
    replicas = _step_replicas(inp, d, active, prev)
    d.steps = st.StepsStatus(active=active or None, engagement=engagement_id(inp.budget, active) if active else None,
                             acknowledged=sorted(acked) or None, models=models or None, replicas=replicas or None)


def _step_models(inp: EvaluationInput, d: Draft, active: Sequence[st.ActiveStep],
                 prev: st.StepsStatus) -> dict[str, str]:
    """The highest CheaperModel step in force: every agent runs its model (the model each ran before
    remembered, each change recorded in status.model.rollbacks); none: the remembered models restored.
    spec.model.desired, a person's order, wins over every step."""
    remembered = dict(prev.models or {})
    if inp.budget.spec.model.desired:
        return {}
    enforce = inp.budget.spec.enforcement is spec.Enforcement.enforce
    cheaper = [a for a in active if a.action == spec.StepAction.cheaper_model.value and a.model]
    target = max(cheaper, key=lambda a: a.at_percent or 0.0) if cheaper else None
    changes: list[decision.SetModel] = []
    if target is not None and target.model is not None:
        for agent in d.agents:
            if agent.model is not None and agent.model != target.model:
                if enforce:
                    remembered.setdefault(agent.name, agent.model)
                changes.append(decision.SetModel(agent.name, target.model, agent.model, "step",
                                                 observed=agent.resource_version))
        why = f"step {target.name}"
    else:
        by_name = d.by_name
        for name, model in sorted(remembered.items()):
            ran = by_name.get(name)
            if ran is not None and ran.model is not None and ran.model != model:
                changes.append(decision.SetModel(name, model, ran.model, "step-undone",
                                                 observed=ran.resource_version))
        remembered, why = {}, "steps undone"
    for change in changes:
        if not enforce:
            d.held.append(change)
            continue
        d.act(change)
        d.step_rollbacks.append(st.Rollback(agent=change.agent, from_=change.previous, to=change.model,
                                            at=st.at(inp.now), reason=why))
    return remembered


def _keep_stopped(d: Draft, stop: st.ActiveStep, remembered: dict[str, int]) -> None:
    """A kill switch resumed while a ScaleToZero step is in force: its agents stay at zero (their
    replicas remembered by the step, restored when it is undone) rather than start and stop again."""
    restores = [a for a in d.actions if isinstance(a, decision.RestoreReplicas) and a.reason == "resume"]
    for action in restores:
        d.actions.remove(action)
        remembered.setdefault(action.agent, action.replicas)
        d.events.append(decision.Event(
            "Normal", REASON_STEP_ENGAGED, f"{action.agent} stays at zero: step {stop.name} is in force; "
            f"its {action.replicas} replicas are restored when the step is undone", agent=action.agent))


def _step_replicas(inp: EvaluationInput, d: Draft, active: Sequence[st.ActiveStep],
                   prev: st.StepsStatus) -> dict[str, int]:
    """A ScaleToZero step in force: every agent at zero (its replicas remembered; one scaled back up
    is scaled to zero again); none: the remembered replicas restored, unless the kill switch or
    spec.suspend holds the agents."""
    remembered = dict(prev.replicas or {})
    enforce = inp.budget.spec.enforcement is spec.Enforcement.enforce
    stop = next((a for a in active if a.action == spec.StepAction.scale_to_zero.value), None)
    if stop is not None:
        if enforce:
            _keep_stopped(d, stop, remembered)
        scaled = {a.agent for a in d.actions if isinstance(a, decision.ScaleToZero)}
        for agent in d.agents:
            if agent.replicas <= 0 or agent.name in scaled:
                continue
            action = decision.ScaleToZero(agent.name, remembered.get(agent.name, agent.replicas), "step",
                                          agent.resource_version)
            if not enforce:
                d.held.append(action)
                continue
            remembered.setdefault(agent.name, agent.replicas)
            d.act(action)
        d.step_held = set(remembered)
        return remembered
    if d.engaged or inp.budget.spec.suspend:
        return remembered  # restored once the kill switch is resumed or the budget unsuspended
    by_name = d.by_name
    for name, count in sorted(remembered.items()):
        stopped = by_name.get(name)
        if stopped is not None and stopped.replicas == 0:
            d.act(decision.RestoreReplicas(name, count, "step-undone", stopped.resource_version))
    return {}


# ---------------------------------------------------------------- 3: suspend

REASON_SUSPENDED = "Suspended"


def suspend_stage(inp: EvaluationInput, d: Draft) -> None:
    scaled = {a.agent for a in d.actions if isinstance(a, decision.ScaleToZero)}
    restored = {a.agent for a in d.actions if isinstance(a, decision.RestoreReplicas)} | d.step_held
    if inp.budget.spec.suspend:
        for agent in d.agents:
            if agent.replicas > 0 and agent.name not in scaled:
                d.act(decision.ScaleToZero(agent.name, agent.replicas, "suspend", agent.resource_version),
                      decision.Event("Normal", REASON_SUSPENDED,
                                     f"spec.suspend is true: {agent.name} scaled to zero (was {agent.replicas})",
                                     agent=agent.name))
    elif not d.engaged:
        for agent in d.agents:
            if agent.replicas == 0 and agent.replicas_before is not None and agent.name not in restored:
                d.act(decision.RestoreReplicas(agent.name, agent.replicas_before, "unsuspend", agent.resource_version),
                      decision.Event("Normal", REASON_RESUMED,
                                     f"{agent.name} restored to {agent.replicas_before} replicas", agent=agent.name))


# ---------------------------------------------------------------- 4: model

REASON_MODEL_SET = "ModelSet"
REASON_MODEL_ROLLED_BACK = "ModelRolledBack"
REASON_MODEL_ROLLBACK_HELD = "ModelRollbackHeld"


def _desired_model(inp: EvaluationInput, d: Draft, desired: str, rollbacks: list[st.Rollback]) -> None:
    """``spec.model.desired`` wins: every agent runs it; a change of it is recorded once."""
    prev_model = d.previous.model
    changed = (prev_model.spec_desired if prev_model is not None else None) != desired
    for agent in d.agents:
        if agent.model != desired:
            d.act(decision.SetModel(agent.name, desired, agent.model, "desired", observed=agent.resource_version),
                  decision.Event("Normal", REASON_MODEL_SET,
                                 f"spec.model.desired is {desired}: {agent.name} set from "
                                 f"{agent.model} to {desired}", agent=agent.name))
        if changed:
            rollbacks.append(st.Rollback(agent=agent.name, from_=agent.model or "", to=desired,
                                         at=st.at(inp.now), reason="spec.model.desired"))
    d.model = st.ModelStatus(rollbacks=rollbacks[-MAX_ROLLBACKS:], spec_desired=desired)


def _rollbacks_on_spike(inp: EvaluationInput, d: Draft, rollbacks: list[st.Rollback],
                        latest: dict[str, st.Rollback]) -> None:
    """A model-update spike with action rollback: back to the previous model, once per incident."""
    done_incidents = {r.incident for r in rollbacks}
    by_name = d.by_name
    for f in d.found:
        if f.kind != findings.MODEL_UPDATE_SPIKE or f.action != findings.ROLLBACK:
            continue
        incident = findings.incident_id(f)
        spiked = by_name.get(f.agent)
        if incident in done_incidents or spiked is None or f.previous_model is None:
            continue
        if spiked.model != f.model:
            continue  # the Deployment no longer runs the model that spiked
        if inp.budget.spec.enforcement is not spec.Enforcement.enforce:
            d.held.append(decision.SetModel(spiked.name, f.previous_model, spiked.model, "rollback", incident,
                                            spiked.resource_version))
            if incident in {findings.incident_id(n) for n in d.new}:
                type_, why = _would(inp)
                d.events.append(decision.Event(
                    type_, REASON_WOULD_ROLL_BACK, f"{why}: {incident}: {spiked.name} would have been rolled back "
                    f"from {spiked.model} to {f.previous_model}: {f.message}", agent=spiked.name))
            continue
        record = st.Rollback(agent=spiked.name, from_=spiked.model, to=f.previous_model, at=st.at(inp.now),
                             incident=incident, reason=f.message)
        rollbacks.append(record)
        latest[spiked.name] = record
        done_incidents.add(incident)
        d.act(decision.SetModel(spiked.name, f.previous_model, spiked.model, "rollback", incident,
                                spiked.resource_version),
              decision.Event("Warning", REASON_MODEL_ROLLED_BACK,
                             f"{incident}: {spiked.name} rolled back from {spiked.model} to {f.previous_model}: "
                             f"{f.message}. Roll forward: set spec.model.desired", agent=spiked.name))


def model_stage(inp: EvaluationInput, d: Draft) -> None:
    prev_model = d.previous.model
    rollbacks = [r.model_copy() for r in (prev_model.rollbacks or ())] if prev_model is not None else []
    rollbacks.extend(d.step_rollbacks)
    desired = inp.budget.spec.model.desired or None
    if desired is not None:
        _desired_model(inp, d, desired, rollbacks)
        return
    # No desired model: automatic rollbacks, and keep the latest one against drift.
    latest = {r.agent or "": r for r in rollbacks}
    if d.known and inp.budget.spec.model.rollback_on_spike:
        _rollbacks_on_spike(inp, d, rollbacks, latest)
    handled = {a.agent for a in d.actions if isinstance(a, decision.SetModel)}
    for agent in d.agents:
        pin = latest.get(agent.name)
        if (pin is None or not pin.incident or agent.name in handled or pin.to is None
                or agent.model is None or agent.model == pin.to):
            continue
        if inp.budget.spec.enforcement is not spec.Enforcement.enforce:
            d.held.append(decision.SetModel(agent.name, pin.to, agent.model, "rollback-drift", pin.incident,
                                            agent.resource_version))
            continue
        d.act(decision.SetModel(agent.name, pin.to, agent.model, "rollback-drift", pin.incident,
                                agent.resource_version),
              decision.Event("Warning", REASON_MODEL_ROLLBACK_HELD,
                             f"{agent.name} drifted to {agent.model} after rollback {pin.incident}; "
                             f"set back to {pin.to}. Roll forward: set spec.model.desired", agent=agent.name))
    d.model = st.ModelStatus(rollbacks=rollbacks[-MAX_ROLLBACKS:])


# ---------------------------------------------------------------- 5: notify

def _camel(kind: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in kind.split("_"))


# The reason of a finding's Event (and of AnomalyDetected): the policy's Reason, else the kind in CamelCase.
FINDING_REASONS: Mapping[str, str] = {
    **{kind: _camel(kind) for kind in findings.KINDS},
    **policies.REASONS,
}


def finding_reason(kind: str) -> str:
    return FINDING_REASONS.get(kind) or _camel(kind)


def notify_stage(inp: EvaluationInput, d: Draft) -> None:
    """Each finding seen for the first time: an alert to on-call (not in DryRun, of the budget or of
    the CostPolicy a guardrail finding names) and a Warning Event."""
    dry_run = inp.budget.spec.enforcement is spec.Enforcement.dry_run
    for f in d.new:
        incident = findings.incident_id(f)
        event = decision.Event("Warning", finding_reason(f.kind), f"{incident}: {f.message}", agent=f.agent)
        if dry_run or dry_run_policy(inp.policies, f):
            d.events.append(event)  # DryRun alerts no one
        else:
            d.act(decision.Notify(f, incident), event)


_GUARDRAIL_FINDINGS = frozenset(guardrails.GUARDRAIL_KINDS.values())


def dry_run_policy(policies_: Sequence[spec.CostPolicy], f: findings.Finding) -> bool:
    """Whether guardrail finding ``f`` comes from a CostPolicy in DryRun: every policy of its
    namespace that ``f.policy`` names (by name, or by an approval rule's name) is in DryRun."""
    if f.kind not in _GUARDRAIL_FINDINGS or not f.policy:
        return False
    named = [p for p in policies_ if p.metadata.namespace == f.namespace and (
        p.metadata.name == f.policy
        or (f.kind == findings.APPROVAL_REQUIRED and any(r.name == f.policy for r in p.spec.approvals)))]
    return bool(named) and all(p.spec.enforcement is spec.Enforcement.dry_run for p in named)


# ---------------------------------------------------------------- 6: approvals

REASON_APPROVAL_PENDING = "ApprovalPending"
REASON_NO_APPROVAL_PENDING = "NoApprovalPending"


def approvals_stage(inp: EvaluationInput, d: Draft) -> None:
    """The CostApprovals still waiting for a human that concern the budget's agents, by name."""
    names = {a.name for a in d.agents}
    d.pending = sorted((a for a in inp.approvals
                        if a.agent in names and (a.expires_at is None or a.expires_at > inp.now)),
                       key=lambda a: a.name)


# ---------------------------------------------------------------- 7: settle (after acting)

REASON_SCALE_FAILED = "ScaleFailed"
REASON_RESTORE_FAILED = "RestoreFailed"
REASON_MODEL_SET_FAILED = "ModelSetFailed"
FAILURE_REASONS: Mapping[type, str] = {decision.ScaleToZero: REASON_SCALE_FAILED,
                                       decision.RestoreReplicas: REASON_RESTORE_FAILED,
                                       decision.SetModel: REASON_MODEL_SET_FAILED}


def failure_text(f: decision.ActionFailure) -> str:
    a = f.action
    what = {decision.ScaleToZero: "scale {} to 0", decision.RestoreReplicas: "restore {}",
            decision.SetModel: "set the model of {}"}.get(type(a), "act on {}").format(getattr(a, "agent", "?"))
    code = f"{f.status} " if f.status is not None else ""
    return f"{what} failed: {code}{f.reason}: {f.message}"


def _failed(d: Draft, kind: type, *reasons: str) -> list[decision.ActionFailure]:
    return [f for f in d.failures if isinstance(f.action, kind) and getattr(f.action, "reason", None) in reasons]


def settle_stage(inp: EvaluationInput, d: Draft, failures: Sequence[decision.ActionFailure]) -> None:
    """What did not take effect is not recorded as done, and is tried again at the next evaluation.

    A kill none of whose scales landed leaves the kill switch as it was (the kill finding engages it
    again); a kill that stopped some agents stays engaged and holds (retries) the others; a resume
    whose restore failed stays engaged (the acknowledgement resumes it again); a rollback that was not
    set is dropped from ``status.model.rollbacks`` (the spike rolls it back again). Each failure gets a
    Warning Event with the API's reason; the conditions stage then says it (Ready, KillSwitchEngaged)."""
    d.failures = list(failures)
    if not d.failures:
        return
    kills = [a for a in d.actions if isinstance(a, decision.ScaleToZero) and a.reason == "kill"]
    failed_stops = {getattr(f.action, "agent", "") for f in _failed(d, decision.ScaleToZero, "kill", "killed-again")}
    if kills and all(a.agent in failed_stops for a in kills):
        d.kill_switch, d.engaged = d.previous.kill_switch, False  # nothing stopped: engaged again next time
    elif failed_stops and d.kill_switch is not None and d.engaged:
        # stopped in part: the others are pending (held and retried), their replicas remembered only
        # once they are stopped (an agent stopped before keeps the count it had then)
        before = (d.previous.kill_switch.replicas or {}) if d.previous.kill_switch is not None else {}
        replicas = {k: v for k, v in (d.kill_switch.replicas or {}).items()
                    if k not in failed_stops or k in before}
        d.kill_switch = d.kill_switch.model_copy(update={"replicas": replicas,
                                                         "pending": sorted(failed_stops)})
    if _failed(d, decision.RestoreReplicas, "resume"):
        d.kill_switch, d.engaged = d.previous.kill_switch, True
    not_set = {f.action.agent for f in d.failures if isinstance(f.action, decision.SetModel)}
    if not_set and d.model is not None and d.model.rollbacks:
        new = d.model.rollbacks[len(d.previous.model.rollbacks or ()) if d.previous.model is not None else 0:]
        kept = [r for r in new if r.agent not in not_set]
        d.model = d.model.model_copy(update={"rollbacks": d.model.rollbacks[:len(d.model.rollbacks) - len(new)] + kept})
    for f in d.failures:
        d.events.append(decision.Event("Warning", FAILURE_REASONS.get(type(f.action), "ActionFailed"),
                                       failure_text(f) + "; retrying", agent=getattr(f.action, "agent", None)))


# ---------------------------------------------------------------- 8: conditions

REASON_EVALUATED = "Evaluated"
REASON_LIMIT_EXCEEDED = "LimitExceeded"
REASON_WITHIN_LIMITS = "WithinLimits"
REASON_NO_ANOMALY = "NoAnomaly"
# Ready=False reasons by state
READY_REASONS = {st.State.suspended: REASON_SUSPENDED, st.State.killed: REASON_KILL_SWITCH_ENGAGED,
                 st.State.unknown: REASON_METRICS_UNAVAILABLE}


def budget_state(inp: EvaluationInput, d: Draft) -> st.State:
    """Suspended and Killed only when the agents were stopped (a refused scale is not a stop)."""
    if inp.budget.spec.suspend and not _failed(d, decision.ScaleToZero, "suspend"):
        return st.State.suspended
    if d.engaged and not _failed(d, decision.ScaleToZero, "kill", "killed-again"):
        return st.State.killed
    if not d.known:
        return st.State.unknown
    if any(f.kind in (findings.BUDGET_EXCEEDED, findings.KILL_SWITCH) for f in d.found):
        return st.State.exceeded
    if any(f.kind == findings.BUDGET_WARNING for f in d.found):
        return st.State.warning
    return st.State.active


Cond = tuple[str, Literal["True", "False", "Unknown"], str, str]


def _data_conditions(inp: EvaluationInput, d: Draft) -> list[Cond]:
    """MetricsAvailable, BudgetExceeded and AnomalyDetected."""
    if not d.known:
        return [(st.METRICS_AVAILABLE, "False", REASON_METRICS_UNAVAILABLE, d.reason_unknown),
                (st.BUDGET_EXCEEDED, "Unknown", REASON_METRICS_UNAVAILABLE, d.reason_unknown),
                (st.ANOMALY_DETECTED, "Unknown", REASON_METRICS_UNAVAILABLE, d.reason_unknown)]
    out: list[Cond] = [(st.METRICS_AVAILABLE, "True", REASON_METRICS_FRESH, "spend and per-minute data are known")]
    exceeded = [f for f in d.found if f.kind in (findings.BUDGET_EXCEEDED, findings.KILL_SWITCH)]
    if exceeded:
        out.append((st.BUDGET_EXCEEDED, "True", REASON_LIMIT_EXCEEDED, exceeded[-1].message))
    else:
        out.append((st.BUDGET_EXCEEDED, "False", REASON_WITHIN_LIMITS, "spend is within every limit"))
    anomalies = [f for f in d.found
                 if f.kind in findings.ANOMALY_KINDS and inp.now - f.time <= ANOMALY_HOLD_SECONDS]
    if anomalies:
        last = anomalies[-1]
        out.append((st.ANOMALY_DETECTED, "True", finding_reason(last.kind),
                    f"{findings.incident_id(last)}: {last.message}"))
    else:
        out.append((st.ANOMALY_DETECTED, "False", REASON_NO_ANOMALY, "no anomaly in the last 15 minutes"))
    return out


def _kill_switch_condition(inp: EvaluationInput, d: Draft) -> Cond:
    ks = d.kill_switch or st.KillSwitchStatus()
    stops = _failed(d, decision.ScaleToZero, "kill", "killed-again")
    if stops:
        return (st.KILL_SWITCH_ENGAGED, "False", REASON_SCALE_FAILED,
                "; ".join(failure_text(f) for f in stops) + "; the agents may still be running, retrying")
    restores = _failed(d, decision.RestoreReplicas, "resume")
    if restores:
        return (st.KILL_SWITCH_ENGAGED, "True", REASON_RESTORE_FAILED,
                "; ".join(failure_text(f) for f in restores) + "; retrying")
    held = [a for a in d.held if isinstance(a, decision.ScaleToZero)]
    if held and not d.engaged:
        mode = inp.budget.spec.enforcement.value
        return (st.KILL_SWITCH_ENGAGED, "False", mode,
                f"spec.enforcement is {mode}: the kill switch would have scaled to zero: "
                + ", ".join(a.agent for a in held))
    if d.engaged:
        return (st.KILL_SWITCH_ENGAGED, "True", REASON_KILL_SWITCH_ENGAGED,
                f"agents stopped by incident {ks.incident}; set spec.killSwitch.acknowledge to it to resume")
    if ks.resumed_at is not None:
        return (st.KILL_SWITCH_ENGAGED, "False", REASON_RESUMED,
                f"resumed at {timefmt.rfc3339(ks.resumed_at.timestamp())}")
    return (st.KILL_SWITCH_ENGAGED, "False", REASON_NOT_ENGAGED, "kill switch not engaged")


def _approval_condition(d: Draft) -> Cond:
    pending = d.pending
    if not pending:
        return (st.APPROVAL_PENDING, "False", REASON_NO_APPROVAL_PENDING, "no CostApproval is waiting")
    names = ", ".join(a.name for a in pending[:10]) + (f" (+{len(pending) - 10} more)" if len(pending) > 10 else "")
    return (st.APPROVAL_PENDING, "True", REASON_APPROVAL_PENDING,
            f"{len(pending)} CostApproval(s) waiting for a decision: {names}; decide with "
            "`fleetwarden approve|deny NAME`")


def _step_condition(inp: EvaluationInput, d: Draft) -> Cond:
    """StepActive: the steps in force and why (``kubectl describe`` shows it), or why none is."""
    steps = d.steps or st.StepsStatus()
    if not steps.active:
        if steps.acknowledged:
            return (st.STEP_ACTIVE, "False", REASON_STEP_ACKNOWLEDGED,
                    f"acknowledged: {', '.join(steps.acknowledged)}; engaged again once spend falls under their "
                    "threshold and crosses it again, or when a higher step engages")
        return (st.STEP_ACTIVE, "False", REASON_NO_STEP_ACTIVE, "no step of spec.steps is in force")
    mode = inp.budget.spec.enforcement
    said = "" if mode is spec.Enforcement.enforce else f"spec.enforcement is {mode.value}, nothing is acted on: "
    text = "; ".join(f"{a.name} since {st.rfc3339_of(a.since) if a.since is not None else '?'}: {a.why}"
                     for a in steps.active)
    return (st.STEP_ACTIVE, "True", REASON_STEP_ENGAGED if not said else mode.value,
            f"{said}{text}. Undo: set spec.acknowledgeSteps to {steps.engagement}")


def conditions_stage(inp: EvaluationInput, d: Draft) -> None:
    d.state = budget_state(inp, d)
    if d.failures:
        first = d.failures[0]
        ready: Cond = (st.READY, "False", FAILURE_REASONS.get(type(first.action), "ActionFailed"),
                       "; ".join(failure_text(f) for f in d.failures) + "; retrying")
    elif d.state in READY_REASONS:
        msg = d.reason_unknown if d.state is st.State.unknown else f"budget is {d.state.value.lower()}"
        ready = (st.READY, "False", READY_REASONS[d.state], msg)
    else:
        mode = inp.budget.spec.enforcement
        said = "" if mode is spec.Enforcement.enforce else f"; spec.enforcement is {mode.value}: nothing is acted on"
        ready = (st.READY, "True", REASON_EVALUATED,
                 f"evaluated {len(d.agents)} agent(s); state {d.state.value}{said}")
    data = _data_conditions(inp, d)
    rows = [ready, data[0], data[1], _kill_switch_condition(inp, d), data[2], _approval_condition(d)]
    if inp.budget.spec.steps or d.steps is not None:
        rows.append(_step_condition(inp, d))
    prev = list(d.previous.conditions or ())
    d.conditions = [st.set_condition(prev, *row, now=inp.now, generation=inp.generation) for row in rows]
    # keep conditions written by others as they are
    ours = {c.type for c in d.conditions}
    d.conditions.extend(c for c in prev if c.type not in ours)
    old = d.previous.condition(st.METRICS_AVAILABLE)
    if not d.known and (old is None or old.status != "False"):
        d.events.append(decision.Event("Warning", REASON_METRICS_UNAVAILABLE,
                                       f"metrics unavailable, no destructive action taken: {d.reason_unknown}"))
    if d.known and old is not None and old.status == "False":
        d.events.append(decision.Event("Normal", REASON_METRICS_AVAILABLE, "metrics are available again"))


# Before acting: what to do. After acting: settle_stage (what did not take effect), then conditions_stage.
PLAN: tuple[Stage, ...] = (findings_stage, kill_switch_stage, steps_stage, suspend_stage, model_stage, notify_stage,
                           approvals_stage)
STAGES: tuple[Stage, ...] = (*PLAN, conditions_stage)
