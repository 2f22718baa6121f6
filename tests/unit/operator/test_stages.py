"""Table tests for the decision's stages, one stage at a time: input and draft in, what it adds out.

Each stage (:mod:`fleetwarden.core.stages`) is called on its own with a hand-made draft, so a row
says exactly what that stage decides; ``test_evaluate.py`` covers the whole chain.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fleetwarden.core import decision, evaluate, findings, spec, stages
from fleetwarden.core import status as st
from fleetwarden.core.series import AgentMinute

NOW = 1_800_000_000.0
NS = "shop"


def budget(**fields: Any) -> spec.AgentBudget:
    doc: dict[str, Any] = {"limits": [{"window": "hour", "amountUSD": 10}]}
    doc.update(fields)
    return spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": NS}, "spec": doc})


def dep(name: str, replicas: int = 2, model: str | None = "gpt-4o", before: int | None = None
        ) -> decision.AgentDeployment:
    return decision.AgentDeployment(name, NS, {"team": "cx"}, replicas, model=model, replicas_before=before)


def minutes(agent: str) -> list[AgentMinute]:
    start = int(NOW // 60) * 60 - 30 * 60
    return [AgentMinute(agent, NS, start + 60 * i, inference_cost_usd=0.01, llm_calls=2, tasks_completed=1,
                        tokens=500, output_tokens=50, model="gpt-4o") for i in range(30)]


def make(b: spec.AgentBudget | None = None, ags: list[decision.AgentDeployment] | None = None, *,
         hour: float | None = 2.0, previous: dict[str, Any] | None = None, known_minutes: bool = True,
         approvals: tuple[decision.PendingApproval, ...] = ()) -> tuple[decision.EvaluationInput, stages.Draft]:
    ags = [dep("bot"), dep("helper", 3)] if ags is None else ags
    inp = decision.EvaluationInput(
        budget=b or budget(), agents=ags, minutes={a.name: minutes(a.name) for a in ags} if known_minutes else None,
        spend={spec.Window.hour: hour}, now=NOW, previous=previous or {}, approvals=approvals, generation=3)
    return inp, stages.Draft(agents=sorted(ags, key=lambda a: a.name), previous=inp.previous)


def kill_finding(agent: str = "support", kind: str = findings.KILL_SWITCH) -> findings.Finding:
    return findings.Finding(kind=kind, agent=agent, namespace=NS, time=NOW, action=findings.KILL,
                            message="spend past 150% of the hourly cap", onset=NOW)


# ---------------------------------------------------------------- findings


@pytest.mark.parametrize(("hour", "known_minutes", "known", "kinds"), [
    (2.0, True, True, []),
    (9.0, True, True, [findings.BUDGET_WARNING]),
    (12.0, True, True, [findings.BUDGET_EXCEEDED]),
    (16.0, True, True, [findings.BUDGET_EXCEEDED, findings.KILL_SWITCH]),
    (16.0, False, False, []),  # no buckets: unknown, so no finding at all
    (None, True, False, []),  # the spend of a limit's window is unknown
])
def test_findings_stage(hour: float | None, known_minutes: bool, known: bool, kinds: list[str]) -> None:
    """The findings stage says whether the data is known and finds the budget rules only on known data."""
    inp, d = make(budget(killSwitch={"enabled": True, "thresholdPercent": 150}), hour=hour,
                  known_minutes=known_minutes)
    stages.findings_stage(inp, d)
    assert d.known is known
    assert sorted(f.kind for f in d.found) == sorted(kinds)
    assert d.new == d.found  # nothing was reported before
    assert all(f.budget == "support" for f in d.found)


def test_findings_stage_keeps_what_was_reported_out_of_new() -> None:
    """A finding whose incident the previous status already holds is found again but is not new."""
    inp, d = make(hour=12.0)
    stages.findings_stage(inp, d)
    (f,) = d.found
    again_inp, again = make(hour=12.5, previous={
        "state": "Exceeded", "conditions": [{"type": "BudgetExceeded", "status": "True", "reason": "LimitExceeded",
                                             "message": "x", "lastTransitionTime": "2027-01-15T08:00:00Z"}],
        "incidents": [{"id": findings.incident_id(f), "kind": f.kind, "agent": f.agent,
                       "time": "2027-01-15T08:00:00Z"}]})
    stages.findings_stage(again_inp, again)
    assert [x.kind for x in again.found] == [findings.BUDGET_EXCEEDED] and again.new == []


# ---------------------------------------------------------------- kill switch


ENGAGED = {"killSwitch": {"engaged": True, "incident": "inc-1", "replicas": {"bot": 4, "helper": 1}}}


@pytest.mark.parametrize(("case", "previous", "ack", "ags", "found", "actions", "reasons", "engaged"), [
    ("engage on a kill finding", {}, None, [dep("bot", 2), dep("helper", 3)], [kill_finding()],
     [decision.ScaleToZero("bot", 2, "kill"), decision.ScaleToZero("helper", 3, "kill")],
     [stages.REASON_KILL_SWITCH_ENGAGED], True),
    ("a detector's kill stops its agent only", {}, None, [dep("bot", 2), dep("helper", 3)],
     [kill_finding("bot", findings.RUNAWAY_LOOP)], [decision.ScaleToZero("bot", 2, "kill")],
     [stages.REASON_KILL_SWITCH_ENGAGED], True),
    ("held: a scaled-up agent goes back to zero", ENGAGED, None, [dep("bot", 1), dep("helper", 0)], [],
     [decision.ScaleToZero("bot", 4, "killed-again")], [stages.REASON_KILL_SWITCH_HELD], True),
    ("a wrong acknowledgement does not resume", ENGAGED, "inc-0", [dep("bot", 2), dep("helper", 0)], [],
     [decision.ScaleToZero("bot", 4, "killed-again")], [stages.REASON_KILL_SWITCH_HELD], True),
    ("acknowledged: exact replicas back", ENGAGED, "inc-1", [dep("bot", 0), dep("helper", 0)], [],
     [decision.RestoreReplicas("bot", 4, "resume"), decision.RestoreReplicas("helper", 1, "resume")],
     [stages.REASON_RESUMED], False),
    ("engage after a lost status write: the count stored on the scaled agent is kept", {}, None,
     [dep("bot", 0, before=3), dep("helper", 2)], [kill_finding()], [decision.ScaleToZero("helper", 2, "kill")],
     [stages.REASON_KILL_SWITCH_ENGAGED], True),
    ("the acknowledged incident is not engaged again", {}, findings.incident_id(kill_finding()),
     [dep("bot", 2)], [kill_finding()], [], [], False),
])
def test_kill_switch_stage(case: str, previous: dict[str, Any], ack: str | None,
                           ags: list[decision.AgentDeployment], found: list[findings.Finding],
                           actions: list[decision.Action], reasons: list[str], engaged: bool) -> None:
    """The kill switch engages on a kill finding, holds while engaged, and resumes on the acknowledgement."""
    ks: dict[str, Any] = {"enabled": True, "thresholdPercent": 150}
    if ack is not None:
        ks["acknowledge"] = ack
    inp, d = make(budget(killSwitch=ks), ags, previous=previous)
    d.known, d.found = True, found
    stages.kill_switch_stage(inp, d)
    assert d.actions == actions, case
    assert [e.reason for e in d.events] == reasons, case
    assert d.engaged is engaged, case


def test_kill_switch_remembers_the_replicas_stored_on_agents_already_at_zero() -> None:
    """A kill half done before a restart: status.killSwitch.replicas holds the count recorded on the
    Deployment (fleetwarden.dev/replicas-before-kill), so the resume restores it exactly."""
    inp, d = make(budget(killSwitch={"enabled": True}), [dep("bot", 0, before=3), dep("helper", 2),
                                                         dep("idle", 0)])
    d.known, d.found = True, [kill_finding()]
    stages.kill_switch_stage(inp, d)
    assert d.kill_switch is not None and d.kill_switch.replicas == {"bot": 3, "helper": 2}


def test_kill_switch_stage_never_engages_on_unknown_data() -> None:
    """A kill finding on unknown data engages nothing."""
    inp, d = make(budget(killSwitch={"enabled": True}))
    d.known, d.found = False, [kill_finding()]
    stages.kill_switch_stage(inp, d)
    assert (d.actions, d.engaged, d.kill_switch) == ([], False, None)


# ---------------------------------------------------------------- suspend


@pytest.mark.parametrize(("suspend", "ags", "actions"), [
    (True, [dep("bot", 2), dep("helper", 0)], [decision.ScaleToZero("bot", 2, "suspend")]),
    (False, [dep("bot", 0, before=2), dep("helper", 3)], [decision.RestoreReplicas("bot", 2, "unsuspend")]),
    (False, [dep("bot", 0), dep("helper", 3)], []),  # at zero with nothing remembered: a person's choice
])
def test_suspend_stage(suspend: bool, ags: list[decision.AgentDeployment], actions: list[decision.Action]) -> None:
    """spec.suspend scales to zero; false restores what the Deployment remembers."""
    inp, d = make(budget(suspend=suspend), ags)
    stages.suspend_stage(inp, d)
    assert d.actions == actions
    assert {e.reason for e in d.events} <= {stages.REASON_SUSPENDED, stages.REASON_RESUMED}


def test_suspend_stage_restores_nothing_while_killed() -> None:
    inp, d = make(budget(), [dep("bot", 0, before=2)])
    d.engaged = True
    stages.suspend_stage(inp, d)
    assert d.actions == []


# ---------------------------------------------------------------- model


def spike(agent: str = "bot") -> findings.Finding:
    return findings.Finding(kind=findings.MODEL_UPDATE_SPIKE, agent=agent, namespace=NS, time=NOW,
                            action=findings.ROLLBACK, message="cost per task 3.1x", model="gpt-4o",
                            previous_model="gpt-4o-mini", onset=NOW - 600)


@pytest.mark.parametrize(("case", "model_spec", "previous", "found", "reasons", "set_to"), [
    ("a spike rolls back", {"rollbackOnSpike": True}, {}, [spike()], [stages.REASON_MODEL_ROLLED_BACK],
     {"bot": "gpt-4o-mini"}),
    ("no rollback without rollbackOnSpike", {"rollbackOnSpike": False}, {}, [spike()], [], {}),
    ("desired wins", {"desired": "gpt-4.1"}, {}, [spike()], [stages.REASON_MODEL_SET] * 2,
     {"bot": "gpt-4.1", "helper": "gpt-4.1"}),
    ("drift from a rollback is set back", {"rollbackOnSpike": True},
     {"model": {"rollbacks": [{"agent": "bot", "from": "gpt-4.1", "to": "gpt-4o-mini", "incident": "inc-7",
                               "at": "2027-01-15T07:00:00Z"}]}}, [], [stages.REASON_MODEL_ROLLBACK_HELD],
     {"bot": "gpt-4o-mini"}),
])
def test_model_stage(case: str, model_spec: dict[str, Any], previous: dict[str, Any], found: list[findings.Finding],
                     reasons: list[str], set_to: dict[str, str]) -> None:
    """Model: desired wins; else a spike rolls back once, and a rollback is held against drift."""
    inp, d = make(budget(model=model_spec), [dep("bot"), dep("helper")], previous=previous)
    d.known, d.found = True, found
    stages.model_stage(inp, d)
    assert [e.reason for e in d.events] == reasons, case
    assert {a.agent: a.model for a in d.actions if isinstance(a, decision.SetModel)} == set_to, case


# ---------------------------------------------------------------- notify, approvals


def test_notify_stage_uses_each_kinds_reason_constant() -> None:
    """A new finding is notified once, its Event's reason the kind's Reason constant (the kill switch's
    is the condition's KillSwitchEngaged, not a second spelling)."""
    inp, d = make()
    d.new = [kill_finding(), spike()]
    stages.notify_stage(inp, d)
    assert [a.incident for a in d.actions] == [findings.incident_id(f) for f in d.new]
    assert [e.reason for e in d.events] == [stages.REASON_KILL_SWITCH_ENGAGED, "ModelUpdateSpike"]


def test_approvals_stage_keeps_the_budgets_unexpired_requests() -> None:
    approvals = (decision.PendingApproval("b-2", "bot", expires_at=NOW + 60),
                 decision.PendingApproval("a-1", "bot"),
                 decision.PendingApproval("c-3", "bot", expires_at=NOW - 1),
                 decision.PendingApproval("d-4", "someone-else"))
    inp, d = make(approvals=approvals)
    stages.approvals_stage(inp, d)
    assert [a.name for a in d.pending] == ["a-1", "b-2"]


# ---------------------------------------------------------------- conditions


@pytest.mark.parametrize(("known", "engaged", "found", "suspend", "state", "ready"), [
    (True, False, [], False, st.State.active, ("True", stages.REASON_EVALUATED)),
    (True, False, [findings.BUDGET_WARNING], False, st.State.warning, ("True", stages.REASON_EVALUATED)),
    (True, False, [findings.BUDGET_EXCEEDED], False, st.State.exceeded, ("True", stages.REASON_EVALUATED)),
    (True, True, [], False, st.State.killed, ("False", stages.REASON_KILL_SWITCH_ENGAGED)),
    (False, False, [], False, st.State.unknown, ("False", stages.REASON_METRICS_UNAVAILABLE)),
    (False, True, [], True, st.State.suspended, ("False", stages.REASON_SUSPENDED)),
])
def test_conditions_stage(known: bool, engaged: bool, found: list[str], suspend: bool, state: st.State,
                          ready: tuple[str, str]) -> None:
    """The state, in order of precedence, and Ready with the state's Reason."""
    inp, d = make(budget(suspend=suspend))
    d.known, d.engaged, d.reason_unknown = known, engaged, "Prometheus unreachable"
    d.found = [findings.Finding(kind=k, agent="support", namespace=NS, time=NOW, action=findings.ALERT, message="m")
               for k in found]
    stages.conditions_stage(inp, d)
    assert d.state is state
    ready_now = next(c for c in d.conditions if c.type == st.READY)
    assert (ready_now.status, ready_now.reason) == ready
    assert [c.type for c in d.conditions] == [st.READY, st.METRICS_AVAILABLE, st.BUDGET_EXCEEDED,
                                              st.KILL_SWITCH_ENGAGED, st.ANOMALY_DETECTED, st.APPROVAL_PENDING]
    assert all(c.observed_generation == 3 for c in d.conditions)


def test_conditions_keep_transition_times_and_others_conditions() -> None:
    """lastTransitionTime stays unless the status changes; a condition another writer set is kept."""
    previous = {"conditions": [
        {"type": "MetricsAvailable", "status": "True", "reason": "MetricsFresh", "message": "m",
         "lastTransitionTime": "2027-01-01T00:00:00Z"},
        {"type": "Ready", "status": "False", "reason": "MetricsUnavailable", "message": "m",
         "lastTransitionTime": "2027-01-01T00:00:00Z"},
        {"type": "example.com/Audited", "status": "True", "reason": "Audited", "message": "m",
         "lastTransitionTime": "2027-01-02T00:00:00Z"}]}
    inp, d = make(previous=previous)
    d.known = True
    stages.conditions_stage(inp, d)
    by_type = {c.type: c for c in d.conditions}
    assert st.rfc3339_of(by_type[st.METRICS_AVAILABLE].last_transition_time) == "2027-01-01T00:00:00Z"
    assert st.rfc3339_of(by_type[st.READY].last_transition_time) == "2027-01-15T08:00:00Z"
    assert by_type["example.com/Audited"].reason == "Audited"


# ---------------------------------------------------------------- the chain and the status


def test_the_chain_is_the_documented_order() -> None:
    assert [s.__name__ for s in stages.STAGES] == [
        "findings_stage", "kill_switch_stage", "steps_stage", "suspend_stage", "model_stage", "notify_stage",
        "approvals_stage",
        "conditions_stage"]


def test_a_garbage_status_is_replaced_and_named() -> None:
    """A status edited by hand into nonsense is read leniently: the bad fields are dropped (and said in a
    Warning Event), the rest is kept, and the status written back is valid."""
    garbage = {"state": "Exploded", "killSwitch": {"engaged": "maybe"}, "incidents": [
        {"id": "inc-1", "kind": "budget_exceeded", "agent": "support", "time": "2027-01-15T07:00:00Z"},
        {"id": 7, "time": "yesterday"}], "conditions": "none", "spend": {"hour": 2.0}, "surprise": 1}
    inp, _ = make(previous=garbage)
    verdict = evaluate.evaluate(inp)
    (event,) = [e for e in verdict.events if e.reason == evaluate.REASON_STATUS_REPAIRED]
    for field in ("state", "killSwitch", "incidents", "conditions", "surprise"):
        assert field in event.message
    body = verdict.status.body()
    assert body["state"] == "Active" and [i["id"] for i in body["incidents"]] == ["inc-1"]
    assert st.read(body) == (verdict.status, [])


# ---------------------------------------------------------------- settle (after acting)


def failure(action: decision.Action, status: int | None = 403, reason: str = "Forbidden") -> decision.ActionFailure:
    return decision.ActionFailure(action, status, reason, "deployments.apps is forbidden")


def test_settle_a_kill_none_of_whose_scales_landed_is_not_engaged() -> None:
    """Every kill scale refused: the kill switch stays as it was (the finding engages it again next time)."""
    inp, d = make(budget(killSwitch={"enabled": True}))
    d.known, d.found = True, [kill_finding()]
    stages.kill_switch_stage(inp, d)
    stages.settle_stage(inp, d, [failure(a) for a in d.actions])
    stages.conditions_stage(inp, d)
    assert (d.engaged, d.kill_switch, d.state) == (False, None, st.State.exceeded)
    ks = next(c for c in d.conditions if c.type == st.KILL_SWITCH_ENGAGED)
    assert (ks.status, ks.reason) == ("False", stages.REASON_SCALE_FAILED) and "403 Forbidden" in ks.message
    assert [e.reason for e in d.events].count(stages.REASON_SCALE_FAILED) == 2


def test_settle_a_kill_that_stopped_some_agents_holds_the_others() -> None:
    """One scale landed, one refused: engaged, the refused agent pending (the hold retries it, and
    remembers its replicas once it is stopped), but not shown as Killed."""
    inp, d = make(budget(killSwitch={"enabled": True}))
    d.known, d.found = True, [kill_finding()]
    stages.kill_switch_stage(inp, d)
    stages.settle_stage(inp, d, [failure(d.actions[1])])
    stages.conditions_stage(inp, d)
    assert d.engaged and d.kill_switch is not None
    assert (d.kill_switch.replicas, d.kill_switch.pending) == ({"bot": 2}, ["helper"])
    assert d.state is not st.State.killed
    # the next evaluation: helper, scaled to 4 meanwhile, is tried again and its 4 replicas remembered
    body = evaluate.status_of(inp, d).body()
    inp2, d2 = make(budget(killSwitch={"enabled": True}), [dep("bot", 0), dep("helper", 4)], previous=body)
    stages.kill_switch_stage(inp2, d2)
    assert d2.actions == [decision.ScaleToZero("helper", 4, "killed-again")]
    assert d2.kill_switch is not None and (d2.kill_switch.replicas, d2.kill_switch.pending) == (
        {"bot": 2, "helper": 4}, None)


def test_settle_a_resume_whose_restore_failed_stays_engaged() -> None:
    inp, d = make(budget(killSwitch={"enabled": True, "acknowledge": "inc-1"}), [dep("bot", 0)],
                  previous=ENGAGED)
    stages.kill_switch_stage(inp, d)
    assert not d.engaged
    stages.settle_stage(inp, d, [failure(d.actions[0], 409, "Conflict")])
    stages.conditions_stage(inp, d)
    assert d.engaged and d.kill_switch == d.previous.kill_switch and d.state is st.State.killed
    ks = next(c for c in d.conditions if c.type == st.KILL_SWITCH_ENGAGED)
    assert (ks.status, ks.reason) == ("True", stages.REASON_RESTORE_FAILED)


def test_settle_a_rollback_that_was_not_set_is_not_recorded() -> None:
    """The rollback record is dropped, so the spike rolls the agent back again at the next evaluation."""
    inp, d = make(budget(model={"rollbackOnSpike": True}), [dep("bot"), dep("helper")])
    d.known, d.found = True, [spike()]
    stages.model_stage(inp, d)
    assert d.model is not None and len(d.model.rollbacks or ()) == 1
    stages.settle_stage(inp, d, [failure(d.actions[0], 422, "Invalid")])
    assert d.model.rollbacks == []
    assert [e.reason for e in d.events][-1] == stages.REASON_MODEL_SET_FAILED


# ---------------------------------------------------------------- enforcement modes


@pytest.mark.parametrize(("mode", "alerts"), [("DryRun", False), ("Warn", True)])
def test_a_kill_is_held_in_dry_run_and_warn(mode: str, alerts: bool) -> None:
    """DryRun and Warn: no ScaleToZero, the kill is held (said once, in a WouldKill Event), the status is
    not Killed and names the mode; Warn alerts on-call, DryRun does not. The incident stays the same
    while the breach lasts, so nothing is said again the next minute."""
    b = budget(killSwitch={"enabled": True, "thresholdPercent": 150}, enforcement=mode)
    inp, d = make(b, hour=16.0)
    verdict = evaluate.conclude(inp, _planned(inp, d))
    assert not [a for a in verdict.actions if isinstance(a, decision.ScaleToZero)]
    assert sorted(a.agent for a in verdict.held) == ["bot", "helper"]
    assert [e.reason for e in verdict.events].count(stages.REASON_WOULD_KILL) == 1
    assert any(isinstance(a, decision.Notify) for a in verdict.actions) is alerts
    body = verdict.status.body()
    assert body["state"] == "Exceeded" and "killSwitch" not in body
    ks = next(c for c in body["conditions"] if c["type"] == "KillSwitchEngaged")
    assert (ks["status"], ks["reason"]) == ("False", mode)
    later = evaluate.evaluate(decision.EvaluationInput(
        budget=b, agents=inp.agents, minutes=inp.minutes, spend={spec.Window.hour: 17.0}, now=NOW + 120,
        previous=body, generation=3))
    assert later.new_findings == () and stages.REASON_WOULD_KILL not in [e.reason for e in later.events]
    assert [i["id"] for i in later.status.body()["incidents"]] == [i["id"] for i in body["incidents"]]


def _planned(inp: decision.EvaluationInput, d: stages.Draft) -> stages.Draft:
    for stage in stages.PLAN:
        stage(inp, d)
    return d


def test_a_rollback_is_held_in_dry_run() -> None:
    inp, d = make(budget(model={"rollbackOnSpike": True}, enforcement="DryRun"), [dep("bot")])
    d.known, d.found, d.new = True, [spike()], [spike()]
    stages.model_stage(inp, d)
    assert d.actions == [] and [a.model for a in d.held] == ["gpt-4o-mini"]
    assert [e.reason for e in d.events] == [stages.REASON_WOULD_ROLL_BACK]
    assert d.model is not None and d.model.rollbacks == []


def test_enforce_is_the_default_and_acts() -> None:
    inp, d = make(budget(killSwitch={"enabled": True}), hour=16.0)
    assert inp.budget.spec.enforcement is spec.Enforcement.enforce
    verdict = evaluate.conclude(inp, _planned(inp, d))
    assert verdict.held == () and [a.agent for a in verdict.actions if isinstance(a, decision.ScaleToZero)]


def _cost_policy(name: str, mode: str, namespace: str = NS) -> spec.CostPolicy:
    return spec.CostPolicy.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": {
        "enforcement": mode, "approvals": [{"name": f"{name}-big", "amountAboveUSD": 100}]}})


