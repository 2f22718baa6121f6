"""The SDK's public surface is stated once, in fleetwarden.sdk.__all__."""

from __future__ import annotations

import subprocess
import sys

from fleetwarden import sdk

EXPECTED = {
    "DEFAULT_POLICY_DIR", "METRIC_NAMES", "ApprovalBackend", "ApprovalDenied", "ApprovalRequired", "EventWriter",
    "GuardrailError", "GuardrailPolicy", "Halted", "InMemoryApprovals", "PriceTable", "RateLimited", "Reservation", "Steps", "Task",
    "TasksStopped",
    "TokenBucket", "TokenCapExceeded", "ToolNotAllowed", "Tracker", "anthropic_tokens", "current_task",
    "openai_tokens", "record_anthropic_usage", "record_openai_usage", "start_metrics_server",
}


def test_all_is_pinned() -> None:
    """__all__ lists exactly the public names, and each one exists."""
    assert set(sdk.__all__) == EXPECTED
    assert len(sdk.__all__) == len(EXPECTED)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


def test_guardrail_errors_are_fleetwarden_errors() -> None:
    """Every guardrail exception derives from GuardrailError, a FleetwardenError."""
    from fleetwarden import errors

    for exc in (sdk.TokenCapExceeded, sdk.RateLimited, sdk.ToolNotAllowed, sdk.ApprovalRequired,
                sdk.ApprovalDenied, sdk.Halted, sdk.TasksStopped):
        assert issubclass(exc, sdk.GuardrailError)
    assert issubclass(sdk.GuardrailError, errors.FleetwardenError)


def test_importing_the_sdk_loads_no_kubernetes_or_kopf() -> None:
    """An agent importing fleetwarden.sdk does not load kopf, the Kubernetes client or jsonschema."""
    code = ("import sys, fleetwarden.sdk; "
            "print(sorted(m for m in ('kopf', 'kubernetes', 'prometheus_api_client', 'jsonschema') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
