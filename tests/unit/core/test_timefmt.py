"""RFC 3339 times and durations: the one home every module formats and parses them with."""

from __future__ import annotations

import calendar
import math

import pytest

from fleetwarden.core import timefmt

T0 = float(calendar.timegm((2026, 11, 28, 10, 0, 0)))  # 2026-11-28T10:00:00Z


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (T0, "2026-11-28T10:00:00Z"),
        (T0 + 59.999, "2026-11-28T10:00:59Z"),  # the fraction is dropped, never rounded up
        (math.nextafter(T0 + 1, 0), "2026-11-28T10:00:00Z"),  # the last float before the next second
        (int(T0) + 3, "2026-11-28T10:00:03Z"),  # an int works as well
        (0.0, "1970-01-01T00:00:00Z"),
        (float(calendar.timegm((2028, 2, 29, 23, 59, 59))), "2028-02-29T23:59:59Z"),
    ],
)
def test_rfc3339_is_whole_seconds_in_utc(ts: float, expected: str) -> None:
    """Status, annotation and incident times are UTC with Z, whole seconds, truncated."""
    assert timefmt.rfc3339(ts) == expected


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (T0, "2026-11-28T10:00:00Z"),  # no fraction: no milliseconds
        (T0 + 0.25, "2026-11-28T10:00:00.250Z"),
        (T0 + 0.0015, "2026-11-28T10:00:00.001Z"),  # milliseconds, truncated
        (T0 + 0.0004, "2026-11-28T10:00:00.000Z"),  # a fraction under a millisecond still shows
        (T0 + 61.5, "2026-11-28T10:01:01.500Z"),
        (1e20, "1e+20"),  # beyond any calendar date: the number it was
        (float("nan"), "nan"),
    ],
)
def test_rfc3339_ms_shows_milliseconds_only_when_present(ts: float, expected: str) -> None:
    """A finding's times carry milliseconds when they have a fraction; an impossible date is its number."""
    assert timefmt.rfc3339_ms(ts) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T10:00:00Z", T0),
        ("2026-11-28T10:00:00z", T0),
        ("2026-11-28t10:00:00Z", T0),
        ("  2026-11-28T10:00:00Z\n", T0),
        ("2026-11-28T10:00:00+00:00", T0),
        ("2026-11-28T11:30:00+01:30", T0),
        ("2026-11-28T08:00:00-02:00", T0),
        ("2026-11-28T10:00:00", T0),  # no zone: UTC
        ("2026-11-28T10:00:00.250Z", T0 + 0.25),
        ("2026-11-28", T0 - 10 * 3600),  # a date alone is its midnight UTC
    ],
)
def test_parse_rfc3339_reads_zones_and_defaults_to_utc(text: str, expected: float) -> None:
    """``Z``, ``z`` and offsets are read; no zone means UTC; both parsers agree on good input."""
    assert timefmt.parse_rfc3339(text) == expected
    assert timefmt.parse_rfc3339_strict(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "yesterday", "2026-13-01T00:00:00Z", "2026-11-28T25:00:00Z",
                                  "2026-11-28T10:00:00ZZ", "1795860000"])
def test_parse_rfc3339_bad_text_is_none_or_value_error(text: str) -> None:
    """The lenient parser says None for a bad time; the strict one raises ValueError."""
    assert timefmt.parse_rfc3339(text) is None
    with pytest.raises(ValueError):
        timefmt.parse_rfc3339_strict(text)


def test_parse_rfc3339_missing_is_none() -> None:
    """A missing status field (None) is unknown, not an error."""
    assert timefmt.parse_rfc3339(None) is None


@pytest.mark.parametrize("ts", [T0, T0 + 1, T0 + 86399, 0.0, 4102444799.0])
def test_rfc3339_round_trips(ts: float) -> None:
    """What rfc3339 writes, parse_rfc3339 reads back to the same second."""
    assert timefmt.parse_rfc3339(timefmt.rfc3339(ts)) == ts
    assert timefmt.parse_rfc3339(timefmt.rfc3339_ms(ts + 0.5)) == ts + 0.5


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("6h", 21600.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1y", 365 * 86400.0),
        ("500ms", 0.5),
        ("5m30s", 330.0),
        ("1h30m", 5400.0),
        ("2w3d", 17 * 86400.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations are one or more number-and-unit parts, as Prometheus writes them (fractions allowed)."""
    assert timefmt.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "h", "-1h", "+1h", "1x", "1 h", " 1h", "1h ", "1h30", "1.h", ".5h",
                                  "1e3s", "\u0661h"])
def test_parse_duration_refuses_anything_else(text: str) -> None:
    """No unit, a sign, spaces, a partial part or a non-ASCII digit: not a duration (None)."""
    assert timefmt.parse_duration(text) is None


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("1.5", 1.5), ("90s", 90.0), ("2m", 120.0)])
def test_parse_duration_bare_unit(text: str, seconds: float) -> None:
    """With ``bare_unit``, a number alone is in that unit; numbers with a unit are unchanged."""
    assert timefmt.parse_duration(text, bare_unit="s") == seconds


@pytest.mark.parametrize("text", ["", "s", "-90", "90 s"])
def test_parse_duration_bare_unit_refuses(text: str) -> None:
    """``bare_unit`` makes no other text a duration."""
    assert timefmt.parse_duration(text, bare_unit="s") is None
