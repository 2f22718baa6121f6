"""Guardrail problems of one agent over its per-minute buckets: one fold, one finding per problem.

Guardrail problems are ``rate_limit_exceeded``, ``tool_not_allowed``, ``token_cap_exceeded``
and ``approval_required``. Their sources are the SDK's guardrail decisions
(``fleetwarden_guardrail_decisions_total`` by status and tool) and the tool calls of the
buckets themselves (rate limits, and tools outside an allowlist for agents without the SDK's
guardrails). Every finding is built by its rule in :mod:`~fleetwarden.core.policies`.

When a problem starts, worsens and ends is :class:`Episodes`, the one state machine that
the operator's refold here and replay's minute close (``core/replay.py``) both feed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from fleetwarden.core import decision, findings, policies, series, spec
from fleetwarden.core import status as st

# Guardrail findings: decisions of one kind (and tool) less than this many minutes apart are
# one problem; a quieter stretch ends it.
GUARDRAIL_QUIET_MINUTES = 10
# A rate-limit episode ends at the first complete minute within the limit.
RATE_QUIET_MINUTES = 1
# fleetwarden_guardrail_decisions_total{status} -> finding kind
GUARDRAIL_KINDS = {
    "token_cap_exceeded": findings.TOKEN_CAP_EXCEEDED,
    "rate_limit_exceeded": findings.RATE_LIMIT_EXCEEDED,
    "tool_not_allowed": findings.TOOL_NOT_ALLOWED,
    "approval_required": findings.APPROVAL_REQUIRED,
}
# A CostPolicy in DryRun or Warn blocks nothing: the SDK counts a decision that would have blocked
# as ``would_<status>``. It is the same problem, so the same finding (its evidence says it was not
# blocked); the alert follows the policy's mode (stages.dry_run_policy).
WOULD = "would_"
WOULD_KINDS = {WOULD + status: kind for status, kind in GUARDRAIL_KINDS.items()}
# every decision status that is a finding, as the Prometheus adapter selects them
FINDING_STATUSES = (*GUARDRAIL_KINDS, *WOULD_KINDS)


@dataclasses.dataclass(slots=True)
class Episode:
    """One problem: its first minute, the last complete minute it was seen in, the level reported."""

    first: int
    last: int
    level: int
    ended: bool = False


_K = TypeVar("_K", bound=Hashable)


class Episodes(Generic[_K]):
    """When guardrail problems start, worsen and end: one problem, one finding.

    Fed minute by minute, per key (a policy and a limit, a kind and a tool, ...), by
    ``observe(key, minute, level)``, which returns True when a finding is due:

    - a problem starts when its condition holds (``level`` >= 1) and no episode of its key is
      open: True;
    - it worsens when the condition holds at a level above the one reported: True (not with
      ``worsen=False``: a caller that judged each level as it came, like replay's minute close);
    - it goes on, silently, while the condition holds at the level reported or below;
    - it ends at a *complete* minute without the condition (``level`` 0) that comes at least
      ``quiet_minutes`` after the last complete minute it was seen in (``quiet_minutes`` None:
      it never ends: one finding per key).

    ``complete=False``: ``minute`` is still open (replay, at event time): it can start or worsen
    an episode, but neither extends nor ends one (only complete minutes do). Missing minutes
    are unknown: they neither extend nor end an episode (feed level 0 where a minute is known
    to be quiet). A key keeps its place in :meth:`open_keys` through an episode that ends and the
    next one, until :meth:`drop_ended` (a caller reporting in key order keeps its order).
    """

    __slots__ = ("quiet", "_by_key")

    def __init__(self, quiet_minutes: int | None = RATE_QUIET_MINUTES) -> None:
        self.quiet = None if quiet_minutes is None else quiet_minutes * series.MINUTE
        self._by_key: dict[_K, Episode] = {}

    def observe(self, key: _K, minute: int, level: int, *, complete: bool = True,
                worsen: bool = True) -> bool:
        ep = self._by_key.get(key)
        if ep is None or ep.ended:
            if level <= 0:
                return False
            self._by_key[key] = Episode(minute, minute, level)
            return True
        if level <= 0:
            if complete and self.quiet is not None and minute - ep.last >= self.quiet:
                ep.ended = True
            return False
        if complete and minute > ep.last:
            ep.last = minute
        if worsen and level > ep.level:
            ep.level = level
            return True
        return False

    def get(self, key: _K) -> Episode | None:
        """The open episode of ``key``, if any."""
        ep = self._by_key.get(key)
        return ep if ep is not None and not ep.ended else None

    def open_keys(self) -> list[_K]:
        """The keys with an open episode, in the order they first opened one."""
        return [k for k, ep in self._by_key.items() if not ep.ended]

    def end(self, key: _K) -> None:
        """Forget ``key``'s episode (its rule is gone)."""
        self._by_key.pop(key, None)

    def drop_ended(self) -> None:
        """Forget the episodes that ended (their keys lose their place in :meth:`open_keys`)."""
        for key in [k for k, ep in self._by_key.items() if ep.ended]:
            del self._by_key[key]

    def __bool__(self) -> bool:
        return any(not ep.ended for ep in self._by_key.values())


def rate_findings(agent: decision.AgentDeployment, minutes: Sequence[series.AgentMinute],
                  policies_: Sequence[spec.CostPolicy]) -> list[findings.Finding]:
    """``policies.rate_limit_exceeded`` per minute over the lookback, one finding per episode
    (:class:`Episodes`), for ``toolCallsPerMinute`` and each ``perTool`` key (a pattern's tools
    counted together). A minute missing from ``minutes`` is unknown: it does not end an episode."""
    out: list[findings.Finding] = []
    ordered: list[series.AgentMinute] | None = None  # sorted once a policy limits a rate
    for policy in policies.applicable(policies_, agent.namespace, agent.labels):
        limits = policy.spec.rate_limits
        if limits.tool_calls_per_minute is None and not limits.per_tool:
            continue
        if ordered is None:
            ordered = sorted(minutes, key=lambda m: m.minute)
        keys: list[str | None] = [None, *sorted(limits.per_tool)]
        episodes: Episodes[str | None] = Episodes(RATE_QUIET_MINUTES)
        for m in ordered:
            for key in keys:
                limit = policies.rate_limit_for(limits, key)
                calls = policies.rate_key_calls(limits, key, m.tool_calls)
                level = policies.rate_level(calls, limit) if limit is not None else 0
                if episodes.observe(key, m.minute, level):
                    subject = policies.Subject(agent.name, agent.namespace, float(m.minute + series.MINUTE),
                                               m.workflow)
                    f = policies.rate_limit_exceeded(policies.RateInput(
                        subject, policy.metadata.name, limits, key, calls, m.tool_calls))
                    if f is not None:
                        out.append(f)
    return out


# (kind, tool) -> minute -> {"decisions": n, "calls": n}
_Active = dict[tuple[str, str], dict[int, dict[str, float]]]


def _decided(decisions: Mapping[int, Mapping[tuple[str, str], float]], chosen: Sequence[spec.CostPolicy],
             active: _Active) -> None:
    """The SDK's decisions that are findings, into ``active``; a rate-limit decision under the
    ``perTool`` key that applies to its tool (a pattern's tools are one problem)."""
    rate_policy = _rate_policy(chosen)
    limits = rate_policy.spec.rate_limits if rate_policy is not None else None
    for minute, counts in decisions.items():
        for (status, tool), n in counts.items():
            kind = GUARDRAIL_KINDS.get(status) or WOULD_KINDS.get(status)
            if kind is None or not n > 0:
                continue
            if kind == findings.RATE_LIMIT_EXCEEDED and limits is not None and limits.per_tool and tool:
                tool = policies.rate_limit_key(limits, tool) or tool
            cell = active.setdefault((kind, tool), {}).setdefault(minute, {})
            cell["decisions"] = cell.get("decisions", 0.0) + n
            if status in WOULD_KINDS:
                cell["not_blocked"] = cell.get("not_blocked", 0.0) + n


def _refused_calls(minutes: Sequence[series.AgentMinute], chosen: Sequence[spec.CostPolicy],
                   active: _Active) -> dict[str, spec.CostPolicy | None]:
    """Calls to tools a CostPolicy refuses, into ``active``; tool -> the first policy refusing it."""
    ruled = [p for p in chosen if p.spec.tools.allow is not None or p.spec.tools.deny]
    refused: dict[str, spec.CostPolicy | None] = {}
    if not ruled:
        return refused
    for m in minutes:
        for tool, calls in m.tool_calls.items():
            if calls <= 0:
                continue
            if tool not in refused:
                refused[tool] = next((p for p in ruled if not p.spec.tools.allowed(tool)), None)
            if refused[tool] is not None:
                cell = active.setdefault((findings.TOOL_NOT_ALLOWED, tool), {}).setdefault(m.minute, {})
                cell["calls"] = cell.get("calls", 0.0) + calls
    return refused


def _started(by_minute: Mapping[int, object], quiet_minutes: int | None) -> list[Episode]:
    """The episodes of one condition active in the minutes of ``by_minute`` (every other minute
    between them quiet), in order."""
    episodes: Episodes[None] = Episodes(quiet_minutes)
    started = []
    for minute in range(min(by_minute), max(by_minute) + series.MINUTE, series.MINUTE):
        if episodes.observe(None, minute, 1 if minute in by_minute else 0):
            ep = episodes.get(None)
            assert ep is not None
            started.append(ep)
    return started


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
    active: _Active = {}
    _decided(decisions, chosen, active)
    refused = _refused_calls(minutes, chosen, active)
    if not active:
        return []
    workflows = {m.minute: m.workflow for m in minutes}
    rate_minutes = sorted(int(f.time) - series.MINUTE for f in rate_found)
    out: list[findings.Finding] = []
    for (kind, tool), by_minute in sorted(active.items()):
        quiet = None if kind == findings.TOOL_NOT_ALLOWED else GUARDRAIL_QUIET_MINUTES
        for ep in _started(by_minute, quiet):
            if kind == findings.RATE_LIMIT_EXCEEDED and any(ep.first <= m <= ep.last for m in rate_minutes):
                continue
            subject = policies.Subject(agent.name, agent.namespace, float(ep.first + series.MINUTE),
                                       workflows.get(ep.first))
            f = _guardrail_finding(kind, tool or None, subject, by_minute[ep.first], chosen, refused.get(tool))
            out.append(dataclasses.replace(f, onset=float(ep.first)))
    return out


def _guardrail_finding(kind: str, tool: str | None, s: policies.Subject, counts: Mapping[str, float],
                       chosen: Sequence[spec.CostPolicy], refusing: spec.CostPolicy | None) -> findings.Finding:
    """One guardrail finding, by its rule in :mod:`policies` with the CostPolicy that applies, and
    where it was seen (the SDK's decisions, the tool calls) added to its evidence."""
    decisions = counts.get("decisions", 0.0)
    evidence: dict[str, Any] = {"source": "sdk" if decisions else "tool_calls"}
    if decisions:
        evidence["decisions_in_minute"] = decisions
    if counts.get("calls"):
        evidence["calls_in_minute"] = counts["calls"]
    if counts.get("not_blocked"):
        evidence["not_blocked_in_minute"] = counts["not_blocked"]  # would_*: the policy's DryRun or Warn
    first = chosen[0] if chosen else None
    found: findings.Finding | None
    if kind == findings.TOOL_NOT_ALLOWED:
        policy = (refusing or next((p for p in chosen if not p.spec.tools.allowed(tool)), None)) if tool else None
        policy = policy or first
        found = policies.tool_not_allowed(policies.ToolInput(
            s, _name(policy), policy.spec.tools if policy else spec.ToolRules(), tool, decisions))
    elif kind == findings.TOKEN_CAP_EXCEEDED:
        policy = next((p for p in chosen if p.spec.token_caps.per_task is not None), first)
        found = policies.token_cap_exceeded(policies.TokenCapInput(
            s, _name(policy), policy.spec.token_caps if policy else spec.TokenCaps(), None, None, decisions))
    elif kind == findings.RATE_LIMIT_EXCEEDED:
        policy = _rate_policy(chosen) or first
        found = policies.rate_limit_exceeded(policies.RateInput(
            s, _name(policy), policy.spec.rate_limits if policy else spec.RateLimits(), tool, None,
            decisions=decisions))
    else:  # approval_required: the rule (as replay names it) that applies to the tool, when one does
        rules = [r for p in chosen for r in p.spec.approvals]
        found = next(iter(policies.approval_required(policies.ApprovalInput(
            s, rules, tool, None, None, 0, decisions))), None)
    assert found is not None, "a guardrail episode has decisions or refused calls"
    return dataclasses.replace(found, evidence={**found.evidence, **evidence})


def _rate_policy(chosen: Sequence[spec.CostPolicy]) -> spec.CostPolicy | None:
    """The CostPolicy whose rate limits a guardrail decision is read against: the first that sets any."""
    return next((p for p in chosen if p.spec.rate_limits.tool_calls_per_minute is not None
                 or p.spec.rate_limits.per_tool), None)


def _name(policy: spec.CostPolicy | None) -> str | None:
    return policy.metadata.name if policy is not None else None


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
