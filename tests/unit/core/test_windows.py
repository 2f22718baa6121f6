"""Spend windows: rolling and calendar sums, kept incrementally, burn rate and month projection."""

from __future__ import annotations

import calendar
import math

import pytest

from fleetwarden.core import spec, windows

T0 = float(calendar.timegm((2026, 11, 28, 10, 0, 0)))  # a Saturday, 10:00 UTC
H = spec.Window.hour
D = spec.Window.day
M = spec.Window.month


def test_rolling_hour_holds_the_last_sixty_minutes() -> None:
    """A cost stays in the rolling hour for 60 minutes (minute resolution), then leaves it."""
    w = windows.SpendWindows()
    w.add(T0, 5.0)
    w.add(T0 + 1800, 2.0)
    assert w.spend(H, now=T0 + 3599) == 7.0
    assert w.spend(H, now=T0 + 3600) == 2.0
    assert w.spend(H, now=T0 + 1800 + 3600) == 0.0
    assert w.spend(D, now=T0 + 1800 + 3600) == 7.0


@pytest.mark.parametrize(
    ("window", "later", "expected"),
    [
        (H, 600, 7.0),  # same calendar hour
        (H, 3600, 0.0),  # next calendar hour: reset
        (D, 3600 * 13, 7.0),  # 23:00 the same day
        (D, 3600 * 14, 0.0),  # next day
        (M, 86400 * 2, 7.0),  # still November
        (M, 86400 * 3, 0.0),  # December
    ],
)
def test_calendar_windows_reset_at_the_period_boundary(window: spec.Window, later: float, expected: float) -> None:
    """Calendar hour, day and month sums hold the current UTC period only."""
    w = windows.SpendWindows()
    w.add(T0, 3.0)
    w.add(T0 + 60, 4.0)
    assert w.spend(window, calendar=True, now=T0 + later) == expected


def test_rolling_sum_matches_a_brute_force_sum() -> None:
    """The ring buffer's running sum equals summing the raw costs in the window, across gaps."""
    import random

    rng = random.Random(3)
    r = windows.RollingSum(60, 60)
    seen: list[tuple[float, float]] = []
    t = T0
    for _ in range(3000):
        t += rng.choice([1, 5, 30, 61, 400, 5000])
        amount = rng.random()
        r.add(t, amount)
        seen.append((t, amount))
        lo = (int(t // 60) - 59) * 60
        assert r.sum(t) == pytest.approx(sum(a for ts, a in seen if ts >= lo))


def test_late_cost_older_than_the_window_is_not_counted() -> None:
    """A cost older than what the window holds is refused, not counted."""
    r = windows.RollingSum(60, 60)
    r.add(T0 + 7200, 1.0)
    assert r.add(T0, 5.0) is False
    assert r.sum(T0 + 7200) == 1.0


def test_spend_since_counts_only_after_a_resume() -> None:
    """With `since`, only spend from that minute on counts (the kill switch after a human resume)."""
    w = windows.SpendWindows()
    w.add(T0, 10.0)
    w.add(T0 + 600, 1.0)
    assert w.spend(H, now=T0 + 700, since=T0 + 300) == 1.0
    assert w.spend(H, calendar=True, now=T0 + 700, since=T0 + 300) == 1.0
    assert w.spend(H, now=T0 + 700) == 11.0


def test_burn_rate_and_projection() -> None:
    """Burn rate is USD/hour over the time observed; the projection adds it until the month ends."""
    w = windows.SpendWindows()
    assert w.burn_rate_per_hour(T0) is None and w.projected_month(T0) is None
    for i in range(120):  # 1ドル a minute for two hours
        w.add(T0 + 60 * i, 1.0)
    now = T0 + 7200
    assert w.burn_rate_per_hour(now) == pytest.approx(60.0, rel=0.02)
    assert w.burn_rate_per_hour(now, over=D) == pytest.approx(60.0, rel=0.02)
    hours_left = (windows.calendar_end(M, now) - now) / 3600
    assert w.projected_month(now) == pytest.approx(120 + 60 * hours_left, rel=0.02)


def _utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0, 0, 0, 0)[:9]))


@pytest.mark.parametrize(
    ("window", "ts", "start", "end"),
    [
        (H, _utc(2027, 1, 15, 9, 2, 3), _utc(2027, 1, 15, 9), _utc(2027, 1, 15, 10)),
        (D, _utc(2027, 1, 15, 9, 2, 3), _utc(2027, 1, 15), _utc(2027, 1, 16)),
        (M, _utc(2027, 1, 15, 9, 2, 3), _utc(2027, 1, 1), _utc(2027, 2, 1)),
        (H, _utc(2027, 1, 15, 9), _utc(2027, 1, 15, 9), _utc(2027, 1, 15, 10)),  # a boundary starts its period
        (H, math.nextafter(_utc(2027, 1, 15, 9), 0), _utc(2027, 1, 15, 8), _utc(2027, 1, 15, 9)),
        (D, math.nextafter(_utc(2027, 1, 16), 0), _utc(2027, 1, 15), _utc(2027, 1, 16)),
        (M, _utc(2027, 2, 1), _utc(2027, 2, 1), _utc(2027, 3, 1)),
        (M, math.nextafter(_utc(2027, 1, 1), 0), _utc(2026, 12, 1), _utc(2027, 1, 1)),  # the last float of a year
        (D, _utc(2028, 2, 29, 12), _utc(2028, 2, 29), _utc(2028, 3, 1)),  # leap day
        (M, _utc(2028, 2, 29, 12), _utc(2028, 2, 1), _utc(2028, 3, 1)),
        (M, _utc(2027, 3, 31, 23, 30), _utc(2027, 3, 1), _utc(2027, 4, 1)),  # a 31-day month
    ],
)
def test_calendar_start_and_end(window: spec.Window, ts: float, start: float, end: float) -> None:
    """A calendar hour, day or month (UTC) starts at its boundary and ends where the next starts;
    a time a hair before the boundary is still in the period it is in."""
    assert windows.calendar_start(window, ts) == start
    assert windows.calendar_end(window, ts) == end
    assert windows.calendar_start(window, ts) <= ts < windows.calendar_end(window, ts)


@pytest.mark.parametrize(
    ("window", "is_calendar", "start"),
    [
        (H, True, 1_800_003_600.0),
        (D, True, 1_799_971_200.0),
        (M, True, 1_798_761_600.0),
        (H, False, 1_800_003_723.0 - 3600),
        (D, False, 1_800_003_723.0 - 86400),
        (M, False, 1_800_003_723.0 - 30 * 86400),
    ],
)
def test_window_start_rolling_or_calendar(window: spec.Window, is_calendar: bool, start: float) -> None:
    """Calendar windows start at the UTC period; rolling windows reach back their length."""
    now = 1_800_003_723.0  # 2027-01-15T09:02:03Z
    assert windows.window_start(window, now, calendar=is_calendar) == start
