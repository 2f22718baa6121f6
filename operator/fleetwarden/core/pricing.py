"""What a model call, a tool call and a human minute cost, in USD.

The default prices come from the ``genai-prices`` data snapshot bundled with that package
(offline: nothing is fetched). Configuration overrides and extends them::

    models:                        # a list, or a mapping of model name/pattern -> entry
      - model: "gpt-4o"            # a model name or an fnmatch pattern ("acme-*")
        provider: openai           # optional: only for this provider
        from: 2026-01-01T00:00:00Z # optional: the price applies from this instant on
        input_per_mtok: 2.5        # USD per million tokens (or input_per_token: 0.0000025)
        output_per_mtok: 10
        cache_read_per_mtok: 1.25  # optional, default: the input price
        cache_write_per_mtok: 3.75 # optional, default: the input price
        reasoning_per_mtok: 10     # optional, default: the output price
        per_request: 0.0           # optional, USD per call
    tools:                         # USD per call; names or fnmatch patterns
      crm.search: 0.002
      "enrich.*": 0.05
    human_hourly_rate_usd: 60
    genai_prices: true             # false: only the configured prices are known

Token counts are disjoint, as in the usage-event contract: ``input_tokens`` are the
input tokens *not* read from or written to a cache, ``cache_read_tokens`` and
``cache_write_tokens`` come on top, and ``reasoning_tokens`` come on top of
``output_tokens``. (The OpenAI client reports cached tokens inside ``prompt_tokens``;
the SDK's ``record_openai_usage`` subtracts them.)

Which price applies to ``model`` at time ``at``: among the configured entries for the
model (an exact name beats a pattern; a provider-specific entry beats one for any
provider), the one with the latest ``from`` not after ``at``; when none applies yet,
the genai-prices price at ``at``; when neither knows the model, :class:`PricingError`
names it. Never a silent 0ドル. ``at=None`` means "the newest price known".

Resolved per-token rates are cached per (model, provider, price period), so a repeated
call is a dictionary lookup and five multiplications.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import fnmatch
import math
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from fleetwarden import errors
from fleetwarden.core import timefmt

_MTOK = 1_000_000.0
_DAY = 86400.0

_MODEL_KEYS = {
    "model", "provider", "from",
    "input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok",
    "reasoning_per_mtok",
    "input_per_token", "output_per_token", "cache_read_per_token", "cache_write_per_token",
    "reasoning_per_token",
    "per_request",
}
_TOP_KEYS = {"models", "tools", "human_hourly_rate_usd", "genai_prices"}
_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning")

# Per-token USD of (input, output, cache read, cache write, reasoning) tokens, and per call.
RateTuple = tuple[float, float, float, float, float, float]


def llm_call_cost(rates: RateTuple, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
                  cache_write_tokens: int = 0, reasoning_tokens: int = 0) -> float:
    """USD of one model call at ``rates``: each kind of token times its per-token price, plus
    the per-call price. The one formula: :meth:`PriceTable.llm_cost`, the SDK's tracker and
    replay all price a call with it, term for term in this order (floats: the order is the
    result)."""
    cost = input_tokens * rates[0] + output_tokens * rates[1] + rates[5]
    if cache_read_tokens or cache_write_tokens or reasoning_tokens:
        cost += cache_read_tokens * rates[2] + cache_write_tokens * rates[3] + reasoning_tokens * rates[4]
    return cost


@dataclasses.dataclass(frozen=True, slots=True)
class Rates:
    """USD per token of each kind, and per call."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    reasoning: float
    per_request: float = 0.0
    as_tuple_: RateTuple = dataclasses.field(
        init=False, repr=False, compare=False, default=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "as_tuple_", (self.input, self.output, self.cache_read, self.cache_write,
                                               self.reasoning, self.per_request))

    def as_tuple(self) -> RateTuple:
        return self.as_tuple_


