"""Parsed models share their sets of fields given (core/spec.py, ``_Model.model_post_init``):
10,000 parsed AgentBudgets of ten models each would otherwise hold 100,000 sets, most equal."""

from __future__ import annotations

import weakref
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


# ---------------------------------------------------------------- parts shared (``_shared``)


def test_equal_parts_of_two_budgets_are_one_object_and_their_own_parts_are_not() -> None:
    a = spec.AgentBudget.model_validate(_budget("triage", hour=10))
    b = spec.AgentBudget.model_validate(_budget("refunds", hour=10))
    c = spec.AgentBudget.model_validate(_budget("billing", hour=25))
    assert a.spec.limits[0] is b.spec.limits[0] and a.spec.limits[1] is b.spec.limits[1]
    assert a.spec.kill_switch is b.spec.kill_switch and a.spec.owner is b.spec.owner
    assert a.spec.limits is not b.spec.limits  # each budget's list is its own
    assert c.spec.limits[0] is not a.spec.limits[0] and c.spec.limits[0].amount_usd == 25
    assert c.spec.limits[1] is a.spec.limits[1]  # the same day limit
    # Each budget's own parts: its name, its selector, its whole spec.
    assert a.metadata is not b.metadata and a.spec.selector is not b.spec.selector and a.spec is not b.spec
    assert a.spec.selector.match_labels == {"agent": "triage"} and b.spec.selector.match_labels == {"agent": "refunds"}
    assert a.metadata.name == "triage" and b.metadata.name == "refunds"
    assert a.model_dump() == spec.AgentBudget.model_validate(_budget("triage", hour=10)).model_dump()


def test_a_part_given_other_fields_or_values_of_equal_hash_is_not_shared() -> None:
    given = spec.SpendLimit.model_validate({"window": "hour", "amountUSD": 5, "warningPercent": 80})
    defaulted = spec.SpendLimit.model_validate({"window": "hour", "amountUSD": 5})
    assert given == defaulted  # equal values; the fields given differ
    a = spec.AgentBudgetSpec.model_validate({"limits": [{"window": "hour", "amountUSD": 5, "warningPercent": 80}]})
    b = spec.AgentBudgetSpec.model_validate({"limits": [{"window": "hour", "amountUSD": 5}]})
    assert a.limits[0] is not b.limits[0]
    assert a.limits[0].model_fields_set == {"window", "amount_usd", "warning_percent"}
    assert b.limits[0].model_fields_set == {"window", "amount_usd"}
    assert spec._shared(b.limits[0]) is b.limits[0]
    # each is shared with the parts given as it was
    assert spec.AgentBudgetSpec.model_validate({"limits": [{"window": "hour", "amountUSD": 5}]}).limits[0] is b.limits[0]
    again = spec.AgentBudgetSpec.model_validate({"limits": [{"window": "hour", "amountUSD": 5, "warningPercent": 80}]})
    assert again.limits[0] is a.limits[0]


def test_a_collision_of_the_hash_keeps_the_part_as_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "_PARTS", weakref.WeakValueDictionary())
    monkeypatch.setattr(spec, "hash", lambda _text: 7, raising=False)  # every JSON one hash
    a = spec.AgentBudgetSpec.model_validate({"owner": {"team": "support"}, "limits": [{"window": "hour", "amountUSD": 5}]})
    b = spec.AgentBudgetSpec.model_validate({"owner": {"team": "sales"}, "limits": [{"window": "hour", "amountUSD": 9}]})
    assert (b.owner.team, b.limits[0].amount_usd) == ("sales", 9)
    assert (a.owner.team, a.limits[0].amount_usd) == ("support", 5)
    c = spec.AgentBudgetSpec.model_validate({"owner": {"team": "support"}})
    assert c.owner is a.owner


def test_a_part_no_model_holds_leaves_the_table() -> None:
    import gc

    a = spec.AgentBudget.model_validate(_budget("triage", hour=12345.0))
    key = next(k for k, v in spec._PARTS.items() if v is a.spec.limits[0])
    b = spec.AgentBudget.model_validate(_budget("refunds", hour=12345.0))
    assert b.spec.limits[0] is a.spec.limits[0]
    del a, b
    gc.collect()
    assert key not in spec._PARTS
    c = spec.AgentBudget.model_validate(_budget("billing", hour=12345.0))
    assert c.spec.limits[0].amount_usd == 12345.0 and spec._PARTS[key] is c.spec.limits[0]


def test_a_thousand_budgets_of_one_shape_hold_their_common_parts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "_PARTS", weakref.WeakValueDictionary())
    parsed = [spec.AgentBudget.model_validate(_budget(f"agent-{i}", hour=float(i % 4 + 1))) for i in range(1000)]
    assert len({id(p.spec.limits[0]) for p in parsed}) == 4
    assert len({id(p.spec.limits[1]) for p in parsed}) == 1
    assert len({id(p.spec.kill_switch) for p in parsed}) == 1
    assert len({id(p.spec.selector) for p in parsed}) == 1000
    assert [p.spec.limits[0].amount_usd for p in parsed[:5]] == [1.0, 2.0, 3.0, 4.0, 1.0]
    # The table holds the common parts, not each budget's own (name, selector, whole spec).
    assert len(spec._PARTS) <= 10
    assert not {type(p) for p in spec._PARTS.values()} & {spec.Metadata, spec.LabelSelector, spec.AgentBudgetSpec}