@pytest.mark.parametrize(("mode", "kind", "named", "alerts"), [
    ("DryRun", findings.RATE_LIMIT_EXCEEDED, "limits", False),
    ("Warn", findings.RATE_LIMIT_EXCEEDED, "limits", True),
    ("Enforce", findings.RATE_LIMIT_EXCEEDED, "limits", True),
    ("DryRun", findings.APPROVAL_REQUIRED, "limits-big", False),  # an approval finding names its rule
    ("DryRun", findings.TOOL_NOT_ALLOWED, "other", True),  # names no policy of the namespace: alerted
    ("DryRun", findings.BUDGET_EXCEEDED, "limits", True),  # not a guardrail finding: the budget decides
])
def test_guardrail_findings_of_a_dry_run_cost_policy_alert_no_one(mode: str, kind: str, named: str,
                                                                  alerts: bool) -> None:
    """A guardrail finding whose policy is a CostPolicy in DryRun gets its Warning Event but no Notify;
    Warn and Enforce alert."""
    inp, d = make()
    inp = decision.EvaluationInput(budget=inp.budget, agents=inp.agents, minutes=inp.minutes, spend=inp.spend,
                                   now=NOW, policies=(_cost_policy("limits", mode),), generation=3)
    f = findings.Finding(kind=kind, agent="bot", namespace=NS, time=NOW, action="deny", policy=named,
                         message="over")
    d.new = [f]
    stages.notify_stage(inp, d)
    assert any(isinstance(a, decision.Notify) for a in d.actions) is alerts
    assert [e.type for e in d.events] == ["Warning"]


