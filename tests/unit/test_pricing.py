"""The price table: genai-prices defaults, configured overrides, effective dates, errors."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from fleetwarden import errors
from fleetwarden.core import pricing

T_2025 = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc).timestamp()
T_2027 = dt.datetime(2027, 6, 1, tzinfo=dt.timezone.utc).timestamp()


def _genai(model: str, *, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0,
           at: float | None = None) -> float:
    usage = Usage(input_tokens=input_tokens + cache_read + cache_write, output_tokens=output_tokens,
                  cache_read_tokens=cache_read or None, cache_write_tokens=cache_write or None)
    when = None if at is None else dt.datetime.fromtimestamp(at, dt.timezone.utc)
    total: Decimal = calc_price(usage, model, genai_request_timestamp=when).total_price
    return float(total)


@pytest.mark.parametrize(("model", "inp", "out", "cache_read", "cache_write"), [
    ("gpt-4o", 1200, 300, 0, 0),
    ("gpt-4o", 600, 100, 400, 0),
    ("gpt-4o-mini", 5000, 800, 1000, 0),
    ("claude-sonnet-4", 2000, 500, 3000, 700),
    ("gemini-2.5-pro", 250_000, 1000, 0, 0),  # above the 200k tier: the whole call pays the tier rate
    ("gemini-2.5-pro", 1000, 1000, 0, 0),
])
def test_known_model_price_equals_genai_prices(model: str, inp: int, out: int, cache_read: int,
                                               cache_write: int) -> None:
    """A model genai-prices knows costs what genai-prices computes, with disjoint cache tokens."""
    table = pricing.PriceTable()
    got = table.llm_cost(model, input_tokens=inp, output_tokens=out, cache_read_tokens=cache_read,
                         cache_write_tokens=cache_write, at=T_2025)
    assert got == pytest.approx(_genai(model, input_tokens=inp, output_tokens=out, cache_read=cache_read,
                                       cache_write=cache_write, at=T_2025), rel=1e-12)
    assert got > 0


def test_dated_genai_price_follows_the_call_time() -> None:
    """A genai-prices model whose price changed on a date is priced by the call's time."""
    table = pricing.PriceTable()
    before = table.llm_cost("claude-sonnet-4-6", input_tokens=300_000, output_tokens=100, at=T_2025)
    after = table.llm_cost("claude-sonnet-4-6", input_tokens=300_000, output_tokens=100, at=T_2027)
    assert before == pytest.approx(_genai("claude-sonnet-4-6", input_tokens=300_000, output_tokens=100,
                                          at=T_2025))
    assert after == pytest.approx(_genai("claude-sonnet-4-6", input_tokens=300_000, output_tokens=100,
                                         at=T_2027))
    assert before != after


def test_reasoning_tokens_cost_the_output_price_by_default() -> None:
    """Reasoning tokens come on top of output tokens and cost the output rate unless configured."""
    table = pricing.PriceTable()
    plain = table.llm_cost("o3-mini", input_tokens=0, output_tokens=1000)
    with_reasoning = table.llm_cost("o3-mini", input_tokens=0, output_tokens=1000, reasoning_tokens=1000)
    assert with_reasoning == pytest.approx(2 * plain)


def test_unknown_model_raises_an_error_naming_it() -> None:
    """A model no price source knows raises PricingError with its name, never a silent 0ドル."""
    table = pricing.PriceTable()
    with pytest.raises(errors.PricingError, match="acme-brain-9000"):
        table.llm_cost("acme-brain-9000", input_tokens=10, output_tokens=10)
    assert not table.knows("acme-brain-9000")


