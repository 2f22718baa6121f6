"""The operator's one pure decision: observed state of a budget in, actions and status out.

    evaluate(EvaluationInput) -> Decision

The handler gathers everything into one :class:`EvaluationInput` (the AgentBudget, the
CostPolicies, the selected agents' Deployments, their per-minute buckets and spend from
Prometheus, the previous status and ``now``), calls :func:`evaluate`, applies the returned
actions and writes the returned status in one patch. Nothing here reads a clock or talks
to anything, so every rule has a row in ``tests/unit/operator/test_evaluate.py``.

The findings come from the same functions ``fleetwarden replay`` uses: the budget rules of
:mod:`fleetwarden.core.policies` and the anomaly detectors of
:mod:`fleetwarden.core.detectors`, folded over the lookback window from an empty state.

Rules, in the order they are applied:

1. Unknown data (``minutes is None`` or a needed spend is None) -> MetricsAvailable=False
   with the reason, and no destructive action (no new kill, no automatic rollback).
2. Kill switch: a finding with action ``kill`` engages it -> ScaleToZero for the agents
   (every selected agent for the budget's spend rule; the one agent for a detector),
   remembering their replicas; state Killed until ``spec.killSwitch.acknowledge`` equals
   ``status.killSwitch.incident`` -> RestoreReplicas exactly, ``resumedAt`` recorded, and
   spend before ``resumedAt`` no longer counts for the kill rule. While killed, an agent
   scaled back up (GitOps self-heal, a person) is scaled to zero again.
3. ``spec.suspend``: true -> ScaleToZero (remembered on the Deployment), false -> restore.
4. Model: ``spec.model.desired`` set -> every agent runs it (it wins). Else a
   ``model_update_spike`` with action ``rollback`` and ``spec.model.rollbackOnSpike`` ->
   SetModel(previous), recorded in ``status.model.rollbacks``; a Deployment that drifts
   back from an automatic rollback is set again.
5. Guardrails: the SDK's guardrail decisions (``fleetwarden_guardrail_decisions_total`` by
   status) and calls to tools outside a CostPolicy's allowlist (``fleetwarden_tool_calls_total``,
   for agents without the SDK's guardrails) become ``token_cap_exceeded``,
   ``rate_limit_exceeded``, ``tool_not_allowed`` and ``approval_required`` findings, one per
   problem (:func:`guardrail_findings`).
6. Approvals: pending CostApprovals of the budget's agents -> ApprovalPending=True.

Per-agent results that only change when a minute completes (the detectors' refold of the
lookback window) are kept in an optional :class:`Memo` passed in the input, so a budget
evaluated every 15 s refolds each agent once a minute, not every cycle.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from fleetwarden.core import detectors, economics, findings, policies, series, spec, windows
from fleetwarden.core.timefmt import parse_rfc3339 as parse_rfc3339  # importable from here for now
from fleetwarden.core.timefmt import rfc3339 as rfc3339

MAX_ROLLBACKS = 20
MAX_INCIDENTS = 20
TOP_N = 5
# An anomaly keeps AnomalyDetected=True for this long after it was last reported.
ANOMALY_HOLD_SECONDS = 15 * 60
# Burn rate: the spend of this many most recent complete minutes, per hour.
BURN_MINUTES = 10

# Condition types
READY = "Ready"
METRICS_AVAILABLE = "MetricsAvailable"
BUDGET_EXCEEDED = "BudgetExceeded"
KILL_SWITCH_ENGAGED = "KillSwitchEngaged"
ANOMALY_DETECTED = "AnomalyDetected"
APPROVAL_PENDING = "ApprovalPending"

# Guardrail findings: decisions of one kind (and tool) less than this many minutes apart are
# one problem; a quieter stretch ends it.
GUARDRAIL_QUIET_MINUTES = 10
# fleetwarden_guardrail_decisions_total{status} -> finding kind
GUARDRAIL_KINDS = {
    "token_cap_exceeded": findings.TOKEN_CAP_EXCEEDED,
    "rate_limit_exceeded": findings.RATE_LIMIT_EXCEEDED,
    "tool_not_allowed": findings.TOOL_NOT_ALLOWED,
    "approval_required": findings.APPROVAL_REQUIRED,
}

# States
ACTIVE, WARNING, EXCEEDED, KILLED, SUSPENDED, UNKNOWN = (
    "Active", "Warning", "Exceeded", "Killed", "Suspended", "Unknown")


# ---------------------------------------------------------------- input


@dataclasses.dataclass(frozen=True)
class AgentState:
    """One agent Deployment as the operator sees it."""

    name: str
    namespace: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    replicas: int = 1
    model: str | None = None
    version: str | None = None
    keda_managed: bool = False
    replicas_before: int | None = None  # fleetwarden.dev/replicas-before-kill on the Deployment


@dataclasses.dataclass(frozen=True)
class PendingApproval:
    """A CostApproval nobody has decided yet (``status.decision`` unset)."""

    name: str
    agent: str
    expires_at: float | None = None  # spec.expiresAt; past it, the request no longer counts
    rule: str | None = None
    tool: str | None = None


class Memo:
    """Results that depend only on complete minutes, shared across cycles and budgets.

    ``get(minute, key, compute)`` returns the value stored under ``key`` or stores
    ``compute()``. Values are kept for the few most recent minutes only (a key names the
    last complete minute it was computed for), so memory stays bounded."""

    KEEP_MINUTES = 3

    def __init__(self) -> None:
        self._by_minute: dict[int, dict[Hashable, Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, minute: int, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            bucket = self._by_minute.get(minute)
            if bucket is not None and key in bucket:
                self.hits += 1
                return bucket[key]
        value = compute()
        with self._lock:
            self.misses += 1
            bucket = self._by_minute.get(minute)
            if bucket is None:
                bucket = self._by_minute[minute] = {}
                newest = max(self._by_minute)
                for old in [m for m in self._by_minute if m < newest - self.KEEP_MINUTES * series.MINUTE]:
                    del self._by_minute[old]
            bucket[key] = value
        return value

    def __len__(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._by_minute.values())


@dataclasses.dataclass(frozen=True)
class EvaluationInput:
    budget: spec.AgentBudget
    agents: Sequence[AgentState]  # the agents the budget selects
    minutes: Mapping[str, Sequence[series.AgentMinute]] | None  # agent -> buckets; None: unknown
    spend: Mapping[spec.Window, float | None]  # the budget's spend per window; None: unknown
    now: float
    previous: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the previous status
    policies: Sequence[spec.CostPolicy] = ()
    metrics_reason: str | None = None  # why minutes/spend are unknown
    generation: int | None = None
    # agent -> minute -> outcome name -> count (fleetwarden_outcomes_total by outcome); None: not known
    outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None
    # agent -> minute -> (guardrail status, tool) -> decisions (fleetwarden_guardrail_decisions_total)
    guardrails: Mapping[str, Mapping[int, Mapping[tuple[str, str], float]]] | None = None
    approvals: Sequence[PendingApproval] = ()  # pending CostApprovals of the namespace
    lookback_start: float | None = None  # the first minute the buckets cover
    memo: Memo | None = dataclasses.field(default=None, compare=False)


# ---------------------------------------------------------------- output

Finding = findings.Finding


@dataclasses.dataclass(frozen=True)
class ScaleToZero:
    agent: str
    replicas_to_remember: int
    reason: str  # "kill", "killed-again", "suspend"


@dataclasses.dataclass(frozen=True)
class RestoreReplicas:
    agent: str
    replicas: int
    reason: str  # "resume", "unsuspend"


@dataclasses.dataclass(frozen=True)
class SetModel:
    agent: str
    model: str
    previous: str | None
    reason: str  # "rollback", "rollback-drift", "desired"
    incident: str | None = None


@dataclasses.dataclass(frozen=True)
class Notify:
    finding: findings.Finding
    incident: str


Action = ScaleToZero | RestoreReplicas | SetModel | Notify


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str  # CamelCase
    message: str
    agent: str | None = None  # also post it on this agent's Deployment


@dataclasses.dataclass(frozen=True)
class Decision:
    findings: tuple[Finding, ...]
    new_findings: tuple[Finding, ...]  # not reported in an earlier cycle
    actions: tuple[Action, ...]
    status: dict[str, Any]
    events: tuple[Event, ...]

    @property
    def destructive(self) -> bool:
        return any(isinstance(a, (ScaleToZero, SetModel)) for a in self.actions)


# ---------------------------------------------------------------- helpers


def _money(x: float) -> float:
    return round(x, 4)


def condition(previous: Sequence[Mapping[str, Any]], type_: str, status: str, reason: str, message: str,
              now: float, generation: int | None) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime kept unless ``status`` really changes."""
    old = next((c for c in previous if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    out: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now) if changed else old["lastTransitionTime"],  # type: ignore[index]
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def _camel(kind: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in kind.split("_"))


_DEFAULT_ANOMALIES = spec.AnomalyParams()


def anomaly_params(policies_: Sequence[spec.CostPolicy], agent: AgentState) -> spec.AnomalyParams:
    """The anomaly parameters of the first CostPolicy (by name) that applies to ``agent``; else defaults."""
    if not policies_:
        return _DEFAULT_ANOMALIES
    chosen = policies.applicable(policies_, agent.namespace, agent.labels)
    return chosen[0].spec.anomalies if chosen else _DEFAULT_ANOMALIES


def detector_findings(agent: AgentState, minutes: Sequence[series.AgentMinute],
                      params: spec.AnomalyParams) -> list[findings.Finding]:
    """Fold the replay detectors over one agent's lookback window, from an empty state."""
    detector_set = detectors.DetectorSet(params, agent.name, agent.namespace)
    out: list[findings.Finding] = []
    for minute in sorted(minutes, key=lambda m: m.minute):
        out.extend(detector_set.step(minute))
    return out


def rate_findings(agent: AgentState, minutes: Sequence[series.AgentMinute],
                  policies_: Sequence[spec.CostPolicy]) -> list[findings.Finding]:
    """``policies.rate_limit_exceeded`` per minute over the lookback, one finding per episode (a Latch)."""
    out: list[findings.Finding] = []
    for policy in policies.applicable(policies_, agent.namespace, agent.labels):
        limits = policy.spec.rate_limits
        if limits.tool_calls_per_minute is None and not limits.per_tool:
            continue
        latch = policies.Latch()
        for m in sorted(minutes, key=lambda m: m.minute):
            subject = policies.Subject(agent.name, agent.namespace, float(m.minute + series.MINUTE), m.workflow)
            checks: list[tuple[str | None, float]] = [(None, float(sum(m.tool_calls.values())))]
            checks += [(tool, float(m.tool_calls.get(tool, 0.0))) for tool in sorted(limits.per_tool)]
            for tool, calls in checks:
                f = policies.rate_limit_exceeded(policies.RateInput(subject, policy.metadata.name, limits, tool, calls))
                level = int(f.evidence["level"]) if f is not None else 0
                if latch.fire(tool, f is not None, subject.now, level) and f is not None:
                    out.append(f)
    return out


def cached_detector_findings(memo: Memo | None, agent: AgentState, minutes: Sequence[series.AgentMinute],
                             params: spec.AnomalyParams) -> Sequence[findings.Finding]:
    """:func:`detector_findings`, kept in ``memo`` per (agent, minutes covered, params): complete
    minutes do not change, so the refold runs once per minute per agent, not every cycle."""
    if memo is None or not minutes:
        return detector_findings(agent, minutes, params)
    first, last = minutes[0].minute, minutes[-1].minute  # the adapter's buckets are in order
    if first > last:
        first, last = last, first
    key = ("detectors", agent.namespace, agent.name, first, last, len(minutes), params)
    return memo.get(last, key, lambda: tuple(detector_findings(agent, minutes, params)))  # type: ignore[no-any-return]


def _episodes(active: Sequence[int], quiet_minutes: int | None) -> list[tuple[int, int]]:
    """Runs of minutes (sorted) less than ``quiet_minutes`` apart: (first, last). None: one run."""
    runs: list[tuple[int, int]] = []
    for minute in active:
        if runs and (quiet_minutes is None or minute - runs[-1][1] <= quiet_minutes * series.MINUTE):
            runs[-1] = (runs[-1][0], minute)
        else:
            runs.append((minute, minute))
    return runs


def guardrail_findings(agent: AgentState, minutes: Sequence[series.AgentMinute],
                       decisions: Mapping[int, Mapping[tuple[str, str], float]],
                       policies_: Sequence[spec.CostPolicy],
                       rate_found: Sequence[findings.Finding] = ()) -> list[findings.Finding]:
    """Guardrail problems of one agent over the lookback, one finding per problem.

    Two sources, one finding: the SDK's decisions (``decisions``: minute -> (status, tool) ->
    count) and, for ``tool_not_allowed``, calls to a tool the applicable CostPolicy does not
    allow (``minutes[].tool_calls``; agents without the SDK's guardrails). Decisions of one
    kind and tool less than GUARDRAIL_QUIET_MINUTES apart are one problem (its onset: the
    first minute); ``tool_not_allowed`` is one problem per tool, as in replay. A guardrail
    rate limit that :func:`rate_findings` already reported (``rate_found``) is not repeated."""
    chosen = policies.applicable(policies_, agent.namespace, agent.labels)
    # (kind, tool) -> minute -> {"decisions": n, "calls": n}
    active: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for minute, counts in decisions.items():
        for (status, tool), n in counts.items():
            kind = GUARDRAIL_KINDS.get(status)
            if kind is not None and n > 0:
                cell = active.setdefault((kind, tool), {}).setdefault(minute, {})
                cell["decisions"] = cell.get("decisions", 0.0) + n
    ruled = [p for p in chosen if p.spec.tools.allow is not None or p.spec.tools.deny]
    refused: dict[str, spec.CostPolicy | None] = {}
    if ruled:
        for m in minutes:
            for tool, calls in m.tool_calls.items():
                if calls <= 0:
                    continue
                if tool not in refused:
                    refused[tool] = next((p for p in ruled if not p.spec.tools.allowed(tool)), None)
                if refused[tool] is not None:
                    cell = active.setdefault((findings.TOOL_NOT_ALLOWED, tool), {}).setdefault(m.minute, {})
                    cell["calls"] = cell.get("calls", 0.0) + calls
    if not active:
        return []
    workflows = {m.minute: m.workflow for m in minutes}
    rate_minutes = sorted(int(f.time) - series.MINUTE for f in rate_found)
    out: list[findings.Finding] = []
    for (kind, tool), by_minute in sorted(active.items()):
        quiet = None if kind == findings.TOOL_NOT_ALLOWED else GUARDRAIL_QUIET_MINUTES
        for first, last in _episodes(sorted(by_minute), quiet):
            if kind == findings.RATE_LIMIT_EXCEEDED and any(first <= m <= last for m in rate_minutes):
                continue
            subject = policies.Subject(agent.name, agent.namespace, float(first + series.MINUTE),
                                       workflows.get(first))
            f = _guardrail_finding(kind, tool or None, subject, by_minute[first], chosen, refused.get(tool))
            out.append(dataclasses.replace(f, onset=float(first)))
    return out


def _guardrail_finding(kind: str, tool: str | None, s: policies.Subject, counts: Mapping[str, float],
                       chosen: Sequence[spec.CostPolicy], refusing: spec.CostPolicy | None) -> findings.Finding:
    """One guardrail finding, with the action and policy of the CostPolicy that applies."""
    decisions = counts.get("decisions")
    evidence: dict[str, Any] = {"source": "sdk" if decisions else "tool_calls"}
    if decisions:
        evidence["decisions_in_minute"] = decisions
    if counts.get("calls"):
        evidence["calls_in_minute"] = counts["calls"]
    said = f" ({decisions:g} guardrail decision(s) in its first minute)" if decisions else ""
    if kind == findings.TOOL_NOT_ALLOWED:
        policy = refusing or next((p for p in chosen if not p.spec.tools.allowed(tool or "")), None)
        if policy is not None and tool is not None:
            f = policies.tool_not_allowed(policies.ToolInput(s, policy.metadata.name, policy.spec.tools, tool))
            if f is not None:
                return dataclasses.replace(f, evidence={**f.evidence, **evidence})
        action = (chosen[0].spec.tools.action if chosen else spec.ToolRules().action).value
        return findings.Finding(
            kind=kind, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now, action=action,
            policy=chosen[0].metadata.name if chosen else None, tool=tool,
            message=f"{s.agent} called tool {tool or '(none)'}, which its cost policy does not allow{said}",
            evidence=evidence)
    if kind == findings.TOKEN_CAP_EXCEEDED:
        policy = next((p for p in chosen if p.spec.token_caps.per_task is not None), chosen[0] if chosen else None)
        caps = policy.spec.token_caps if policy is not None else spec.TokenCaps()
        if caps.per_task is not None:
            evidence["cap_tokens"] = caps.per_task
        cap = f" of {caps.per_task:,} tokens" if caps.per_task is not None else ""
        return findings.Finding(
            kind=kind, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
            action=caps.action.value, policy=policy.metadata.name if policy is not None else None, tool=tool,
            message=f"tasks of {s.agent} reached their token cap per task{cap}{said}", evidence=evidence)
    if kind == findings.RATE_LIMIT_EXCEEDED:
        policy = next((p for p in chosen if p.spec.rate_limits.tool_calls_per_minute is not None
                       or p.spec.rate_limits.per_tool), chosen[0] if chosen else None)
        limits = policy.spec.rate_limits if policy is not None else spec.RateLimits()
        limit = policies.rate_limit_for(limits, tool) if tool is not None else None
        limit = limit if limit is not None else limits.tool_calls_per_minute
        if limit is not None:
            evidence["limit_per_minute"] = limit
        what = f"calls to {tool}" if tool else "tool calls"
        per = f" of {limit:g} per minute" if limit is not None else ""
        return findings.Finding(
            kind=kind, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
            action=limits.action.value, policy=policy.metadata.name if policy is not None else None, tool=tool,
            message=f"{s.agent} hit its rate limit{per} on {what}{said}", evidence=evidence)
    # approval_required: the rule (as replay names it) that applies to the tool, when one does
    rule = next((r for p in chosen for r in p.spec.approvals
                 if r.tool is None or tool is None or fnmatch.fnmatchcase(tool, r.tool)), None)
    if rule is not None:
        evidence["rule"] = rule.name
    return findings.Finding(
        kind=kind, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now, action=findings.DENY,
        policy=rule.name if rule is not None else None, tool=tool,
        message=(f"{s.agent} needs a human to approve calls to {tool or 'a tool'}"
                 + (f" (rule {rule.name})" if rule is not None else "") + f"{said}"),
        evidence=evidence)


_EPISODE_KINDS = frozenset(GUARDRAIL_KINDS.values())


def keep_onsets(found: Sequence[findings.Finding], previous_incidents: Sequence[Mapping[str, Any]],
                lookback_start: float | None) -> list[findings.Finding]:
    """Give a guardrail problem that is still going on the onset (so the incident id) it was
    first reported with: a ``tool_not_allowed`` already in ``status.incidents`` always; another
    guardrail kind when its episode starts so near the start of the lookback that it may have
    begun before it (the refold no longer sees the start)."""
    known: dict[tuple[str, str, str | None], list[float]] = {}
    for incident in previous_incidents:
        when = parse_rfc3339(incident.get("time"))
        if when is not None and incident.get("kind") in _EPISODE_KINDS:
            key = (str(incident.get("kind")), str(incident.get("agent")), incident.get("tool"))
            known.setdefault(key, []).append(when)
    if not known:
        return list(found)
    out = []
    for f in found:
        times = known.get((f.kind, f.agent, f.tool)) if f.kind in _EPISODE_KINDS and f.onset is not None else None
        if times and f.onset is not None:
            earlier = [t for t in times if t <= f.onset]
            truncated = lookback_start is not None and \
                f.onset < lookback_start + GUARDRAIL_QUIET_MINUTES * series.MINUTE
            if earlier and (f.kind == findings.TOOL_NOT_ALLOWED or truncated):
                f = dataclasses.replace(f, onset=max(earlier))
        out.append(f)
    return out


def pending_approvals(inp: EvaluationInput, agent_names: set[str]) -> list[PendingApproval]:
    """The CostApprovals still waiting for a human that concern the budget's agents, by name."""
    return sorted((a for a in inp.approvals
                   if a.agent in agent_names and (a.expires_at is None or a.expires_at > inp.now)),
                  key=lambda a: a.name)


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
    prev_ks = inp.previous.get("killSwitch") or {}
    resumed = parse_rfc3339(prev_ks.get("resumedAt"))
    if resumed is None or inp.minutes is None or spend is None or inp.now - resumed >= spec.WINDOW_SECONDS[window]:
        return spend
    bounds = [spend_since(inp.minutes, series.minute_of(resumed) + series.MINUTE)]
    at_resume = prev_ks.get("spendAtResumeUSD")
    if isinstance(at_resume, (int, float)):
        bounds.append(spend - float(at_resume))
    return max(0.0, min(spend, max(bounds)))


def _continuing_onset(inp: EvaluationInput, kind: str) -> float | None:
    """When a lasting budget condition that was already reported began (None: it is new).

    Budget rules are checked at ``now``; giving a lasting condition the onset of its first
    report keeps its incident id, so it is reported once, not every cycle."""
    prev = inp.previous
    if kind == findings.KILL_SWITCH and inp.budget.spec.kill_switch.action is spec.KillAction.scale_to_zero:
        # a kill lasts while engaged; after a resume, a new kill is a new incident
        engaged = (prev.get("killSwitch") or {}).get("engaged")
        return parse_rfc3339(prev["killSwitch"].get("engagedAt")) if engaged else None
    active = {
        findings.BUDGET_WARNING: prev.get("state") in (WARNING, EXCEEDED, KILLED),
        findings.BUDGET_EXCEEDED: any(c.get("type") == BUDGET_EXCEEDED and c.get("status") == "True"
                                      for c in prev.get("conditions") or []),
    }.get(kind, any(c.get("type") == BUDGET_EXCEEDED and c.get("status") == "True"
                    for c in prev.get("conditions") or []))
    if not active:
        return None
    times = [parse_rfc3339(i.get("time")) for i in prev.get("incidents") or [] if i.get("kind") == kind]
    known = [t for t in times if t is not None]
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
    handled = {(inp.previous.get("killSwitch") or {}).get("incident"), budget.spec.kill_switch.acknowledge}
    for f in out:
        onset = _continuing_onset(inp, f.kind)
        f = dataclasses.replace(f, onset=onset if onset is not None else now)
        if onset is None and f.kind == findings.KILL_SWITCH and findings.incident_id(f) in handled:
            # a new kill in the same minute as the one just acknowledged: ids are minute-grained,
            # so it takes the next minute's id rather than the resolved incident's
            f = dataclasses.replace(f, onset=float(series.minute_of(now) + series.MINUTE))
        kept.append(f)
    return kept


# ---------------------------------------------------------------- the evaluator


def evaluate(inp: EvaluationInput) -> Decision:
    budget, now, prev = inp.budget, inp.now, inp.previous
    name = budget.metadata.name
    agents = sorted(inp.agents, key=lambda a: a.name)
    by_name = {a.name: a for a in agents}
    prev_conditions = list(prev.get("conditions") or [])
    prev_ks = dict(prev.get("killSwitch") or {})
    prev_model = dict(prev.get("model") or {})
    ks_spec = budget.spec.kill_switch
    actions: list[Action] = []
    events: list[Event] = []

    # 1: is the data known? Unknown data never triggers a destructive action.
    needed = {lim.window for lim in budget.spec.limits}
    unknown_windows = sorted(w.value for w in needed if inp.spend.get(w) is None)
    known = inp.minutes is not None and not unknown_windows
    reason_unknown = inp.metrics_reason or (
        "no per-minute data" if inp.minutes is None else f"spend unknown for {', '.join(unknown_windows)}")

    # 2: findings, from the same rules and detectors as `fleetwarden replay`.
    found: list[findings.Finding] = []
    if known:
        found.extend(budget_findings(inp))
        assert inp.minutes is not None
        guardrails = inp.guardrails or {}
        for agent in agents:
            agent_minutes = inp.minutes.get(agent.name, ())
            found.extend(cached_detector_findings(inp.memo, agent, agent_minutes,
                                                  anomaly_params(inp.policies, agent)))
            rate = rate_findings(agent, agent_minutes, inp.policies)
            found.extend(rate)
            found.extend(guardrail_findings(agent, agent_minutes, guardrails.get(agent.name) or {},
                                            inp.policies, rate))
        found = keep_onsets(found, prev.get("incidents") or [], inp.lookback_start)
    found = [dataclasses.replace(f, budget=f.budget or name) for f in found]
    found.sort(key=findings.sort_key)
    seen = {i.get("id") for i in prev.get("incidents") or []}
    seen |= {r.get("incident") for r in prev_model.get("rollbacks") or []}
    seen.add(prev_ks.get("incident"))
    new = [f for f in found if findings.incident_id(f) not in seen]

    # 3: kill switch.
    ks = dict(prev_ks)
    engaged = bool(prev_ks.get("engaged"))
    if engaged and ks_spec.acknowledge is not None and ks_spec.acknowledge == prev_ks.get("incident"):
        engaged = False
        ks["engaged"] = False
        ks["resumedAt"] = rfc3339(now)
        at_resume = inp.spend.get(ks_spec.window)
        if at_resume is not None:
            ks["spendAtResumeUSD"] = _money(at_resume)
        else:
            ks.pop("spendAtResumeUSD", None)
        remembered = dict(prev_ks.get("replicas") or {})
        for agent_name, replicas in sorted(remembered.items()):
            if agent_name in by_name and not budget.spec.suspend:
                actions.append(RestoreReplicas(agent_name, int(replicas), "resume"))
        events.append(Event("Normal", "Resumed",
                            f"kill switch {prev_ks.get('incident')} acknowledged: restoring replicas "
                            + ", ".join(f"{k}={v}" for k, v in sorted(remembered.items()))))
    elif engaged:
        remembered = dict(prev_ks.get("replicas") or {})
        # the budget's own kill stops every agent it selects, new ones too; a detector's, its agent
        budget_wide = any(i.get("id") == prev_ks.get("incident") and i.get("kind") == findings.KILL_SWITCH
                          for i in prev.get("incidents") or [])
        for agent in agents:
            if agent.replicas > 0 and (agent.name in remembered or budget_wide):
                keep = int(remembered.get(agent.name, agent.replicas))
                remembered[agent.name] = keep
                actions.append(ScaleToZero(agent.name, keep, "killed-again"))
                events.append(Event("Warning", "KillSwitchHeld",
                                    f"{agent.name} was scaled to {agent.replicas} while kill switch "
                                    f"{prev_ks.get('incident')} is engaged; scaled to zero again",
                                    agent=agent.name))
        ks["replicas"] = remembered
    else:
        kills = [f for f in found if f.action == findings.KILL
                 and findings.incident_id(f) not in (ks_spec.acknowledge, prev_ks.get("incident"))]
        if known and kills:
            first = next((f for f in kills if f.kind == findings.KILL_SWITCH), kills[0])
            incident = findings.incident_id(first)
            if any(f.kind == findings.KILL_SWITCH for f in kills):
                targets = agents
            else:
                targets = [by_name[f.agent] for f in kills if f.agent in by_name]
            replicas = {a.name: a.replicas for a in targets if a.replicas > 0}
            engaged = True
            ks = {"engaged": True, "incident": incident, "engagedAt": rfc3339(now), "replicas": replicas}
            for agent_name, count in sorted(replicas.items()):
                actions.append(ScaleToZero(agent_name, count, "kill"))
            events.append(Event("Warning", "KillSwitchEngaged",
                                f"kill switch engaged ({incident}): {first.message}; scaled to zero: "
                                + (", ".join(f"{k} (was {v})" for k, v in sorted(replicas.items())) or "none")
                                + f". Resume: set spec.killSwitch.acknowledge to {incident}"))

    # 4: suspend.
    scaled = {a.agent for a in actions if isinstance(a, ScaleToZero)}
    restored = {a.agent for a in actions if isinstance(a, RestoreReplicas)}
    if budget.spec.suspend:
        for agent in agents:
            if agent.replicas > 0 and agent.name not in scaled:
                actions.append(ScaleToZero(agent.name, agent.replicas, "suspend"))
                events.append(Event("Normal", "Suspended",
                                    f"spec.suspend is true: {agent.name} scaled to zero (was {agent.replicas})",
                                    agent=agent.name))
    elif not engaged:
        for agent in agents:
            if (agent.replicas == 0 and agent.replicas_before is not None and agent.name not in restored):
                actions.append(RestoreReplicas(agent.name, agent.replicas_before, "unsuspend"))
                events.append(Event("Normal", "Resumed",
                                    f"{agent.name} restored to {agent.replicas_before} replicas", agent=agent.name))

    # 5: model.
    model_status, model_actions, model_events = _decide_models(inp, agents, found, known)
    actions.extend(model_actions)
    events.extend(model_events)

    # 6: notifications and events for findings seen for the first time.
    for f in new:
        actions.append(Notify(f, findings.incident_id(f)))
        events.append(Event("Warning", _camel(f.kind), f"{findings.incident_id(f)}: {f.message}", agent=f.agent))

    # 7: status.
    pending = pending_approvals(inp, set(by_name))
    status = _status(inp, agents, found, new, known, reason_unknown, ks, engaged, model_status, prev_conditions,
                     pending)
    for c in status["conditions"]:
        old = next((o for o in prev_conditions if o.get("type") == c["type"]), None)
        if c["type"] == METRICS_AVAILABLE and c["status"] == "False" and (old is None or old.get("status") != "False"):
            events.append(Event("Warning", "MetricsUnavailable",
                                f"metrics unavailable, no destructive action taken: {c['message']}"))
        if c["type"] == METRICS_AVAILABLE and c["status"] == "True" and old is not None \
                and old.get("status") == "False":
            events.append(Event("Normal", "MetricsAvailable", "metrics are available again"))
    return Decision(tuple(found), tuple(new), tuple(actions), status, tuple(events))


def _decide_models(inp: EvaluationInput, agents: Sequence[AgentState], found: Sequence[findings.Finding],
                   known: bool) -> tuple[dict[str, Any], list[Action], list[Event]]:
    model_spec = inp.budget.spec.model
    prev_model = dict(inp.previous.get("model") or {})
    rollbacks: list[dict[str, Any]] = list(prev_model.get("rollbacks") or [])
    actions: list[Action] = []
    events: list[Event] = []
    now = inp.now
    desired = model_spec.desired or None
    if desired is not None:
        changed = prev_model.get("specDesired") != desired
        for agent in agents:
            if agent.model != desired or changed:
                if agent.model != desired:
                    actions.append(SetModel(agent.name, desired, agent.model, "desired"))
                    events.append(Event("Normal", "ModelSet",
                                        f"spec.model.desired is {desired}: {agent.name} set from "
                                        f"{agent.model} to {desired}", agent=agent.name))
                if changed:
                    rollbacks.append({"agent": agent.name, "from": agent.model or "", "to": desired,
                                      "at": rfc3339(now), "reason": "spec.model.desired"})
        out = {"rollbacks": rollbacks[-MAX_ROLLBACKS:], "specDesired": desired}
        return out, actions, events

    # No desired model: automatic rollbacks, and keep the latest one against drift.
    latest: dict[str, Mapping[str, Any]] = {}
    for entry in rollbacks:
        latest[entry.get("agent", "")] = entry
    done_incidents = {r.get("incident") for r in rollbacks}
    by_name = {a.name: a for a in agents}
    if known and model_spec.rollback_on_spike:
        for f in found:
            if f.kind != findings.MODEL_UPDATE_SPIKE or f.action != findings.ROLLBACK:
                continue
            incident = findings.incident_id(f)
            spiked = by_name.get(f.agent)
            if incident in done_incidents or spiked is None or f.previous_model is None:
                continue
            if spiked.model != f.model:
                continue  # the Deployment no longer runs the model that spiked
            record = {"agent": spiked.name, "from": spiked.model, "to": f.previous_model, "at": rfc3339(now),
                      "incident": incident, "reason": f.message}
            rollbacks.append(record)
            latest[spiked.name] = record
            done_incidents.add(incident)
            actions.append(SetModel(spiked.name, f.previous_model, spiked.model, "rollback", incident))
            events.append(Event("Warning", "ModelRolledBack",
                                f"{incident}: {spiked.name} rolled back from {spiked.model} to {f.previous_model}: "
                                f"{f.message}. Roll forward: set spec.model.desired", agent=spiked.name))
    handled = {a.agent for a in actions if isinstance(a, SetModel)}
    for agent in agents:
        pin = latest.get(agent.name)
        if (pin is None or not pin.get("incident") or agent.name in handled
                or agent.model is None or agent.model == pin.get("to")):
            continue
        actions.append(SetModel(agent.name, str(pin["to"]), agent.model, "rollback-drift", pin.get("incident")))
        events.append(Event("Warning", "ModelRollbackHeld",
                            f"{agent.name} drifted to {agent.model} after rollback {pin.get('incident')}; "
                            f"set back to {pin['to']}. Roll forward: set spec.model.desired", agent=agent.name))
    out = {"rollbacks": rollbacks[-MAX_ROLLBACKS:]}
    return out, actions, events


def _status(inp: EvaluationInput, agents: Sequence[AgentState], found: Sequence[findings.Finding],
            new: Sequence[findings.Finding], known: bool, reason_unknown: str, ks: Mapping[str, Any],
            engaged: bool, model_status: Mapping[str, Any], prev_conditions: Sequence[Mapping[str, Any]],
            pending: Sequence[PendingApproval] = ()) -> dict[str, Any]:
    budget, now, gen = inp.budget, inp.now, inp.generation

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return condition(prev_conditions, type_, status, reason, message, now, gen)

    status: dict[str, Any] = {}
    if gen is not None:
        status["observedGeneration"] = gen

    # spend and the summary (the limit closest to its cap)
    spend = {w.value: _money(v) for w, v in inp.spend.items() if v is not None}
    if spend:
        status["spend"] = spend
    best: tuple[float, spec.SpendLimit, float] | None = None
    for lim in budget.spec.limits:
        value = inp.spend.get(lim.window)
        if value is None:
            continue
        pct = 100.0 * value / lim.amount_usd
        if best is None or pct > best[0]:
            best = (pct, lim, value)
    if best is not None:
        status["summary"] = {"window": best[1].window.value, "spendUSD": _money(best[2]),
                             "capUSD": best[1].amount_usd, "percentUsed": round(best[0], 1)}

    # unit figures from the minutes
    if inp.minutes is not None:
        status.update(_figures(inp.minutes, now, inp.spend, inp.outcomes, budget.spec, inp.memo))
    models = [{"agent": a.name, "model": a.model} for a in agents if a.model is not None]
    status["models"] = models
    status["lastEvaluated"] = rfc3339(now)

    # conditions
    exceeded = [f for f in found if f.kind in (findings.BUDGET_EXCEEDED, findings.KILL_SWITCH)]
    warned = [f for f in found if f.kind == findings.BUDGET_WARNING]
    anomalies = [f for f in found if f.kind in findings.ANOMALY_KINDS and now - f.time <= ANOMALY_HOLD_SECONDS]
    conditions = []
    if known:
        conditions.append(cond(METRICS_AVAILABLE, "True", "MetricsFresh", "spend and per-minute data are known"))
    else:
        conditions.append(cond(METRICS_AVAILABLE, "False", "MetricsUnavailable", reason_unknown))
    if not known:
        conditions.append(cond(BUDGET_EXCEEDED, "Unknown", "MetricsUnavailable", reason_unknown))
    elif exceeded:
        conditions.append(cond(BUDGET_EXCEEDED, "True", "LimitExceeded", exceeded[-1].message))
    else:
        conditions.append(cond(BUDGET_EXCEEDED, "False", "WithinLimits", "spend is within every limit"))
    if engaged:
        conditions.append(cond(KILL_SWITCH_ENGAGED, "True", "KillSwitchEngaged",
                               f"agents stopped by incident {ks.get('incident')}; set "
                               f"spec.killSwitch.acknowledge to it to resume"))
    else:
        conditions.append(cond(KILL_SWITCH_ENGAGED, "False", "Resumed" if ks.get("resumedAt") else "NotEngaged",
                               f"resumed at {ks['resumedAt']}" if ks.get("resumedAt") else "kill switch not engaged"))
    if not known:
        conditions.append(cond(ANOMALY_DETECTED, "Unknown", "MetricsUnavailable", reason_unknown))
    elif anomalies:
        last = anomalies[-1]
        conditions.append(cond(ANOMALY_DETECTED, "True", _camel(last.kind),
                               f"{findings.incident_id(last)}: {last.message}"))
    else:
        conditions.append(cond(ANOMALY_DETECTED, "False", "NoAnomaly", "no anomaly in the last 15 minutes"))
    if budget.spec.suspend:
        state = SUSPENDED
    elif engaged:
        state = KILLED
    elif not known:
        state = UNKNOWN
    elif exceeded:
        state = EXCEEDED
    elif warned:
        state = WARNING
    else:
        state = ACTIVE
    ready_reason = {SUSPENDED: "Suspended", KILLED: "KillSwitchEngaged", UNKNOWN: "MetricsUnavailable"}
    if state in ready_reason:
        msg = reason_unknown if state == UNKNOWN else f"budget is {state.lower()}"
        conditions.insert(0, cond(READY, "False", ready_reason[state], msg))
    else:
        conditions.insert(0, cond(READY, "True", "Evaluated", f"evaluated {len(agents)} agent(s); state {state}"))
    if pending:
        names = ", ".join(a.name for a in pending[:10]) + (f" (+{len(pending) - 10} more)" if len(pending) > 10 else "")
        conditions.append(cond(APPROVAL_PENDING, "True", "ApprovalPending",
                               f"{len(pending)} CostApproval(s) waiting for a decision: {names}; decide with "
                               "`fleetwarden approve|deny NAME`"))
    else:
        conditions.append(cond(APPROVAL_PENDING, "False", "NoApprovalPending", "no CostApproval is waiting"))
    # keep conditions written by others as they are
    ours = {c["type"] for c in conditions}
    conditions.extend(dict(c) for c in prev_conditions if c.get("type") not in ours)
    status["state"] = state
    status["conditions"] = conditions
    if ks:
        status["killSwitch"] = dict(ks)
    if model_status.get("rollbacks") or model_status.get("specDesired"):
        status["model"] = dict(model_status)

    # incidents: the previous ones plus new findings, newest last, bounded
    incidents = [dict(i) for i in inp.previous.get("incidents") or []]
    for f in new:
        entry: dict[str, Any] = {"id": findings.incident_id(f), "kind": f.kind, "agent": f.agent,
                                 "time": rfc3339(f.onset if f.onset is not None else f.time),
                                 "action": f.action, "message": f.message}
        if f.workflow:
            entry["workflow"] = f.workflow
        if f.model:
            entry["model"] = f.model
        if f.tool:
            entry["tool"] = f.tool
        incidents.append(entry)
    if incidents:
        status["incidents"] = incidents[-MAX_INCIDENTS:]
    return status


def _figures(minutes: Mapping[str, Sequence[series.AgentMinute]], now: float,
             spend: Mapping[spec.Window, float | None],
             outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None,
             budget_spec: spec.AgentBudgetSpec | None = None, memo: Memo | None = None) -> dict[str, Any]:
    """Burn rate, projection, unit costs and the top agents and tools over the last hour.

    All but the projection depend only on complete minutes: with a ``memo`` they are worked
    out once per minute for a given set of agents."""
    end = series.minute_of(now)
    if memo is None:
        fig = _minute_figures(minutes, end, outcomes, budget_spec)
    else:
        covered = tuple(sorted((ms[0].namespace, agent, ms[0].minute, ms[-1].minute, len(ms)) if ms
                               else ("", agent, 0, 0, 0) for agent, ms in minutes.items()))
        fixed = tuple(sorted(budget_spec.fixed_monthly_costs_usd.items())) if budget_spec is not None else ()
        # like the detectors' memo: the same complete minutes (and outcomes) within a minute
        named = tuple(sorted(outcomes)) if outcomes is not None else None
        key = ("figures", covered, fixed, named)
        fig = memo.get(end, key, lambda: _minute_figures(minutes, end, outcomes, budget_spec))
    out: dict[str, Any] = {"burnRateUSDPerHour": fig["burnRateUSDPerHour"]}
    burn = fig["burnRateUSDPerHour"]
    next_month = windows.calendar_end(spec.Window.month, now)
    month_spend = spend.get(spec.Window.month)
    if month_spend is not None:
        out["projectedMonthUSD"] = round(month_spend + burn * (next_month - now) / 3600.0, 2)
    for name, value in fig.items():
        if name != "burnRateUSDPerHour":
            out[name] = [dict(v) for v in value] if isinstance(value, list) else \
                dict(value) if isinstance(value, dict) else value
    return out


def _minute_figures(minutes: Mapping[str, Sequence[series.AgentMinute]], end: int,
                    outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None,
                    budget_spec: spec.AgentBudgetSpec | None) -> dict[str, Any]:
    """The figures of the hour of complete minutes ending at ``end``."""
    hour = [m for ms in minutes.values() for m in ms if m.minute >= end - 3600]
    recent = [m for m in hour if m.minute >= end - BURN_MINUTES * series.MINUTE]
    out: dict[str, Any] = {}
    out["burnRateUSDPerHour"] = _money(sum(m.cost_usd for m in recent) * 60.0 / BURN_MINUTES)
    out.update(unit_costs(hour, outcomes, end - 3600, end, budget_spec))
    per_agent: dict[str, float] = {}
    tool_cost: dict[str, float] = {}
    tool_calls: dict[str, float] = {}
    for m in hour:
        per_agent[m.agent] = per_agent.get(m.agent, 0.0) + m.cost_usd
        for tool, c in m.tool_costs.items():
            tool_cost[tool] = tool_cost.get(tool, 0.0) + c
        for tool, n in m.tool_calls.items():
            tool_calls[tool] = tool_calls.get(tool, 0.0) + n
    out["topAgents"] = [{"name": a, "costUSD": _money(c)}
                        for a, c in sorted(per_agent.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N] if c > 0]
    tools = sorted(set(tool_cost) | set(tool_calls), key=lambda t: (-tool_cost.get(t, 0.0), -tool_calls.get(t, 0.0), t))
    out["topTools"] = [{"name": t, "costUSD": _money(tool_cost.get(t, 0.0)), "calls": round(tool_calls.get(t, 0.0), 1)}
                       for t in tools[:TOP_N] if tool_calls.get(t, 0.0) > 0 or tool_cost.get(t, 0.0) > 0]
    return out


def unit_costs(hour: Sequence[series.AgentMinute], outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None,
               start: float, end: float, budget_spec: spec.AgentBudgetSpec | None) -> dict[str, Any]:
    """``costPerTaskUSD`` and ``costPerOutcomeUSD`` of the minutes in ``[start, end)``, as
    ``fleetwarden report`` counts them (:mod:`fleetwarden.core.economics`): inference + tools +
    human time + the budget's fixed monthly costs prorated, per ended task and per outcome of
    each name. Absent when there is no task (or no outcome of that name): unknown, not 0."""
    if not hour or end <= start:
        return {}
    acc = economics.EconomicsAccumulator()
    named_by_agent = outcomes or {}
    for m in hour:
        named = named_by_agent.get(m.agent)
        acc.add_minute(m, outcomes=(named.get(m.minute) or None) if named else None)
    # what economics.report totals (without its trend, workflow and model breakdowns)
    totals = economics.Totals()
    for _, cell in acc.cells(start, end):
        totals.add(cell)
    if budget_spec is not None:
        totals.fixed_usd = sum(budget_spec.fixed_monthly_costs_usd.values()) * (end - start) / economics.MONTH
    out: dict[str, Any] = {}
    per_task = totals.cost_per_task_usd
    if per_task is not None:
        out["costPerTaskUSD"] = _money(per_task)
    per_outcome = {name: _money(totals.total_usd / n) for name, n in sorted(totals.outcomes.items())
                   if name != economics.UNNAMED and n > 0}
    if per_outcome:
        out["costPerOutcomeUSD"] = per_outcome
    return out