def test_a_dry_run_policy_of_another_namespace_does_not_silence() -> None:
    f = findings.Finding(kind=findings.RATE_LIMIT_EXCEEDED, agent="bot", namespace=NS, time=NOW, action="deny",
                         policy="limits", message="over")
    assert stages.dry_run_policy([_cost_policy("limits", "DryRun", "elsewhere")], f) is False
    assert stages.dry_run_policy([_cost_policy("limits", "DryRun")], f) is True


def test_a_kill_whose_scales_failed_keeps_its_incident_minutes_later() -> None:
    """A kill none of whose scales landed is engaged again later as the same incident: no second
    incident, no second alert, however many minutes the retries take."""
    b = budget(killSwitch={"enabled": True, "thresholdPercent": 150})
    inp, d = make(b, hour=16.0)
    first = evaluate.conclude(inp, _planned(inp, d), [failure(a) for a in _planned(*make(b, hour=16.0)).actions
                                                      if isinstance(a, decision.ScaleToZero)])
    assert first.status.body()["state"] != "Killed"
    (kill,) = [f for f in first.new_findings if f.kind == findings.KILL_SWITCH]
    later = evaluate.evaluate(decision.EvaluationInput(
        budget=b, agents=inp.agents, minutes=inp.minutes, spend={spec.Window.hour: 17.0}, now=NOW + 5 * 60,
        previous=first.status.body(), generation=3))
    assert later.new_findings == ()
    assert later.status.body()["killSwitch"]["incident"] == findings.incident_id(kill)
    assert [a.agent for a in later.actions if isinstance(a, decision.ScaleToZero)] == ["bot", "helper"]


