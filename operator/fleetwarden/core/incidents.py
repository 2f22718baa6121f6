"""Incidents: one record per problem, built from findings, and its blameless postmortem draft.

An incident is keyed by ``findings.incident_id(finding)`` (deterministic: namespace, agent,
kind, onset minute and tool), so the operator, which refolds its lookback window every
cycle and so sees the same finding again and again, never opens a second record for the
same problem, and a restart never duplicates one.

Merging is deterministic and independent of arrival order: the timeline is a sorted set of
``(time, what)`` entries, the first and last times are a min and a max, and the evidence is
the one of the latest finding. Merging the same finding twice changes nothing.

Everything here is pure: records are plain values, times are RFC 3339 strings (the edge
format of the findings contract), and ``now`` is an argument wherever a clock is needed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetwarden.core import digest, timefmt

OPEN = "open"
RESOLVED = "resolved"

# How many incidents a namespace's record and an annotation keep (newest kept).
MAX_RECORDS = 200
MAX_ANNOTATION_ENTRIES = 20

KIND_TITLES = {
    "model_update_spike": "Cost spike after a model update",
    "runaway_loop": "Runaway agent loop",
    "tool_call_explosion": "Tool-call explosion",
    "cost_shift": "Cost shift without a declared change",
    "budget_warning": "Budget warning threshold passed",
    "budget_exceeded": "Budget limit exceeded",
    "kill_switch": "Kill switch engaged",
    "token_cap_exceeded": "Token cap exceeded",
    "rate_limit_exceeded": "Tool rate limit exceeded",
    "tool_not_allowed": "Call to a tool outside the allowlist",
    "approval_required": "Action held for approval",
}

# Evidence keys that carry the money an incident cost, most specific first.
_SPEND_KEYS = ("incident_spend_usd", "spend_usd", "cost_usd", "window_spend_usd")


@dataclasses.dataclass(frozen=True)
class TimelineEntry:
    time: str  # RFC 3339
    what: str

    def to_dict(self) -> dict[str, str]:
        return {"time": self.time, "what": self.what}


@dataclasses.dataclass(frozen=True)
class ActionTaken:
    """What the operator (or a person) did about an incident."""

    time: str  # RFC 3339
    action: str  # "kill", "rollback", "alert", "resume", ...
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"time": self.time, "action": self.action, "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class Incident:
    id: str
    kind: str
    agent: str
    namespace: str
    opened: str  # onset (or detection) of the first finding, RFC 3339
    detected: str  # time of the first finding
    last_seen: str  # time of the latest finding
    message: str  # the latest finding's message
    action: str  # the policy's action for the latest finding
    workflow: str | None = None
    model: str | None = None
    previous_model: str | None = None
    budget: str | None = None
    policy: str | None = None
    tool: str | None = None
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    actions: tuple[ActionTaken, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    findings: int = 1  # distinct findings merged into this incident
    status: str = OPEN
    resolved_at: str | None = None

    @property
    def title(self) -> str:
        return KIND_TITLES.get(self.kind, self.kind.replace("_", " ").capitalize())

    @property
    def summary(self) -> str:
        """One line for annotations and `fleetwarden incident list`."""
        return f"{self.title}: {self.agent} ({self.action}) - {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "agent": self.agent,
            "namespace": self.namespace,
            "workflow": self.workflow,
            "model": self.model,
            "previous_model": self.previous_model,
            "budget": self.budget,
            "policy": self.policy,
            "tool": self.tool,
            "opened": self.opened,
            "detected": self.detected,
            "last_seen": self.last_seen,
            "message": self.message,
            "action": self.action,
            "evidence": dict(self.evidence),
            "actions": [a.to_dict() for a in self.actions],
            "timeline": [t.to_dict() for t in self.timeline],
            "findings": self.findings,
            "status": self.status,
            "resolved_at": self.resolved_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Incident:
        """Read a record written by ``to_dict`` (raises KeyError/TypeError on a broken one)."""
        return cls(
            id=data["id"],
            kind=data["kind"],
            agent=data["agent"],
            namespace=data["namespace"],
            opened=data["opened"],
            detected=data["detected"],
            last_seen=data["last_seen"],
            message=data["message"],
            action=data["action"],
            workflow=data.get("workflow"),
            model=data.get("model"),
            previous_model=data.get("previous_model"),
            budget=data.get("budget"),
            policy=data.get("policy"),
            tool=data.get("tool"),
            evidence=dict(data.get("evidence") or {}),
            actions=tuple(ActionTaken(a["time"], a["action"], a.get("detail", ""))
                          for a in data.get("actions") or ()),
            timeline=tuple(TimelineEntry(t["time"], t["what"]) for t in data.get("timeline") or ()),
            findings=int(data.get("findings", 1)),
            status=data.get("status", OPEN),
            resolved_at=data.get("resolved_at"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def annotation_entry(self) -> dict[str, str]:
        """The short form kept in the ``fleetwarden.dev/incidents`` annotation."""
        return {"id": self.id, "kind": self.kind, "time": self.detected, "status": self.status,
                "summary": _clip(self.summary, 200)}


# ---------------------------------------------------------------- times


def _normal_time(value: Any) -> str:
    """A finding time (RFC 3339 string or Unix seconds) as canonical RFC 3339."""
    if isinstance(value, (int, float)):
        return timefmt.rfc3339(float(value))
    return timefmt.rfc3339(timefmt.parse_rfc3339_strict(str(value)))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ---------------------------------------------------------------- building and merging


def _finding_dict(finding: Any) -> dict[str, Any]:
    if isinstance(finding, Mapping):
        return dict(finding)
    return dict(finding.to_dict())


def _finding_entry(f: Mapping[str, Any]) -> TimelineEntry:
    what = f"{f['kind']} detected on {f['agent']} (action {f['action']}): {f['message']}"
    return TimelineEntry(_normal_time(f["time"]), what)


def open_incident(incident_id: str, finding: Any, actions: Iterable[ActionTaken] = ()) -> Incident:
    """A new incident from its first finding (a ``Finding`` or its ``to_dict()``)."""
    f = _finding_dict(finding)
    detected = _normal_time(f["time"])
    onset = _normal_time(f["onset"]) if f.get("onset") else detected
    timeline = {_finding_entry(f)}
    if onset != detected:
        timeline.add(TimelineEntry(onset, f"{f['kind']} began (estimated onset)"))
    if f.get("previous_model") and f.get("model"):
        timeline.add(TimelineEntry(onset, f"model changed from {f['previous_model']} to {f['model']}"))
    base = Incident(
        id=incident_id,
        kind=f["kind"],
        agent=f["agent"],
        namespace=f["namespace"],
        opened=min(onset, detected),
        detected=detected,
        last_seen=detected,
        message=f["message"],
        action=f["action"],
        workflow=f.get("workflow"),
        model=f.get("model"),
        previous_model=f.get("previous_model"),
        budget=f.get("budget"),
        policy=f.get("policy"),
        tool=f.get("tool"),
        evidence=dict(f.get("evidence") or {}),
        timeline=tuple(sorted(timeline, key=_entry_key)),
    )
    return add_actions(base, actions)


def _entry_key(entry: TimelineEntry) -> tuple[float, str]:
    return (timefmt.parse_rfc3339_strict(entry.time), entry.what)


def _action_key(action: ActionTaken) -> tuple[float, str, str]:
    return (timefmt.parse_rfc3339_strict(action.time), action.action, action.detail)


def merge(incident: Incident, finding: Any, actions: Iterable[ActionTaken] = ()) -> Incident:
    """Fold one more finding (and the actions taken for it) into ``incident``.

    Deterministic and order-independent; merging a finding already seen returns an equal
    incident. The fields that describe the latest state (message, action, evidence, model)
    come from the finding with the latest time (ties broken by its JSON text).
    """
    f = _finding_dict(finding)
    new = open_incident(incident.id, f)
    entries = set(incident.timeline) | set(new.timeline)
    seen_before = _finding_entry(f) in set(incident.timeline)
    latest_is_new = ((timefmt.parse_rfc3339_strict(new.last_seen), _state_text(new))
                     > (timefmt.parse_rfc3339_strict(incident.last_seen), _state_text(incident)))
    latest = new if latest_is_new else incident
    merged = dataclasses.replace(
        incident,
        opened=min(incident.opened, new.opened, key=timefmt.parse_rfc3339_strict),
        detected=min(incident.detected, new.detected, key=timefmt.parse_rfc3339_strict),
        last_seen=max(incident.last_seen, new.last_seen, key=timefmt.parse_rfc3339_strict),
        message=latest.message,
        action=latest.action,
        evidence=dict(latest.evidence),
        model=latest.model or incident.model,
        previous_model=latest.previous_model or incident.previous_model,
        workflow=incident.workflow or new.workflow,
        budget=incident.budget or new.budget,
        policy=incident.policy or new.policy,
        tool=incident.tool or new.tool,
        timeline=tuple(sorted(entries, key=_entry_key)),
        findings=incident.findings if seen_before else incident.findings + 1,
    )
    return add_actions(merged, actions)


def _state_text(incident: Incident) -> str:
    return json.dumps([incident.message, incident.action, dict(incident.evidence), incident.model],
                      sort_keys=True, default=str)


def add_actions(incident: Incident, actions: Iterable[ActionTaken]) -> Incident:
    """Record actions (deduplicated; each also becomes a timeline entry)."""
    actions = [ActionTaken(_normal_time(a.time), a.action, a.detail) for a in actions]
    if not actions:
        return incident
    all_actions = set(incident.actions) | set(actions)
    entries = set(incident.timeline) | {
        TimelineEntry(a.time, f"action {a.action}" + (f": {a.detail}" if a.detail else "")) for a in actions
    }
    return dataclasses.replace(
        incident,
        actions=tuple(sorted(all_actions, key=_action_key)),
        timeline=tuple(sorted(entries, key=_entry_key)),
    )


def resolve(incident: Incident, now: float, what: str) -> Incident:
    """Mark an incident resolved at ``now`` (no-op if it already is)."""
    if incident.status == RESOLVED:
        return incident
    at = timefmt.rfc3339(now)
    entries = set(incident.timeline) | {TimelineEntry(at, f"resolved: {what}")}
    return dataclasses.replace(incident, status=RESOLVED, resolved_at=at,
                               timeline=tuple(sorted(entries, key=_entry_key)))


def fold(records: Mapping[str, Incident], items: Iterable[tuple[str, Any, Sequence[ActionTaken]]],
         ) -> dict[str, Incident]:
    """Fold ``(incident_id, finding, actions)`` triples into ``records``; returns a new mapping."""
    out = dict(records)
    for incident_id, finding, actions in items:
        current = out.get(incident_id)
        out[incident_id] = (open_incident(incident_id, finding, actions) if current is None
                            else merge(current, finding, actions))
    return out


def bound(records: Mapping[str, Incident], limit: int = MAX_RECORDS) -> dict[str, Incident]:
    """Keep at most ``limit`` records: open ones first, then the most recently seen."""
    if len(records) <= limit:
        return dict(records)
    ranked = sorted(records.values(),
                    key=lambda i: (i.status == OPEN, timefmt.parse_rfc3339_strict(i.last_seen), i.id),
                    reverse=True)
    return {i.id: i for i in ranked[:limit]}


def annotation_value(incidents: Iterable[Incident], existing: str | None = None,
                     limit: int = MAX_ANNOTATION_ENTRIES) -> str:
    """The ``fleetwarden.dev/incidents`` annotation: a JSON list of the newest ``limit``
    entries (id, kind, time, status, summary), merged by id with ``existing``."""
    by_id: dict[str, dict[str, str]] = {}
    if existing:
        try:
            old = json.loads(existing)
        except ValueError:
            old = []
        if isinstance(old, list):
            for entry in old:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str) and "time" in entry:
                    by_id[entry["id"]] = entry
    for incident in incidents:
        by_id[incident.id] = incident.annotation_entry()
    entries = sorted(by_id.values(), key=lambda e: (timefmt.parse_rfc3339_strict(e["time"]), e["id"]))[-limit:]
    return json.dumps(entries, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- the model change before an incident


@dataclasses.dataclass(frozen=True)
class ModelChange:
    """An agent's switch to ``model`` (from ``previous_model``, None: not known) at ``time``."""

    agent: str
    namespace: str
    time: float
    model: str
    previous_model: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "namespace": self.namespace, "time": timefmt.rfc3339_ms(self.time),
                "model": self.model, "previous_model": self.previous_model}


