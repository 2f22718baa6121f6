"""Guardrail problems of one agent over its per-minute buckets: one fold, one finding per problem.

Guardrail problems are ``rate_limit_exceeded``, ``tool_not_allowed``, ``token_cap_exceeded``
and ``approval_required``. Their sources are the SDK's guardrail decisions
(``fleetwarden_guardrail_decisions_total`` by status and tool) and the tool calls of the
buckets themselves (rate limits, and tools outside an allowlist for agents without the SDK's
guardrails).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from fleetwarden.core import decision, findings, policies, series, spec
from fleetwarden.core import status as st

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



def rate_findings(agent: decision.AgentDeployment, minutes: Sequence[series.AgentMinute],
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



def _episodes(active: Sequence[int], quiet_minutes: int | None) -> list[tuple[int, int]]:
    """Runs of minutes (sorted) less than ``quiet_minutes`` apart: (first, last). None: one run."""
    runs: list[tuple[int, int]] = []
    for minute in active:
        if runs and (quiet_minutes is None or minute - runs[-1][1] <= quiet_minutes * series.MINUTE):
            runs[-1] = (runs[-1][0], minute)
        else:
            runs.append((minute, minute))
    return runs


def guardrail_findings(agent: decision.AgentDeployment, minutes: Sequence[series.AgentMinute],
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


def keep_onsets(found: Sequence[findings.Finding], previous_incidents: Sequence[st.Incident],
                lookback_start: float | None) -> list[findings.Finding]:
    """Give a guardrail problem that is still going on the onset (so the incident id) it was
    first reported with: a ``tool_not_allowed`` already in ``status.incidents`` always; another
    guardrail kind when its episode starts so near the start of the lookback that it may have
    begun before it (the refold no longer sees the start)."""
    known: dict[tuple[str, str, str | None], list[float]] = {}
    for incident in previous_incidents:
        if incident.time is not None and incident.kind in _EPISODE_KINDS:
            key = (str(incident.kind), str(incident.agent), incident.tool)
            known.setdefault(key, []).append(incident.time.timestamp())
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


def agent_findings(agent: decision.AgentDeployment, minutes: Sequence[series.AgentMinute],
                   decisions: Mapping[int, Mapping[tuple[str, str], float]],
                   policies_: Sequence[spec.CostPolicy]) -> list[findings.Finding]:
    """Every guardrail problem of one agent over its lookback: rate limits from its tool calls,
    then the SDK's decisions and the tools outside its allowlist."""
    rate = rate_findings(agent, minutes, policies_)
    return rate + guardrail_findings(agent, minutes, decisions, policies_, rate)