# ---------------------------------------------------------------- steps (the graduated response)

STEPS = [{"atPercent": 50, "action": "CheaperModel", "model": "gpt-4o-mini"},
         {"atPercent": 70, "action": "CapOutputTokens", "maxOutputTokens": 500},
         {"atPercent": 90, "action": "StopNewTasks"},
         {"atPercent": 100, "action": "ScaleToZero", "name": "stop"}]


def stepped(**fields: Any) -> spec.AgentBudget:
    return budget(**{"steps": STEPS, "killSwitch": {"enabled": True, "thresholdPercent": 200}, **fields})


def cycle(b: spec.AgentBudget, ags: list[decision.AgentDeployment], hour: float | None, previous: dict[str, Any],
          ) -> tuple[decision.Decision, list[decision.AgentDeployment]]:
    """One whole evaluation, then its actions applied to the agents as the runtime would."""
    inp, _ = make(b, ags, hour=hour, previous=previous)
    verdict = evaluate.evaluate(inp)
    after = {a.name: a for a in ags}
    for action in verdict.actions:
        agent = after.get(getattr(action, "agent", ""))
        if isinstance(action, decision.SetModel) and agent is not None:
            after[agent.name] = dataclasses.replace(agent, model=action.model)
        elif isinstance(action, decision.ScaleToZero) and agent is not None:
            after[agent.name] = dataclasses.replace(agent, replicas=0, replicas_before=action.replicas_to_remember)
        elif isinstance(action, decision.RestoreReplicas) and agent is not None:
            after[agent.name] = dataclasses.replace(agent, replicas=action.replicas, replicas_before=None)
    return verdict, sorted(after.values(), key=lambda a: a.name)


