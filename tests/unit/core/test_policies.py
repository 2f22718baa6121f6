"""Budget and cost policies: one table test per policy, plus selection and the one-problem-one-finding latch."""

from __future__ import annotations

from typing import Any

import pytest

from fleetwarden.core import findings, policies, spec

NOW = 1795860000.0
WHO = policies.Subject(agent="support-bot", namespace="support", now=NOW, workflow="refund")


def _limit(amount: float = 100.0, warning: float = 80.0, window: str = "hour") -> spec.SpendLimit:
    return spec.SpendLimit(window=spec.Window(window), amount_usd=amount, warning_percent=warning)


@pytest.mark.parametrize(
    ("spend", "fires"),
    [(None, False), (0.0, False), (79.99, False), (80.0, True), (99.0, True), (100.0, True), (100.01, False)],
)
def test_budget_warning(spend: float | None, fires: bool) -> None:
    """budget_warning fires from warningPercent of the limit up to the limit, never on unknown spend."""
    f = policies.budget_warning(policies.LimitInput(subject=WHO, budget="b", limit=_limit(), spend_usd=spend))
    assert (f is not None) == fires
    if f is not None:
        assert (f.kind, f.action, f.budget, f.agent, f.time) == (findings.BUDGET_WARNING, "alert", "b", "support-bot", NOW)
        assert f.evidence["threshold_usd"] == 80.0


@pytest.mark.parametrize(("spend", "fires"), [(None, False), (100.0, False), (100.01, True), (1000.0, True)])
def test_budget_exceeded(spend: float | None, fires: bool) -> None:
    """budget_exceeded fires once spend passes the limit."""
    f = policies.budget_exceeded(policies.LimitInput(subject=WHO, budget="b", limit=_limit(), spend_usd=spend))
    assert (f is not None) == fires
    if f is not None:
        assert f.kind == findings.BUDGET_EXCEEDED and f.evidence["spend_usd"] == spend


def _budget(**kill: object) -> spec.AgentBudgetSpec:
    return spec.AgentBudgetSpec(limits=[_limit(20.0)], kill_switch=spec.KillSwitch(**kill))


@pytest.mark.parametrize(
    ("budget", "spend", "action"),
    [
        (_budget(), 30.0, None),  # 150% is not passed at exactly 150%
        (_budget(), 30.01, "kill"),
        (_budget(), None, None),  # unknown spend never kills
        (_budget(action="AlertOnly"), 31.0, "alert"),
        (_budget(enabled=False), 100.0, None),
        (_budget(threshold_percent=200), 39.0, None),
        (_budget(threshold_percent=200), 41.0, "kill"),
        (spec.AgentBudgetSpec(limits=[_limit(20.0)], suspend=True), 100.0, None),
    ],
)
def test_kill_switch(budget: spec.AgentBudgetSpec, spend: float | None, action: str | None) -> None:
    """kill_switch fires past thresholdPercent of its window's cap; kill, or alert for AlertOnly."""
    f = policies.kill_switch(policies.KillSwitchInput(subject=WHO, budget="b", spec=budget,
                                                      spend_since_resume_usd=spend))
    assert (f.action if f is not None else None) == action
    if f is not None:
        assert f.kind == findings.KILL_SWITCH


@pytest.mark.parametrize(
    ("caps", "tokens", "action"),
    [
        (spec.TokenCaps(), 10**9, None),
        (spec.TokenCaps(per_task=1000), 1000, None),
        (spec.TokenCaps(per_task=1000), 1001, "deny"),
        (spec.TokenCaps(per_task=1000, action="pause"), 5000, "pause"),
    ],
)
def test_token_cap_exceeded(caps: spec.TokenCaps, tokens: int, action: str | None) -> None:
    """token_cap_exceeded fires when a task's tokens pass tokenCaps.perTask, naming the task, with the policy's action."""
    f = policies.token_cap_exceeded(policies.TokenCapInput(subject=WHO, policy="p", caps=caps, task_id="t-9",
                                                           task_tokens=tokens))
    assert (f.action if f is not None else None) == action
    if f is not None:
        assert (f.task_id, f.policy, f.kind) == ("t-9", "p", findings.TOKEN_CAP_EXCEEDED)


