"""The cost detectors' statistics (core/evidence.py) against a plain reading of the module's doc.

The detectors keep their observations as columns (log costs, units, square roots of the units)
and compute levels and shifts from them; these tests hold those numbers to a plain
implementation over ``(x, u)`` pairs, to the last bit (the same terms added in the same order),
so a faster layout can never change a finding.
"""

from __future__ import annotations

import math
import pickle
import random

import pytest

from fleetwarden.core import detectors, evidence, series, spec


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _winsorised_sum(obs: list[tuple[float, float]], scale: float | None, center: float | None = None) -> float:
    if scale is None or scale <= 0:
        return sum(x * u for x, u in obs)
    c = _median([x for x, _ in obs]) if center is None else center
    h = [evidence.WINSOR * scale / math.sqrt(u) for _, u in obs]
    return sum(min(max(x, c - hi), c + hi) * u for (x, u), hi in zip(obs, h, strict=True))


def _level(obs: list[tuple[float, float]]) -> evidence.Level | None:
    if len(obs) < 2:
        return None
    center = _median([x for x, _ in obs])
    scale = max(1.4826 * _median([abs(x - center) * math.sqrt(u) for x, u in obs]), math.sqrt(evidence.MIN_VARIANCE))
    units = sum(u for _, u in obs)
    return evidence.Level(units=units, mean=_winsorised_sum(obs, scale, center) / units, scale=scale)


def _shift(after: list[tuple[float, float]], base: evidence.Level) -> tuple[float, float]:
    units = sum(u for _, u in after)
    return units, _winsorised_sum(after, base.scale if len(after) >= 3 else None) / units - base.mean


def _sample(rng: random.Random, n: int) -> list[tuple[float, float]]:
    units = rng.choice([lambda: 1.0, lambda: rng.choice([1.0, 1.5, 2.0, 3.0]), lambda: rng.uniform(1.0, 6.0)])
    heavy = rng.random() < 0.5
    return [(rng.gauss(-3.0, 0.8) + (rng.expovariate(0.5) if heavy and rng.random() < 0.1 else 0.0), units())
            for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_levels_and_shifts_from_columns_are_the_plain_ones_to_the_last_bit(seed: int) -> None:
    rng = random.Random(seed)
    for n in (0, 1, 2, 3, 5, 6, 11, 30, 61):
        obs = _sample(rng, n)
        columns = evidence.columns(obs)
        assert columns == ([x for x, _ in obs], [u for _, u in obs], [math.sqrt(u) for _, u in obs])
        expected = _level(obs)
        assert evidence.level_of(*columns) == expected == evidence.level(obs)
        if expected is None:
            continue
        for m in (1, 2, 3, 6, 20):
            after = _sample(rng, m)
            assert evidence.shift_of(*evidence.columns(after), expected) == _shift(after, expected) \
                == evidence.shift(after, expected)


def _busy_minutes(rng: random.Random, count: int) -> list[series.AgentMinute]:
    start = 1_800_000_000 // 60 * 60
    return [series.AgentMinute(agent="a", namespace="ns", minute=start + 60 * i,
                               inference_cost_usd=rng.uniform(0.01, 0.5) * (4.0 if i > count * 2 // 3 else 1.0),
                               llm_calls=rng.randint(1, 9), tasks_completed=rng.randint(0, 3),
                               outcomes=float(rng.randint(0, 1)), model="m")
            for i in range(count)]


def test_the_cost_shift_detectors_kept_columns_are_its_observations_and_survive_a_pickle() -> None:
    """The columns the detector keeps are the observations the blocks made, and a kept state
    (core/warmfold.py pickles it) restores the same columns, square roots included."""
    rng = random.Random(5)
    shift = detectors.CostShift(spec.CostShiftParams())
    made: dict[str, list[tuple[int, tuple[float, float]]]] = {stat: [] for stat in detectors.STATS}
    blocks = {stat: evidence.Blocks(weighted=stat != "call") for stat in detectors.STATS}
    for m in _busy_minutes(rng, 150):
        shift.step(m)
        row = (m.minute, m.inference_cost_usd, m.llm_calls, m.tasks_ended, float(m.tasks_ended), m.outcomes, m.model)
        if row[1] or row[2] or row[3] or row[5]:
            for stat in detectors.STATS:
                x = blocks[stat].add(row[1], detectors._units(row, stat))
                if x is not None:
                    made[stat].append((m.minute, x))
        if shift._frozen is not None:
            break
        restored = pickle.loads(pickle.dumps(shift))
        for stat in detectors.STATS:
            start = m.minute - shift._span
            expected = [x for t, x in made[stat] if t > start]
            assert shift._since(stat, start + 1) == expected
            assert restored._columns(stat, start + 1) == shift._columns(stat, start + 1) == evidence.columns(expected)