def active(verdict: decision.Decision) -> list[str]:
    return [a.name or "" for a in (verdict.status.steps.active or ())] if verdict.status.steps else []


def step_condition(verdict: decision.Decision) -> st.Condition:
    c = verdict.status.condition(st.STEP_ACTIVE)
    assert c is not None
    return c


@pytest.mark.parametrize(("hour", "names", "set_to", "stopped"), [
    (4.0, [], {}, []),
    (6.0, ["CheaperModel-50"], {"bot": "gpt-4o-mini", "helper": "gpt-4o-mini"}, []),
    (9.5, ["CheaperModel-50", "CapOutputTokens-70", "StopNewTasks-90"],
     {"bot": "gpt-4o-mini", "helper": "gpt-4o-mini"}, []),
    (10.0, ["CheaperModel-50", "CapOutputTokens-70", "StopNewTasks-90", "stop"],
     {"bot": "gpt-4o-mini", "helper": "gpt-4o-mini"}, ["bot", "helper"]),
])
def test_steps_stage(hour: float, names: list[str], set_to: dict[str, str], stopped: list[str]) -> None:
    """Each step at or past its percentage of the cap is in force; CheaperModel and ScaleToZero act, the
    others act through the SDK (no action here); each engagement is one StepEngaged Event."""
    inp, d = make(stepped(), hour=hour)
    d.known = True
    stages.steps_stage(inp, d)
    assert ([a.name for a in (d.steps.active or ())] if d.steps else []) == names
    assert {a.agent: a.model for a in d.actions if isinstance(a, decision.SetModel)} == set_to
    assert sorted(a.agent for a in d.actions if isinstance(a, decision.ScaleToZero)) == stopped
    assert [e.reason for e in d.events] == [stages.REASON_STEP_ENGAGED] * len(names)
    if stopped:
        assert d.steps is not None and d.steps.replicas == {"bot": 2, "helper": 3} and d.step_held == {"bot", "helper"}
    if set_to:
        assert d.steps is not None and d.steps.models == {"bot": "gpt-4o", "helper": "gpt-4o"}