@pytest.mark.parametrize(
    ("limits", "tool", "calls", "level"),
    [
        (spec.RateLimits(), None, 1000.0, None),
        (spec.RateLimits(tool_calls_per_minute=60), None, 60.0, None),
        (spec.RateLimits(tool_calls_per_minute=60), None, 61.0, 1),
        (spec.RateLimits(tool_calls_per_minute=60), None, 121.0, 2),
        (spec.RateLimits(tool_calls_per_minute=60), "crm.search", 500.0, None),  # no per-tool limit for it
        (spec.RateLimits(per_tool={"crm.search": 10}), "crm.search", 11.0, 1),
        (spec.RateLimits(per_tool={"crm.search": 10}), "crm.search", 41.0, 3),
    ],
)
def test_rate_limit_exceeded(limits: spec.RateLimits, tool: str | None, calls: float, level: int | None) -> None:
    """rate_limit_exceeded fires above toolCallsPerMinute (all tools) or perTool[tool]; evidence says how far over."""
    f = policies.rate_limit_exceeded(policies.RateInput(subject=WHO, policy="p", limits=limits, tool=tool,
                                                        calls_per_minute=calls))
    assert (f.evidence["level"] if f is not None else None) == level
    if f is not None:
        assert (f.tool, f.action) == (tool, "throttle")


PER_TOOL = {"crm.search": 5, "crm.*": 10, "*": 100, "crm.s*": 20, "kb.[ab]*": 7, "web.?et": 3}


@pytest.mark.parametrize(
    ("per_tool", "tool", "key"),
    [
        (PER_TOOL, "crm.search", "crm.search"),  # the tool's own name first
        (PER_TOOL, "crm.update", "crm.*"),  # else a pattern
        (PER_TOOL, "crm.sync", "crm.s*"),  # the longest pattern that matches
        (PER_TOOL, "email.send", "*"),
        (PER_TOOL, "kb.article", "kb.[ab]*"),  # fnmatch classes and ? too
        (PER_TOOL, "web.get", "web.?et"),
        (dict(reversed(PER_TOOL.items())), "crm.sync", "crm.s*"),  # whatever the order of the keys
        ({"a*": 1, "b*": 1, "*x": 1}, "ax", "*x"),  # patterns of one length: in code-point order
        ({"crm.*": 1}, "CRM.search", None),  # case matters, as in the SDK
        ({"crm.search": 1}, "crm.searches", None),  # a name is not a prefix
        ({}, "crm.search", None),
    ],
)
def test_rate_limit_key(per_tool: dict[str, float], tool: str, key: str | None) -> None:
    """rate_limit_key: the perTool key whose limit applies to a tool: its name, else the longest matching pattern."""
    limits = spec.RateLimits(per_tool=per_tool)
    assert policies.rate_limit_key(limits, tool) == key
    assert policies.rate_limit_for(limits, tool) == (per_tool[key] if key is not None else None)


@pytest.mark.parametrize(
    ("key", "calls"),
    [
        (None, 17.0),  # toolCallsPerMinute: every call
        ("crm.search", 4.0),  # a name: its own calls
        ("crm.*", 5.0),  # a pattern: its tools together (crm.update 2 + crm.get 3), not crm.search (own key)
        ("kb.*", 0.0),
        ("*", 8.0),  # the tools no longer pattern matches
    ],
)
def test_rate_key_calls(key: str | None, calls: float) -> None:
    """rate_key_calls counts one minute's calls against a limit: every tool its key applies to, together."""
    limits = spec.RateLimits(tool_calls_per_minute=50, per_tool={"crm.search": 5, "crm.*": 4, "kb.*": 2, "*": 9})
    minute = {"crm.search": 4.0, "crm.update": 2.0, "crm.get": 3.0, "web.search": 8.0}
    assert policies.rate_key_calls(limits, key, minute) == calls


