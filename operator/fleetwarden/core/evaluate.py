"""The operator's one pure decision: observed state of a budget in, actions and status out.

    evaluate(EvaluationInput) -> Decision

The handler gathers everything into one :class:`~fleetwarden.core.decision.EvaluationInput`
(the AgentBudget, the CostPolicies, the selected agents' Deployments, their per-minute
buckets and spend from Prometheus, the previous status and ``now``), calls :func:`evaluate`,
applies the returned actions and writes the returned status in one patch. Nothing here reads
a clock or talks to anything.

:func:`evaluate` runs the named stages of :mod:`fleetwarden.core.stages` in order (findings,
kill switch, suspend, model, notify, approvals, conditions) over one
:class:`~fleetwarden.core.stages.Draft`, then assembles the typed status
(:class:`~fleetwarden.core.status.AgentBudgetStatus`). The findings come from the same
functions ``fleetwarden replay`` uses: the budget rules of :mod:`fleetwarden.core.policies`,
the anomaly detectors of :mod:`fleetwarden.core.detectors` and the guardrail fold of
:mod:`fleetwarden.core.guardrails`, folded over the lookback window from an empty state.

Per-agent results that only change when a minute completes (the detectors' refold of the
lookback window, the hour's figures) are kept in an optional
:class:`~fleetwarden.core.decision.Memo` passed in the input, so a budget evaluated every
15 s refolds each agent once a minute, not every cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fleetwarden.core import decision, figures, findings, series, sources, spec, stages
from fleetwarden.core import status as st

REASON_STATUS_REPAIRED = "StatusRepaired"


def evaluate(inp: decision.EvaluationInput) -> decision.Decision:
    """The whole decision when nothing is acted on in between (replay, tests, dry runs)."""
    return conclude(inp, plan(inp))


def plan(inp: decision.EvaluationInput) -> stages.Draft:
    """What to do: the stages before acting (``draft.actions``)."""
    d = stages.Draft(agents=sorted(inp.agents, key=lambda a: a.name), previous=inp.previous)
    if inp.memo is not None:
        inp.memo.turn(series.minute_of(inp.now))  # (kept values age with the clock, not with what is asked)
    for stage in stages.PLAN:
        stage(inp, d)
    return d


def conclude(inp: decision.EvaluationInput, d: stages.Draft,
             failures: Sequence[decision.ActionFailure] = (), *, figures_too: bool = True) -> decision.Decision:
    """The decision once the draft's actions were applied, ``failures`` those that did not take effect.
    ``figures_too=False``: its status without the hour's figures (:func:`with_figures` adds them),
    for a caller that writes them only at their turn (the operator in a large fleet)."""
    stages.settle_stage(inp, d, failures)
    stages.conditions_stage(inp, d)
    d.conditions = sources.with_condition(d.conditions, inp.source, inp.now, inp.generation)
    if inp.status_repairs:
        d.events.append(decision.Event(
            "Warning", REASON_STATUS_REPAIRED,
            "the stored status had invalid fields, rewritten from what the cluster shows: "
            + "; ".join(inp.status_repairs)))
    return decision.Decision(findings=tuple(d.found), new_findings=tuple(d.new), actions=tuple(d.actions),
                             status=status_of(inp, d, figures_too=figures_too), events=tuple(d.events),
                             failures=tuple(d.failures),
                             held=tuple(d.held))


def _summary(inp: decision.EvaluationInput) -> st.Summary | None:
    """The limit closest to its cap (for the kubectl get columns)."""
    best: tuple[float, spec.SpendLimit, float] | None = None
    for lim in inp.budget.spec.limits:
        value = inp.spend.get(lim.window)
        if value is None:
            continue
        pct = 100.0 * value / lim.amount_usd
        if best is None or pct > best[0]:
            best = (pct, lim, value)
    if best is None:
        return None
    return st.Summary(window=best[1].window, spend_usd=figures.money(best[2]), cap_usd=best[1].amount_usd,
                      percent_used=round(best[0], 1))


def _incidents(inp: decision.EvaluationInput, d: stages.Draft) -> list[st.Incident] | None:
    """The previous incidents plus the new findings, newest last, bounded."""
    incidents = list(inp.previous.incidents or ())
    for f in d.new:
        incidents.append(st.Incident(
            id=findings.incident_id(f), kind=f.kind, agent=f.agent,
            time=st.at(f.onset if f.onset is not None else f.time), action=f.action, message=f.message,
            workflow=f.workflow or None, model=f.model or None, tool=f.tool or None))
    return incidents[-stages.MAX_INCIDENTS:] or None


def status_of(inp: decision.EvaluationInput, d: stages.Draft, *, figures_too: bool = True) -> st.AgentBudgetStatus:
    """The status the stages decided: spend, figures, state, conditions, kill switch, model, incidents
    (without the hour's figures: ``figures_too=False``)."""
    spend = {w.value: figures.money(v) for w, v in inp.spend.items() if v is not None}
    figs = _figures(inp) if figures_too else {}
    model = d.model if d.model is not None and (d.model.rollbacks or d.model.spec_desired) else None
    return st.AgentBudgetStatus(
        observed_generation=inp.generation,
        spend=st.Spend(**spend) if spend else None,
        summary=_summary(inp),
        **figs,
        models=[st.AgentModel(agent=a.name, model=a.model) for a in d.agents if a.model is not None],
        last_evaluated=st.at(inp.now),
        state=d.state,
        conditions=d.conditions,
        kill_switch=d.kill_switch,
        model=model,
        steps=d.steps if d.steps is not None and (d.steps.active or d.steps.acknowledged or d.steps.models
                                                  or d.steps.replicas) else None,
        incidents=_incidents(inp, d),
        source=inp.source.status() if inp.source is not None else None,
    )


def _figures(inp: decision.EvaluationInput) -> dict[str, Any]:
    """The hour's figures of the status (burn rate, projection, unit costs, top agents and tools)."""
    if inp.minutes is None:
        return {}
    return figures.figures(inp.minutes, inp.now, inp.spend, inp.outcomes, inp.budget.spec, inp.memo)


def with_figures(inp: decision.EvaluationInput, verdict: decision.Decision) -> decision.Decision:
    """``verdict`` (made by :func:`conclude` with ``figures_too=False``) with the hour's figures in
    its status: the status :func:`conclude` makes by default."""
    figs = _figures(inp)
    return dataclasses.replace(verdict, status=verdict.status.model_copy(update=figs)) if figs else verdict


REASON_INVALID_SPEC = "InvalidSpec"


def invalid_spec(previous: st.AgentBudgetStatus, message: str, now: float, generation: int | None
                 ) -> decision.Decision:
    """The decision for an AgentBudget whose spec does not validate: the previous status with
    ``Ready=False``, reason ``InvalidSpec`` and ``message``; a Warning Event ``InvalidSpec``
    when that condition is new, for this generation (not on every cycle); no finding, no action."""
    conditions = list(previous.conditions or ())
    old = previous.condition(st.READY)
    ready = st.set_condition(conditions, st.READY, "False", REASON_INVALID_SPEC, message, now, generation)
    status = previous.model_copy(update={
        "observed_generation": generation if generation is not None else previous.observed_generation,
        "conditions": [ready, *(c for c in conditions if c.type != st.READY)]})
    said = old is not None and (old.status, old.reason, old.message, old.observed_generation) == \
        (ready.status, ready.reason, ready.message, ready.observed_generation)
    events = () if said else (decision.Event("Warning", REASON_INVALID_SPEC, message),)
    return decision.Decision(findings=(), new_findings=(), actions=(), status=status, events=events)