def test_steps_walk_up_and_back_down_restoring_what_they_replaced() -> None:
    """Up through the steps as spend rises, then a raised cap: every step undone, the models and replicas
    they replaced restored exactly, each model change recorded like a rollback."""
    ags = [dep("bot"), dep("helper", 3)]
    v1, ags = cycle(stepped(), ags, 6.0, {})
    assert active(v1) == ["CheaperModel-50"] and {a.model for a in ags} == {"gpt-4o-mini"}
    c = step_condition(v1)
    assert (c.status, c.reason) == ("True", stages.REASON_STEP_ENGAGED) and "60% of the 10 USD cap" in c.message
    assert f"set spec.acknowledgeSteps to {v1.status.steps.engagement}" in c.message  # type: ignore[union-attr]
    v2, ags = cycle(stepped(), ags, 10.5, v1.status.body())
    assert active(v2)[-1] == "stop" and [a.replicas for a in ags] == [0, 0]
    assert not [a for a in v2.actions if isinstance(a, decision.SetModel)]  # already on the cheaper model
    v3, ags = cycle(stepped(), ags, 10.5, v2.status.body())
    assert v3.actions == () and active(v3) == active(v2)  # held, nothing redone
    raised = stepped(limits=[{"window": "hour", "amountUSD": 100}])
    v4, ags = cycle(raised, ags, 10.5, v3.status.body())
    assert active(v4) == [] and v4.status.steps is None
    assert [(a.name, a.replicas, a.model) for a in ags] == [("bot", 2, "gpt-4o"), ("helper", 3, "gpt-4o")]
    assert {(a.agent, a.reason) for a in v4.actions if isinstance(a, decision.RestoreReplicas)} == {
        ("bot", "step-undone"), ("helper", "step-undone")}
    assert [e.reason for e in v4.events].count(stages.REASON_STEP_UNDONE) == 4
    assert (step_condition(v4).status, step_condition(v4).reason) == ("False", stages.REASON_NO_STEP_ACTIVE)
    rollbacks = [(r.agent, r.from_, r.to, r.reason) for r in v4.status.model.rollbacks or ()]  # type: ignore[union-attr]
    assert rollbacks == [("bot", "gpt-4o", "gpt-4o-mini", "step CheaperModel-50"),
                         ("helper", "gpt-4o", "gpt-4o-mini", "step CheaperModel-50"),
                         ("bot", "gpt-4o-mini", "gpt-4o", "steps undone"),
                         ("helper", "gpt-4o-mini", "gpt-4o", "steps undone")]