def test_a_pattern_limit_names_its_tools() -> None:
    """rate_limit_exceeded for a pattern key names the pattern and, in its evidence, the tools counted."""
    limits = spec.RateLimits(per_tool={"crm.*": 4, "crm.search": 50})
    f = policies.rate_limit_exceeded(policies.RateInput(
        WHO, "p", limits, "crm.*", 5.0, {"crm.update": 2, "crm.get": 3, "crm.search": 9, "kb.search": 1}))
    assert f is not None and f.tool == "crm.*"
    assert f.evidence["tools"] == {"crm.get": 3, "crm.update": 2}
    assert f.message == "support-bot made 5 calls to tools matching crm.* in a minute, over its limit of 4 per minute"


@pytest.mark.parametrize(
    ("build", "kind", "said"),
    [
        (lambda n: policies.token_cap_exceeded(policies.TokenCapInput(
            WHO, "p", spec.TokenCaps(per_task=100), None, None, n)), findings.TOKEN_CAP_EXCEEDED, "of 100 tokens"),
        (lambda n: policies.rate_limit_exceeded(policies.RateInput(
            WHO, "p", spec.RateLimits(tool_calls_per_minute=9, per_tool={"crm.*": 3}), "crm.*", None, decisions=n)),
         findings.RATE_LIMIT_EXCEEDED, "of 3 per minute on calls to crm.*"),
        (lambda n: policies.rate_limit_exceeded(policies.RateInput(
            WHO, "p", spec.RateLimits(tool_calls_per_minute=9), "kb.search", None, decisions=n)),
         findings.RATE_LIMIT_EXCEEDED, "of 9 per minute on calls to kb.search"),  # no per-tool limit: the overall
        (lambda n: policies.tool_not_allowed(policies.ToolInput(WHO, "p", spec.ToolRules(), "shell", n)),
         findings.TOOL_NOT_ALLOWED, "which its cost policy does not allow"),
        (lambda n: next(iter(policies.approval_required(policies.ApprovalInput(
            WHO, [BIG], "ticket.refund", None, None, 0, n))), None),
         findings.APPROVAL_REQUIRED, "(rule big-refund)"),
    ],
)
def test_the_agents_own_decisions_make_the_finding(build: Any, kind: str, said: str) -> None:
    """Each cost-policy rule reports what the agent's guardrail decided, without the numbers; no decision, no finding."""
    assert build(0.0) is None
    f = build(3.0)
    assert f is not None and f.kind == kind
    assert said in f.message and f.message.endswith("(3 guardrail decision(s) in its first minute)")


@pytest.mark.parametrize(
    ("rules", "tool", "fires"),
    [
        (spec.ToolRules(), "anything", False),
        (spec.ToolRules(allow=["crm.*"]), "crm.search", False),
        (spec.ToolRules(allow=["crm.*"]), "shell.exec", True),
        (spec.ToolRules(deny=["ticket.delete"]), "ticket.delete", True),
        (spec.ToolRules(deny=["ticket.delete"]), "ticket.update", False),
        (spec.ToolRules(allow=[]), "crm.search", True),
    ],
)
def test_tool_not_allowed(rules: spec.ToolRules, tool: str, fires: bool) -> None:
    """tool_not_allowed fires for a tool outside the allowlist or in the denylist, naming the tool."""
    f = policies.tool_not_allowed(policies.ToolInput(subject=WHO, policy="p", rules=rules, tool=tool))
    assert (f is not None) == fires
    if f is not None:
        assert (f.tool, f.action, f.kind) == (tool, "deny", findings.TOOL_NOT_ALLOWED)


BIG = spec.ApprovalRule(name="big-refund", tool="ticket.refund", amount_above_usd=200)
ANY = spec.ApprovalRule(name="any-expensive", amount_above_usd=1000)
CALLS = spec.ApprovalRule(name="enrich-calls", tool="enrich.lookup", calls_per_workflow_above=3)


