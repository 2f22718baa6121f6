"""What an agent imports to record its spend and obey its cost policy.

    from fleetwarden import sdk

    tracker = sdk.Tracker("support-bot", namespace="support", labels={"team": "cx"},
                          events=sdk.EventWriter("usage.jsonl"),
                          policy=sdk.GuardrailPolicy.from_dir())
    sdk.start_metrics_server(9100)
    with tracker.task(workflow="refund") as task:
        with task.step("plan"):
            task.check_llm(estimated_tokens=2000)
            sdk.record_openai_usage(task, client.chat.completions.create(
                ..., max_tokens=task.max_output_tokens(1000)))
        with task.tool("crm.search"):
            crm.search(...)
        task.outcome("resolved_ticket")

The base install (pydantic, prometheus-client, genai-prices) is enough: no Kubernetes
client, no kopf. See docs/sdk.md and docs/metrics.md.
"""

from __future__ import annotations

from fleetwarden.core.pricing import PriceTable
from fleetwarden.sdk._events import EventWriter
from fleetwarden.sdk._guardrails import (
    DEFAULT_POLICY_DIR,
    ApprovalBackend,
    ApprovalDenied,
    ApprovalRequired,
    GuardrailError,
    GuardrailPolicy,
    Halted,
    InMemoryApprovals,
    RateLimited,
    Steps,
    TasksStopped,
    TokenBucket,
    TokenCapExceeded,
    ToolNotAllowed,
)
from fleetwarden.sdk._metrics import METRIC_NAMES, start_metrics_server
from fleetwarden.sdk._tracker import Reservation, Task, Tracker, current_task
from fleetwarden.sdk._usage import (
    anthropic_tokens,
    openai_tokens,
    record_anthropic_usage,
    record_openai_usage,
)

__all__ = [
    "DEFAULT_POLICY_DIR",
    "METRIC_NAMES",
    "ApprovalBackend",
    "ApprovalDenied",
    "ApprovalRequired",
    "EventWriter",
    "GuardrailError",
    "GuardrailPolicy",
    "Halted",
    "InMemoryApprovals",
    "PriceTable",
    "RateLimited",
    "Reservation",
    "Steps",
    "Task",
    "TasksStopped",
    "TokenBucket",
    "TokenCapExceeded",
    "ToolNotAllowed",
    "Tracker",
    "anthropic_tokens",
    "current_task",
    "openai_tokens",
    "record_anthropic_usage",
    "record_openai_usage",
    "start_metrics_server",
]
