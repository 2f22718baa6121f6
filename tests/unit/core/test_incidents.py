"""Incident records: open, merge (deterministic, idempotent), bound, annotate, postmortem."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from fleetwarden.core import incidents, timefmt

T0 = 1_795_000_000.0  # 2026-11-18T...Z, a fixed clock


def _finding(kind: str = "runaway_loop", *, time: float = T0, onset: float | None = T0 - 300,
             message: str = "tokens accelerate without output", action: str = "kill",
             evidence: dict | None = None, **extra: object) -> dict:
    f = {
        "kind": kind, "agent": "support-bot", "namespace": "agents", "workflow": "triage",
        "time": timefmt.rfc3339(time), "action": action, "budget": "support",
        "message": message, "evidence": evidence if evidence is not None else {"tokens_per_minute": 9000},
    }
    if onset is not None:
        f["onset"] = timefmt.rfc3339(onset)
    f.update(extra)
    return f


def test_open_incident_takes_identity_and_times_from_the_finding() -> None:
    """A new incident carries the finding's agent, kind, onset as opened, time as detected."""
    inc = incidents.open_incident("inc-0000000001", _finding())
    assert (inc.id, inc.kind, inc.agent, inc.namespace, inc.workflow) == (
        "inc-0000000001", "runaway_loop", "support-bot", "agents", "triage")
    assert inc.opened == timefmt.rfc3339(T0 - 300)
    assert inc.detected == timefmt.rfc3339(T0)
    assert inc.status == incidents.OPEN
    assert [t.time for t in inc.timeline] == [timefmt.rfc3339(T0 - 300), timefmt.rfc3339(T0)]


def test_merging_the_same_finding_again_changes_nothing() -> None:
    """Re-reported findings (the operator refolds every cycle) never duplicate entries."""
    f = _finding()
    acts = [incidents.ActionTaken(timefmt.rfc3339(T0 + 5), "kill", "scaled support-bot 3 -> 0")]
    inc = incidents.open_incident("inc-1", f, acts)
    again = incidents.merge(inc, f, acts)
    assert again == inc
    assert again.findings == 1
    assert len(again.actions) == 1


def test_merge_is_independent_of_arrival_order() -> None:
    """Folding the same findings in any order gives the same record."""
    fs = [
        _finding(time=T0, message="first", evidence={"tokens_per_minute": 6000}),
        _finding(time=T0 + 120, onset=T0 - 600, message="worse", evidence={"tokens_per_minute": 12000}),
        _finding(time=T0 + 60, onset=None, message="middle", evidence={"tokens_per_minute": 8000}),
    ]
    results = set()
    for order in itertools.permutations(fs):
        records = incidents.fold({}, [("inc-1", f, ()) for f in order])
        results.add(records["inc-1"].to_json())
    assert len(results) == 1
    merged = incidents.Incident.from_dict(json.loads(results.pop()))
    assert merged.message == "worse"
    assert merged.evidence == {"tokens_per_minute": 12000}
    assert merged.opened == timefmt.rfc3339(T0 - 600)
    assert merged.detected == timefmt.rfc3339(T0)
    assert merged.last_seen == timefmt.rfc3339(T0 + 120)
    assert merged.findings == 3


def test_record_round_trips_through_json() -> None:
    """to_dict/from_dict keep every field (the ConfigMap stores JSON)."""
    inc = incidents.open_incident(
        "inc-2", _finding("model_update_spike", action="rollback", model="gpt-5", previous_model="gpt-4o"),
        [incidents.ActionTaken(timefmt.rfc3339(T0), "rollback", "gpt-5 -> gpt-4o")])
    inc = incidents.resolve(inc, T0 + 900, "rolled back")
    assert incidents.Incident.from_dict(json.loads(inc.to_json())) == inc


