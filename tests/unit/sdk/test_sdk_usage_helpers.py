"""OpenAI and Anthropic usage objects are read by duck typing into disjoint token counts."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import errors, sdk

CHAT = NS(model="gpt-4o", usage=NS(prompt_tokens=1200, completion_tokens=300,
                                   prompt_tokens_details=NS(cached_tokens=200),
                                   completion_tokens_details=NS(reasoning_tokens=50)))
RESPONSES = NS(model="gpt-4o-mini", usage=NS(input_tokens=900, output_tokens=100,
                                             input_tokens_details=NS(cached_tokens=400),
                                             output_tokens_details=NS(reasoning_tokens=0)))
CHAT_DICT = {"model": "gpt-4o", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
ANTHROPIC = NS(model="claude-sonnet-4-20250514", usage=NS(input_tokens=500, output_tokens=80,
                                                         cache_read_input_tokens=3000,
                                                         cache_creation_input_tokens=700))


@pytest.mark.parametrize(("response", "expected"), [
    (CHAT, dict(input_tokens=1000, output_tokens=250, cache_read_tokens=200, cache_write_tokens=0,
                reasoning_tokens=50)),
    (RESPONSES, dict(input_tokens=500, output_tokens=100, cache_read_tokens=400, cache_write_tokens=0,
                     reasoning_tokens=0)),
    (CHAT_DICT, dict(input_tokens=10, output_tokens=5, cache_read_tokens=0, cache_write_tokens=0,
                     reasoning_tokens=0)),
    (CHAT.usage, dict(input_tokens=1000, output_tokens=250, cache_read_tokens=200, cache_write_tokens=0,
                      reasoning_tokens=50)),
])
def test_openai_tokens(response: object, expected: dict[str, int]) -> None:
    """Cached tokens leave prompt tokens and reasoning tokens leave completion tokens."""
    assert sdk.openai_tokens(response) == expected


def test_anthropic_tokens() -> None:
    """Anthropic's cache read/creation tokens map to cache_read/cache_write tokens."""
    assert sdk.anthropic_tokens(ANTHROPIC) == dict(input_tokens=500, output_tokens=80, cache_read_tokens=3000,
                                                   cache_write_tokens=700, reasoning_tokens=0)


def test_record_helpers_record_one_priced_call() -> None:
    """record_openai_usage/record_anthropic_usage record a call priced like llm_call would."""
    reg = CollectorRegistry()
    tracker = sdk.Tracker("bot", registry=reg)
    table = sdk.PriceTable()
    with tracker.task("w") as task:
        cost = sdk.record_openai_usage(task, CHAT)
        cost2 = sdk.record_anthropic_usage(task, ANTHROPIC)
    assert cost == pytest.approx(table.llm_cost("gpt-4o", provider="openai", input_tokens=1000,
                                                output_tokens=250, cache_read_tokens=200, reasoning_tokens=50))
    assert cost2 == pytest.approx(table.llm_cost("claude-sonnet-4-20250514", provider="anthropic",
                                                 input_tokens=500, output_tokens=80, cache_read_tokens=3000,
                                                 cache_write_tokens=700))
    labels = dict(agent="bot", namespace="default", workflow="w", step="", model="gpt-4o")
    assert reg.get_sample_value("fleetwarden_llm_reasoning_tokens_total", labels) == 50
    assert reg.get_sample_value("fleetwarden_llm_cache_read_tokens_total", labels) == 200


def test_usage_without_tokens_is_an_error() -> None:
    """A response with no usage raises InputError rather than recording zero tokens."""
    with pytest.raises(errors.InputError):
        sdk.openai_tokens(NS(model="gpt-4o", usage=NS()))
    with pytest.raises(errors.InputError):
        sdk.anthropic_tokens({"usage": {}})