@dataclasses.dataclass(frozen=True, slots=True)
class _Tiered:
    """Rates that change with the call's total input tokens (a "cliff": the whole call pays
    the tier's rate), as genai-prices models them. ``tiers`` is ascending by start."""

    base: Rates
    tiers: tuple[tuple[int, Rates], ...]

    def rates_for(self, total_input: int) -> Rates:
        for start, tier_rates in reversed(self.tiers):
            if total_input > start:
                return tier_rates
        return self.base


_Priced = Rates | _Tiered


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPrice:
    """One configured price entry (see the module docstring)."""

    model: str
    rates: Rates
    provider: str | None = None
    effective_from: float | None = None  # Unix seconds; None: always

    @property
    def is_pattern(self) -> bool:
        return any(c in self.model for c in "*?[")

    def matches(self, model: str, provider: str | None) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        if self.is_pattern:
            return fnmatch.fnmatchcase(model, self.model)
        return self.model == model


class _Resolver:
    """How to find the rates of one (model, provider) at any time: the configured entries
    that match it, sorted by ``from``, and the genai-prices model, if any."""

    __slots__ = ("model", "provider", "static", "_entries", "_starts", "_genai", "_genai_dated",
                 "_genai_daily", "_by_period")

    def __init__(self, model: str, provider: str | None, entries: list[ModelPrice],
                 genai: Any | None) -> None:
        self.model = model
        self.provider = provider
        # Precedence among configured entries: exact+provider > exact > pattern+provider > pattern.
        # Only the best class that has any entry is used, then the latest `from`.
        best: list[ModelPrice] = []
        for rank in ((False, True), (False, False), (True, True), (True, False)):
            best = [e for e in entries if (e.is_pattern, e.provider is not None) == rank]
            if best:
                break
        best.sort(key=lambda e: -math.inf if e.effective_from is None else e.effective_from)
        self._entries = best
        self._starts = [-math.inf if e.effective_from is None else e.effective_from for e in best]
        self._genai = genai
        self._genai_dated = genai is not None and isinstance(genai.prices, list)
        self._genai_daily = genai is not None and self._genai_dated and all(
            type(c.constraint).__name__ in ("StartDateConstraint", "NoneType") for c in genai.prices)
        self._by_period: dict[tuple[int, int], _Priced] = {}
        self.static: _Priced | None = None
        if not self._genai_dated and (not best or (len(best) == 1 and self._starts[0] == -math.inf)):
            # One price forever: the hot path needs no period at all.
            self.static = self._compute(None, 0 if best else -1)

    def priced_at(self, at: float | None) -> _Priced:
        if self.static is not None:
            return self.static
        index = len(self._starts) - 1 if at is None else bisect.bisect_right(self._starts, at) - 1
        if index >= 0 or self._genai is None or not self._genai_dated or at is None:
            genai_period = 0
        elif self._genai_daily:
            genai_period = int(at // _DAY)
        else:
            genai_period = int(at // 60)  # time-of-day prices: resolve per minute
        key = (index, genai_period)
        priced = self._by_period.get(key)
        if priced is None:
            priced = self._by_period[key] = self._compute(at, index)
        return priced

    def _compute(self, at: float | None, index: int) -> _Priced:
        if index >= 0:
            return self._entries[index].rates
        if self._genai is None:
            first = self._starts[0] if self._entries else None
            when = "" if at is None or first is None else f" before {timefmt.rfc3339_ms(first)}"
            raise errors.PricingError(
                f"no price for model {self.model!r}{_provider_text(self.provider)}{when}: "
                "add it to the price configuration (models:)")
        return _genai_rates(self._genai, self.model, at)


def _provider_text(provider: str | None) -> str:
    return "" if provider is None else f" (provider {provider!r})"


class PriceTable:
    """Prices of models, tools and human time. Immutable once built; safe to share between
    threads (the rate cache only ever gains equivalent entries)."""

    def __init__(self, models: list[ModelPrice] | None = None, tools: Mapping[str, float] | None = None,
                 *, human_hourly_rate_usd: float = 60.0, use_genai_prices: bool = True) -> None:
        self._models = list(models or [])
        self._tools = dict(tools or {})
        self._tool_patterns = [(p, v) for p, v in self._tools.items() if any(c in p for c in "*?[")]
        self.human_hourly_rate_usd = human_hourly_rate_usd
        self.use_genai_prices = use_genai_prices
        self._resolvers: dict[tuple[str, str | None], _Resolver] = {}
        self._tool_cache: dict[str, float] = {}
        # (model, provider) -> rates, for models with one price forever (the hot path).
        self._static: dict[tuple[str, str | None], tuple[float, float, float, float, float, float]] = {}

    # ------------------------------------------------------------ building

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, *, file: str | None = None) -> PriceTable:
        """A table from a configuration mapping (the YAML shape in the module docstring).
        ``None`` gives the genai-prices defaults only. Raises :class:`InputError` naming the field."""
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise errors.InputError("the price configuration must be a mapping", file=file)
        unknown = set(config) - _TOP_KEYS
        if unknown:
            raise errors.InputError(f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})",
                                    file=file, field=sorted(unknown)[0])
        models = _parse_models(config.get("models"), file)
        tools = _parse_tools(config.get("tools"), file)
        rate = config.get("human_hourly_rate_usd", 60.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0 or not math.isfinite(rate):
            raise errors.InputError("must be a number >= 0", file=file, field="human_hourly_rate_usd")
        use_genai = config.get("genai_prices", True)
        if not isinstance(use_genai, bool):
            raise errors.InputError("must be true or false", file=file, field="genai_prices")
        return cls(models, tools, human_hourly_rate_usd=float(rate), use_genai_prices=use_genai)

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        """A table from a YAML file; errors name the file and the field."""
        import yaml

        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise errors.InputError(f"cannot read price configuration: {exc.strerror}", file=name) from exc
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise errors.InputError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=name,
                                    line=line) from exc
        return cls.from_config({} if config is None else config, file=name)

    def with_tool_prices(self, tools: Mapping[str, float]) -> PriceTable:
        """A copy whose tool prices are these on top of this table's (for example a
        CostPolicy's ``toolPricesUSD``)."""
        merged = {**self._tools, **{k: float(v) for k, v in tools.items()}}
        return PriceTable(self._models, merged, human_hourly_rate_usd=self.human_hourly_rate_usd,
                          use_genai_prices=self.use_genai_prices)

    def with_models(self, models: list[ModelPrice]) -> PriceTable:
        """A copy with these model prices added after this table's."""
        return PriceTable([*self._models, *models], self._tools,
                          human_hourly_rate_usd=self.human_hourly_rate_usd,
                          use_genai_prices=self.use_genai_prices)

    # ------------------------------------------------------------ pricing

    def llm_cost(self, model: str, *, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
                 cache_write_tokens: int = 0, reasoning_tokens: int = 0, provider: str | None = None,
                 at: float | None = None) -> float:
        """USD of one model call. Raises :class:`PricingError` naming an unknown model."""
        rates = self._static.get((model, provider))
        if rates is None:
            rates = self._rates_tuple(model, provider, at, input_tokens + cache_read_tokens + cache_write_tokens)
        return llm_call_cost(rates, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                             reasoning_tokens)

    def static_rates(self, model: str, provider: str | None = None) -> RateTuple | None:
        """The per-token rates (input, output, cache read, cache write, reasoning, per call)
        of a model whose price never changes and was already used once, else None (then
        call :meth:`llm_cost`). :func:`llm_call_cost` of them is what ``llm_cost`` returns."""
        return self._static.get((model, provider))

    def _rates_tuple(self, model: str, provider: str | None, at: float | None,
                     total_input: int) -> RateTuple:
        resolver = self._resolvers.get((model, provider))
        if resolver is None:
            resolver = self._resolver(model, provider)
        if isinstance(resolver.static, Rates):
            self._static[(model, provider)] = resolver.static.as_tuple()
        priced = resolver.priced_at(at)
        if type(priced) is _Tiered:
            return priced.rates_for(total_input).as_tuple_
        return priced.as_tuple_  # type: ignore[union-attr]

    def rates(self, model: str, *, provider: str | None = None, at: float | None = None) -> Rates:
        """The per-token rates of ``model`` at ``at`` (for tiered prices: the base tier)."""
        resolver = self._resolvers.get((model, provider)) or self._resolver(model, provider)
        priced = resolver.priced_at(at)
        return priced.base if isinstance(priced, _Tiered) else priced

    def knows(self, model: str, *, provider: str | None = None, at: float | None = None) -> bool:
        """Whether ``llm_cost`` can price ``model`` (at ``at``)."""
        try:
            self.rates(model, provider=provider, at=at)
        except errors.PricingError:
            return False
        return True

    def tool_cost(self, tool: str) -> float:
        """USD of one call of ``tool``: its configured price (exact name, else the first
        matching pattern), else 0.0, as the usage-event contract says."""
        cost = self._tool_cache.get(tool)
        if cost is None:
            cost = self._tools.get(tool)
            if cost is None:
                cost = next((v for p, v in self._tool_patterns if fnmatch.fnmatchcase(tool, p)), 0.0)
            self._tool_cache[tool] = cost
        return cost

    def human_cost(self, minutes: float, hourly_rate: float | None = None) -> float:
        """USD of ``minutes`` of human time at ``hourly_rate`` (default: the table's rate)."""
        rate = self.human_hourly_rate_usd if hourly_rate is None else hourly_rate
        return minutes / 60.0 * rate

    def _resolver(self, model: str, provider: str | None) -> _Resolver:
        entries = [e for e in self._models if e.matches(model, provider)]
        genai = _genai_model(model, provider) if self.use_genai_prices else None
        resolver = _Resolver(model, provider, entries, genai)  # may raise PricingError (static)
        self._resolvers[(model, provider)] = resolver
        return resolver


