"""Budget and cost policies: small named pure functions, ``Input -> Finding | None``.

Each policy takes one frozen input value (who, when, the numbers and the spec that
applies) and returns a :class:`~fleetwarden.core.findings.Finding` or ``None``; none reads
a clock or keeps state. Adding a rule means adding a function, its ``REASON`` constant and
a row in its table test (``tests/unit/core/test_policies.py``), cert-manager style.

The caller decides *when* to ask (replay: at each event; the operator: at each cycle,
from Prometheus) and keeps "one problem is one finding" with a :class:`Latch`: a lasting
condition is reported when it starts, and again only when it has ended and started again
(not within the same window period) or has worsened past a new level.

Thresholds: ``budget_warning`` fires at ``spend >= warningPercent`` of the limit (and below
the limit), ``budget_exceeded`` at ``spend > limit``, ``kill_switch`` at ``spend >
thresholdPercent`` of the kill-switch window's cap. Unknown spend (``None``) never fires.

Which manifests apply to an agent: :func:`applicable` (same namespace, selector matches the
agent's labels). Which ``rateLimits.perTool`` limit applies to a tool: :func:`rate_limit_key`
(the SDK, replay and the operator all ask it).

A guardrail finding can also come from the agent itself: the SDK's guardrails check the same
rules in the agent process and count their decisions. The cost-policy inputs take those counts
(``decisions``): a problem the agent saw is reported even when this side lacks the numbers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from fleetwarden.core import findings, spec

# Reasons (the `reason` of a Kubernetes Event, a condition's reason): one per policy.
REASON_BUDGET_WARNING = "BudgetWarning"
REASON_BUDGET_EXCEEDED = "BudgetExceeded"
REASON_KILL_SWITCH = "KillSwitchEngaged"
REASON_TOKEN_CAP = "TokenCapExceeded"
REASON_RATE_LIMIT = "RateLimitExceeded"
REASON_TOOL_NOT_ALLOWED = "ToolNotAllowed"
REASON_APPROVAL_REQUIRED = "ApprovalRequired"

REASONS = {
    findings.BUDGET_WARNING: REASON_BUDGET_WARNING,
    findings.BUDGET_EXCEEDED: REASON_BUDGET_EXCEEDED,
    findings.KILL_SWITCH: REASON_KILL_SWITCH,
    findings.TOKEN_CAP_EXCEEDED: REASON_TOKEN_CAP,
    findings.RATE_LIMIT_EXCEEDED: REASON_RATE_LIMIT,
    findings.TOOL_NOT_ALLOWED: REASON_TOOL_NOT_ALLOWED,
    findings.APPROVAL_REQUIRED: REASON_APPROVAL_REQUIRED,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Subject:
    """Who a finding is about and when it is made (``now``: Unix seconds, the clock at detection)."""

    agent: str
    namespace: str
    now: float
    workflow: str | None = None


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.4f}"


def _window_name(window: spec.Window, calendar: bool) -> str:
    return ("calendar " if calendar else "rolling ") + window.value


# ---------------------------------------------------------------- budgets


@dataclasses.dataclass(frozen=True, slots=True)
class LimitInput:
    """Spend of one budget over one limit's window. ``spend_usd`` None: unknown."""

    subject: Subject
    budget: str
    limit: spec.SpendLimit
    spend_usd: float | None


def budget_warning(inp: LimitInput) -> findings.Finding | None:
    """Spend reached the limit's warning percentage (and is not over the limit yet)."""
    spend, limit = inp.spend_usd, inp.limit
    if spend is None:
        return None
    threshold = limit.amount_usd * limit.warning_percent / 100.0
    if not threshold <= spend <= limit.amount_usd:
        return None
    return _budget_finding(inp, findings.BUDGET_WARNING, findings.ALERT, threshold,
                           f"budget {inp.budget} has used {spend / limit.amount_usd:.0%} of its "
                           f"{_money(limit.amount_usd)} {_window_name(limit.window, limit.calendar)} limit "
                           f"(warning at {limit.warning_percent:g}%)")


def budget_exceeded(inp: LimitInput) -> findings.Finding | None:
    """Spend passed the limit."""
    spend, limit = inp.spend_usd, inp.limit
    if spend is None or not spend > limit.amount_usd:
        return None
    return _budget_finding(inp, findings.BUDGET_EXCEEDED, findings.ALERT, limit.amount_usd,
                           f"budget {inp.budget} is over its {_money(limit.amount_usd)} "
                           f"{_window_name(limit.window, limit.calendar)} limit: {_money(spend)} spent")


