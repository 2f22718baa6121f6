"""Times and durations as people and Kubernetes write them: RFC 3339 and ``90m``/``1h30m``.

- :func:`rfc3339`: Unix seconds -> ``2026-11-28T10:00:00Z`` (whole seconds, truncated): the
  form of every time in a status, an annotation or an incident.
- :func:`rfc3339_ms`: the same with milliseconds when the time has a fraction
  (``2026-11-28T10:00:00.250Z``): the form of a finding's times.
- :func:`parse_rfc3339`: RFC 3339 (``Z`` or an offset; no zone means UTC) -> Unix seconds,
  or None for a missing or malformed text: for status fields written by someone else.
- :func:`parse_rfc3339_strict`: the same, but a malformed text raises ``ValueError``: for
  times this program wrote itself.
- :func:`parse_duration`: ``90s``, ``30m``, ``1.5h``, ``1h30m``, ``7d``, ``2w``, ``1y``,
  ``500ms`` -> seconds, or None. Callers say which flag or field was wrong.

(The usage-event contract's own ``time`` parser, fast and zone-required, is
:func:`fleetwarden.core.events.parse_time`.)
"""

from __future__ import annotations

import datetime as dt
import functools
import re

_SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with ``Z``, whole seconds (the fraction is dropped)."""
    return _rfc3339_seconds(int(ts))


@functools.lru_cache(maxsize=4096)
def _rfc3339_seconds(seconds: int) -> str:
    # the same few times are written over and over (every status of a cycle holds its lastEvaluated
    # and the transition times of its conditions), each a datetime made and formatted: kept
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime(_SECONDS_FORMAT)


def rfc3339_ms(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with ``Z``; milliseconds only when the time has a fraction.

    A time outside what a calendar date can show comes back as the number it was."""
    try:
        moment = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime(_SECONDS_FORMAT)


def parse_rfc3339_strict(text: str) -> float:
    """Unix seconds of an RFC 3339 time (``Z``/``z`` or an offset; no zone: UTC).

    Raises ``ValueError`` when ``text`` is not one."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def parse_rfc3339(text: str | None) -> float | None:
    """Unix seconds of an RFC 3339 time, or None when ``text`` is missing, empty or not one."""
    if not text:
        return None
    try:
        return parse_rfc3339_strict(text)
    except ValueError:
        return None


_DURATION_UNITS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0,
                   "ms": 0.001}
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION_PART = re.compile(rf"({_NUMBER.pattern})(ms|y|w|d|h|m|s)")


def parse_duration(text: str, *, bare_unit: str | None = None) -> float | None:
    """Seconds of a duration: one or more ``<number><unit>`` (units ms, s, m, h, d, w, y;
    numbers may have a fraction), as Prometheus writes them (``15d``, ``1h30m``, ``500ms``)
    and people type them (``1.5h``). With ``bare_unit``, a number alone is in that unit
    (``"90"`` with ``bare_unit="s"``). None for anything else: a sign, spaces, no unit."""
    if bare_unit is not None and _NUMBER.fullmatch(text):
        text += bare_unit
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
