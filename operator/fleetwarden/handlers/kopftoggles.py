"""kopf's index readiness without its quadratic start (``apply``, called on importing the handlers).

Before any handler runs, kopf waits until every index is filled: each watched object gets a
toggle in one ``ToggleSet(all)`` (``operator_indexed``) when its first event arrives, and drops
it once indexed, while the object's worker waits for the whole set to be on
(``ToggleSet.wait_for(True)``). Up to kopf 1.45 every ``make_toggle`` and ``drop_toggle``
calls ``notify_all`` on the set's one condition, which wakes *every* waiting worker to
re-check the set: with N objects that is about N^2 / 2 wake-ups before the first handler
runs. At 20,000 objects (10,000 AgentBudgets and their Deployments) kopf had not finished
after 14 minutes, with the event loop's whole time in ``call_soon``
(``benchmarks/operator_scale.py``; docs/operator.md, Scale).

Adding or dropping a toggle changes no toggle's own state, only possibly the set's: so the
set's waiters need waking only when the set's state (on or off) flips. ``apply`` replaces the
three methods with ones that notify only then; ``Toggle.turn_to`` (peering's pause) keeps
notifying as before. A kopf whose ``ToggleSet`` no longer has the attributes this relies on
is left as it is, with a warning (``tests/unit/operator/test_kopf_toggles.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

_PATCHED = "__fleetwarden_flip_only__"


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
    from kopf._cogs.aiokits import aiotoggles

    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: Any, toggle: Any) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def apply() -> bool:
    """Patch kopf's ToggleSet (once); returns whether it is patched."""
    try:
        from kopf._cogs.aiokits import aiotoggles
    except ImportError:  # a kopf laid out otherwise
        log.warning("kopf's aiotoggles not found: its index readiness keeps its quadratic start")
        return False
    cls = aiotoggles.ToggleSet
    if getattr(cls, _PATCHED, False):
        return True
    probe = cls(all)
    if not (isinstance(getattr(probe, "_toggles", None), set) and hasattr(probe, "_condition")
            and all(callable(getattr(cls, m, None)) for m in ("make_toggle", "drop_toggle", "drop_toggles",
                                                              "is_on"))):
        log.warning("kopf's ToggleSet is not the one this patch knows: its index readiness is left as it is")
        return False
    cls.make_toggle = _make_toggle  # type: ignore[method-assign]
    cls.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    cls.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    setattr(cls, _PATCHED, True)
    return True
