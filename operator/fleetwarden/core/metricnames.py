"""The names of fleetwarden's Prometheus metrics (``docs/design.md``): the SDK exports them,
the operator exports its own, and the adapters, views and alert rules query them.

Constants only. Counters are named as they are queried, with ``_total``
(prometheus-client takes a counter's name either way and exposes the family without it);
histograms and gauges by their family name.
"""

from __future__ import annotations

# ---------------------------------------------------------------- the agent SDK's

LLM_CALLS = "fleetwarden_llm_calls_total"
LLM_COST_USD = "fleetwarden_llm_cost_usd_total"
LLM_INPUT_TOKENS = "fleetwarden_llm_input_tokens_total"
LLM_OUTPUT_TOKENS = "fleetwarden_llm_output_tokens_total"
LLM_CACHE_READ_TOKENS = "fleetwarden_llm_cache_read_tokens_total"
LLM_CACHE_WRITE_TOKENS = "fleetwarden_llm_cache_write_tokens_total"
LLM_REASONING_TOKENS = "fleetwarden_llm_reasoning_tokens_total"
TOOL_CALLS = "fleetwarden_tool_calls_total"
TOOL_COST_USD = "fleetwarden_tool_cost_usd_total"
HUMAN_MINUTES = "fleetwarden_human_minutes_total"
HUMAN_COST_USD = "fleetwarden_human_cost_usd_total"
TASKS = "fleetwarden_tasks_total"
OUTCOMES = "fleetwarden_outcomes_total"
OUTCOME_VALUE_USD = "fleetwarden_outcome_value_usd_total"
TASK_COST_USD = "fleetwarden_task_cost_usd"  # histogram
TASK_TOKENS = "fleetwarden_task_tokens"  # histogram
GUARDRAIL_DECISIONS = "fleetwarden_guardrail_decisions_total"
AGENT_MODEL_INFO = "fleetwarden_agent_model_info"  # gauge, value 1
# Open tasks per agent and process (gauges; no task label): how many, and the largest and the
# oldest running task's tokens and age.
OPEN_TASKS = "fleetwarden_open_tasks"
LARGEST_RUNNING_TASK_TOKENS = "fleetwarden_largest_running_task_tokens"
LARGEST_RUNNING_TASK_AGE_SECONDS = "fleetwarden_largest_running_task_age_seconds"
OLDEST_RUNNING_TASK_TOKENS = "fleetwarden_oldest_running_task_tokens"
OLDEST_RUNNING_TASK_AGE_SECONDS = "fleetwarden_oldest_running_task_age_seconds"

# Tokens of every kind, in the usage-event contract's order (input, output, cache read,
# cache write, reasoning).
LLM_TOKENS = (LLM_INPUT_TOKENS, LLM_OUTPUT_TOKENS, LLM_CACHE_READ_TOKENS, LLM_CACHE_WRITE_TOKENS,
              LLM_REASONING_TOKENS)
# What a budget's spend counts: the same three parts as ``series.AgentMinute.cost_usd``.
SPEND = (LLM_COST_USD, TOOL_COST_USD, HUMAN_COST_USD)

# ---------------------------------------------------------------- the operator's

BUDGET_SPEND_USD = "fleetwarden_budget_spend_usd"
BUDGET_LIMIT_USD = "fleetwarden_budget_limit_usd"
BUDGET_KILL_SWITCH_ENGAGED = "fleetwarden_budget_kill_switch_engaged"
AGENT_OWNER_INFO = "fleetwarden_agent_owner_info"  # gauge, value 1
FINDINGS = "fleetwarden_findings_total"
EVALUATION_SECONDS = "fleetwarden_evaluation_seconds"  # histogram
OPERATOR_PROMETHEUS_QUERIES = "fleetwarden_operator_prometheus_queries_total"
OPERATOR_PROMETHEUS_FETCHES = "fleetwarden_operator_prometheus_fetches_total"
OPERATOR_PROMETHEUS_FETCH_SECONDS = "fleetwarden_operator_prometheus_fetch_seconds"  # histogram
OPERATOR_PROMETHEUS_QUERY_SECONDS = "fleetwarden_operator_prometheus_query_seconds"  # histogram, by query
UNIT_ECONOMICS_TARGET_USD = "fleetwarden_unit_economics_target_usd"
OPERATOR_ACTIONS = "fleetwarden_operator_actions_total"
UNPRICED_TOKENS = "fleetwarden_unpriced_tokens"  # gauge: tokens of a source no price covers, by model
