"""The operator's fetcher reads the SDK's per-minute series incrementally (adapters/prometheus.py,
``Fetcher(incremental=True)``): each fetch reads the minutes since the last one and again the
last ``settle_minutes``; a long span is read in slices. What it hands out must be what one
full read of the lookback gives, minute for minute.

The client is synthetic (unit test): it answers each range query as Prometheus evaluates one,
point by point at its own time, from a fixed history per series (with gaps), so that a span
read in pieces and read whole can be compared; a sample can be made to arrive late."""

from __future__ import annotations

import datetime as dt
import math
import weakref
from typing import Any

from fleetwarden.adapters import prometheus
from fleetwarden.core import guardrails, series, spec

NOW = 1_795_882_594.5
END = int(NOW // 60) * 60
AGENTS = [("shop", "bot"), ("shop", "helper"), ("crm", "lead-1")]
STATUS = guardrails.FINDING_STATUSES[0]


def _labels(family: str) -> list[dict[str, str]]:
    out = []
    for ns, agent in AGENTS:
        base = {"namespace": ns, "agent": agent}
        if family == "llm_calls":
            out += [{**base, "model": "gpt-4o-mini", "workflow": "support"}, {**base, "model": "gpt-4o", "workflow": ""}]
        elif family in ("tool_calls", "tool_cost"):
            out += [{**base, "tool": "crm.search"}, {**base, "tool": "web.fetch"}]
            if family == "tool_calls":
                out.append({**base, prometheus.GUARDRAIL_MARK: "guardrail", "status": STATUS, "tool": "crm.search"})
        elif family == "tasks":
            out += [{**base, "status": "completed"}, {**base, "status": "failed"}]
        elif family == "outcomes":
            out += [{**base, "outcome": "ticket_resolved"}]
        elif family == "open tasks":
            out += [{**base, "instance": "10.0.0.1:9000", "fw_metric": g} for g in sorted(prometheus.OPEN_TASK_GAUGES)]
        else:
            out.append(base)
    return out


class Synthetic:
    """Range answers point by point; ``late``: (minute start, labels' agent) whose sample is not in
    yet (its point is missing) until ``arrived`` is set."""

    def __init__(self, late: tuple[int, str] | None = None) -> None:
        self.families = {prometheus.family_query(f): f for f in prometheus.RANGE_FAMILIES}
        self.families[prometheus.open_tasks_query()] = "open tasks"
        self.ranges: list[tuple[str, int, int]] = []
        self.late, self.arrived = late, False

    def _value(self, family: str, labels: dict[str, str], t: int) -> float | None:
        h = sum(map(ord, "".join(sorted(labels.values())))) + sum(map(ord, family))
        if (t // 60 + h) % 11 == 0:
            return None  # a gap: no sample in this minute
        if self.late is not None and not self.arrived and t - 60 == self.late[0] and labels["agent"] == self.late[1]:
            return None
        return float((t // 60 * 7 + h) % 13) + (0.25 if family.endswith("cost") else 0.0)

    def custom_query_range(self, query: str, start_time: dt.datetime, end_time: dt.datetime, step: str,
                           params: dict[str, Any] | None = None) -> Any:
        a, b = int(start_time.timestamp()), int(end_time.timestamp())
        family = self.families[query]
        self.ranges.append((family, a, b))
        out = []
        for labels in _labels(family):
            values = [[t, str(v)] for t in range(a, b + 1, int(step)) if (v := self._value(family, labels, t)) is not None]
            if values:
                out.append({"metric": labels, "values": values})
        return out

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return []  # spend and freshness: instant, read whole every fetch


def full(now: float, client: Synthetic | None = None) -> prometheus.FleetSnapshot:
    return prometheus.Fetcher(client or Synthetic(), lookback_minutes=30).fetch(now)


def same(a: prometheus.FleetSnapshot, b: prometheus.FleetSnapshot) -> None:
    assert (a.start, a.end) == (b.start, b.end)
    assert a.minutes == b.minutes
    assert a.outcomes == b.outcomes
    assert a.guardrails == b.guardrails


def test_the_full_read_has_every_kind_of_bucket():
    snap = full(NOW)
    assert set(snap.minutes) == set(AGENTS)
    assert all(len(ms) > 20 for ms in snap.minutes.values())
    # kept as compact runs (core/series.py), handed to a budget as they are
    assert all(isinstance(ms, series.MinuteRun) for ms in snap.minutes.values())
    assert snap.agent_minutes(*AGENTS[0]) is snap.minutes[AGENTS[0]]
    assert snap.outcomes and snap.guardrails
    assert any(m.open_tasks is not None for ms in snap.minutes.values() for m in ms)


def test_fetches_minutes_apart_hand_out_what_one_full_read_gives():
    client = Synthetic()
    fetcher = prometheus.Fetcher(client, lookback_minutes=30, incremental=True)
    for now in (NOW - 900, NOW - 420, NOW - 60, NOW - 45, NOW):
        snap = fetcher.fetch(now)
        same(snap, full(now))
    # after the first, each fetch read from the settle minutes before what it kept, not the lookback
    assert fetcher.settle_minutes == 2
    last = [r for r in client.ranges if r[0] == "inference_cost"][-1]
    assert last[1] == END - 60 - 60 * fetcher.settle_minutes + 60 and last[2] == END


def test_a_snapshot_handed_out_is_not_changed_by_the_next_fetch():
    fetcher = prometheus.Fetcher(Synthetic(), lookback_minutes=30, incremental=True)
    first = fetcher.fetch(NOW - 120)
    before = {k: list(v) for k, v in first.minutes.items()}
    fetcher.fetch(NOW)
    assert first.minutes == before


def test_a_sample_scraped_late_for_its_minute_is_seen_at_the_next_fetch():
    late_minute = END - 120
    client = Synthetic(late=(late_minute, "bot"))
    fetcher = prometheus.Fetcher(client, lookback_minutes=30, incremental=True)
    early = fetcher.fetch(NOW - 60)  # the minute END-120 is complete, but bot's sample is not in
    assert early.minutes[("shop", "bot")] != full(NOW - 60).minutes[("shop", "bot")]
    client.arrived = True
    same(fetcher.fetch(NOW), full(NOW))


def test_a_long_span_is_read_in_slices_with_the_same_buckets():
    client = Synthetic()
    sliced = prometheus.Fetcher(client, lookback_minutes=30, slice_minutes=7).fetch(NOW)
    same(sliced, full(NOW))
    slices = math.ceil(30 / 7)
    assert sliced.queries == prometheus.QUERIES_PER_CYCLE + (slices - 1) * (len(prometheus.RANGE_FAMILIES) + 1)
    spans = [(a, b) for family, a, b in client.ranges if family == "inference_cost"]
    assert len(spans) == slices and spans[0][0] == END - 30 * 60 + 60 and spans[-1][1] == END
    assert all(spans[i][1] + 60 == spans[i + 1][0] for i in range(slices - 1))  # no minute twice, none left out


def test_a_clock_that_went_back_or_a_long_pause_reads_the_lookback_whole():
    client = Synthetic()
    fetcher = prometheus.Fetcher(client, lookback_minutes=30, incremental=True)
    fetcher.fetch(NOW)
    for now in (NOW - 300, NOW + 3600):
        client.ranges.clear()
        same(fetcher.fetch(now), full(now))
        first = [r for r in client.ranges if r[0] == "inference_cost"][0]
        assert first[1] == int(now // 60) * 60 - 30 * 60 + 60


class _Answer(list):  # type: ignore[type-arg]
    """A decoded answer that can be watched (a weak reference) to see how long it lives."""


def test_the_fetcher_holds_one_decoded_range_answer_at_a_time():
    """Each range answer is folded into the slice's buckets as it arrives and dropped before the
    next query: a 15-minute answer of 10,000 series is some 35 MB of decoded lists, so holding
    a slice's ten at once was the fetch's peak. The buckets are still those of one full read."""
    client = Synthetic()
    alive: list[weakref.ref[_Answer]] = []
    held_at_query: list[int] = []
    answer_range = client.custom_query_range

    def watched(*args: Any, **kwargs: Any) -> Any:
        held_at_query.append(sum(1 for ref in alive if ref() is not None))
        answer = _Answer(answer_range(*args, **kwargs))
        alive.append(weakref.ref(answer))
        return answer

    client.custom_query_range = watched  # type: ignore[method-assign]
    snap = prometheus.Fetcher(client, lookback_minutes=30, slice_minutes=7).fetch(NOW)
    same(snap, full(NOW))
    assert len(held_at_query) == math.ceil(30 / 7) * (len(prometheus.RANGE_FAMILIES) + 1)
    assert max(held_at_query) == 0


class Instant(Synthetic):
    """Also answers the instant queries (spend, freshness): a sample for each agent."""

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return [{"metric": {"namespace": ns, "agent": agent}, "value": [NOW, "1.5"]} for ns, agent in AGENTS]


def test_a_fetch_keeps_one_key_per_agent_and_one_per_spend_window():
    """Every dict a snapshot keeps per agent has the same (namespace, agent) tuple as its key, fetch
    after fetch, and every agent's spend map the same (window, calendar) tuples: each decoded
    answer would make its own (some 10 tuples an agent a snapshot at 10,000 agents)."""
    fetcher = prometheus.Fetcher(Instant(), lookback_minutes=30, incremental=True)
    first, second = fetcher.fetch(NOW - 60), fetcher.fetch(NOW)
    for ns, agent in AGENTS:
        keys = [next(k for k in d if k == (ns, agent))
                for snap in (first, second) for d in (snap.minutes, snap.spend, snap.last_sample)]
        assert len({id(k) for k in keys}) == 1, (ns, agent)
    slots = [slot for snap in (first, second) for spend in snap.spend.values() for slot in spend]
    assert len(slots) == 2 * len(AGENTS) * 6
    assert len({id(slot) for slot in slots}) <= 2 * 6  # one per window and calendar a fetch


def test_a_fetch_adds_only_the_new_minutes_after_the_kept_rows():
    """A fetch whose re-read minutes are as kept copies no agent's rows: within the minute its runs
    are the kept rows themselves, and after the minute turned the new rows go on after them in
    the same buffer. Every snapshot handed out before still reads what it read."""
    fetcher = prometheus.Fetcher(Synthetic(), lookback_minutes=30, incremental=True)
    first = fetcher.fetch(NOW - 120)
    before = {k: list(v) for k, v in first.minutes.items()}
    second = fetcher.fetch(NOW - 100)  # the same minute: nothing new
    third = fetcher.fetch(NOW)  # two minutes on
    for key, run in first.minutes.items():
        assert second.minutes[key]._blob is run._blob and third.minutes[key]._blob is run._blob, key
    same(second, full(NOW - 100))
    same(third, full(NOW))
    assert first.minutes == before and second.minutes == full(NOW - 100).minutes


def _range_reads(client: Synthetic) -> int:
    return sum(1 for r in client.ranges if r[0] == "inference_cost")


def test_a_minute_is_read_once_a_scrape_interval_after_its_end_and_then_not_again_within_the_minute():
    """A fetch's minutes end at the last minute that ended a scrape interval or more before it (every
    sample stamped in the minute is in by then): the minutes are read at the first fetch past that
    point, and a fetch with no minute ended since sends no range query, the kept buckets its own."""
    client = Synthetic()
    fetcher = prometheus.Fetcher(client, lookback_minutes=30, scrape_interval=15.0, incremental=True)
    reads, ends = [], []
    for now in (END + 5, END + 14.9, END + 15, END + 35, END + 59, END + 75):
        snap = fetcher.fetch(now)
        same(snap, full(now))
        ends.append(snap.end)
        reads.append(_range_reads(client))
        if reads[-1] == (reads[-2] if len(reads) > 1 else 0):
            assert snap.queries == 2 * len(spec.Window) + 1  # the spend and freshness alone
        else:
            assert snap.queries == prometheus.QUERIES_PER_CYCLE
    assert ends == [END - 60, END - 60, END, END, END, END + 60]
    assert reads == [1, 1, 2, 2, 2, 3]


def test_a_sample_in_later_than_a_scrape_interval_after_its_minute_is_read_at_the_next_minute():
    client = Synthetic(late=(END - 60, "bot"))
    fetcher = prometheus.Fetcher(client, lookback_minutes=30, scrape_interval=15.0, incremental=True)
    early = fetcher.fetch(END + 20)
    assert early.minutes[("shop", "bot")] != full(END + 20).minutes[("shop", "bot")]
    client.arrived = True
    assert fetcher.fetch(END + 40).minutes is early.minutes  # no minute ended since: not read again
    same(fetcher.fetch(END + 75), full(END + 75))  # read again with the next minute's settle
