"""Table tests for the operator's pure evaluator, one row per rule, with a fake clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fleetwarden.core import decision, evaluate, findings, spec, status
from fleetwarden.core.series import AgentMinute

NOW = 1_800_000_000.0  # the fake clock: a whole minute (2027-01-15T08:00:00Z)
NS = "shop"


def budget(**spec_fields: Any) -> spec.AgentBudget:
    doc: dict[str, Any] = {
        "limits": [{"window": "hour", "amountUSD": 10}, {"window": "day", "amountUSD": 100}],
    }
    doc.update(spec_fields)
    return spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": NS, "generation": 1},
                                           "spec": doc})


def agents(**replicas: int) -> list[decision.AgentDeployment]:
    return [decision.AgentDeployment(name, NS, {"team": "cx"}, n, model="gpt-4o-mini") for name, n in replicas.items()]


def flat_minutes(agent: str, cost: float = 0.01, n: int = 30, end: float = NOW) -> list[AgentMinute]:
    start = int(end // 60) * 60 - n * 60
    return [AgentMinute(agent, NS, start + 60 * i, inference_cost_usd=cost, llm_calls=4, tasks_completed=1,
                        tokens=2000, output_tokens=300, model="gpt-4o-mini") for i in range(n)]


def inp(b: spec.AgentBudget | None = None, ags: list[decision.AgentDeployment] | None = None, *,
        hour: float | None = 2.0, day: float | None = 20.0, month: float | None = 200.0,
        minutes: dict[str, list[AgentMinute]] | None | str = "flat", previous: dict[str, Any] | None = None,
        now: float = NOW, policies: list[spec.CostPolicy] | None = None) -> decision.EvaluationInput:
    ags = agents(bot=3, helper=2) if ags is None else ags
    if minutes == "flat":
        minutes = {a.name: flat_minutes(a.name, end=now) for a in ags}
    return decision.EvaluationInput(
        budget=b or budget(), agents=ags, minutes=minutes,  # type: ignore[arg-type]
        spend={spec.Window.hour: hour, spec.Window.day: day, spec.Window.month: month},
        now=now, previous=previous or {}, policies=policies or [], generation=1,
        metrics_reason=None if minutes is not None else "Prometheus unreachable: connection refused")


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def of(verdict: decision.Decision, kind: type) -> list[Any]:
    return [a for a in verdict.actions if isinstance(a, kind)]


# ---------------------------------------------------------------- status


def test_status_reports_spend_summary_and_ready_conditions() -> None:
    """Known data: spend per window, the limit closest to its cap, Ready and MetricsAvailable True."""
    d = evaluate.evaluate(inp(hour=4.0, day=80.0))
    s = d.status.body()
    assert s["spend"] == {"hour": 4.0, "day": 80.0, "month": 200.0}
    assert s["summary"] == {"window": "day", "spendUSD": 80.0, "capUSD": 100.0, "percentUsed": 80.0}
    assert s["state"] == "Warning"
    assert cond(s, "Ready")["status"] == "True"
    assert cond(s, "MetricsAvailable")["status"] == "True"
    assert cond(s, "BudgetExceeded")["status"] == "False"
    assert s["observedGeneration"] == 1
    assert s["lastEvaluated"] == "2027-01-15T08:00:00Z"
    assert s["models"] == [{"agent": "bot", "model": "gpt-4o-mini"}, {"agent": "helper", "model": "gpt-4o-mini"}]
    assert s["costPerTaskUSD"] == pytest.approx(0.01)
    assert s["burnRateUSDPerHour"] == pytest.approx(1.2)  # two agents at 0.01 USD a minute
    assert not d.destructive


@pytest.mark.parametrize(("hour", "state", "exceeded"), [
    (2.0, "Active", "False"),
    (8.5, "Warning", "False"),
    (12.0, "Exceeded", "True"),
])
def test_state_follows_spend_against_limits(hour: float, state: str, exceeded: str) -> None:
    """State is Active under the warning threshold, Warning past it, Exceeded past the cap."""
    s = evaluate.evaluate(inp(hour=hour)).status.body()
    assert s["state"] == state
    assert cond(s, "BudgetExceeded")["status"] == exceeded


def test_condition_transition_time_kept_until_status_changes() -> None:
    """lastTransitionTime stays while a condition's status holds and moves when it flips."""
    first = evaluate.evaluate(inp(hour=12.0))
    later = evaluate.evaluate(inp(hour=13.0, previous=first.status.body(), now=NOW + 120))
    assert cond(later.status.body(), "BudgetExceeded")["lastTransitionTime"] == "2027-01-15T08:00:00Z"
    back = evaluate.evaluate(inp(hour=2.0, previous=later.status.body(), now=NOW + 240))
    assert cond(back.status.body(), "BudgetExceeded")["status"] == "False"
    assert cond(back.status.body(), "BudgetExceeded")["lastTransitionTime"] == "2027-01-15T08:04:00Z"


