"""The incident recorder's plan: findings and actions of one evaluation -> incident records."""

from __future__ import annotations

from fleetwarden.core import decision, findings, incidents, timefmt
from fleetwarden.handlers import incidents as recorder

T0 = 1_795_000_000.0
BUDGET = {"metadata": {"name": "support", "namespace": "agents"}, "spec": {"killSwitch": {}}}


def _kill() -> findings.Finding:
    return findings.Finding(kind=findings.KILL_SWITCH, agent="bot", namespace="agents", time=T0,
                            action=findings.KILL, message="spend passed 150% of the hourly cap",
                            budget="support", evidence={"spend_usd": 30.0})


def _spike() -> findings.Finding:
    return findings.Finding(kind=findings.MODEL_UPDATE_SPIKE, agent="bot", namespace="agents", time=T0,
                            action=findings.ROLLBACK, message="cost per task x2.4 after the model change",
                            model="gpt-5", previous_model="gpt-4o", onset=T0 - 600)


def test_actions_attach_to_the_incidents_they_served() -> None:
    """A scale to zero goes to the kill incident; a model rollback to the incident it names."""
    kill, spike = _kill(), _spike()
    actions = [decision.ScaleToZero(agent="bot", replicas_to_remember=3, reason="kill"),
               decision.SetModel(agent="bot", model="gpt-4o", previous="gpt-5", reason="rollback",
                                 incident=findings.incident_id(spike))]
    records = recorder.plan(BUDGET, [kill, spike], actions, {}, now=T0 + 5)
    kill_rec, spike_rec = records[findings.incident_id(kill)], records[findings.incident_id(spike)]
    assert [a.action for a in kill_rec.actions] == ["kill"]
    assert "from 3 to 0" in kill_rec.actions[0].detail
    assert [a.action for a in spike_rec.actions] == ["rollback"]
    assert spike_rec.previous_model == "gpt-4o" and spike_rec.model == "gpt-5"


def test_the_same_evaluation_twice_records_nothing_new() -> None:
    """Refolds and restarts report the same findings again: the records do not change."""
    kill = _kill()
    actions = [decision.ScaleToZero(agent="bot", replicas_to_remember=3, reason="kill")]
    first = recorder.plan(BUDGET, [kill], actions, {}, now=T0 + 5)
    second = recorder.plan(BUDGET, [kill], actions, first, now=T0 + 65)
    assert second == first
    assert len(second) == 1


def test_acknowledging_the_kill_switch_resolves_its_incident() -> None:
    """spec.killSwitch.acknowledge = the incident id resolves that incident."""
    kill = _kill()
    first = recorder.plan(BUDGET, [kill], [], {}, now=T0 + 5)
    acked = {**BUDGET, "spec": {"killSwitch": {"acknowledge": findings.incident_id(kill)}}}
    after = recorder.plan(acked, [], [], first, now=T0 + 600)
    rec = after[findings.incident_id(kill)]
    assert rec.status == incidents.RESOLVED
    assert rec.resolved_at == timefmt.rfc3339(T0 + 600)


def test_read_records_keeps_broken_keys_aside() -> None:
    """A ConfigMap key that is not a record is reported, not dropped or overwritten."""
    rec = incidents.open_incident("inc-1", _kill())
    parsed, broken = recorder.read_records({"data": {"inc-1": rec.to_json(), "notes": "hello"}})
    assert parsed == {"inc-1": rec}
    assert broken == ["notes"]


def test_hooks_are_registered_once() -> None:
    """Importing the module registers the recorder and the notifier in hooks.on_findings."""
    from fleetwarden.handlers import hooks

    assert hooks.on_findings.count(recorder.record_incidents) == 1
    assert hooks.on_findings.count(recorder.notify_alertmanager) == 1
