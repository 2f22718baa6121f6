"""guardrails.Episodes: when a guardrail problem starts, worsens and ends, for replay and the operator alike."""

from __future__ import annotations

from typing import Any

import pytest

from fleetwarden.core import guardrails

T0 = 1_800_000_000 // 60 * 60
OPEN = {"complete": False}  # a minute still open (replay, at event time)
JUDGED = {"worsen": False}  # a complete minute whose level was judged as it came (replay's minute close)


def quiet(first: int, last: int) -> list[tuple[Any, ...]]:
    """Complete minutes without the condition, from ``first`` to ``last``."""
    return [(i, 0) for i in range(first, last + 1)]


@pytest.mark.parametrize(
    ("quiet_minutes", "steps", "expected"),
    [
        # (minute index, level[, options]) -> a finding is due?
        (1, [(0, 1), (1, 1), (2, 1)], [True, False, False]),  # a lasting problem: once
        (1, [(0, 1), (1, 2), (2, 2), (3, 3), (4, 1)], [True, True, False, True, False]),  # worse: again
        (1, [(0, 2), (1, 0), (2, 1)], [True, False, True]),  # a complete quiet minute ends it
        (1, [(0, 1), (2, 1)], [True, False]),  # a missing minute is unknown: it goes on
        (1, [(0, 1), (1, 0, OPEN), (2, 1)], [True, False, False]),  # an open minute does not end it
        (1, [(0, 1), (2, 2, OPEN), (1, 0), (3, 1)], [True, True, False, True]),  # nor extends it
        (1, [(0, 1), (1, 3, JUDGED)], [True, False]),  # judged already: goes on, not worse
        (1, [(0, 0), (1, 2, JUDGED)], [False, True]),  # ... but starts one
        (10, [(3, 1), *quiet(4, 12), (13, 1)], [True, *[False] * 9, False]),  # within the quiet stretch: one
        (10, [(3, 1), *quiet(4, 13), (14, 1)], [True, *[False] * 10, True]),  # past it: two
        (None, [(0, 1), *quiet(1, 60), (61, 1)], [True, *[False] * 60, False]),  # never ends: one per key
    ],
)
def test_episodes(quiet_minutes: int | None, steps: list[tuple[Any, ...]], expected: list[bool]) -> None:
    """A problem is reported when it starts and when it worsens; a complete quiet stretch ends it."""
    episodes: guardrails.Episodes[str] = guardrails.Episodes(quiet_minutes)
    due = [episodes.observe("k", T0 + 60 * step[0], step[1], **(step[2] if len(step) > 2 else {}))
           for step in steps]
    assert due == expected


def test_an_episode_keeps_its_first_and_last_minute() -> None:
    """The open episode says when it began and the last complete minute it was seen in; an open minute is not one."""
    episodes: guardrails.Episodes[str] = guardrails.Episodes(1)
    episodes.observe("k", T0, 1)
    episodes.observe("k", T0 + 60, 2)
    episodes.observe("k", T0 + 120, 1, complete=False)
    ep = episodes.get("k")
    assert ep is not None and (ep.first, ep.last, ep.level) == (T0, T0 + 60, 2)
    episodes.observe("k", T0 + 120, 0)
    assert episodes.get("k") is None and not episodes


def test_a_key_keeps_its_place_until_its_ended_episodes_are_dropped() -> None:
    """A problem that ends and starts again keeps its key's place (replay reports in this order)."""
    episodes: guardrails.Episodes[str] = guardrails.Episodes(1)
    for key in ("a", "b"):
        episodes.observe(key, T0, 1)
    episodes.observe("a", T0 + 60, 0)
    assert episodes.open_keys() == ["b"]
    episodes.observe("a", T0 + 120, 1)
    assert episodes.open_keys() == ["a", "b"]
    episodes.observe("a", T0 + 180, 0)
    episodes.drop_ended()
    episodes.observe("a", T0 + 240, 1)
    assert episodes.open_keys() == ["b", "a"]
    episodes.end("b")
    assert episodes.open_keys() == ["a"]