def test_a_condition_as_it_was_is_kept_and_any_change_of_it_is_written() -> None:
    """A condition whose status, reason, message and generation are as before is the one read
    (nothing built again); a new message, reason or generation gives a new one, its transition
    time kept while its status holds."""
    first = evaluate.evaluate(inp(hour=12.0))
    previous = first.status.body()
    again = evaluate.evaluate(inp(hour=12.0, previous=previous, now=NOW + 60))
    assert again.status.body()["conditions"] == previous["conditions"]
    prev_typed, _ = status.read(previous)
    kept = {c.type: c for c in prev_typed.conditions or ()}
    now = NOW + 60
    same = status.set_condition(list(kept.values()), "BudgetExceeded", "True", kept["BudgetExceeded"].reason,
                                kept["BudgetExceeded"].message, now, 1)
    assert same is kept["BudgetExceeded"]
    for change in ({"message": "another message"}, {"reason": "Other"}, {"generation": 2}):
        args = {"reason": kept["BudgetExceeded"].reason, "message": kept["BudgetExceeded"].message, "generation": 1,
                **change}
        new = status.set_condition(list(kept.values()), "BudgetExceeded", "True", str(args["reason"]),
                                   str(args["message"]), now, args["generation"])  # type: ignore[arg-type]
        assert new is not kept["BudgetExceeded"] and new.last_transition_time == kept["BudgetExceeded"].last_transition_time
        assert (new.reason, new.message, new.observed_generation) == (args["reason"], args["message"], args["generation"])
    flipped = status.set_condition(list(kept.values()), "BudgetExceeded", "False", "UnderCap", "fine", now, 1)
    assert flipped.last_transition_time != kept["BudgetExceeded"].last_transition_time
    long = status.set_condition([], "Ready", "True", "Evaluated", "x" * 40_000, now, 1)
    assert len(long.message) == 32768
    assert status.set_condition([long], "Ready", "True", "Evaluated", "x" * 40_000, now, 1) is long


def test_a_lasting_budget_condition_is_notified_once() -> None:
    """budget_exceeded is one incident while it lasts: Notify on the first cycle only."""
    first = evaluate.evaluate(inp(hour=12.0))
    assert [n.finding.kind for n in of(first, decision.Notify)] == [findings.BUDGET_EXCEEDED]
    second = evaluate.evaluate(inp(hour=12.5, previous=first.status.body(), now=NOW + 60))
    assert of(second, decision.Notify) == []
    assert [f.kind for f in second.findings] == [findings.BUDGET_EXCEEDED]
    assert len(second.status.body()["incidents"]) == 1


def test_conditions_of_others_are_kept() -> None:
    """A condition the evaluator does not own (here a GitOps tool's) is carried over unchanged."""
    other = {"type": "Synced", "status": "True", "reason": "Waiting", "message": "1 pending",
             "lastTransitionTime": "2027-01-15T07:00:00Z"}
    s = evaluate.evaluate(inp(previous={"conditions": [other]})).status.body()
    assert other in s["conditions"]


# ---------------------------------------------------------------- unknown data