def test_resolve_sets_status_once() -> None:
    """Resolving twice keeps the first resolution time."""
    inc = incidents.resolve(incidents.open_incident("inc-3", _finding()), T0 + 60, "acknowledged")
    later = incidents.resolve(inc, T0 + 600, "again")
    assert later.status == incidents.RESOLVED
    assert later.resolved_at == timefmt.rfc3339(T0 + 60)


def test_bound_keeps_open_and_newest_records() -> None:
    """Past the limit, resolved old incidents go first."""
    records = {}
    for i in range(5):
        inc = incidents.open_incident(f"inc-{i}", _finding(time=T0 + i * 60))
        if i < 3:
            inc = incidents.resolve(inc, T0 + i * 60 + 1, "done")
        records[inc.id] = inc
    kept = incidents.bound(records, limit=3)
    assert sorted(kept) == ["inc-2", "inc-3", "inc-4"]


def test_annotation_is_bounded_and_merges_by_id() -> None:
    """The annotation keeps the newest entries, one per id, merged with what was there."""
    old = incidents.annotation_value([incidents.open_incident("inc-a", _finding(time=T0))])
    new = [incidents.open_incident(f"inc-{i}", _finding(time=T0 + 60 * (i + 1))) for i in range(3)]
    value = json.loads(incidents.annotation_value(new + [new[0]], existing=old, limit=3))
    assert [e["id"] for e in value] == ["inc-0", "inc-1", "inc-2"]
    assert set(value[0]) == {"id", "kind", "time", "status", "summary"}


@pytest.mark.parametrize("evidence, expected", [
    ({"spend_usd": 31.5}, 31.5),
    ({"cost_usd": 2}, 2.0),
    ({"tokens_per_minute": 9000}, None),
    ({"spend_usd": True}, None),
])
def test_spend_comes_from_evidence_or_is_unknown(evidence: dict, expected: float | None) -> None:
    """Impact spend is read from the evidence; without a figure it is None, never 0."""
    assert incidents.spend_usd(incidents.open_incident("inc-s", _finding(evidence=evidence))) == expected


BLAME_WORDS = re.compile(r"\b(blame|fault|negligen\w*|careless\w*|mistake|human error|should have|"
                         r"failed to|responsible for|culprit|incompeten\w*)\b", re.IGNORECASE)


@pytest.mark.parametrize("kind", sorted(incidents.KIND_TITLES))
def test_postmortem_has_every_section_and_no_blame(kind: str) -> None:
    """The draft has summary, impact, timeline, detection, response, went-well, improve, action items."""
    inc = incidents.open_incident(
        "inc-pm", _finding(kind, evidence={"spend_usd": 42.0}, tool="crm.search"),
        [incidents.ActionTaken(timefmt.rfc3339(T0 + 5), "kill", "scaled to 0")])
    text = incidents.render_postmortem(inc, now=T0 + 3600)
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings == ["Summary", "Impact", "Timeline (UTC)", "Detection", "Response and actions taken",
                        "What went well", "What could be improved", "Action items"]
    assert "$42.00" in text
    assert "1 h 5 min" in text  # onset T0-300 to now T0+3600
    assert "inc-pm" in text
    assert "- [ ] " in text
    assert not BLAME_WORDS.search(text), BLAME_WORDS.search(text)


def test_postmortem_says_unknown_spend_and_resolution() -> None:
    """Unknown spend is said to be unknown; a resolved incident's duration ends at resolution."""
    inc = incidents.resolve(incidents.open_incident("inc-u", _finding(evidence={})), T0 + 1500, "ok")
    text = incidents.render_postmortem(inc, now=T0 + 99999)
    assert "Spend above baseline and spend prevented: unknown" in text
    assert "$0" not in text
    assert "30 min" in text
    assert "(no evidence recorded)" in text


