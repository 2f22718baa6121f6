"""Parsed models share their sets of fields given (core/spec.py, ``_Model.model_post_init``):
10,000 parsed AgentBudgets of ten models each would otherwise hold 100,000 sets, most equal."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from fleetwarden.core import spec


def _budget(name: str, *, hour: float = 10.0, with_day: bool = True) -> dict[str, Any]:
    limits: list[dict[str, Any]] = [{"window": "hour", "amountUSD": hour}]
    if with_day:
        limits.append({"window": "day", "amountUSD": 100})
    return {"apiVersion": spec.API_VERSION, "kind": "AgentBudget",
            "metadata": {"name": name, "namespace": "support"},
            "spec": {"selector": {"matchLabels": {"agent": name}}, "limits": limits}}


def _models(model: pydantic.BaseModel) -> list[pydantic.BaseModel]:
    """The model and every model inside it, in a fixed order."""
    out = [model]
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, pydantic.BaseModel):
                out.extend(_models(item))
    return out


def test_budgets_given_the_same_fields_share_each_models_set() -> None:
    a = spec.AgentBudget.model_validate(_budget("triage", hour=10))
    b = spec.AgentBudget.model_validate(_budget("refunds", hour=25))
    pairs = list(zip(_models(a), _models(b), strict=True))
    assert len(pairs) >= 5
    for x, y in pairs:
        assert x.model_fields_set == y.model_fields_set
        assert x.model_fields_set is y.model_fields_set, type(x).__name__
    assert a.spec.limits[0].amount_usd == 10 and b.spec.limits[0].amount_usd == 25
    assert a.spec.model_fields_set == {"selector", "limits"}
    assert a.metadata.model_fields_set == {"name", "namespace"}


def test_a_model_given_other_fields_keeps_a_set_of_its_own_fields() -> None:
    a = spec.AgentBudget.model_validate(_budget("triage"))
    b = spec.AgentBudget.model_validate(_budget("refunds", with_day=False))
    day = spec.SpendLimit.model_validate({"window": "day", "amountUSD": 5, "warningPercent": 50})
    assert a.spec.limits[1].model_fields_set == {"window", "amount_usd"}
    assert day.model_fields_set == {"window", "amount_usd", "warning_percent"}
    assert a.spec.model_fields_set is b.spec.model_fields_set  # (the same fields: selector, limits)
    assert len(b.spec.limits) == 1
    assert spec.AgentBudget.model_validate(_budget("x")).model_dump(exclude_unset=True, by_alias=True)["spec"] == \
        _budget("x")["spec"] | {"limits": [{"window": "hour", "amountUSD": 10.0}, {"window": "day", "amountUSD": 100.0}]}


def test_a_copy_with_an_update_never_changes_the_shared_set() -> None:
    a = spec.AgentBudget.model_validate(_budget("triage"))
    b = spec.AgentBudget.model_validate(_budget("refunds"))
    shared = a.spec.limits[0].model_fields_set
    assert shared is b.spec.limits[0].model_fields_set
    copied = a.spec.limits[0].model_copy(update={"warning_percent": 50.0})
    assert copied.model_fields_set == {"window", "amount_usd", "warning_percent"}
    assert shared == {"window", "amount_usd"}
    assert b.spec.limits[0].model_fields_set == {"window", "amount_usd"}
    with pytest.raises(pydantic.ValidationError):
        b.spec.limits[0].warning_percent = 50.0  # type: ignore[misc]
    assert shared == {"window", "amount_usd"}


def test_a_thousand_budgets_of_one_shape_hold_a_handful_of_sets() -> None:
    parsed = [spec.AgentBudget.model_validate(_budget(f"agent-{i}", hour=float(i + 1))) for i in range(1000)]
    models = [m for budget in parsed for m in _models(budget)]
    assert len(models) >= 5000
    assert len({id(m.model_fields_set) for m in models}) <= 10
