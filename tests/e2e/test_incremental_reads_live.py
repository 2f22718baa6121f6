"""The operator's incremental read of the SDK's minutes, on the real Prometheus scraping a live
simulator: after minutes of fetches that each read only what was new (and the settle minutes
again), the buckets equal one full read of the lookback, minute for minute: every count, name
and reading the same, every amount to the last digit or one rounding from it. Prometheus adds
a minute's series (a `sum by`) in an order that depends on which series the query's range
selects, so a short read and a long one can differ in the last bit of a sum (seen here:
0.013659300000000001 against 0.013659300000000003). A fetch of the same minutes as a read begun a
scrape interval or more after their end sends no range query: what it hands out is what a full
read gives at that moment, the agents still spending."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import live_simulator

from fleetwarden.adapters import prometheus as adapter
from fleetwarden.core import series

RUN_SECONDS = 150  # real time: the fetches cross at least two minute boundaries
NAMESPACE = "e2e-incremental"


def _same(a: Any, b: Any) -> bool:
    """Equal, with floats equal to 12 significant digits (one rounding of a sum apart)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12,
                                                                                            abs_tol=1e-15)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, (str, bytes)):
        # lists, tuples, and the fetcher's compact runs of minutes (series.MinuteRun)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_incremental_fetches_equal_one_full_read(prometheus: Any) -> None:
    args = ["--duration", f"{RUN_SECONDS}s", "--speed", "1", "--scenario", "tool-call-explosion", "--at", "1",
            "--seed", "5", "--namespace", NAMESPACE, "--linger", "300"]
    client = adapter.connect(prometheus.url)

    def fetcher(incremental: bool) -> adapter.Fetcher:
        return adapter.Fetcher(client, lookback_minutes=10, scrape_interval=prometheus.scrape_interval,
                               namespaces=[NAMESPACE], incremental=incremental)

    with live_simulator.running(prometheus, args) as sim:
        prometheus.wait_for_target_up(sim.job, timeout=30)
        incremental = fetcher(True)
        ends: set[int] = set()
        unread = 0  # fetches that sent no range query: the same minutes as a read begun past their end
        while not sim.finished.is_set():
            assert sim.proc.poll() is None, sim.said()
            now = time.time()
            snap = incremental.fetch(now)
            ends.add(snap.end)
            if snap.queries < adapter.QUERIES_PER_CYCLE:
                assert snap.queries == adapter.QUERIES_PER_CYCLE - len(adapter.RANGE_FAMILIES) - 1
                # ... what a full read gives now, the agents still spending: those minutes were final
                whole = fetcher(False).fetch(now)
                assert _same(snap.minutes, whole.minutes) and _same(snap.outcomes, whole.outcomes)
                assert _same(snap.guardrails, whole.guardrails)
                unread += 1
            time.sleep(5)
            assert len(ends) < 10, "the simulator did not finish:\n" + sim.said()
        assert len(ends) >= 3, ends  # a full read, then incremental ones across minute boundaries
        assert unread >= 3, unread  # (a fetch every 5 s, 2 s scrapes: most within a minute send none)
        # the last samples scraped, and the minute they fell in complete
        stopped = time.time()
        time.sleep(series.MINUTE - stopped % series.MINUTE + 3 * prometheus.scrape_interval)
        now = time.time()
        got, whole = incremental.fetch(now), fetcher(False).fetch(now)
        assert whole.minutes and sum(len(ms) for ms in whole.minutes.values()) >= 2 * len(whole.minutes)
        assert {k[0] for k in whole.minutes} == {NAMESPACE}
        assert (got.start, got.end) == (whole.start, whole.end)
        assert _same(got.minutes, whole.minutes), [k for k in whole.minutes
                                                    if not _same(got.minutes.get(k), whole.minutes[k])]
        assert _same(got.outcomes, whole.outcomes)
        assert _same(got.guardrails, whole.guardrails)