@pytest.mark.parametrize("unknown", ["minutes", "hour", "day"])
def test_unknown_data_means_no_destructive_action(unknown: str) -> None:
    """Spend far past the kill threshold but data unknown: MetricsAvailable=False, Unknown, nothing scaled."""
    kwargs: dict[str, Any] = {"hour": 100.0, "day": 500.0}
    if unknown == "minutes":
        kwargs["minutes"] = None
    else:
        kwargs[unknown] = None
    d = evaluate.evaluate(inp(**kwargs))
    assert d.actions == ()
    assert d.status.body()["state"] == "Unknown"
    metrics = cond(d.status.body(), "MetricsAvailable")
    assert metrics["status"] == "False"
    assert metrics["reason"] == "MetricsUnavailable"
    assert metrics["message"]
    assert cond(d.status.body(), "Ready")["status"] == "False"
    assert [e.reason for e in d.events] == ["MetricsUnavailable"]
    if unknown != "minutes":
        assert unknown not in d.status.body()["spend"]


def test_unknown_reason_is_the_adapters_reason() -> None:
    """The reason given with unknown minutes is the condition's message."""
    d = evaluate.evaluate(inp(minutes=None))
    assert cond(d.status.body(), "MetricsAvailable")["message"] == "Prometheus unreachable: connection refused"


def test_metrics_unavailable_event_only_on_transition() -> None:
    """The MetricsUnavailable event fires when data goes away, not on every unknown cycle."""
    first = evaluate.evaluate(inp(minutes=None))
    second = evaluate.evaluate(inp(minutes=None, previous=first.status.body(), now=NOW + 15))
    assert [e.reason for e in second.events] == []
    back = evaluate.evaluate(inp(previous=second.status.body(), now=NOW + 30))
    assert [e.reason for e in back.events] == ["MetricsAvailable"]


# ---------------------------------------------------------------- kill switch


def killed(**kw: Any) -> decision.Decision:
    return evaluate.evaluate(inp(hour=16.0, **kw))


def test_kill_switch_scales_every_selected_agent_to_zero_and_remembers_replicas() -> None:
    """Spend past 150% of the hourly cap: ScaleToZero for each agent, replicas recorded, Killed."""
    d = killed()
    assert sorted((a.agent, a.replicas_to_remember, a.reason) for a in of(d, decision.ScaleToZero)) == [
        ("bot", 3, "kill"), ("helper", 2, "kill")]
    ks = d.status.body()["killSwitch"]
    assert ks["engaged"] is True
    assert ks["replicas"] == {"bot": 3, "helper": 2}
    assert ks["incident"].startswith("inc-")
    assert ks["engagedAt"] == "2027-01-15T08:00:00Z"
    assert d.status.body()["state"] == "Killed"
    assert cond(d.status.body(), "KillSwitchEngaged")["status"] == "True"
    assert any(e.type == "Warning" and e.reason == "KillSwitchEngaged" and ks["incident"] in e.message
               for e in d.events)
    assert [n.finding.kind for n in of(d, decision.Notify)] == [findings.BUDGET_EXCEEDED, findings.KILL_SWITCH]


def test_kill_switch_alert_only_scales_nothing() -> None:
    """killSwitch.action AlertOnly: the finding is reported, no agent is scaled."""
    d = killed(b=budget(killSwitch={"action": "AlertOnly"}))
    assert of(d, decision.ScaleToZero) == []
    assert findings.KILL_SWITCH in [n.finding.kind for n in of(d, decision.Notify)]


def test_below_kill_threshold_nothing_is_scaled() -> None:
    """Spend at 140% of the cap (threshold 150%): exceeded, not killed."""
    d = evaluate.evaluate(inp(hour=14.0))
    assert of(d, decision.ScaleToZero) == []
    assert d.status.body()["state"] == "Exceeded"


def test_while_killed_an_agent_scaled_back_up_is_scaled_down_again() -> None:
    """The operator keeps the state it decided: a scale-up while Killed is undone; remembered count kept."""
    first = killed()
    ags = [dataclasses.replace(a, replicas=0) for a in agents(bot=3, helper=2)]
    ags[0] = dataclasses.replace(ags[0], replicas=5)  # Argo CD self-heal put 5 back
    d = evaluate.evaluate(inp(ags=ags, hour=16.0, previous=first.status.body(), now=NOW + 15))
    assert [(a.agent, a.replicas_to_remember, a.reason) for a in of(d, decision.ScaleToZero)] == [
        ("bot", 3, "killed-again")]
    assert d.status.body()["killSwitch"]["replicas"] == {"bot": 3, "helper": 2}
    assert d.status.body()["killSwitch"]["incident"] == first.status.body()["killSwitch"]["incident"]
    assert of(d, decision.Notify) == []