# ---------------------------------------------------------------- genai-prices


def _genai_model(model: str, provider: str | None) -> Any | None:
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    try:
        _, info = snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    return info


def _genai_rates(info: Any, model: str, at: float | None) -> _Priced:
    from genai_prices import types

    if isinstance(info.prices, list):
        if at is None:
            # The newest dated price; time-of-day prices are ignored without a time.
            chosen = info.prices[0].prices
            for cond in info.prices:
                if cond.constraint is None or isinstance(cond.constraint, types.StartDateConstraint):
                    chosen = cond.prices
        else:
            chosen = info.get_prices(dt.datetime.fromtimestamp(at, dt.timezone.utc))
    else:
        chosen = info.prices
    values = {k: getattr(chosen, k, None) for k in (
        "input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "output_reasoning_mtok",
        "requests_kcount")}
    if values["input_mtok"] is None and values["output_mtok"] is None:
        raise errors.PricingError(f"no per-token price for model {model!r} in genai-prices: "
                                  "add it to the price configuration (models:)")
    starts = sorted({t.start for v in values.values() if isinstance(v, types.TieredPrices) for t in v.tiers})

    def rates_at(total_input: int) -> Rates:
        def pick(value: Any) -> float | None:
            if value is None:
                return None
            if isinstance(value, types.TieredPrices):
                price: Decimal = value.base
                for tier in reversed(value.tiers):
                    if total_input > tier.start:
                        price = tier.price
                        break
                return float(price) / _MTOK
            return float(value) / _MTOK

        inp = pick(values["input_mtok"]) or 0.0
        out = pick(values["output_mtok"]) or 0.0
        cache_read = pick(values["cache_read_mtok"])
        cache_write = pick(values["cache_write_mtok"])
        reasoning = pick(values["output_reasoning_mtok"])
        per_request = float(values["requests_kcount"]) / 1000.0 if values["requests_kcount"] is not None else 0.0
        return Rates(inp, out, inp if cache_read is None else cache_read,
                     inp if cache_write is None else cache_write,
                     out if reasoning is None else reasoning, per_request)

    base = rates_at(0)
    if not starts:
        return base
    return _Tiered(base, tuple((s, rates_at(s + 1)) for s in starts))