def model_change_before(changes: Iterable[ModelChange], namespace: str, agent: str, at: float
                        ) -> ModelChange | None:
    """The agent's latest model change at or before ``at`` (the first listed wins a tie)."""
    best = None
    for c in changes:
        if c.namespace == namespace and c.agent == agent and c.time <= at and (best is None or c.time > best.time):
            best = c
    return best


def incident_model_change(changes: Iterable[ModelChange], namespace: str, agent: str, at: float, *,
                          named: str | None = None, previous: str | None = None, opened: float | None = None
                          ) -> ModelChange | None:
    """The model change before an incident of ``agent`` last seen at ``at``.

    The agent's latest change seen (``changes``) at or before ``at``; but when the incident
    names the model it is about (``named``, the model a spike came with) and that change is not
    to it, the change the incident names: to ``named`` from ``previous`` at ``opened`` (default
    ``at``), since the change itself fell outside what was seen."""
    seen = model_change_before(changes, namespace, agent, at)
    if named is None or (seen is not None and seen.model == named):
        return seen
    return ModelChange(agent, namespace, at if opened is None else opened, named, previous)


# ---------------------------------------------------------------- postmortem


def spend_usd(incident: Incident) -> float | None:
    """The money attributed to the incident, from its evidence; None when unknown."""
    for key in _SPEND_KEYS:
        value = incident.evidence.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def duration_seconds(incident: Incident, now: float) -> float:
    """From onset to resolution (or to ``now`` while still open)."""
    end = timefmt.parse_rfc3339_strict(incident.resolved_at) if incident.resolved_at else now
    return max(0.0, end - timefmt.parse_rfc3339_strict(incident.opened))


