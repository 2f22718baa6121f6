"""Metric names: one module names every fleetwarden_* series; the exporters and the queries use it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fleetwarden.core import metricnames

PACKAGE = Path(metricnames.__file__).resolve().parents[1]

# The contract (docs/design.md), written out: a rename here is a breaking change for every
# dashboard, alert rule and query.
CONTRACT = [
    ("LLM_CALLS", "fleetwarden_llm_calls_total"),
    ("LLM_COST_USD", "fleetwarden_llm_cost_usd_total"),
    ("LLM_INPUT_TOKENS", "fleetwarden_llm_input_tokens_total"),
    ("LLM_OUTPUT_TOKENS", "fleetwarden_llm_output_tokens_total"),
    ("LLM_CACHE_READ_TOKENS", "fleetwarden_llm_cache_read_tokens_total"),
    ("LLM_CACHE_WRITE_TOKENS", "fleetwarden_llm_cache_write_tokens_total"),
    ("LLM_REASONING_TOKENS", "fleetwarden_llm_reasoning_tokens_total"),
    ("TOOL_CALLS", "fleetwarden_tool_calls_total"),
    ("TOOL_COST_USD", "fleetwarden_tool_cost_usd_total"),
    ("HUMAN_MINUTES", "fleetwarden_human_minutes_total"),
    ("HUMAN_COST_USD", "fleetwarden_human_cost_usd_total"),
    ("TASKS", "fleetwarden_tasks_total"),
    ("OUTCOMES", "fleetwarden_outcomes_total"),
    ("OUTCOME_VALUE_USD", "fleetwarden_outcome_value_usd_total"),
    ("TASK_COST_USD", "fleetwarden_task_cost_usd"),
    ("TASK_TOKENS", "fleetwarden_task_tokens"),
    ("GUARDRAIL_DECISIONS", "fleetwarden_guardrail_decisions_total"),
    ("AGENT_MODEL_INFO", "fleetwarden_agent_model_info"),
    ("OPEN_TASKS", "fleetwarden_open_tasks"),
    ("LARGEST_RUNNING_TASK_TOKENS", "fleetwarden_largest_running_task_tokens"),
    ("LARGEST_RUNNING_TASK_AGE_SECONDS", "fleetwarden_largest_running_task_age_seconds"),
    ("OLDEST_RUNNING_TASK_TOKENS", "fleetwarden_oldest_running_task_tokens"),
    ("OLDEST_RUNNING_TASK_AGE_SECONDS", "fleetwarden_oldest_running_task_age_seconds"),
    ("BUDGET_SPEND_USD", "fleetwarden_budget_spend_usd"),
    ("BUDGET_LIMIT_USD", "fleetwarden_budget_limit_usd"),
    ("BUDGET_KILL_SWITCH_ENGAGED", "fleetwarden_budget_kill_switch_engaged"),
    ("AGENT_OWNER_INFO", "fleetwarden_agent_owner_info"),
    ("FINDINGS", "fleetwarden_findings_total"),
    ("EVALUATION_SECONDS", "fleetwarden_evaluation_seconds"),
    ("OPERATOR_PROMETHEUS_QUERIES", "fleetwarden_operator_prometheus_queries_total"),
    ("OPERATOR_PROMETHEUS_FETCHES", "fleetwarden_operator_prometheus_fetches_total"),
    ("OPERATOR_PROMETHEUS_FETCH_SECONDS", "fleetwarden_operator_prometheus_fetch_seconds"),
    ("OPERATOR_PROMETHEUS_QUERY_SECONDS", "fleetwarden_operator_prometheus_query_seconds"),
    ("UNIT_ECONOMICS_TARGET_USD", "fleetwarden_unit_economics_target_usd"),
    ("OPERATOR_ACTIONS", "fleetwarden_operator_actions_total"),
    ("UNPRICED_TOKENS", "fleetwarden_unpriced_tokens"),
]

# Files whose queries still spell names out, and why.
NOT_YET = {
    "views/live.py": "its PromQL builders are being rewritten; they take the constants after that lands",
}


@pytest.mark.parametrize(("constant", "name"), CONTRACT)
def test_each_metric_has_its_contract_name(constant: str, name: str) -> None:
    """Every constant holds the name the contract gives the series."""
    assert getattr(metricnames, constant) == name


def test_the_contract_lists_every_constant() -> None:
    """No metric name is added to the module without a row above."""
    declared = {k for k, v in vars(metricnames).items() if k.isupper() and isinstance(v, str)}
    assert declared == {constant for constant, _ in CONTRACT}


def test_groups() -> None:
    """Spend is model + tool + human cost; tokens are every kind, in the usage-event contract's order."""
    assert metricnames.SPEND == ("fleetwarden_llm_cost_usd_total", "fleetwarden_tool_cost_usd_total",
                                 "fleetwarden_human_cost_usd_total")
    assert metricnames.LLM_TOKENS == ("fleetwarden_llm_input_tokens_total", "fleetwarden_llm_output_tokens_total",
                                      "fleetwarden_llm_cache_read_tokens_total",
                                      "fleetwarden_llm_cache_write_tokens_total",
                                      "fleetwarden_llm_reasoning_tokens_total")


def _string_parts(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants in code (docstrings left out), f-string pieces included."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_module_spells_a_metric_name_itself() -> None:
    """Outside core/metricnames.py the package's code names no fleetwarden_* series in a string:
    the SDK, the handlers, the adapters and the views all take the constants."""
    families = {name.removesuffix("_total") for _, name in CONTRACT}
    pattern = re.compile(r"\bfleetwarden_(?:" + "|".join(sorted(n[len("fleetwarden_"):] for n in families)) + r")")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "core/metricnames.py" or rel in NOT_YET:
            continue
        for line, text in _string_parts(ast.parse(path.read_text(encoding="utf-8"))):
            if pattern.search(text):
                found.append(f"{rel}:{line}: {text!r}")
    assert found == []