def test_while_killed_scale_ups_are_undone_even_with_unknown_metrics() -> None:
    """Holding the kill does not depend on metrics: unknown data still scales a revived agent down."""
    first = killed()
    ags = agents(bot=2, helper=0)
    d = evaluate.evaluate(inp(ags=ags, minutes=None, previous=first.status.body(), now=NOW + 15))
    assert [(a.agent, a.replicas_to_remember) for a in of(d, decision.ScaleToZero)] == [("bot", 3)]
    assert d.status.body()["state"] == "Killed"


def test_a_wrong_acknowledgement_does_not_resume() -> None:
    """spec.killSwitch.acknowledge set to another incident id keeps the agents stopped."""
    first = killed()
    b = budget(killSwitch={"acknowledge": "inc-0000000000"})
    d = evaluate.evaluate(inp(b, agents(bot=0, helper=0), hour=16.0, previous=first.status.body(), now=NOW + 15))
    assert of(d, decision.RestoreReplicas) == []
    assert d.status.body()["killSwitch"]["engaged"] is True


def test_acknowledging_the_incident_restores_exact_replicas() -> None:
    """acknowledge == status.killSwitch.incident: RestoreReplicas to the recorded counts, resumedAt set."""
    first = killed()
    incident = first.status.body()["killSwitch"]["incident"]
    b = budget(killSwitch={"acknowledge": incident})
    d = evaluate.evaluate(inp(b, agents(bot=0, helper=0), hour=16.0, previous=first.status.body(), now=NOW + 300))
    assert sorted((a.agent, a.replicas) for a in of(d, decision.RestoreReplicas)) == [("bot", 3), ("helper", 2)]
    assert d.status.body()["killSwitch"]["engaged"] is False
    assert d.status.body()["killSwitch"]["resumedAt"] == "2027-01-15T08:05:00Z"
    assert cond(d.status.body(), "KillSwitchEngaged")["status"] == "False"
    assert of(d, decision.ScaleToZero) == []
    assert any(e.reason == "Resumed" for e in d.events)


def test_spend_before_the_resume_no_longer_counts_for_the_kill_rule() -> None:
    """After a resume the same hourly spend does not kill again; only spend since resumedAt counts."""
    first = killed()
    incident = first.status.body()["killSwitch"]["incident"]
    b = budget(killSwitch={"acknowledge": incident})
    resumed = evaluate.evaluate(inp(b, agents(bot=0, helper=0), hour=16.0, previous=first.status.body(), now=NOW + 300))
    # agents were stopped until the resume; after it they spend 0.01 USD a minute each
    later = NOW + 900
    ms = {a: [m for m in flat_minutes(a, end=later) if m.minute >= NOW + 300] for a in ("bot", "helper")}
    d = evaluate.evaluate(inp(b, agents(bot=3, helper=2), hour=16.2, minutes=ms, previous=resumed.status.body(), now=later))
    assert of(d, decision.ScaleToZero) == []
    assert d.status.body()["state"] == "Exceeded"
    # spend since the resume passes 150% of the cap: a new kill with a new incident id
    hot = {a: [dataclasses.replace(m, inference_cost_usd=1.0) for m in ms[a]] for a in ms}
    again = evaluate.evaluate(inp(b, agents(bot=3, helper=2), hour=36.0, minutes=hot, previous=resumed.status.body(),
                                  now=later))
    assert sorted(a.agent for a in of(again, decision.ScaleToZero)) == ["bot", "helper"]
    assert again.status.body()["killSwitch"]["incident"] != incident