def test_an_agent_scaled_back_up_under_a_scale_to_zero_step_is_stopped_again_and_not_unsuspended() -> None:
    ags = [dep("bot"), dep("helper", 3)]
    v1, ags = cycle(stepped(), ags, 10.0, {})
    assert [a.replicas for a in ags] == [0, 0]
    ags = [dataclasses.replace(ags[0], replicas=4), ags[1]]  # a person, or GitOps self-heal
    v2, ags = cycle(stepped(), ags, 10.0, v1.status.body())
    assert [(a.agent, a.replicas_to_remember) for a in v2.actions if isinstance(a, decision.ScaleToZero)] == [
        ("bot", 2)]  # the replicas from before the step are the ones restored
    assert not [a for a in v2.actions if isinstance(a, decision.RestoreReplicas)]


def test_acknowledged_steps_stay_undone_until_spend_falls_under_or_a_higher_step_engages() -> None:
    ags = [dep("bot"), dep("helper", 3)]
    v1, ags = cycle(stepped(), ags, 9.5, {})
    engagement = v1.status.steps.engagement  # type: ignore[union-attr]
    assert engagement and len(active(v1)) == 3
    assert cycle(stepped(acknowledgeSteps="steps-0000000000"), ags, 9.5, v1.status.body())[0].actions == ()
    acked = stepped(acknowledgeSteps=engagement)
    v2, ags = cycle(acked, ags, 9.5, v1.status.body())
    assert active(v2) == [] and {a.model for a in ags} == {"gpt-4o"}
    assert (step_condition(v2).status, step_condition(v2).reason) == ("False", stages.REASON_STEP_ACKNOWLEDGED)
    v3, ags = cycle(acked, ags, 9.5, v2.status.body())
    assert v3.actions == () and active(v3) == []  # stays undone while spend stays
    v4, ags = cycle(acked, ags, 10.0, v3.status.body())  # a higher step engages: the others lapse
    assert active(v4) == ["CheaperModel-50", "CapOutputTokens-70", "StopNewTasks-90", "stop"]
    assert v4.status.steps.engagement != engagement  # type: ignore[union-attr]
    # acknowledged again, then spend falls under 50% (a new window): the next crossing engages again
    v5, ags = cycle(stepped(acknowledgeSteps=v4.status.steps.engagement), ags, 10.0, v4.status.body())  # type: ignore[union-attr]
    assert active(v5) == [] and v5.status.steps.acknowledged == [  # type: ignore[union-attr]
        "CapOutputTokens-70", "CheaperModel-50", "StopNewTasks-90", "stop"]
    v6, ags = cycle(stepped(acknowledgeSteps=v4.status.steps.engagement), ags, 2.0, v5.status.body())  # type: ignore[union-attr]
    assert v6.status.steps is None
    v7, ags = cycle(stepped(acknowledgeSteps=v4.status.steps.engagement), ags, 6.0, v6.status.body())  # type: ignore[union-attr]
    assert active(v7) == ["CheaperModel-50"]


