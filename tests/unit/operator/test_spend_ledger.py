"""The spend ledger (``Fetcher(spend_ledger=True)``, the operator's): a window longer than an hour
is read as pieces that meet end to end, its whole past hours kept between fetches.

A fake Prometheus answers the spend queries from counters that are functions of time, read
exactly as the spend query reads a counter (its value at the end less its value at the start);
every other query finds nothing. The real engine's answers to the pieces are checked against
whole windows in tests/e2e/test_spend_ledger_live.py."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from fleetwarden import errors
from fleetwarden.adapters import prometheus
from fleetwarden.core import spec, windows

HOUR = 3600
DAY = 86400
# 2026-01-31 22:40 UTC: the calendar day and month turn within the fetches below
T0 = 1769904000.0 - 80 * 60
WINDOW = re.compile(r"resets\([^\[]*\[(\d+)(ms|s)\]\)")


def _counter(rate: float, jump_every: float, jump: float) -> Callable[[float], float]:
    """A counter growing at ``rate`` a second with a step of ``jump`` every ``jump_every`` s."""
    return lambda t: rate * t + jump * (t // jump_every)


class Model:
    """Answers a spend query at its time over its window: each agent's growth, as the spend query
    reads it; the range queries and the freshness query find nothing."""

    def __init__(self, counters: dict[str, Callable[[float], float]], fail: str | None = None) -> None:
        self.counters = counters
        self.fail = fail
        self.spend_queries: list[tuple[float, float]] = []  # (time, window seconds) of each spend query

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        found = WINDOW.search(query)
        if found is None:  # freshness
            return []
        if self.fail is not None and self.fail in query:
            raise ConnectionResetError(104, "Connection reset by peer")
        at = float((params or {})["time"])
        seconds = int(found.group(1)) / (1000 if found.group(2) == "ms" else 1)
        self.spend_queries.append((at, seconds))
        return [{"metric": {"namespace": "ns", "agent": name}, "value": [at, repr(f(at) - f(at - seconds))]}
                for name, f in self.counters.items() if f(at) - f(at - seconds) > 0]

    def custom_query_range(self, query: str, start_time: Any, end_time: Any, step: str,
                           params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return []


COUNTERS = {"steady": _counter(0.001, 1e12, 0.0), "bursty": _counter(0.0, 37.0, 0.25),
            "both": _counter(0.0003, 601.0, 1.5)}


def _fetcher(model: Model, ledger: bool, names: list[str] | None = None) -> prometheus.Fetcher:
    return prometheus.Fetcher(model, lookback_minutes=5, scrape_interval=15.0, spend_ledger=ledger,
                              on_query=None if names is None else lambda name, _s: names.append(name))


def test_the_pieces_add_up_to_each_whole_window() -> None:
    """At random times (many within a minute or two of an hour's turn, around a day's and a month's)
    each window's spend read in pieces is the counter's growth over the whole window, for every
    agent: the pieces neither overlap nor leave a gap, whatever the milliseconds of ``now``."""
    rng = random.Random(7)
    times = [T0 + rng.uniform(0, 3 * HOUR) for _ in range(60)]
    times += [T0 + 80 * 60 + k * HOUR + rng.uniform(-90, 150) for k in range(-2, 3) for _ in range(8)]
    ledger = _fetcher(Model(COUNTERS), True)
    for now in sorted(times):
        got = ledger.fetch(now).spend
        assert got.keys() == {("ns", a) for a in COUNTERS}
        for (_, agent), slots in got.items():
            f = COUNTERS[agent]
            for window in spec.Window:
                for calendar in (False, True):
                    start = round(windows.window_start(window, now, calendar=calendar) * 1000) / 1000
                    want = f(round(now * 1000) / 1000) - f(start)
                    assert slots.get((window, calendar), 0.0) == pytest.approx(want, rel=1e-12, abs=1e-9), (
                        now, agent, window, calendar)


def test_a_month_is_read_as_short_pieces_its_hours_once_an_hour_and_each_day_once() -> None:
    """Fetches every 15 s for two and a half hours across a day's turn: only the first fetch and
    the first one a settle after each hour turned read more than an hour and a settle; none but a
    whole day's reads more than 23 hours; each day is read once; most fetches send four queries,
    where the six windows read whole took six."""
    model = Model(COUNTERS)
    fetcher = _fetcher(model, True)
    settle = fetcher.settle_minutes * 60
    counts, days = [], []
    now = T0
    while now < T0 + 2.5 * HOUR:
        before = len(model.spend_queries)
        fetcher.fetch(now)
        mine = model.spend_queries[before:]
        counts.append(len(mine))
        long = [(at, s) for at, s in mine if s > HOUR + settle]
        turned = settle <= now % HOUR < settle + 15
        assert not long or now == T0 or turned, (now - T0, mine)
        if now == T0 or turned:
            assert long, now - T0  # the day's hours move
        for at, s in long:
            assert at % HOUR == 0 and now - at >= settle  # whole hours, settled
            assert s <= 23 * HOUR or (s == DAY and at % DAY == 0), (at, s)
        days += [at for at, s in long if s == DAY]
        now += 15.0
    assert len(days) == len(set(days)) >= 30, days  # each day once: the month's at first, then the one that ended
    assert T0 - T0 % DAY + DAY in days  # 1 February's first fetch a settle after midnight read 31 January
    assert sorted(counts)[len(counts) // 2] == 4 and max(counts[1:]) <= 9, Counter(counts)


def test_the_kept_answers_are_only_those_a_window_still_holds() -> None:
    """After a fetch the ledger keeps the answers of that fetch's kept pieces, no other."""
    fetcher = _fetcher(Model(COUNTERS), True)
    settle = fetcher.settle_minutes * 60
    for k in range(40):
        now = T0 + k * 1000.0
        fetcher.fetch(now)
        held = {(p.end_ms, p.ms) for w in spec.Window for c in (False, True)
                for p in prometheus.spend_pieces(w, c, now, settle) if p.kept}
        assert set(fetcher._spend_kept) == held and len(held) <= 3 + 31


def test_a_piece_that_fails_makes_the_spend_unknown_and_is_not_kept() -> None:
    """A failed query of a kept piece raises a PrometheusError naming that piece; nothing is kept
    from the failed fetch, and the next fetch asks again."""
    model = Model(COUNTERS)
    fetcher = _fetcher(model, True)
    now = T0 + 30 * 60
    kept = [p for p in prometheus.spend_pieces(spec.Window.month, False, now, fetcher.settle_minutes * 60) if p.kept]
    piece = next(p for p in kept if p.ms != DAY * 1000)  # the hours at the month's start
    model.fail = f"[{piece.ms}ms]"
    with pytest.raises(errors.PrometheusError, match=piece.name):
        fetcher.fetch(now)
    assert fetcher._spend_kept == {}
    model.fail = None
    before = len(model.spend_queries)
    fetcher.fetch(now)
    assert any(s * 1000 == piece.ms for _, s in model.spend_queries[before:])


def test_the_pieces_of_a_window() -> None:
    """Where the pieces start and end. A rolling day 40 s after an hour turned (within the settle):
    its kept hours end an hour before that turn and start a day before it, 40 s before the window,
    and those 40 s are taken off; five minutes later they start and end an hour later, and the
    bit from the window's start to them is added. A calendar month starts on its first hour, so
    it has no start piece. A calendar hour, and a rolling one, are one piece."""
    now = 1769904040.250  # 2026-02-01 00:00:40.250 UTC
    day = prometheus.spend_pieces(spec.Window.day, False, now, 120)
    # its hours are the whole settled day, 31 January: the piece the calendar day and the months share
    assert [p.name for p in day] == ["spend day start", "spend today", "spend latest"]
    start, hours, latest = day
    assert start.sign == -1.0 and start.end_ms == round((now - DAY) * 1000) and start.ms == 40250
    assert hours.end_ms - hours.ms == (1769904000 - DAY) * 1000 == start.end_ms - start.ms
    assert hours.end_ms == (1769904000 - HOUR) * 1000 == latest.end_ms - latest.ms
    assert latest.end_ms == 1769904040250 and latest.at == "1769904040.250"
    start, hours, latest = prometheus.spend_pieces(spec.Window.day, False, now + 300, 120)
    assert hours.name == "spend day hours"  # from 01:00 on 31 January to midnight
    assert start.sign == 1.0 and start.end_ms - start.ms == round((now + 300 - DAY) * 1000)
    assert start.end_ms == hours.end_ms - hours.ms == (1769904000 - DAY + HOUR) * 1000
    assert hours.end_ms == 1769904000 * 1000 == latest.end_ms - latest.ms
    month = prometheus.spend_pieces(spec.Window.month, True, now + 3 * HOUR, 120)
    assert [p.name for p in month] == ["spend today", "spend latest"]  # 1 February's hours
    assert month[0].end_ms - month[0].ms == 1769904000 * 1000
    month = prometheus.spend_pieces(spec.Window.month, True, now + 3 * DAY + 3 * HOUR, 120)  # 4 February, 03:00
    assert [p.name for p in month] == ["spend days"] * 3 + ["spend today", "spend latest"]
    assert [p.end_ms // 1000 - 1769904000 for p in month[:3]] == [DAY, 2 * DAY, 3 * DAY]
    rolling = prometheus.spend_pieces(spec.Window.month, False, now + 3 * DAY + 3 * HOUR, 120)
    assert [p.name for p in rolling] == (["spend month start", "spend month hours"] + ["spend days"] * 29
                                         + ["spend today", "spend latest"])
    assert rolling[-2:] == month[-2:] and set(month[:3]) <= set(rolling)  # shared: read once
    for t in (now, now + 300, now + 1800):
        hour = prometheus.spend_pieces(spec.Window.hour, True, t, 120)
        # past the settle, the calendar hour is the latest piece the other windows share
        assert [p.name for p in hour] == ["spend hour calendar" if t == now else "spend latest"]
        assert hour[0].end_ms - hour[0].ms == 1769904000 * 1000
        assert [p.name for p in prometheus.spend_pieces(spec.Window.hour, False, t, 120)] == ["spend hour"]