def test_after_a_resume_fresh_spend_kills_again_at_once() -> None:
    """Spend since the resume is the window's spend less its spend at the resume: a new breach,
    even in the same minute as the acknowledged kill, kills again with a new incident id."""
    first = killed()
    incident = first.status.body()["killSwitch"]["incident"]
    b = budget(killSwitch={"acknowledge": incident})
    resumed = evaluate.evaluate(inp(b, agents(bot=0, helper=0), hour=16.0, previous=first.status.body(), now=NOW + 20))
    assert resumed.status.body()["killSwitch"]["spendAtResumeUSD"] == 16.0
    quiet = evaluate.evaluate(inp(b, agents(bot=3, helper=2), hour=17.0, previous=resumed.status.body(), now=NOW + 30))
    assert of(quiet, decision.ScaleToZero) == []
    hot = evaluate.evaluate(inp(b, agents(bot=3, helper=2), hour=32.0, previous=resumed.status.body(), now=NOW + 40))
    assert sorted(a.agent for a in of(hot, decision.ScaleToZero)) == ["bot", "helper"]
    assert hot.status.body()["killSwitch"]["incident"] != incident


def test_runaway_loop_with_action_kill_stops_only_that_agent() -> None:
    """A detector's kill stops the looping agent, not the whole budget."""
    start = int(NOW) - 30 * 60
    loop = [AgentMinute("bot", NS, start + 60 * i, inference_cost_usd=0.01, tokens=3000, llm_calls=3,
                        tasks_completed=1, model="gpt-4o-mini") for i in range(24)]
    for i, tokens in enumerate((6000, 9000, 14000, 21000, 32000, 48000)):
        loop.append(AgentMinute("bot", NS, start + 60 * (24 + i), inference_cost_usd=0.05, tokens=tokens,
                                llm_calls=10, model="gpt-4o-mini"))
    ms = {"bot": loop, "helper": flat_minutes("helper")}
    d = evaluate.evaluate(inp(minutes=ms))
    assert [f.kind for f in d.findings if f.kind == findings.RUNAWAY_LOOP] == [findings.RUNAWAY_LOOP]
    assert [(a.agent, a.replicas_to_remember) for a in of(d, decision.ScaleToZero)] == [("bot", 3)]
    assert d.status.body()["killSwitch"]["replicas"] == {"bot": 3}
    # while killed, the other agent is left alone
    held = evaluate.evaluate(inp(ags=agents(bot=0, helper=2), minutes=ms, previous=d.status.body(), now=NOW + 15))
    assert of(held, decision.ScaleToZero) == []


# ---------------------------------------------------------------- suspend


def test_suspend_scales_to_zero_and_unsuspend_restores() -> None:
    """spec.suspend true: every agent to zero (Suspended); false again: the remembered replicas come back."""
    d = evaluate.evaluate(inp(budget(suspend=True)))
    assert sorted((a.agent, a.replicas_to_remember, a.reason) for a in of(d, decision.ScaleToZero)) == [
        ("bot", 3, "suspend"), ("helper", 2, "suspend")]
    assert d.status.body()["state"] == "Suspended"
    stopped = [dataclasses.replace(a, replicas=0, replicas_before=n)
               for a, n in zip(agents(bot=3, helper=2), (3, 2), strict=True)]
    still = evaluate.evaluate(inp(budget(suspend=True), stopped, previous=d.status.body(), now=NOW + 15))
    assert still.actions == ()
    back = evaluate.evaluate(inp(budget(), stopped, previous=still.status.body(), now=NOW + 30))
    assert sorted((a.agent, a.replicas) for a in of(back, decision.RestoreReplicas)) == [("bot", 3), ("helper", 2)]


def test_suspend_works_without_metrics() -> None:
    """Suspending is a person's decision, not a metric's: it acts even when data is unknown."""
    d = evaluate.evaluate(inp(budget(suspend=True), minutes=None))
    assert len(of(d, decision.ScaleToZero)) == 2


# ---------------------------------------------------------------- model


SPIKE_POLICY = spec.CostPolicy.model_validate({
    "metadata": {"name": "anomalies", "namespace": NS},
    "spec": {"anomalies": {"modelUpdateSpike": {"minTasks": 5, "baselineTasks": 20, "ratio": 1.8}}},
})


