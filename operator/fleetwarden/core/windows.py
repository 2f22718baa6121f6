"""Spend per window (hour, day, month; rolling or calendar UTC), kept incrementally.

Costs arrive as ``add(ts, usd)`` in (roughly) time order. Each window is O(1) per added
amount and amortised O(1) per minute of clock advance:

- rolling windows are ring buffers of slots with a running sum: the hour and the day at
  minute resolution (the current minute and the 59 / 1439 before it), the month (30 days)
  at hour resolution (the current hour and the 719 before it);
- calendar windows (UTC hour, day, month) are a running sum reset when the period changes.

An amount older than what a window still holds is not counted in it (it is in no current
window). Reading at ``now`` first expires what fell out; the clock never moves back (a
read at an earlier ``now`` reads at the latest time seen).

``SpendWindows`` bundles all six and derives the burn rate (USD/hour over the last hour
and the last day, over the time actually observed when less than the window) and the
projection to the end of the calendar month.

Where a window starts and ends is said once, here, for everyone (the operator's status,
the Prometheus spend queries, the economics report): :func:`calendar_start` and
:func:`calendar_end` of the UTC hour, day or month that holds a time, and
:func:`window_start` of a rolling or calendar window ending now.
"""

from __future__ import annotations

import array
import calendar
import datetime as dt

from fleetwarden.core import spec

MINUTE = 60
HOUR = 3600
DAY = 86400


