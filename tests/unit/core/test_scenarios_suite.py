"""The labelled scenario suite: every injected anomaly is found, on time, once; benign fleets stay silent.

Events from ``fleetwarden.core.scenarios`` go through the real bucketing
(``core/buckets.py``) and the real ``DetectorSet``, exactly as replay runs them.
"""

from __future__ import annotations

import pytest

from fleetwarden.core import buckets, detectors, events, findings, pricing, scenarios, series, spec

PARAMS = spec.AnomalyParams()
MINUTE = 60
# how long after the onset each kind must be found (a model spike: see _spike_deadline)
DEADLINE = {"runaway_loop": 5 * MINUTE, "tool_call_explosion": 5 * MINUTE, "model_update_spike": 3 * 3600}
ONSET_SLACK = 2 * MINUTE

_PRICES = pricing.PriceTable()


def detect(evs: list[dict], params: spec.AnomalyParams = PARAMS) -> list[findings.Finding]:
    """Events -> buckets -> one DetectorSet per agent -> findings."""
    bucketer = buckets.Bucketer(_PRICES)
    sets: dict[tuple[str, str], detectors.DetectorSet] = {}
    out: list[findings.Finding] = []

    def feed(minutes: list[series.AgentMinute]) -> None:
        for m in minutes:
            key = (m.namespace, m.agent)
            if key not in sets:
                sets[key] = detectors.DetectorSet(params, m.agent, m.namespace)
            out.extend(sets[key].step(m))

    for ev in evs:
        bucketer.add(events.from_obj(ev))
        feed(bucketer.close())
    feed(bucketer.finish())
    return out


def _spike_deadline(evs: list[dict], label: scenarios.Label, min_tasks: int) -> float:
    """The end of the minute in which the min_tasks-th task of the agent ended after the change."""
    ended = [e["time"] for e in evs
             if e["type"] == "task" and e["agent"] == label.agent and e["time"] >= label.onset]
    assert len(ended) >= min_tasks, "the scenario must leave enough tasks after the change"
    return series.minute_of(ended[min_tasks - 1]) + MINUTE


CASES = [(name, seed, agents)
         for name in scenarios.SCENARIOS if name not in ("mixed", "daily_cycle")
         for seed, agents in ((0, 1), (1, 2), (2, 4), (3, 3))]
CASES += [("mixed", seed, 6) for seed in range(4)]
CASES += [("daily_cycle", 0, 2)]


@pytest.mark.parametrize(("name", "seed", "agents"), CASES)
def test_scenario_findings_match_labels(name: str, seed: int, agents: int) -> None:
    """Each injected anomaly is found once, with the right kind/agent/tool/model, in time; nothing else is found."""
    evs, labels = scenarios.build(name, seed, agents=agents)
    evs = list(evs)
    found = detect(evs)
    deadlines = dict(DEADLINE)
    result = scenarios.match(labels, found, max_delay_s=deadlines)
    assert not result.missed, f"missed: {result.missed}; found: {[f.to_dict() for f in found]}"
    assert not result.extra, f"false or repeated findings: {[f.to_dict() for f in result.extra]}"
    for label, f in result.found:
        assert abs(f.onset - label.onset) <= ONSET_SLACK
        if label.kind == "model_update_spike":
            assert f.time <= _spike_deadline(evs, label, PARAMS.model_update_spike.min_tasks)
            assert (f.model, f.previous_model) == (label.model, label.previous_model)
            assert f.action == "rollback"
        elif label.kind == "tool_call_explosion":
            assert f.tool == label.tool
            assert f.action == "alert"
        else:
            assert f.action == "kill"
    if name in scenarios.BENIGN:
        assert labels == [] and found == []


def test_every_scenario_is_deterministic() -> None:
    """The same name, seed and size give the same events and labels."""
    for name in scenarios.SCENARIOS:
        a, la = scenarios.build(name, 5, agents=2, minutes=120)
        b, lb = scenarios.build(name, 5, agents=2, minutes=120)
        assert list(a) == list(b) and la == lb


def test_scenario_events_are_valid_and_in_time_order() -> None:
    """Every generated event passes the usage-event contract and times never go back."""
    evs, _ = scenarios.build("mixed", 11, agents=5, minutes=150)
    last = None
    count = 0
    for ev in evs:
        assert events.is_valid(ev), ev
        assert last is None or ev["time"] >= last
        last = ev["time"]
        count += 1
    assert count > 1000


def test_anomaly_scenarios_label_the_first_agent() -> None:
    """An anomaly scenario labels exactly one anomaly, on its first agent; benign ones label none."""
    for name in scenarios.SCENARIOS:
        plans, labels = scenarios.plan(name, 3, agents=3)
        if name in scenarios.ANOMALIES:
            assert [lb.agent for lb in labels] == [plans[0].name]
            assert labels[0].kind == name
        elif name in scenarios.BENIGN:
            assert labels == []


def test_disabled_detectors_find_nothing() -> None:
    """With every detector disabled, an anomalous fleet raises nothing."""
    off = spec.AnomalyParams.model_validate({
        "modelUpdateSpike": {"enabled": False}, "runawayLoop": {"enabled": False},
        "toolCallExplosion": {"enabled": False}, "costShift": {"enabled": False}})
    for name in scenarios.ANOMALIES:
        evs, labels = scenarios.build(name, 1, agents=1)
        assert labels
        assert detect(list(evs), off) == []


def test_unknown_scenario_is_refused() -> None:
    """Asking for a scenario that does not exist names the choices."""
    with pytest.raises(ValueError, match="unknown scenario"):
        scenarios.build("nope", 1)
