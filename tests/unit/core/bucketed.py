"""Minutes per agent of a fleet of the independent generator (``core/fleetgen.py``), bucketed as
replay buckets them: the input of the tests of kept states and kept minutes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetwarden.core import buckets, events, fleetgen, pricing, series


def agent_minutes(seed: int, agents: int, hours: float, **kw: Any) -> dict[tuple[str, str], list[series.AgentMinute]]:
    """Each agent's minutes, in order, keyed by (namespace, agent)."""
    evs, _ = fleetgen.build(seed, agents=agents, hours=hours, **kw)
    bucketer = buckets.Bucketer(pricing.PriceTable())
    per: dict[tuple[str, str], list[series.AgentMinute]] = {}

    def feed(ms: Sequence[series.AgentMinute]) -> None:
        for m in ms:
            per.setdefault((m.namespace, m.agent), []).append(m)
    for ev in evs:
        bucketer.add(events.from_obj(ev))
        feed(bucketer.close())
    feed(bucketer.finish())
    return per
