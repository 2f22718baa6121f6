"""Prometheus for `fleetwarden report`: instant and range queries, cleaned once, at the edge.

Answers become ``(labels, value)`` and ``(labels, {time: value})`` with float values; NaN
and unparsable samples are dropped here. Failures raise
:class:`fleetwarden.errors.PrometheusError` with the client's error as ``__cause__``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from fleetwarden import errors
from fleetwarden.adapters import prometheus

Labels = dict[str, str]


def _float(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


class ReportSource:
    """The queries the live report needs, against one Prometheus."""

    def __init__(self, url: str, *, client: prometheus.QueryClient | None = None, timeout: float = 30.0) -> None:
        self.url = url
        self.client = client if client is not None else prometheus.connect(url, timeout=timeout)
        self.queries = 0

    def _run(self, promql: str, fn: Callable[[], Any]) -> list[dict[str, Any]]:
        self.queries += 1
        try:
            result = fn()
        except Exception as exc:  # requests' and the client's errors: connection, HTTP status, JSON
            raise errors.PrometheusError(f"Prometheus at {self.url} failed query {promql!r}: {exc}") from exc
        if not isinstance(result, list):
            raise errors.PrometheusError(f"Prometheus query {promql!r}: unexpected answer {type(result).__name__}")
        return result

    def instant(self, promql: str, at: float) -> list[tuple[Labels, float]]:
        items = self._run(promql, lambda: self.client.custom_query(promql, params={"time": at}))
        out = []
        for item in items:
            value = _float((item.get("value") or [None, None])[1])
            if value is not None:
                out.append((dict(item.get("metric") or {}), value))
        return out

    def range(self, promql: str, start: float, end: float, step: int) -> list[tuple[Labels, dict[float, float]]]:
        start_time = dt.datetime.fromtimestamp(start, tz=dt.timezone.utc)
        end_time = dt.datetime.fromtimestamp(end, tz=dt.timezone.utc)
        items = self._run(promql, lambda: self.client.custom_query_range(
            promql, start_time=start_time, end_time=end_time, step=str(int(step))))
        out = []
        for item in items:
            points: dict[float, float] = {}
            for ts, raw in item.get("values") or []:
                value = _float(raw)
                if value is not None:
                    points[float(ts)] = value
            out.append((dict(item.get("metric") or {}), points))
        return out


def retention_seconds(url: str, timeout: float = 5.0) -> float | None:
    """How long Prometheus at ``url`` keeps samples (None: not known). Raises
    :class:`errors.PrometheusError` when its flags cannot be read."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/status/flags", timeout=timeout) as resp:  # noqa: S310
            flags = json.load(resp).get("data") or {}
    except Exception as exc:  # URL, HTTP and JSON errors alike
        raise errors.PrometheusError(f"Prometheus flags not read at {url}: {exc}") from exc
    return prometheus.retention_from_flags(flags)


def agent_spend_per_minute(src: ReportSource, namespace: str, agent: str, start: float, end: float,
                           metrics: tuple[str, ...]) -> dict[int, float]:
    """The agent's spend per minute (minute start -> USD) in ``[start, end]``: the one-minute
    increase of each cost counter, one query per counter, so a counter with no series adds
    no minute (no data, not 0)."""
    per_minute: dict[int, float] = {}
    sel = f'{{namespace="{namespace}", agent="{agent}"}}'
    for metric in metrics:
        for _labels, points in src.range(f"sum(increase({metric}{sel}[1m]))", start + 60, end, 60):
            for ts, value in points.items():
                minute = int(ts // 60) * 60 - 60  # the increase over [ts-1m, ts) is the minute before's
                per_minute[minute] = per_minute.get(minute, 0.0) + value
    return per_minute