def test_configured_model_is_priced_per_million_tokens() -> None:
    """A configured model costs its configured input, output and cache prices."""
    table = pricing.PriceTable.from_config({"models": [
        {"model": "acme-brain-9000", "input_per_mtok": 2, "output_per_mtok": 8, "cache_read_per_mtok": 0.5},
    ]})
    cost = table.llm_cost("acme-brain-9000", input_tokens=1_000_000, output_tokens=500_000,
                          cache_read_tokens=2_000_000, cache_write_tokens=1_000_000)
    assert cost == pytest.approx(2 + 4 + 1 + 2)


@pytest.mark.parametrize(("config", "model", "expected_input_per_mtok"), [
    ({"models": [{"model": "acme-*", "input_per_mtok": 1, "output_per_mtok": 1}]}, "acme-small", 1.0),
    ({"models": [{"model": "acme-*", "input_per_mtok": 1, "output_per_mtok": 1},
                 {"model": "acme-large", "input_per_mtok": 7, "output_per_mtok": 1}]}, "acme-large", 7.0),
    ({"models": [{"model": "gpt-4o", "input_per_mtok": 9, "output_per_mtok": 1}]}, "gpt-4o", 9.0),
    ({"models": {"gpt-4o*": {"input_per_mtok": 3, "output_per_mtok": 1}}}, "gpt-4o-mini", 3.0),
    ({"models": [{"model": "acme-x", "input_per_token": 0.000004, "output_per_token": 0}]}, "acme-x", 4.0),
])
def test_override_patterns(config: dict[str, object], model: str, expected_input_per_mtok: float) -> None:
    """Configured names and fnmatch patterns override genai-prices; an exact name beats a pattern."""
    table = pricing.PriceTable.from_config(config)
    assert table.llm_cost(model, input_tokens=1_000_000, output_tokens=0) == pytest.approx(
        expected_input_per_mtok)


def test_provider_specific_entry_applies_to_that_provider_only() -> None:
    """An entry with a provider prices calls of that provider; other calls keep the default."""
    table = pricing.PriceTable.from_config({"models": [
        {"model": "gpt-4o", "provider": "azure", "input_per_mtok": 5, "output_per_mtok": 0}]})
    assert table.llm_cost("gpt-4o", provider="azure", input_tokens=1_000_000, output_tokens=0) == 5.0
    assert table.llm_cost("gpt-4o", provider="openai", input_tokens=1_000_000,
                          output_tokens=0) == pytest.approx(2.5)


@pytest.mark.parametrize(("at", "expected"), [
    (dt.datetime(2026, 1, 31, 23, 59, tzinfo=dt.timezone.utc).timestamp(), 1.0),
    (dt.datetime(2026, 2, 1, 0, 0, tzinfo=dt.timezone.utc).timestamp(), 2.0),
    (dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp(), 3.0),
    (None, 3.0),  # no time: the newest price
])
def test_effective_dates(at: float | None, expected: float) -> None:
    """A price change applies from its `from` instant on, and not before."""
    table = pricing.PriceTable.from_config({"models": {"acme": [
        {"input_per_mtok": 1, "output_per_mtok": 0},
        {"from": "2026-02-01T00:00:00Z", "input_per_mtok": 2, "output_per_mtok": 0},
        {"from": dt.date(2026, 3, 1), "input_per_mtok": 3, "output_per_mtok": 0},
    ]}})
    assert table.llm_cost("acme", input_tokens=1_000_000, output_tokens=0, at=at) == pytest.approx(expected)


def test_future_override_falls_back_to_genai_prices_before_its_date() -> None:
    """Before a configured price's `from`, a known model keeps its genai-prices price."""
    table = pricing.PriceTable.from_config({"models": [
        {"model": "gpt-4o", "from": "2026-06-01", "input_per_mtok": 10, "output_per_mtok": 0}]})
    assert table.llm_cost("gpt-4o", input_tokens=1_000_000, output_tokens=0, at=T_2025) == pytest.approx(2.5)
    assert table.llm_cost("gpt-4o", input_tokens=1_000_000, output_tokens=0, at=T_2027) == pytest.approx(10)


