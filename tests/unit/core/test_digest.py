"""The digest's pure comparisons: deltas, movers, budget outlook, incident impact, periods."""

from __future__ import annotations

import pytest

from fleetwarden.core import digest


@pytest.mark.parametrize(("current", "previous", "change", "percent"), [
    (15.0, 10.0, 5.0, 50.0),
    (5.0, 10.0, -5.0, -50.0),
    (3.0, 0.0, 3.0, None),  # new: no percentage of 0
    (3.0, None, None, None),  # previous unknown: never computed as if 0
    (None, 2.0, None, None),
    (0.0, 0.0, 0.0, None),
])
def test_delta_is_unknown_against_unknown(current, previous, change, percent):
    """A delta against unknown is unknown; a percentage against 0 is unknown."""
    d = digest.Delta(current, previous)
    assert d.change == change
    assert d.percent == percent


def test_compare_fills_absent_keys_with_zero_only_when_the_previous_period_is_known():
    """A key missing from a known previous period spent 0 then; with the previous period unknown, all are unknown."""
    rows = {r.key: r.delta for r in digest.compare("team", {"a": 2.0, "b": 1.0}, {"a": 1.0, "c": 4.0})}
    assert rows == {"a": digest.Delta(2.0, 1.0), "b": digest.Delta(1.0, 0.0), "c": digest.Delta(0.0, 4.0)}
    unknown = digest.compare("team", {"a": 2.0}, None)
    assert [(r.key, r.delta.previous, r.delta.change) for r in unknown] == [("a", None, None)]


def test_top_movers_rank_by_absolute_change_and_carry_their_explanation():
    """Movers are ranked by |change| across agent, tool and model; unknown and zero moves are left out."""
    rows = [
        *digest.compare("agent", {"ns/a": 100.0, "ns/b": 1.0, "ns/c": 5.0}, {"ns/a": 10.0, "ns/b": 31.0, "ns/c": 5.0}),
        *digest.compare("model", {"m2": 20.0}, {"m1": 0.0}),
        *digest.compare("team", {"t": 1000.0}, {"t": 0.0}),  # not a mover dimension
    ]
    explained = [digest.Explanation("agent", "ns/a", "runaway loop"),
                 digest.Explanation("agent", "ns/a", "runaway loop"),
                 digest.Explanation("model", "m2", "model change m1 -> m2")]
    movers = digest.top_movers(rows, explained, limit=3)
    many = [digest.Explanation("agent", "ns/a", f"finding {i}") for i in range(4)]
    assert digest.top_movers(rows, many, limit=1)[0].explanation == "finding 0; finding 1; and 2 more"
    assert [(m.dimension, m.key, m.delta.change, m.explanation) for m in movers] == [
        ("agent", "ns/a", 90.0, "runaway loop"), ("agent", "ns/b", -30.0, None),
        ("model", "m2", 20.0, "model change m1 -> m2")]


@pytest.mark.parametrize(("spend", "mtd", "cap", "left", "projected", "days"), [
    (14.0, 10.0, 40.0, 10 * 86400, 20.0, 30.0),  # 1/day, 30 left before the cap, 10 days in the month
    (14.0, 10.0, None, 86400, 11.0, None),  # no cap: no days left to count
    (None, 10.0, 40.0, 86400, None, None),  # burn unknown
    (14.0, None, 40.0, 86400, None, None),  # month-to-date unknown
    (14.0, 50.0, 40.0, 86400, 51.0, 0.0),  # cap reached
    (0.0, 5.0, 40.0, 86400, 5.0, None),  # no burn: never runs out
])
def test_budget_outlook(spend, mtd, cap, left, projected, days):
    """Projected month-end and days left at the burn rate of the period (14 days here)."""
    o = digest.budget_outlook("ns", "b", period_spend_usd=spend, period_seconds=14 * 86400,
                              month_to_date_usd=mtd, month_cap_usd=cap, seconds_to_month_end=left)
    assert o.projected_month_end_usd == (pytest.approx(projected) if projected is not None else None)
    assert o.days_left == (pytest.approx(days) if days is not None else None)


def _flat(rate_per_min: float, start: int, end: int, extra: dict[int, float] | None = None) -> dict[int, float]:
    out = {m: rate_per_min for m in range(start, end, 60)}
    for m, v in (extra or {}).items():
        out[m] = out.get(m, 0.0) + v
    return out


@pytest.mark.parametrize(("action", "prevented"), [
    ("kill", 6.0 * 10),  # burn 6/min, 10 min left in the window
    ("rollback", 5.0 * 10),  # burn above the 1/min baseline
    ("alert", 0.0),
])
def test_cost_impact_above_baseline_and_prevented(action, prevented):
    """Spend above baseline from onset to resolution; prevented = burn at the action to the window's end."""
    onset = 7200
    spend = _flat(1.0, 0, 9000, {m: 5.0 for m in range(onset, onset + 600, 60)})
    impact = digest.cost_impact(spend, onset=onset, resolved=onset + 600, action=action, action_time=onset + 600,
                                window_end=onset + 1200, known_from=0)
    assert impact.baseline_usd_per_hour == pytest.approx(60.0)
    assert impact.above_baseline_usd == pytest.approx(50.0)  # 10 minutes x 5 above 1/min
    assert impact.burn_usd_per_hour == pytest.approx(360.0)
    assert impact.prevented_usd == pytest.approx(prevented)


def test_cost_impact_without_data_before_onset_is_unknown():
    """No data in the hour before onset: the baseline and the spend above it are unknown, not 0."""
    impact = digest.cost_impact(_flat(1.0, 3600, 9000), onset=3700, resolved=4000, action="rollback",
                                action_time=4000, window_end=5000, known_from=3600)
    assert impact.above_baseline_usd is None and impact.prevented_usd is None
    assert "baseline is unknown" in impact.note


def test_recommendation_changes():
    """Changed, new and gone workflows are listed; nothing when the previous period is unknown."""
    changes = digest.recommendation_changes({"a": "hold", "b": "optimise", "gone": "hold"},
                                            {"a": "hold", "b": "retire", "new": "more_budget"})
    assert [(c.workflow, c.previous, c.current) for c in changes] == [
        ("b", "optimise", "retire"), ("gone", "hold", None), ("new", None, "more_budget")]
    assert digest.recommendation_changes(None, {"a": "hold"}) == []


@pytest.mark.parametrize(("first", "retention", "known", "says"), [
    (0.0, None, True, None),
    (150.0, None, False, "previous period starts before the first data"),
    (250.0, None, False, "current period starts before the first data"),
    (0.0, 350.0, False, "retention"),
])
def test_check_periods(first, retention, known, says):
    """Data not covering the previous period, or a short retention, leaves it unknown, said plainly."""
    check = digest.check_periods(period_seconds=200, end=400, first_data=first,
                                 retention_seconds=None if retention is None else retention / 86400 * 86400)
    assert check.previous_known is known
    if says:
        assert any(says in n for n in check.notes), check.notes


@pytest.mark.parametrize("first", [None, 400.0, 500.0])
def test_check_periods_without_data_in_the_period_is_an_error(first):
    """No data before the period's end is an error, not an empty digest."""
    with pytest.raises(digest.PeriodError, match="no data in the period"):
        digest.check_periods(period_seconds=200, end=400, first_data=first)
