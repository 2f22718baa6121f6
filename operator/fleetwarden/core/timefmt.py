"""RFC 3339 at the edges: Unix seconds inside the core, text in statuses, events and reports."""

from __future__ import annotations

import datetime as dt


def rfc3339(ts: float) -> str:
    """``2027-01-15T08:00:00Z``: UTC, to the second (truncated)."""
    return dt.datetime.fromtimestamp(int(ts), tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Unix seconds of an RFC 3339 date-time (no zone: UTC); None for None, empty or unreadable text."""
    if not text:
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()