def _human_duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min"


# Evidence keys that count things (tasks, outcomes): shown as whole numbers.
_COUNT_PREFIXES = ("outcomes", "tasks")


def _evidence_value(key: str, value: Any) -> str:
    """An evidence value as a person reads it: a count is a whole number (a count the detector
    pro-rated over a window that began mid-minute is rounded, and says so)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and key.startswith(_COUNT_PREFIXES):
        whole = round(value)
        if abs(value - whole) < 1e-9:
            return str(int(whole))
        return f"{int(whole)} (rounded from {value:.2f}: a share of a minute's count at the window's edge)"
    return json.dumps(value, sort_keys=True)


def _evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    if not evidence:
        return ["- (no evidence recorded)"]
    return [f"- `{key}`: {_evidence_value(key, value)}" for key, value in sorted(evidence.items())]


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def _impact_lines(incident: Incident, impact: digest.CostImpact | None) -> list[str]:
    """Spend above the agent's baseline, and spend prevented; the evidence's spend figure too."""
    spend = spend_usd(incident)
    lines = [f"- Spend in the evidence: {_money(spend)}"] if spend is not None else []
    if impact is None:
        return lines + ["- Spend above baseline and spend prevented: unknown (no spend series read: "
                        "`fleetwarden incident postmortem --prometheus URL`)"]
    return lines + [
        f"- Spend above baseline (onset to resolution): {_money(impact.above_baseline_usd)} "
        f"(baseline {_money(impact.baseline_usd_per_hour)}/h)",
        f"- Spend prevented: {_money(impact.prevented_usd)} (burn {_money(impact.burn_usd_per_hour)}/h at the "
        f"action; {impact.note})",
    ]


def _action_items(incident: Incident) -> list[str]:
    items = {
        "model_update_spike": [
            f"Compare cost per task of `{incident.model}` and `{incident.previous_model}` in a canary "
            "before the next model rollout.",
            "Decide whether a staged rollout (a share of replicas first) fits this agent.",
        ],
        "runaway_loop": [
            "Add or tighten a per-task token cap (CostPolicy `tokenCaps.perTask`) for this workflow.",
            "Look at the loop's exit conditions in the agent and the signals it lacked to stop.",
        ],
        "tool_call_explosion": [
            f"Set a per-tool rate limit for `{incident.tool}` (CostPolicy `rateLimits.perTool`).",
            "Check how the tool's errors or empty results are fed back to the model.",
        ],
        "cost_shift": [
            "Find what changed without a new model or agent_version (prompt, retrieval, tool output) "
            "and ship such changes with a version.",
            "Decide whether the new cost per task is accepted; if so, no action is needed.",
        ],
        "kill_switch": [
            "Review whether the budget's caps and kill threshold still match expected traffic.",
            "Confirm who is paged for this budget and that the runbook for resuming is current.",
        ],
        "budget_exceeded": ["Review the budget's caps against the forecast and the unit economics."],
        "budget_warning": ["Review the budget's caps against the forecast and the unit economics."],
    }.get(incident.kind, ["Review the policy that fired and whether its thresholds fit."])
    return [f"- [ ] {item} (owner: TBD, due: TBD)" for item in items]


def render_postmortem(incident: Incident, now: float, impact: digest.CostImpact | None = None) -> str:
    """A blameless postmortem draft in Markdown: summary, impact, timeline, detection,
    response, what went well, what to improve and action items. It describes what the
    system did and what made the problem possible; it names no one as a cause."""
    duration = _human_duration(duration_seconds(incident, now))
    state = (f"resolved at {incident.resolved_at}" if incident.status == RESOLVED
             else f"still open at {timefmt.rfc3339(now)}")
    who = f"agent `{incident.agent}` in namespace `{incident.namespace}`"
    if incident.workflow:
        who += f", workflow `{incident.workflow}`"
    lines = [
        f"# Postmortem (draft): {incident.title} - {incident.id}",
        "",
        "_Blameless draft generated by Fleetwarden from the incident record. It describes what "
        "happened and how the system behaved, so that the system can be improved; edit it freely._",
        "",
        "## Summary",
        "",
        f"{incident.title} on {who}. {incident.message}",
        "",
        f"- Incident: `{incident.id}` ({incident.kind}), status: {incident.status}",
        f"- Budget: `{incident.budget or 'unknown'}`; policy rule: `{incident.policy or 'n/a'}`",
    ]
    if incident.model or incident.previous_model:
        lines.append(f"- Model: `{incident.previous_model or '?'}` -> `{incident.model or '?'}`")
    if incident.tool:
        lines.append(f"- Tool: `{incident.tool}`")
    lines += [
        "",
        "## Impact",
        "",
        *_impact_lines(incident, impact),
        f"- Duration: {duration} (from {incident.opened}, {state})",
        f"- Findings merged into this incident: {incident.findings}",
        "",
        "## Timeline (UTC)",
        "",
        "| time | what |",
        "|---|---|",
    ]
    lines += [f"| {t.time} | {t.what.replace('|', '/')} |" for t in incident.timeline]
    lines += [
        "",
        "## Detection",
        "",
        f"Detected by Fleetwarden's `{incident.kind}` check at {incident.detected}"
        f" (estimated onset {incident.opened}).",
        "",
        "Evidence:",
        "",
        *_evidence_lines(incident.evidence),
        "",
        "## Response and actions taken",
        "",
    ]
    if incident.actions:
        lines += [f"- {a.time}: {a.action}" + (f" - {a.detail}" if a.detail else "") for a in incident.actions]
    else:
        lines.append(f"- Policy action: {incident.action} (no further action recorded)")
    lines += [
        "",
        "## What went well",
        "",
        "- _Which signals and guardrails worked as intended? How quickly was the problem contained?_",
        "",
        "## What could be improved",
        "",
        "- _Which conditions made this possible? What information was missing or late?_",
        "- _Which thresholds, tests or rollout steps would have caught it earlier?_",
        "",
        "## Action items",
        "",
        *_action_items(incident),
        "",
    ]
    return "\n".join(lines)