@pytest.mark.parametrize("mode", ["DryRun", "Warn"])
def test_steps_in_dry_run_and_warn_say_what_they_would_do(mode: str) -> None:
    ags = [dep("bot"), dep("helper", 3)]
    v1, after = cycle(stepped(enforcement=mode), ags, 10.0, {})
    assert after == ags and not [a for a in v1.actions if not isinstance(a, decision.Notify)]
    assert {type(a).__name__ for a in v1.held} == {"SetModel", "ScaleToZero"}
    c = step_condition(v1)
    assert (c.status, c.reason) == ("True", mode) and "nothing is acted on" in c.message
    assert v1.status.steps is not None and v1.status.steps.models is None and v1.status.steps.replicas is None
    engaged = [e.message for e in v1.events if e.reason == stages.REASON_STEP_ENGAGED]
    assert len(engaged) == 4 and all(f"spec.enforcement is {mode}: would have" in m for m in engaged)


def test_unknown_data_engages_and_undoes_no_step() -> None:
    ags = [dep("bot"), dep("helper", 3)]
    v1, ags = cycle(stepped(), ags, 10.0, {})
    v2, after = cycle(stepped(), ags, None, v1.status.body())
    assert v2.actions == () and active(v2) == active(v1) and after == ags


def test_desired_model_wins_over_a_cheaper_model_step() -> None:
    v1, ags = cycle(stepped(model={"desired": "gpt-4.1"}), [dep("bot")], 6.0, {})
    assert active(v1) == ["CheaperModel-50"] and [a.model for a in ags] == ["gpt-4.1"]


@pytest.mark.parametrize(("step", "message"), [
    ({"atPercent": 80, "action": "CheaperModel"}, "CheaperModel needs it"),
    ({"atPercent": 80, "action": "StopNewTasks", "model": "x"}, "model is for CheaperModel"),
    ({"atPercent": 80, "action": "CapOutputTokens"}, "CapOutputTokens needs it"),
    ({"atPercent": 80, "action": "StopNewTasks", "window": "day"}, "window day has no limit"),
])
def test_a_step_without_its_parameter_or_limit_is_refused(step: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        budget(steps=[step])


def test_a_kill_resumed_under_a_scale_to_zero_step_keeps_the_agents_at_zero_until_the_step_is_undone() -> None:
    ags = [dep("bot", 0, before=2), dep("helper", 0, before=3)]
    previous = {"killSwitch": {"engaged": True, "incident": "inc-1", "replicas": {"bot": 2, "helper": 3}},
                "steps": {"active": [{"name": "stop", "action": "ScaleToZero", "window": "hour", "atPercent": 100,
                                      "since": "2027-01-15T07:00:00Z"}], "replicas": {}}}
    resumed = stepped(killSwitch={"enabled": True, "thresholdPercent": 200, "acknowledge": "inc-1"})
    v1, ags = cycle(resumed, ags, 10.5, previous)
    assert not [a for a in v1.actions if isinstance(a, decision.RestoreReplicas)]
    assert v1.status.kill_switch is not None and not v1.status.kill_switch.engaged
    assert v1.status.steps is not None and v1.status.steps.replicas == {"bot": 2, "helper": 3}
    assert [e.agent for e in v1.events if "stays at zero" in e.message] == ["bot", "helper"]
    raised = stepped(limits=[{"window": "hour", "amountUSD": 100}],
                     killSwitch={"enabled": True, "thresholdPercent": 200, "acknowledge": "inc-1"})
    v2, ags = cycle(raised, ags, 10.5, v1.status.body())
    assert [(a.name, a.replicas) for a in ags] == [("bot", 2), ("helper", 3)]