def test_unknown_model_before_its_first_configured_price_is_an_error() -> None:
    """A configured-only model called before its first `from` has no price: an error names it."""
    table = pricing.PriceTable.from_config({"models": [
        {"model": "acme", "from": "2026-06-01", "input_per_mtok": 1, "output_per_mtok": 0}]})
    with pytest.raises(errors.PricingError, match="'acme'.*before 2026-06-01"):
        table.llm_cost("acme", input_tokens=1, output_tokens=0, at=T_2025)


def test_genai_prices_can_be_turned_off() -> None:
    """With genai_prices: false only configured models have a price."""
    table = pricing.PriceTable.from_config({"genai_prices": False})
    with pytest.raises(errors.PricingError, match="gpt-4o"):
        table.llm_cost("gpt-4o", input_tokens=1, output_tokens=1)


@pytest.mark.parametrize(("tool", "expected"), [
    ("crm.search", 0.002), ("enrich.premium", 0.05), ("enrich.basic", 0.01), ("web.search", 0.0),
])
def test_tool_prices(tool: str, expected: float) -> None:
    """A tool costs its exact configured price, else its pattern's, else 0 per the contract."""
    table = pricing.PriceTable.from_config({"tools": {"crm.search": 0.002, "enrich.*": 0.05,
                                                      "enrich.basic": 0.01}})
    assert table.tool_cost(tool) == expected


def test_with_tool_prices_adds_a_policys_prices() -> None:
    """with_tool_prices layers a CostPolicy's toolPricesUSD over the configured ones."""
    table = pricing.PriceTable.from_config({"tools": {"a": 1.0, "b": 2.0}}).with_tool_prices({"b": 3.0})
    assert (table.tool_cost("a"), table.tool_cost("b")) == (1.0, 3.0)


def test_human_cost_uses_the_hourly_rate() -> None:
    """Human minutes cost minutes/60 times the configured or given hourly rate."""
    table = pricing.PriceTable.from_config({"human_hourly_rate_usd": 90})
    assert table.human_cost(20) == pytest.approx(30.0)
    assert table.human_cost(30, hourly_rate=40) == pytest.approx(20.0)


@pytest.mark.parametrize(("config", "field"), [
    ({"model": []}, "model"),
    ({"models": [{"model": "x", "output_per_mtok": 1}]}, "models[0].input_per_mtok"),
    ({"models": [{"model": "x", "input_per_mtok": -1, "output_per_mtok": 1}]}, "models[0].input_per_mtok"),
    ({"models": [{"model": "x", "input_per_mtok": 1, "output_per_mtok": 1, "colour": 1}]}, "models[0].colour"),
    ({"models": [{"model": "x", "input_per_mtok": 1, "output_per_mtok": 1, "from": "soon"}]}, "models[0].from"),
    ({"models": {"x": {"input_per_mtok": "a", "output_per_mtok": 1}}}, "models.x.input_per_mtok"),
    ({"tools": {"crm.search": "cheap"}}, "tools.crm.search"),
    ({"human_hourly_rate_usd": -5}, "human_hourly_rate_usd"),
])
def test_bad_configuration_names_the_field(config: dict[str, object], field: str) -> None:
    """A bad price configuration raises InputError naming the field."""
    with pytest.raises(errors.InputError) as info:
        pricing.PriceTable.from_config(config)
    assert info.value.field == field