def _budget_finding(inp: LimitInput, kind: str, action: str, threshold: float, message: str) -> findings.Finding:
    s, limit = inp.subject, inp.limit
    assert inp.spend_usd is not None
    return findings.Finding(
        kind=kind, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now, action=action,
        budget=inp.budget, message=message,
        evidence={"window": limit.window.value, "calendar": limit.calendar, "spend_usd": round(inp.spend_usd, 6),
                  "limit_usd": limit.amount_usd, "threshold_usd": round(threshold, 6),
                  "percent_used": round(100.0 * inp.spend_usd / limit.amount_usd, 2)},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class KillSwitchInput:
    """Spend in the kill-switch window *since the last human resume* (None: unknown)."""

    subject: Subject
    budget: str
    spec: spec.AgentBudgetSpec
    spend_since_resume_usd: float | None


def kill_switch(inp: KillSwitchInput) -> findings.Finding | None:
    """Spend in the kill-switch window passed ``thresholdPercent`` of that window's cap."""
    ks = inp.spec.kill_switch
    limit = inp.spec.limit_for(ks.window)
    spend = inp.spend_since_resume_usd
    if not ks.enabled or inp.spec.suspend or limit is None or spend is None:
        return None
    threshold = limit.amount_usd * ks.threshold_percent / 100.0
    if not spend > threshold:
        return None
    s = inp.subject
    action = findings.ALERT if ks.action is spec.KillAction.alert_only else findings.KILL
    what = "scale its agents to zero" if action == findings.KILL else "alert only (AlertOnly)"
    return findings.Finding(
        kind=findings.KILL_SWITCH, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
        action=action, budget=inp.budget,
        message=(f"kill switch of budget {inp.budget}: {_money(spend)} in the {_window_name(ks.window, limit.calendar)}"
                 f" passed {ks.threshold_percent:g}% of its {_money(limit.amount_usd)} cap; {what}"),
        evidence={"window": ks.window.value, "spend_usd": round(spend, 6), "cap_usd": limit.amount_usd,
                  "threshold_percent": ks.threshold_percent, "threshold_usd": round(threshold, 6)},
    )


# ---------------------------------------------------------------- cost policies


@dataclasses.dataclass(frozen=True, slots=True)
class TokenCapInput:
    """Tokens of one task (``task_tokens``; None: not known here) against ``caps``. ``decisions``:
    how many times the agent's guardrail refused a model call for this cap (the task is over it
    as the agent counts, whatever is known here); ``policy`` None: no CostPolicy known here."""

    subject: Subject
    policy: str | None
    caps: spec.TokenCaps
    task_id: str | None
    task_tokens: int | None
    decisions: float = 0.0


def token_cap_exceeded(inp: TokenCapInput) -> findings.Finding | None:
    """One task used more tokens than ``tokenCaps.perTask``, or the agent's guardrail said so."""
    cap = inp.caps.per_task
    s = inp.subject
    if cap is not None and inp.task_tokens is not None and inp.task_tokens > cap:
        return findings.Finding(
            kind=findings.TOKEN_CAP_EXCEEDED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
            action=inp.caps.action.value, policy=inp.policy, task_id=inp.task_id,
            message=(f"task {inp.task_id} of {s.agent} used {inp.task_tokens:,} tokens, over its cap of {cap:,} "
                     "per task"),
            evidence={"task_tokens": inp.task_tokens, "cap_tokens": cap},
        )
    if not inp.decisions > 0:
        return None
    of_cap = f" of {cap:,} tokens" if cap is not None else ""
    return findings.Finding(
        kind=findings.TOKEN_CAP_EXCEEDED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
        action=inp.caps.action.value, policy=inp.policy, task_id=inp.task_id,
        message=f"tasks of {s.agent} reached their token cap per task{of_cap}{_said(inp.decisions)}",
        evidence={"cap_tokens": cap} if cap is not None else {},
    )


def _said(decisions: float) -> str:
    return f" ({decisions:g} guardrail decision(s) in its first minute)" if decisions > 0 else ""


@dataclasses.dataclass(frozen=True, slots=True)
class RateInput:
    """Tool calls of one agent in one minute against one limit: ``tool`` None means all tools
    together (``toolCallsPerMinute``), else a ``perTool`` key (a tool's name, or a pattern whose
    tools are counted together: :func:`rate_limit_key`). ``calls_per_minute`` None: not known
    here. ``tool_calls``: the minute's calls by tool, for the evidence of a pattern key.
    ``decisions``: how many times the agent's guardrail refused a call for this limit (then a
    ``tool`` without a ``perTool`` limit of its own falls back to ``toolCallsPerMinute``)."""

    subject: Subject
    policy: str | None
    limits: spec.RateLimits
    tool: str | None
    calls_per_minute: float | None
    tool_calls: Mapping[str, float] | None = None
    decisions: float = 0.0


_PATTERN_CHARS = frozenset("*?[")


def is_pattern(key: str) -> bool:
    """Whether a ``perTool`` key (or any tool rule) is an fnmatch pattern rather than a name."""
    return not _PATTERN_CHARS.isdisjoint(key)


@functools.lru_cache(maxsize=256)
def _patterns(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted((k for k in keys if is_pattern(k)), key=lambda k: (-len(k), k)))


def rate_limit_key(limits: spec.RateLimits, tool: str) -> str | None:
    """The ``perTool`` key whose limit applies to ``tool`` (None: no per-tool limit for it).

    A key equal to the tool's name first; else the first pattern (fnmatch, ``crm.*``) that
    matches it, longest pattern first, then in code-point order: ``crm.search*`` before
    ``crm.*`` before ``*``, whatever the order of the manifest's keys (the API server does not
    keep it). All the tools that a pattern key applies to share its limit: their calls are
    counted together (:func:`rate_key_calls`), as the SDK's one token bucket per key does."""
    per_tool = limits.per_tool
    if tool in per_tool:
        return tool
    for pattern in _patterns(tuple(per_tool)):
        if fnmatch.fnmatchcase(tool, pattern):
            return pattern
    return None


def rate_key_calls(limits: spec.RateLimits, key: str | None, tool_calls: Mapping[str, float]) -> float:
    """The calls of one minute (``tool_calls``: tool -> calls) counted against one limit: every
    call for ``key`` None (``toolCallsPerMinute``), else the calls of the tools whose
    :func:`rate_limit_key` is ``key``."""
    if key is None:
        return float(sum(tool_calls.values()))
    if not is_pattern(key):
        return float(tool_calls.get(key, 0))
    return float(sum(rate_key_tools(limits, key, tool_calls).values()))


def rate_key_tools(limits: spec.RateLimits, key: str, tool_calls: Mapping[str, float]) -> dict[str, float]:
    """The tools of ``tool_calls`` (and their calls) that the ``perTool`` key ``key`` applies to, by name."""
    return {t: c for t, c in sorted(tool_calls.items()) if c > 0 and rate_limit_key(limits, t) == key}


def rate_limit_for(limits: spec.RateLimits, tool: str | None) -> float | None:
    """The limit that applies to one tool or ``perTool`` key (:func:`rate_limit_key`), or to all
    tools (``toolCallsPerMinute``, ``tool`` None)."""
    if tool is None:
        return limits.tool_calls_per_minute
    key = rate_limit_key(limits, tool)
    return limits.per_tool[key] if key is not None else None


def rate_level(calls: float, limit: float) -> int:
    """How far over a limit: 0 within it, 1 over it, 2 over twice it, 3 over four times it, ..."""
    if not calls > limit:
        return 0
    return 1 + max(0, math.ceil(math.log2(calls / limit)) - 1)


def rate_limit_exceeded(inp: RateInput) -> findings.Finding | None:
    """Tool calls per minute above ``rateLimits.toolCallsPerMinute`` (all tools) or the
    ``perTool`` limit of ``tool``, or the agent's guardrail refused calls for it."""
    limit = rate_limit_for(inp.limits, inp.tool)
    calls = inp.calls_per_minute
    s = inp.subject
    if limit is None or calls is None or not calls > limit:
        return _rate_decided(inp) if inp.decisions > 0 else None
    what = f"calls to {inp.tool}" if inp.tool is not None else "tool calls"
    evidence: dict[str, object] = {"calls_per_minute": calls, "limit_per_minute": limit,
                                   "level": rate_level(calls, limit)}
    if inp.tool is not None and is_pattern(inp.tool):
        what = f"calls to tools matching {inp.tool}"
        evidence["tools"] = rate_key_tools(inp.limits, inp.tool, inp.tool_calls or {})
    return findings.Finding(
        kind=findings.RATE_LIMIT_EXCEEDED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
        action=inp.limits.action.value, policy=inp.policy, tool=inp.tool,
        message=f"{s.agent} made {calls:g} {what} in a minute, over its limit of {limit:g} per minute",
        evidence=evidence,
    )


def _rate_decided(inp: RateInput) -> findings.Finding:
    """The agent's guardrail refused calls for a rate limit (the counts here do not show it)."""
    s, limits = inp.subject, inp.limits
    limit = rate_limit_for(limits, inp.tool) if inp.tool is not None else None
    limit = limit if limit is not None else limits.tool_calls_per_minute
    what = f"calls to {inp.tool}" if inp.tool else "tool calls"
    per = f" of {limit:g} per minute" if limit is not None else ""
    return findings.Finding(
        kind=findings.RATE_LIMIT_EXCEEDED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
        action=limits.action.value, policy=inp.policy, tool=inp.tool,
        message=f"{s.agent} hit its rate limit{per} on {what}{_said(inp.decisions)}",
        evidence={"limit_per_minute": limit} if limit is not None else {},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ToolInput:
    """A call to ``tool`` under ``rules``. ``decisions``: how many times the agent's guardrail
    refused the tool (it is not allowed as the agent reads its policy, whatever ``rules`` say
    here); ``policy`` None: no CostPolicy known here."""

    subject: Subject
    policy: str | None
    rules: spec.ToolRules
    tool: str | None
    decisions: float = 0.0


def tool_not_allowed(inp: ToolInput) -> findings.Finding | None:
    """A call to a tool outside the allowlist or in the denylist, or one the agent's guardrail refused."""
    s = inp.subject
    if inp.tool is not None and not inp.rules.allowed(inp.tool):
        why = "is denied" if any(_match(inp.tool, p) for p in inp.rules.deny) else "is not in the allowlist"
        return findings.Finding(
            kind=findings.TOOL_NOT_ALLOWED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
            action=inp.rules.action.value, policy=inp.policy, tool=inp.tool,
            message=f"{s.agent} called tool {inp.tool}, which {why} by policy {inp.policy}",
            evidence={"allow": list(inp.rules.allow) if inp.rules.allow is not None else None,
                      "deny": list(inp.rules.deny)},
        )
    if not inp.decisions > 0:
        return None
    return findings.Finding(
        kind=findings.TOOL_NOT_ALLOWED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
        action=inp.rules.action.value, policy=inp.policy, tool=inp.tool,
        message=(f"{s.agent} called tool {inp.tool or '(none)'}, which its cost policy does not allow"
                 f"{_said(inp.decisions)}"),
        evidence={},
    )


def _match(tool: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(tool, pattern)


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalInput:
    """One tool call: its amount (``value_usd``, else ``amount_usd``, else ``cost_usd``; None: none
    given) and how many calls of this tool its task has made, this one included. ``decisions``:
    how many times the agent's guardrail held a call to ``tool`` (None: not known) for a human."""

    subject: Subject
    rules: Sequence[spec.ApprovalRule]
    tool: str | None
    task_id: str | None
    amount_usd: float | None
    calls_in_task: int
    decisions: float = 0.0


def approval_required(inp: ApprovalInput) -> list[findings.Finding]:
    """Each approval rule the call trips: an amount above ``amountAboveUSD`` (for the rule's tool,
    or any tool when it names none), or exactly the (N+1)th call of the rule's tool in one task
    (N = ``callsPerWorkflowAbove``). ``policy`` is the rule's name. When none trips but the
    agent's guardrail held calls (``decisions``): one finding, for the first rule of the tool."""
    out: list[findings.Finding] = []
    s = inp.subject
    for rule in inp.rules:
        if inp.tool is None or not _rule_applies(rule, inp.tool):
            continue
        evidence: dict[str, object] = {"rule": rule.name, "timeout_seconds": rule.timeout_seconds}
        if rule.amount_above_usd is not None and inp.amount_usd is not None and inp.amount_usd > rule.amount_above_usd:
            evidence.update(amount_usd=inp.amount_usd, amount_above_usd=rule.amount_above_usd)
            message = (f"{s.agent} wants to call {inp.tool} for {_money(inp.amount_usd)}, above the "
                       f"{_money(rule.amount_above_usd)} that rule {rule.name} lets it spend without a human")
        elif (rule.calls_per_workflow_above is not None and inp.task_id is not None
              and inp.calls_in_task == rule.calls_per_workflow_above + 1):
            evidence.update(calls_in_task=inp.calls_in_task, calls_per_workflow_above=rule.calls_per_workflow_above)
            message = (f"task {inp.task_id} of {s.agent} made call {inp.calls_in_task} to {inp.tool}; rule "
                       f"{rule.name} needs a human above {rule.calls_per_workflow_above} calls per workflow run")
        else:
            continue
        out.append(findings.Finding(
            kind=findings.APPROVAL_REQUIRED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
            action=findings.DENY, policy=rule.name, tool=inp.tool, task_id=inp.task_id, message=message,
            evidence=evidence,
        ))
    if out or not inp.decisions > 0:
        return out
    return [_approval_decided(inp)]


def _rule_applies(rule: spec.ApprovalRule, tool: str) -> bool:
    return rule.tool is None or rule.tool == tool or _match(tool, rule.tool)


def _approval_decided(inp: ApprovalInput) -> findings.Finding:
    """The agent's guardrail held calls for a human (the numbers here do not show which rule tripped)."""
    s = inp.subject
    rule = next((r for r in inp.rules if inp.tool is None or _rule_applies(r, inp.tool)), None)
    evidence: dict[str, object] = {}
    if rule is not None:
        evidence.update(rule=rule.name, timeout_seconds=rule.timeout_seconds)
    return findings.Finding(
        kind=findings.APPROVAL_REQUIRED, agent=s.agent, namespace=s.namespace, workflow=s.workflow, time=s.now,
        action=findings.DENY, policy=rule.name if rule is not None else None, tool=inp.tool, task_id=inp.task_id,
        message=(f"{s.agent} needs a human to approve calls to {inp.tool or 'a tool'}"
                 + (f" (rule {rule.name})" if rule is not None else "") + _said(inp.decisions)),
        evidence=evidence,
    )


# ---------------------------------------------------------------- selection and de-duplication

_R = TypeVar("_R", spec.AgentBudget, spec.CostPolicy)


def applicable(resources: Iterable[_R], namespace: str, labels: Mapping[str, str]) -> list[_R]:
    """The manifests that apply to an agent: same namespace, selector matches its labels; by name."""
    chosen = [r for r in resources
              if r.metadata.namespace == namespace and r.spec.selector.matches(dict(labels))]
    return sorted(chosen, key=lambda r: r.metadata.name)


def agent_prices(budgets: Sequence[spec.AgentBudget], cost_policies: Sequence[spec.CostPolicy]
                 ) -> tuple[dict[str, float], float | None]:
    """An agent's tool prices and human hourly rate from the manifests that apply to it (as
    :func:`applicable` orders them): a tool's price from the first CostPolicy that sets one,
    the rate of the first AgentBudget (None: no budget applies)."""
    tool_prices: dict[str, float] = {}
    for p in reversed(cost_policies):
        tool_prices.update(p.spec.tool_prices_usd)
    return tool_prices, (budgets[0].spec.human_hourly_rate_usd if budgets else None)


class Latch:
    """Remembers reported conditions so one problem is one finding.

    ``fire(key, active, now, level=1, period=None)`` returns True when a finding should be
    reported: the condition is active and either was not (and, with ``period`` seconds
    given, at least ``period`` has passed since the last report of ``key``: not again within
    the same window period) or its ``level`` rose above the level last reported. An inactive
    condition resets the key.
    """

    __slots__ = ("_active", "_last")

    def __init__(self) -> None:
        self._active: dict[object, int] = {}
        self._last: dict[object, float] = {}

    def fire(self, key: object, active: bool, now: float, level: int = 1, period: float | None = None) -> bool:
        if not active:
            self._active.pop(key, None)
            return False
        reported = self._active.get(key)
        if reported is not None:
            if level > reported:
                self._active[key] = level
                self._last[key] = now
                return True
            return False
        last = self._last.get(key)
        if period is not None and last is not None and now - last < period:
            self._active[key] = level  # the same condition, back within its window period
            return False
        self._active[key] = level
        self._last[key] = now
        return True

    def forget(self, key: object) -> None:
        self._active.pop(key, None)
        self._last.pop(key, None)