# ---------------------------------------------------------------- configuration parsing


def _parse_models(raw: Any, file: str | None) -> list[ModelPrice]:
    if raw is None:
        return []
    items: list[tuple[str, Any]] = []
    if isinstance(raw, Mapping):
        for name, body in raw.items():
            if isinstance(body, list):
                items.extend((f"models.{name}[{i}]", {"model": name, **_as_mapping(b, f"models.{name}[{i}]", file)})
                             for i, b in enumerate(body))
            else:
                items.append((f"models.{name}", {"model": name, **_as_mapping(body, f"models.{name}", file)}))
    elif isinstance(raw, list):
        items = [(f"models[{i}]", body) for i, body in enumerate(raw)]
    else:
        raise errors.InputError("must be a list or a mapping of model entries", file=file, field="models")
    return [_parse_model(where, body, file) for where, body in items]


def _as_mapping(body: Any, where: str, file: str | None) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise errors.InputError("must be a mapping", file=file, field=where)
    return body


def _parse_model(where: str, body: Any, file: str | None) -> ModelPrice:
    body = _as_mapping(body, where, file)
    unknown = set(body) - _MODEL_KEYS
    if unknown:
        raise errors.InputError("unknown key", file=file, field=f"{where}.{sorted(unknown)[0]}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.InputError("a model name or pattern is required", file=file, field=f"{where}.model")
    provider = body.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise errors.InputError("must be a string", file=file, field=f"{where}.provider")
    values: dict[str, float | None] = {}
    for name in _PRICE_FIELDS:
        per_mtok = _number(body, f"{name}_per_mtok", where, file)
        per_token = _number(body, f"{name}_per_token", where, file)
        if per_mtok is not None and per_token is not None:
            raise errors.InputError(f"give {name}_per_mtok or {name}_per_token, not both", file=file,
                                    field=f"{where}.{name}_per_token")
        values[name] = per_token if per_token is not None else (
            per_mtok / _MTOK if per_mtok is not None else None)
    for required in ("input", "output"):
        if values[required] is None:
            raise errors.InputError(f"{required}_per_mtok is required", file=file,
                                    field=f"{where}.{required}_per_mtok")
    inp, out = values["input"], values["output"]
    assert inp is not None and out is not None
    rates = Rates(inp, out,
                  inp if values["cache_read"] is None else values["cache_read"],
                  inp if values["cache_write"] is None else values["cache_write"],
                  out if values["reasoning"] is None else values["reasoning"],
                  _number(body, "per_request", where, file) or 0.0)
    return ModelPrice(model=model, rates=rates, provider=provider,
                      effective_from=_instant(body.get("from"), f"{where}.from", file))


def _number(body: Mapping[str, Any], key: str, where: str, file: str | None) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
        raise errors.InputError("must be a number >= 0", file=file, field=f"{where}.{key}")
    return float(value)


def _instant(value: Any, field: str, file: str | None) -> float | None:
    """Unix seconds from an RFC 3339 string, a date, a datetime or a number."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise errors.InputError("must be a date, an RFC 3339 time or Unix seconds", file=file, field=field)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        return moment.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return _instant(dt.date.fromisoformat(text), field, file)
            return timefmt.parse_rfc3339_strict(text)
        except ValueError:
            raise errors.InputError(f"{value!r} is not a date or an RFC 3339 time", file=file,
                                    field=field) from None
    raise errors.InputError("must be a date, an RFC 3339 time or Unix seconds", file=file, field=field)


def _parse_tools(raw: Any, file: str | None) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise errors.InputError("must be a mapping of tool name or pattern to USD per call", file=file,
                                field="tools")
    tools: dict[str, float] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
            raise errors.InputError("must be a number >= 0 (USD per call)", file=file, field=f"tools.{name}")
        tools[str(name)] = float(value)
    return tools