class RollingSum:
    """The sum of amounts in the last ``slots`` slots of ``slot_seconds`` (current slot included)."""

    __slots__ = ("slot_seconds", "size", "buf", "head", "total", "_adds")

    def __init__(self, slots: int, slot_seconds: int) -> None:
        self.slot_seconds = slot_seconds
        self.size = slots
        self.buf = array.array("d", bytes(8 * slots))
        self.head: int | None = None  # absolute index (ts // slot_seconds) of the newest slot
        self.total = 0.0
        self._adds = 0

    def advance(self, ts: float) -> None:
        """Move the window's end to the slot of ``ts`` (never backwards), expiring old slots."""
        idx = int(ts // self.slot_seconds)
        head = self.head
        if head is None:
            self.head = idx
            return
        if idx <= head:
            return
        buf, size = self.buf, self.size
        if idx - head >= size:
            for i in range(size):
                buf[i] = 0.0
            self.total = 0.0
        else:
            for j in range(head + 1, idx + 1):
                k = j % size
                self.total -= buf[k]
                buf[k] = 0.0
            if self.total < 1e-9:
                self.total = 0.0 if self.total < 0 else self.total
        self.head = idx

    def add(self, ts: float, amount: float) -> bool:
        """Count ``amount`` at ``ts``; False when ``ts`` is older than the window holds."""
        self.advance(ts)
        idx = int(ts // self.slot_seconds)
        head = self.head
        assert head is not None
        if idx <= head - self.size:
            return False
        self.buf[idx % self.size] += amount
        self.total += amount
        self._adds += 1
        if self._adds >= 100_000:  # bound float drift of the running sum
            self._adds = 0
            self.total = sum(self.buf)
        return True

    def sum(self, now: float) -> float:
        self.advance(now)
        return self.total

    def sum_since(self, now: float, since: float) -> float:
        """The sum over slots starting at or after the slot of ``since`` (O(window))."""
        self.advance(now)
        if self.head is None:
            return 0.0
        first = max(int(since // self.slot_seconds), self.head - self.size + 1)
        return sum(self.buf[j % self.size] for j in range(first, self.head + 1))

    def covered_seconds(self, now: float, first_ts: float) -> float:
        """How much of the window the data covers: from ``first_ts`` (or the window start) to ``now``."""
        start = max(first_ts, (int(now // self.slot_seconds) - self.size + 1) * self.slot_seconds)
        return max(now - start, 0.0)


def calendar_start(window: spec.Window, ts: float) -> float:
    """Start of the calendar hour, day or month (UTC) that holds ``ts``."""
    if window == spec.Window.hour:
        return float(ts // HOUR * HOUR)
    day_start = float(ts // DAY * DAY)
    if window == spec.Window.day:
        return day_start
    day = dt.datetime.fromtimestamp(day_start, tz=dt.timezone.utc)
    return float(calendar.timegm((day.year, day.month, 1, 0, 0, 0, 0, 0, 0)))


def calendar_end(window: spec.Window, ts: float) -> float:
    """End of the calendar hour, day or month (UTC) that holds ``ts``: the next one's start."""
    start = calendar_start(window, ts)
    if window == spec.Window.hour:
        return start + HOUR
    if window == spec.Window.day:
        return start + DAY
    return calendar_start(window, start + 32 * DAY)


def window_start(window: spec.Window, now: float, *, calendar: bool) -> float:
    """Start of the window that ends at ``now``: rolling (``now`` minus the window's length,
    ``spec.WINDOW_SECONDS``) or the calendar hour, day or month (UTC) so far."""
    if calendar:
        return calendar_start(window, now)
    return now - spec.WINDOW_SECONDS[window]


class CalendarSum:
    """The sum of amounts in the current calendar hour, day or month (UTC)."""

    __slots__ = ("window", "period", "total", "_start", "_end")

    def __init__(self, window: spec.Window) -> None:
        self.window = window
        self.period: float | None = None  # start of the current period
        self.total = 0.0
        self._start = 0.0
        self._end = 0.0

    def _bounds(self, ts: float) -> tuple[float, float]:
        return calendar_start(self.window, ts), calendar_end(self.window, ts)

    def advance(self, ts: float) -> None:
        if self.period is not None and ts < self._end:
            return
        if self.period is None or ts >= self._end:
            self._start, self._end = self._bounds(ts)
            self.period = self._start
            self.total = 0.0

    def add(self, ts: float, amount: float) -> bool:
        self.advance(ts)
        if ts < self._start:
            return False
        self.total += amount
        return True

    def sum(self, now: float) -> float:
        self.advance(now)
        return self.total


class SpendWindows:
    """Spend over every window of ``spec.Window``, rolling and calendar, from one stream of costs."""

    __slots__ = ("rolling", "calendar", "first_ts", "last_ts")

    def __init__(self) -> None:
        self.rolling = {
            spec.Window.hour: RollingSum(60, MINUTE),
            spec.Window.day: RollingSum(1440, MINUTE),
            spec.Window.month: RollingSum(720, HOUR),
        }
        self.calendar = {w: CalendarSum(w) for w in spec.Window}
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def add(self, ts: float, usd: float) -> None:
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
        for r in self.rolling.values():
            r.add(ts, usd)
        for c in self.calendar.values():
            c.add(ts, usd)

    def spend(self, window: spec.Window, *, calendar: bool = False, now: float,
              since: float | None = None) -> float:
        """USD in ``window`` at ``now``; with ``since``, only what was spent from then on."""
        if calendar:
            cal = self.calendar[window]
            total = cal.sum(now)
            if since is None or since <= cal._start:
                return total
            # the part of the calendar period since `since`, from the rolling ring that covers it
            return min(total, self.rolling[window].sum_since(now, since))
        if since is not None:
            return self.rolling[window].sum_since(now, since)
        return self.rolling[window].sum(now)

    def burn_rate_per_hour(self, now: float, over: spec.Window = spec.Window.hour) -> float | None:
        """USD per hour over the last hour or day (over the time observed, if less); None with no data."""
        if self.first_ts is None:
            return None
        window = self.rolling[over]
        covered = window.covered_seconds(now, self.first_ts)
        spend = window.sum(now)
        if covered < MINUTE:
            covered = float(MINUTE)
        return spend / covered * HOUR

    def projected_month(self, now: float) -> float | None:
        """Calendar month to date plus the last day's burn rate until the end of the month."""
        rate = self.burn_rate_per_hour(now, spec.Window.day)
        if rate is None:
            return None
        return self.calendar[spec.Window.month].sum(now) + rate * (calendar_end(spec.Window.month, now) - now) / HOUR
