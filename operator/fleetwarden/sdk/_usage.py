"""Read token usage from OpenAI and Anthropic client responses, by duck typing (neither
client library is needed). Both accept a response object, its ``usage`` object, or the
same as plain dicts (a JSON body)."""

from __future__ import annotations

from typing import Any

from fleetwarden import errors
from fleetwarden.sdk import _tracker


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _usage_of(response: Any) -> Any:
    usage = _get(response, "usage")
    return response if usage is None else usage


def openai_tokens(response: Any) -> dict[str, int]:
    """Disjoint token counts from an OpenAI Chat Completions or Responses usage.

    Chat Completions: ``prompt_tokens`` (includes ``prompt_tokens_details.cached_tokens``),
    ``completion_tokens`` (includes ``completion_tokens_details.reasoning_tokens``).
    Responses API: ``input_tokens`` (+ ``input_tokens_details.cached_tokens``),
    ``output_tokens`` (+ ``output_tokens_details.reasoning_tokens``).
    """
    usage = _usage_of(response)
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
        total_in, total_out = _int(_get(usage, "prompt_tokens")), _int(_get(usage, "completion_tokens"))
        cached = _int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens"))
        reasoning = _int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens"))
    elif _get(usage, "input_tokens") is not None or _get(usage, "output_tokens") is not None:
        total_in, total_out = _int(_get(usage, "input_tokens")), _int(_get(usage, "output_tokens"))
        cached = _int(_get(_get(usage, "input_tokens_details"), "cached_tokens"))
        reasoning = _int(_get(_get(usage, "output_tokens_details"), "reasoning_tokens"))
    else:
        raise errors.InputError("no OpenAI token usage found (prompt_tokens/completion_tokens or "
                                "input_tokens/output_tokens)", field="usage")
    cached = min(cached, total_in)
    reasoning = min(reasoning, total_out)
    return {"input_tokens": total_in - cached, "output_tokens": total_out - reasoning,
            "cache_read_tokens": cached, "cache_write_tokens": 0, "reasoning_tokens": reasoning}


def anthropic_tokens(response: Any) -> dict[str, int]:
    """Token counts from an Anthropic Messages usage (already disjoint): ``input_tokens``,
    ``output_tokens``, ``cache_read_input_tokens``, ``cache_creation_input_tokens``."""
    usage = _usage_of(response)
    if _get(usage, "input_tokens") is None and _get(usage, "output_tokens") is None:
        raise errors.InputError("no Anthropic token usage found (input_tokens/output_tokens)", field="usage")
    return {"input_tokens": _int(_get(usage, "input_tokens")), "output_tokens": _int(_get(usage, "output_tokens")),
            "cache_read_tokens": _int(_get(usage, "cache_read_input_tokens")),
            "cache_write_tokens": _int(_get(usage, "cache_creation_input_tokens")), "reasoning_tokens": 0}


def record_openai_usage(task: _tracker.Task, response: Any, model: str | None = None, *,
                        provider: str | None = "openai", cost_usd: float | None = None) -> float:
    """Record an OpenAI response's usage as one model call of ``task``; returns its cost.
    ``model`` defaults to the response's ``model``."""
    name = model or _get(response, "model")
    if not name:
        raise errors.InputError("the response names no model: pass model=", field="model")
    t = openai_tokens(response)
    return task.llm_call(str(name), provider=provider, cost_usd=cost_usd, **t)  # type: ignore[arg-type]


def record_anthropic_usage(task: _tracker.Task, response: Any, model: str | None = None, *,
                           provider: str | None = "anthropic", cost_usd: float | None = None) -> float:
    """Record an Anthropic response's usage as one model call of ``task``; returns its cost."""
    name = model or _get(response, "model")
    if not name:
        raise errors.InputError("the response names no model: pass model=", field="model")
    t = anthropic_tokens(response)
    return task.llm_call(str(name), provider=provider, cost_usd=cost_usd, **t)  # type: ignore[arg-type]