def spike_minutes(agent: str = "bot") -> list[AgentMinute]:
    """30 minutes on gpt-4o-mini at 0.01 USD a task, then 10 on gpt-4o at 0.03 (3x)."""
    start = int(NOW) - 40 * 60
    out = []
    for i in range(40):
        new = i >= 30
        out.append(AgentMinute(agent, NS, start + 60 * i, inference_cost_usd=0.06 if new else 0.02,
                               llm_calls=4, tasks_completed=2, tokens=2000,
                               model="gpt-4o" if new else "gpt-4o-mini"))
    return out


def spiked_agents() -> list[decision.AgentDeployment]:
    return [decision.AgentDeployment("bot", NS, {"team": "cx"}, 3, model="gpt-4o")]


def test_model_update_spike_rolls_back_to_the_previous_model() -> None:
    """Cost per task tripled after gpt-4o-mini -> gpt-4o: SetModel(gpt-4o-mini), recorded with before/after."""
    d = evaluate.evaluate(inp(ags=spiked_agents(), minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY]))
    sets = of(d, decision.SetModel)
    assert [(s.agent, s.model, s.previous, s.reason) for s in sets] == [("bot", "gpt-4o-mini", "gpt-4o", "rollback")]
    [rb] = d.status.body()["model"]["rollbacks"]
    assert (rb["agent"], rb["from"], rb["to"]) == ("bot", "gpt-4o", "gpt-4o-mini")
    assert rb["incident"] == sets[0].incident
    assert cond(d.status.body(), "AnomalyDetected")["status"] == "True"
    assert any(e.reason == "ModelRolledBack" for e in d.events)


def test_a_rollback_is_made_once_and_held_against_drift() -> None:
    """The refolded spike does not roll back twice; a GitOps revert to the spiking model is set back."""
    first = evaluate.evaluate(inp(ags=spiked_agents(), minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY]))
    rolled = [decision.AgentDeployment("bot", NS, {"team": "cx"}, 3, model="gpt-4o-mini")]
    second = evaluate.evaluate(inp(ags=rolled, minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY],
                                   previous=first.status.body(), now=NOW + 15))
    assert of(second, decision.SetModel) == []
    assert len(second.status.body()["model"]["rollbacks"]) == 1
    drifted = evaluate.evaluate(inp(ags=spiked_agents(), minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY],
                                    previous=second.status.body(), now=NOW + 30))
    assert [(s.model, s.reason) for s in of(drifted, decision.SetModel)] == [("gpt-4o-mini", "rollback-drift")]


def test_no_rollback_when_rollback_on_spike_is_off() -> None:
    """spec.model.rollbackOnSpike false: the spike is reported, the model is left alone."""
    d = evaluate.evaluate(inp(budget(model={"rollbackOnSpike": False}), spiked_agents(),
                              minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY]))
    assert of(d, decision.SetModel) == []
    assert [n.finding.kind for n in of(d, decision.Notify)] == [findings.MODEL_UPDATE_SPIKE]


def test_no_rollback_on_unknown_data() -> None:
    """No automatic rollback when the minutes are unknown."""
    d = evaluate.evaluate(inp(ags=spiked_agents(), minutes=None, policies=[SPIKE_POLICY]))
    assert of(d, decision.SetModel) == []


def test_desired_model_wins_over_an_earlier_rollback() -> None:
    """A person sets spec.model.desired to the new model: it is applied (roll forward) and held."""
    first = evaluate.evaluate(inp(ags=spiked_agents(), minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY]))
    rolled = [decision.AgentDeployment("bot", NS, {"team": "cx"}, 3, model="gpt-4o-mini")]
    b = budget(model={"desired": "gpt-4o"})
    d = evaluate.evaluate(inp(b, rolled, minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY],
                              previous=first.status.body(), now=NOW + 60))
    assert [(s.agent, s.model, s.previous, s.reason) for s in of(d, decision.SetModel)] == [
        ("bot", "gpt-4o", "gpt-4o-mini", "desired")]
    assert d.status.body()["model"]["specDesired"] == "gpt-4o"
    assert d.status.body()["model"]["rollbacks"][-1]["reason"] == "spec.model.desired"
    # on gpt-4o now, with the spike still in the lookback: no automatic rollback against the person
    on_new = evaluate.evaluate(inp(b, spiked_agents(), minutes={"bot": spike_minutes()}, policies=[SPIKE_POLICY],
                                   previous=d.status.body(), now=NOW + 75))
    assert of(on_new, decision.SetModel) == []
    # clearing spec.model.desired later leaves the Deployment's model alone
    cleared = evaluate.evaluate(inp(budget(), spiked_agents(), minutes={"bot": spike_minutes()},
                                    policies=[SPIKE_POLICY], previous=on_new.status.body(), now=NOW + 90))
    assert of(cleared, decision.SetModel) == []