def test_postmortem_shows_the_cost_impact() -> None:
    """With the impact read from the spend series, the draft shows spend above baseline and prevented."""
    from fleetwarden.core import digest

    inc = incidents.open_incident("inc-i", _finding(evidence={}))
    impact = digest.CostImpact(12.345, 310.0, 1.5, 40.0, "kill stopped the agent")
    text = incidents.render_postmortem(inc, now=T0 + 600, impact=impact)
    assert "- Spend above baseline (onset to resolution): $12.35 (baseline $1.50/h)" in text
    assert "- Spend prevented: $310.00 (burn $40.00/h at the action; kill stopped the agent)" in text


@pytest.mark.parametrize(("value", "shown"), [
    (45, "`outcomes_after`: 45\n"),
    (45.0, "`outcomes_after`: 45\n"),
    (44.7256, "`outcomes_after`: 45 (rounded from 44.73"),
])
def test_postmortem_evidence_counts_are_whole_numbers(value, shown) -> None:
    """Outcome and task counts show as whole numbers, a pro-rated one rounded with its origin stated."""
    inc = incidents.open_incident("inc-c", _finding(evidence={"outcomes_after": value, "ratio": 2.5}))
    text = incidents.render_postmortem(inc, now=T0 + 600)
    assert shown in text + "\n"
    assert "`ratio`: 2.5" in text


# ---------------------------------------------------------------- the model change before an incident

SEEN = (incidents.ModelChange("bot", "shop", T0 - 600, "gpt-4o", "gpt-4o-mini"),
        incidents.ModelChange("bot", "shop", T0 + 600, "o1", "gpt-4o"),
        incidents.ModelChange("bot", "other", T0 - 60, "o3", "gpt-4o"),
        incidents.ModelChange("helper", "shop", T0 - 60, "o3", "gpt-4o"))


@pytest.mark.parametrize(("agent", "at", "expected"), [
    ("bot", T0, SEEN[0]),  # the latest at or before; a later one does not count
    ("bot", T0 - 600, SEEN[0]),  # at the same second counts
    ("bot", T0 - 601, None),
    ("bot", T0 + 600, SEEN[1]),
    ("helper", T0, SEEN[3]),  # per agent and namespace
    ("nobody", T0, None),
])
def test_model_change_before(agent: str, at: float, expected: incidents.ModelChange | None) -> None:
    """The agent's latest model change at or before a time."""
    assert incidents.model_change_before(SEEN, "shop", agent, at) == expected


@pytest.mark.parametrize(("named", "previous", "opened", "expected"), [
    (None, None, None, SEEN[0]),  # the incident names no model: the change seen
    ("gpt-4o", "x", T0 - 300, SEEN[0]),  # it names the model of the change seen: that change
    ("o1", "gpt-4o", T0 - 300, incidents.ModelChange("bot", "shop", T0 - 300, "o1", "gpt-4o")),  # not seen in time
    ("o1", None, None, incidents.ModelChange("bot", "shop", T0, "o1", None)),  # opened defaults to `at`
])
def test_incident_model_change(named: str | None, previous: str | None, opened: float | None,
                               expected: incidents.ModelChange) -> None:
    """An incident's model change: the one seen, unless the incident names a model that change is not to."""
    got = incidents.incident_model_change(SEEN, "shop", "bot", T0, named=named, previous=previous, opened=opened)
    assert got == expected


def test_incident_model_change_with_nothing_seen() -> None:
    """With no change seen, an incident naming no model has none; one naming a model gets its own."""
    assert incidents.incident_model_change((), "shop", "bot", T0) is None
    assert incidents.incident_model_change((), "shop", "bot", T0, named="o1", previous="o3") == \
        incidents.ModelChange("bot", "shop", T0, "o1", "o3")


def test_model_change_to_dict() -> None:
    """A model change's time is RFC 3339 in the report."""
    assert incidents.ModelChange("bot", "shop", T0, "o1", None).to_dict() == {
        "agent": "bot", "namespace": "shop", "time": timefmt.rfc3339_ms(T0), "model": "o1",
        "previous_model": None}
