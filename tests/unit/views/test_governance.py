"""core.governance.ungoverned: which agents no budget governs, or whose budgets set no target."""

from __future__ import annotations

import pytest

from fleetwarden.core import governance, spec


def _budget(name: str, namespace: str, selector: dict | None = None, unit_economics: list | None = None):
    return spec.AgentBudget.model_validate({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector or {}, "unitEconomics": unit_economics or []},
    })


TARGET = [{"outcome": "resolved_ticket", "targetCostUSD": 0.75}]
BASELINE_ONLY = [{"outcome": "resolved_ticket", "humanBaselineUSD": 8.5}]
NO_NUMBERS = [{"outcome": "resolved_ticket"}]
BY_LABEL = {"matchLabels": {"fleetwarden.dev/budget": "cx"}}


@pytest.mark.parametrize(("labels", "budgets", "expected"), [
    ({}, [], governance.NO_BUDGET),
    ({}, [_budget("cx", "other", None, TARGET)], governance.NO_BUDGET),
    ({"fleetwarden.dev/budget": "sales"}, [_budget("cx", "support", BY_LABEL, TARGET)], governance.NO_BUDGET),
    ({"fleetwarden.dev/budget": "cx"}, [_budget("cx", "support", BY_LABEL, TARGET)], None),
    ({}, [_budget("all", "support", None, TARGET)], None),
    ({}, [_budget("all", "support", None, BASELINE_ONLY)], None),
    ({}, [_budget("all", "support")], governance.NO_UNIT_ECONOMICS),
    ({}, [_budget("all", "support", None, NO_NUMBERS)], governance.NO_UNIT_ECONOMICS),
    ({}, [_budget("a", "support"), _budget("b", "support", None, TARGET)], None),
    ({"tier": "gold"}, [_budget("x", "support", {"matchExpressions": [
        {"key": "tier", "operator": "NotIn", "values": ["gold"]}]}, TARGET)], governance.NO_BUDGET),
], ids=["no budgets", "other namespace", "selector misses", "selector matches", "empty selector",
        "baseline counts as target", "no unit economics", "entry without numbers", "one of two has target",
        "expression excludes"])
def test_ungoverned_table(labels, budgets, expected):
    """Each agent/budget combination gets the expected governance verdict."""
    gaps = governance.ungoverned([governance.Agent("support-bot", "support", labels)], budgets)
    assert [g.problem for g in gaps] == ([] if expected is None else [expected])


def test_gap_names_the_budgets_without_targets_and_sorts_agents():
    """Gaps are sorted by namespace and agent, listed once, and name the budgets lacking targets."""
    agents = [governance.Agent("z-bot", "b", {}), governance.Agent("a-bot", "b", {}),
              governance.Agent("a-bot", "b", {}), governance.Agent("m-bot", "a", {})]
    gaps = governance.ungoverned(agents, [_budget("plain", "b")])
    assert [(g.namespace, g.agent, g.problem) for g in gaps] == [
        ("a", "m-bot", governance.NO_BUDGET), ("b", "a-bot", governance.NO_UNIT_ECONOMICS),
        ("b", "z-bot", governance.NO_UNIT_ECONOMICS)]
    assert gaps[1].budgets == ("plain",)
    assert "plain" in gaps[1].message and "unitEconomics" in gaps[1].message