def test_desired_model_is_applied_without_metrics() -> None:
    """spec.model.desired is a person's decision: applied even when data is unknown."""
    d = evaluate.evaluate(inp(budget(model={"desired": "claude-sonnet-4"}), minutes=None))
    assert sorted((s.agent, s.model) for s in of(d, decision.SetModel)) == [
        ("bot", "claude-sonnet-4"), ("helper", "claude-sonnet-4")]


# ---------------------------------------------------------------- anomalies and policies


def explosion_minutes() -> list[AgentMinute]:
    start = int(NOW) - 30 * 60
    out = []
    for i in range(30):
        calls = 150.0 if i >= 27 else 3.0
        out.append(AgentMinute("bot", NS, start + 60 * i, inference_cost_usd=0.01, llm_calls=10,
                               tasks_completed=2, tool_calls={"crm.search": calls},
                               tool_costs={"crm.search": calls * 0.001}, model="gpt-4o-mini"))
    return out


def test_tool_call_explosion_sets_anomaly_detected_and_posts_an_event() -> None:
    """Calls to one tool jump 50x: AnomalyDetected=True, a ToolCallExplosion event, a Notify, no scaling."""
    policy = spec.CostPolicy.model_validate({"metadata": {"name": "p", "namespace": NS}, "spec": {
        "anomalies": {"toolCallExplosion": {"baselineMinutes": 20, "windowMinutes": 3}}}})
    d = evaluate.evaluate(inp(ags=agents(bot=1), minutes={"bot": explosion_minutes()}, policies=[policy]))
    c = cond(d.status.body(), "AnomalyDetected")
    assert (c["status"], c["reason"]) == ("True", "ToolCallExplosion")
    assert any(e.reason == "ToolCallExplosion" and e.agent == "bot" for e in d.events)
    assert [n.finding.tool for n in of(d, decision.Notify)] == ["crm.search"]
    assert of(d, decision.ScaleToZero) == []
    assert d.status.body()["topTools"][0]["name"] == "crm.search"


def test_rate_limit_is_one_finding_per_episode() -> None:
    """Tool calls over the policy's per-minute limit for 3 minutes: one rate_limit_exceeded finding."""
    policy = spec.CostPolicy.model_validate({"metadata": {"name": "rates", "namespace": NS}, "spec": {
        "rateLimits": {"perTool": {"crm.search": 100}}, "anomalies": {"toolCallExplosion": {"enabled": False}}}})
    d = evaluate.evaluate(inp(ags=agents(bot=1), minutes={"bot": explosion_minutes()}, policies=[policy]))
    rate = [f for f in d.findings if f.kind == findings.RATE_LIMIT_EXCEEDED]
    assert [(f.tool, f.policy) for f in rate] == [("crm.search", "rates")]


def test_policies_whose_selector_does_not_match_do_not_apply() -> None:
    """A CostPolicy that would turn the spike detector off but selects other agents changes nothing."""
    policy = spec.CostPolicy.model_validate({"metadata": {"name": "p", "namespace": NS}, "spec": {
        "selector": {"matchLabels": {"team": "other"}},
        "anomalies": {"modelUpdateSpike": {"enabled": False}}}})
    d = evaluate.evaluate(inp(ags=spiked_agents(), minutes={"bot": spike_minutes()}, policies=[policy]))
    assert [s.model for s in of(d, decision.SetModel)] == ["gpt-4o-mini"]
    matching = policy.model_copy(update={"spec": policy.spec.model_copy(update={"selector": spec.LabelSelector()})})
    d = evaluate.evaluate(inp(ags=spiked_agents(), minutes={"bot": spike_minutes()}, policies=[matching]))
    assert of(d, decision.SetModel) == []