def test_load_reads_yaml_and_errors_name_the_file(tmp_path: pytest.TempPathFactory) -> None:
    """PriceTable.load reads a YAML file; an error names the file and field."""
    good = tmp_path / "prices.yaml"  # type: ignore[operator]
    good.write_text("models:\n  - model: acme\n    from: 2026-01-01\n    input_per_mtok: 4\n"
                    "    output_per_mtok: 0\ntools:\n  kb.lookup: 0.001\n")
    table = pricing.PriceTable.load(good)
    assert table.llm_cost("acme", input_tokens=1_000_000, output_tokens=0, at=T_2027) == pytest.approx(4)
    assert table.tool_cost("kb.lookup") == 0.001
    bad = tmp_path / "bad.yaml"  # type: ignore[operator]
    bad.write_text("models:\n  - model: acme\n    output_per_mtok: 1\n")
    with pytest.raises(errors.InputError) as info:
        pricing.PriceTable.load(bad)
    assert str(bad) in str(info.value) and "models[0].input_per_mtok" in str(info.value)
    broken = tmp_path / "broken.yaml"  # type: ignore[operator]
    broken.write_text("models: [\n")
    with pytest.raises(errors.InputError, match="broken.yaml"):
        pricing.PriceTable.load(broken)


def test_repeated_calls_hit_the_cache_and_agree() -> None:
    """A repeated call gives exactly the first call's price (served from the rate cache)."""
    table = pricing.PriceTable()
    first = table.llm_cost("gpt-4o-mini", input_tokens=123, output_tokens=45, at=T_2025)
    assert all(table.llm_cost("gpt-4o-mini", input_tokens=123, output_tokens=45, at=T_2025) == first
               for _ in range(100))


# Per-token rates as the table keeps them: input, output, cache read, cache write, reasoning, per call.
_RATES = (2.5e-6, 10e-6, 1.25e-6, 3.75e-6, 12e-6, 0.001)


@pytest.mark.parametrize(("tokens", "expected"), [
    ((0, 0, 0, 0, 0), 0.001),  # a call costs its per-call price at least
    ((1_000_000, 0, 0, 0, 0), 2.501),
    ((0, 1_000_000, 0, 0, 0), 10.001),
    ((0, 0, 1_000_000, 0, 0), 1.251),  # cache reads at their own price, on top of input
    ((0, 0, 0, 1_000_000, 0), 3.751),  # cache writes likewise
    ((0, 0, 0, 0, 1_000_000), 12.001),  # reasoning on top of output
    ((1200, 300, 400, 100, 50), 1200 * 2.5e-6 + 300 * 10e-6 + 0.001 + (400 * 1.25e-6 + 100 * 3.75e-6 + 50 * 12e-6)),
])
def test_llm_call_cost_prices_each_kind_of_token(tokens: tuple[int, int, int, int, int], expected: float) -> None:
    """Each kind of token costs its own per-token price, plus the per-call price."""
    assert pricing.llm_call_cost(_RATES, *tokens) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("inp", "out", "cache_read", "cache_write", "reasoning"), [
    (1200, 300, 0, 0, 0), (600, 100, 400, 0, 0), (2000, 500, 3000, 700, 0), (17, 3, 0, 0, 9), (1, 1, 1, 1, 1),
    (1949, 4854, 4458, 1068, 3030), (3642, 1098, 2994, 798, 293)])  # where another order of the sum differs
def test_llm_cost_is_llm_call_cost_of_the_tables_rates(inp: int, out: int, cache_read: int, cache_write: int,
                                                       reasoning: int) -> None:
    """PriceTable.llm_cost is the one formula applied to the model's rates, to the last bit (the SDK
    and replay price with static_rates and llm_call_cost, and must agree with it exactly)."""
    table = pricing.PriceTable.from_config({"models": [
        {"model": "acme", "input_per_mtok": 2.5, "output_per_mtok": 10, "cache_read_per_mtok": 1.25,
         "cache_write_per_mtok": 3.75, "reasoning_per_mtok": 12, "per_request": 0.001}]})
    got = table.llm_cost("acme", input_tokens=inp, output_tokens=out, cache_read_tokens=cache_read,
                         cache_write_tokens=cache_write, reasoning_tokens=reasoning)
    rates = table.static_rates("acme")
    assert rates is not None
    assert got == pricing.llm_call_cost(rates, inp, out, cache_read, cache_write, reasoning)
