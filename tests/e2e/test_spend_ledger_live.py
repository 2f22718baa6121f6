"""The spend ledger on the real Prometheus: 33 days of the SDK's spend counters, backfilled with
promtool, read by the operator's fetcher (``spend_ledger=True``: each window longer than an
hour in pieces, its whole past hours kept between fetches) at times spread over the last hours,
some just after an hour turned. Each window's spend is each agent's true growth over it, as
the fetcher that reads every window whole reads it, for counters that grew without a reset;
a counter reset within the month (a restarted pod) is counted in full. Reading every window
whole each cycle is what this replaces; the figures are in docs/scaling.md."""

from __future__ import annotations

import bisect
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from fleetwarden.adapters import prometheus as adapter
from fleetwarden.core import spec, windows
from fleetwarden.devcluster import monitoring

STEP = 120  # seconds between backfilled samples
PHASE = 37  # seconds after a whole STEP of each sample, so that a piece's bit of a minute holds one
DAYS = 33
NS = "e2e-ledger"
HOUR = 3600


DAY = 86400


def _ages(end: int) -> list[int]:
    """The ages (seconds before the last sample) of the samples, oldest first: every STEP where a
    window or a piece of one of a fetch in the last three hours starts or ends (the last three
    days, 30 days back, the calendar month's start, each midnight), every 12 hours elsewhere (fewer blocks for promtool to write;
    a counter's growth between two samples is the same however far apart they are)."""
    month_start = end - int(windows.calendar_start(spec.Window.month, end))
    dense = [(0, 3 * DAY), (30 * DAY - 2 * HOUR, 30 * DAY + 6 * HOUR), (month_start - 3 * HOUR, month_start + 2 * HOUR)]
    # each midnight, where a day of the ledger starts and ends
    dense += [(end % DAY + k * DAY - 10 * 60, end % DAY + k * DAY + 2 * HOUR) for k in range(DAYS + 1)]
    ages = set(range(0, DAYS * DAY + 1, 12 * HOUR))
    for lo, hi in dense:
        ages |= set(range(max(lo, 0) // STEP * STEP, min(hi, DAYS * DAY) + 1, STEP))
    return sorted(ages, reverse=True)


RESET_AGE = 9 * 86400 + 1234  # seconds before the last sample: a pod restarted within the month
BORN_AGE = 2 * 86400 + 600  # an agent started two days before it


def _values() -> dict[tuple[str, str], Callable[[int], float | None]]:
    """(agent, metric) -> the counter's value at a sample that many seconds before the last one
    (None: no sample then)."""
    llm, tool, human = adapter.SPEND_METRICS
    rng = random.Random(11)
    total = DAYS * 86400
    every = 7 * STEP
    prefix = [0.0]
    for _ in range(total // every + 1):
        prefix.append(prefix[-1] + rng.uniform(0.1, 3.0))
    return {
        ("steady", llm): lambda age: 0.0004 * (total - age),
        ("steady", human): lambda age: 0.5 * ((total - age) // 86400),  # a human's half dollar a day
        ("bursty", tool): lambda age: prefix[(total - age) // every],
        ("restarted", llm): lambda age: 0.0002 * ((total - age) if age > RESET_AGE else (RESET_AGE - age)),
        ("young", llm): lambda age: None if age > BORN_AGE else 5.0 + 0.001 * (BORN_AGE - age),
    }


Values = dict[tuple[str, str], Callable[[int], float | None]]
Backfill = tuple[str, int, Values, list[int]]


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backfill]:
    """A Prometheus holding the counters, their last sample at ``end``: (url, end, values, the
    sample times in order)."""
    assert shutil.which("promtool"), "promtool is missing: run scripts/setup (Debian package prometheus)"
    end = int(time.time()) // STEP * STEP - 10 * STEP + PHASE
    values = _values()
    ages = _ages(end)
    directory = tmp_path_factory.mktemp("ledger")
    lines = []
    for metric in adapter.SPEND_METRICS:
        lines.append(f"# TYPE {metric.removesuffix('_total')} counter")
        for (agent, m), value in values.items():
            if m != metric:
                continue
            for age in ages:
                v = value(age)
                if v is not None:
                    lines.append(f'{metric}{{namespace="{NS}",agent="{agent}",pod="{agent}-0"}} {v!r} {end - age}')
    lines.append("# EOF")
    history = directory / "history.om"
    history.write_text("\n".join(lines) + "\n")
    (directory / "prometheus" / "tsdb").mkdir(parents=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(history),
                    str(directory / "prometheus" / "tsdb")], check=True, capture_output=True, text=True, timeout=600)
    prom = monitoring.Prometheus(directory / "prometheus", tie_to_parent=True, retention=f"{DAYS + 5}d")
    prom.start()
    try:
        yield prom.url, end, values, [end - age for age in ages]
    finally:
        prom.stop()


def _at(value: Callable[[int], float | None], end: int, times: list[int], t: float) -> float:
    """The counter's last sample at or before ``t`` (0 before it was born)."""
    i = bisect.bisect_right(times, t) - 1
    v = value(end - times[i]) if i >= 0 else None
    return 0.0 if v is None else v


def _growth(value: Callable[[int], float | None], end: int, times: list[int], start: float, now: float) -> float:
    """What the counter grew from ``start`` to ``now``, sample by sample, a drop counted as
    Prometheus counts a reset (the value after it, grown from 0)."""
    total, before = 0.0, _at(value, end, times, start)
    for t in times[bisect.bisect_right(times, start):bisect.bisect_right(times, now)]:
        v = value(end - t)
        if v is not None:
            total += v - before if v >= before else v
            before = v
    return total


def test_the_ledger_reads_each_windows_true_spend(backfilled: Backfill) -> None:
    """At each fetch every agent's spend in each of the six windows is its counters' true growth;
    where Prometheus's increase() reads a reset, within a sample's growth of it. Read whole, the
    windows give the same (at whole seconds: read whole, a window is whole seconds long)."""
    url, end, values, times = backfilled
    client = adapter.connect(url, timeout=60.0)
    ledger = adapter.Fetcher(client, lookback_minutes=5, scrape_interval=15.0, namespaces=[NS], spend_ledger=True)
    whole = adapter.Fetcher(client, lookback_minutes=5, scrape_interval=15.0, namespaces=[NS])
    rng = random.Random(5)
    last_hour = end // HOUR * HOUR
    # over the last three hours; some within the settle after an hour turned; some at whole seconds
    nows = sorted({last_hour - 3 * HOUR + rng.uniform(0, 3 * HOUR) for _ in range(4)}
                   | {last_hour - k * HOUR + rng.uniform(0, 150) for k in range(3)}
                   | {float(last_hour - HOUR + 1801), float(last_hour - 2 * HOUR + 97)}
                   | {last_hour - k * HOUR + 80.5 for k in range(3)})  # 80.5 s: the bit taken off holds a sample
    kept = set()
    for now in nows:
        got = ledger.fetch(now).spend
        kept |= set(ledger._spend_kept)
        read_whole = whole.fetch(now).spend if now == int(now) else None
        for agent in sorted({a for a, _ in values}):
            mine_values = [v for (a, _), v in values.items() if a == agent]
            for window in spec.Window:
                for calendar in (False, True):
                    start = windows.window_start(window, now, calendar=calendar)
                    truth = sum(_growth(v, end, times, start, now) if agent == "restarted"
                                else _at(v, end, times, now) - _at(v, end, times, start) for v in mine_values)
                    mine = got.get((NS, agent), {}).get((window, calendar), 0.0)
                    what = (agent, window.value, calendar, now - last_hour)
                    if agent == "restarted" and start < end - RESET_AGE < now:
                        assert mine == pytest.approx(truth, abs=2 * 0.0002 * STEP), what
                        continue
                    assert mine == pytest.approx(truth, rel=1e-9, abs=1e-9), what
                    if read_whole is not None:
                        theirs = read_whole.get((NS, agent), {}).get((window, calendar), 0.0)
                        assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-9), what
    # the day's and the month's hours (rolling and calendar) read at least once each hour
    assert len(kept) >= 4 * 3, sorted(kept)
