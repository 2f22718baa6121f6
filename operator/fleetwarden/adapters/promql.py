"""PromQL shared by the SDK's queries (:mod:`fleetwarden.adapters.prometheus`) and the other
sources' (:mod:`fleetwarden.adapters.sources`): how a counter's growth in one minute is read."""

from __future__ import annotations

# How far before a window's start a counter's last sample may lie and still be its value at the
# start: a scrape that failed at that instant (a staleness marker) must not make an old series
# look newly born.
START_LOOKBACK = "1h"


def minute_growth(metric: str) -> str:
    """How much ``metric`` grew in the minute ending at the evaluation time, per series: its value
    now less its last value before the minute (within START_LOOKBACK: a series whose scrapes
    failed for a while is not new, and what it gained meanwhile counts when it is seen again);
    its whole value for a series born in the minute (or reset in it). Not ``increase(m[1m])``:
    that counts nothing of a series' first sample (a new model's first calls, a new tool's first
    call vanish), and it scales the growth between the first and the last sample in the minute
    to the whole minute (the events between a minute's last scrape and the next minute's first
    are counted in neither, and the rest are scaled up), so per-minute counts would be neither
    whole nor those replay counts from the same events."""
    before = f"last_over_time({metric}[{START_LOOKBACK}] offset 1m)"
    return f"(({metric} - {before}) >= 0 or {metric})"