@pytest.mark.parametrize(
    ("tool", "amount", "calls", "names"),
    [
        ("ticket.refund", 150.0, 1, []),
        ("ticket.refund", 200.0, 1, []),
        ("ticket.refund", 250.0, 1, ["big-refund"]),
        ("ticket.refund", 1500.0, 1, ["big-refund", "any-expensive"]),
        ("crm.search", 1500.0, 1, ["any-expensive"]),
        ("crm.search", None, 1, []),
        ("enrich.lookup", None, 3, []),
        ("enrich.lookup", None, 4, ["enrich-calls"]),
        ("enrich.lookup", None, 5, []),  # only the (N+1)th call of the task
    ],
)
def test_approval_required(tool: str, amount: float | None, calls: int, names: list[str]) -> None:
    """approval_required fires per rule: an amount above amountAboveUSD, or the (N+1)th call of the rule's tool in a task."""
    out = policies.approval_required(policies.ApprovalInput(subject=WHO, rules=[BIG, ANY, CALLS], tool=tool,
                                                            task_id="t-1", amount_usd=amount, calls_in_task=calls))
    assert [f.policy for f in out] == names
    assert all(f.kind == findings.APPROVAL_REQUIRED and f.tool == tool and f.task_id == "t-1" for f in out)


def test_every_policy_kind_has_a_reason() -> None:
    """Each policy kind has a Reason constant, distinct from the others."""
    assert set(policies.REASONS) == set(findings.KINDS) - set(findings.ANOMALY_KINDS)
    assert len(set(policies.REASONS.values())) == len(policies.REASONS)


def _meta(name: str, namespace: str = "support") -> spec.Metadata:
    return spec.Metadata(name=name, namespace=namespace)


def test_applicable_selects_by_namespace_and_labels_sorted_by_name() -> None:
    """Manifests apply to agents of their namespace whose labels match their selector (empty selects all)."""
    team = spec.LabelSelector(match_labels={"team": "cx"})
    b = [spec.AgentBudget(metadata=_meta("z-all")), spec.AgentBudget(metadata=_meta("a-cx"), spec={"selector": team}),
         spec.AgentBudget(metadata=_meta("other-ns", "sales"))]
    assert [x.metadata.name for x in policies.applicable(b, "support", {"team": "cx"})] == ["a-cx", "z-all"]
    assert [x.metadata.name for x in policies.applicable(b, "support", {"team": "ops"})] == ["z-all"]
    assert [x.metadata.name for x in policies.applicable(b, "sales", {})] == ["other-ns"]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (active, now, level) -> fires?
        ([(True, 0, 1), (True, 10, 1), (True, 20, 1)], [True, False, False]),  # a lasting condition: once
        ([(True, 0, 1), (True, 10, 2), (True, 20, 2), (True, 30, 3)], [True, True, False, True]),  # worsening
        ([(True, 0, 1), (False, 10, 0), (True, 20, 1)], [True, False, False]),  # back within the period
        ([(True, 0, 1), (False, 10, 0), (True, 4000, 1)], [True, False, True]),  # ended, restarted later
    ],
)
def test_latch_reports_one_problem_once(steps: list[tuple[bool, float, int]], expected: list[bool]) -> None:
    """The latch fires when a condition starts, worsens, or restarts after a window period; not while it lasts."""
    latch = policies.Latch()
    assert [latch.fire("k", a, t, level=lv, period=3600) for a, t, lv in steps] == expected


def test_finding_to_dict_follows_the_contract() -> None:
    """to_dict renders RFC 3339 Z times and omits absent optional fields; incident ids are stable."""
    f = policies.tool_not_allowed(policies.ToolInput(subject=WHO, policy="p", rules=spec.ToolRules(deny=["x"]),
                                                     tool="x"))
    assert f is not None
    d = f.to_dict()
    assert d["time"] == "2026-11-28T10:00:00Z"
    assert set(d) == {"kind", "agent", "namespace", "workflow", "time", "action", "policy", "tool", "message",
                      "evidence"}
    assert findings.incident_id(f) == findings.incident_id(policies.tool_not_allowed(
        policies.ToolInput(subject=policies.Subject("support-bot", "support", NOW + 30), policy="p",
                           rules=spec.ToolRules(deny=["x"]), tool="x")))
    assert findings.incident_id(f).startswith("inc-") and len(findings.incident_id(f)) == 14
