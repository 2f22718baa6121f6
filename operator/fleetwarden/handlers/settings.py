"""The operator's settings, read once from the environment (``fleetwarden operator`` sets it).

| variable | flag | default | meaning |
|---|---|---|---|
| ``FLEETWARDEN_INTERVAL`` | ``--interval`` | 15 | seconds between evaluations of each AgentBudget (>= 0.5) |
| ``FLEETWARDEN_PROMETHEUS_URL`` | ``--prometheus-url`` | http://localhost:9090 | where the agents' metrics are |
| ``FLEETWARDEN_PROMETHEUS_TIMEOUT`` | ``--prometheus-timeout`` | 10 | seconds one Prometheus query may take (> 0) |
| ``FLEETWARDEN_PROMETHEUS_GRACE`` | ``--prometheus-grace`` | 30 | seconds the last good fetch bridges failed ones before the metrics are unknown (0: none; >= 0) |
| ``FLEETWARDEN_SCRAPE_INTERVAL`` | ``--scrape-interval`` | 15 | Prometheus' scrape interval; data older than 3 of them is stale (>= 0.1) |
| ``FLEETWARDEN_LOOKBACK_MINUTES`` | ``--lookback-minutes`` | 90 | the history the detectors see at least (>= 5; the fetch reads 15 minutes more: core/warmfold.py) |
| ``FLEETWARDEN_METRICS_PORT`` | ``--metrics-port`` | 8081 | the operator's own /metrics (0: off; <= 65535) |
| ``FLEETWARDEN_WORKERS`` | | 16 | threads running evaluations (>= 1) |
| ``FLEETWARDEN_PACE`` | | 0.7 | fleet mode: the share of the interval a cycle's evaluations are spread over, each budget at the same point of each cycle (0: all at once; <= 0.9; handlers/fleet.py) |
| ``FLEETWARDEN_EVALUATION`` | ``--evaluation`` | timers | ``timers``: a kopf timer per budget; ``fleet``: one evaluation of every budget per interval, on the leader (docs/operator.md, "Scale") |
| ``FLEETWARDEN_PROMETHEUS_READER`` | ``--prometheus-reader`` | thread | where the fetch's range, spend and freshness answers are decoded: ``thread``, the operator's own interpreter; ``process``, a reader process of its own (adapters/reader.py) |
| ``FLEETWARDEN_ALERTMANAGER_URL`` | ``--alertmanager-url`` | (none) | Alertmanager to send an alert per incident to (none: no alerts) |
| ``FLEETWARDEN_PROMETHEUS_HEADERS`` | ``--prometheus-headers`` | (none) | ``Name=value,...`` sent with each query, e.g. ``X-Scope-OrgID=team-a`` |
| ``FLEETWARDEN_NAMESPACES`` | ``--namespace`` | (all) | a shard's namespaces (names or globs, comma-separated): the Prometheus queries' scope |

Every value is checked here, once, at start: a number that is not finite (``nan``, ``inf``)
or below its minimum, or a URL without an ``http``/``https`` scheme and a host, raises
:class:`fleetwarden.errors.InputError` naming the variable and the value (``field`` is the
variable's name, so ``fleetwarden operator`` can name its flag instead). Importing this
module reads nothing: ``handlers.agentbudgets`` builds its settings when it is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from fleetwarden import errors
from fleetwarden.adapters import prometheus


def _number(minimum: float, *, above: bool = False, unit: str = "", whole: bool = False,
            maximum: float | None = None) -> Callable[[str], float]:
    """A check of a finite number >= ``minimum`` (> with ``above``), a whole one with ``whole``."""
    kind = "a whole number" if whole else "a finite number"
    bounds = f"{'>' if above else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
    expected = f"must be {kind}{unit} {bounds}"

    def check(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(expected) from None
        if (not math.isfinite(value) or value < minimum or (above and value == minimum)
                or (maximum is not None and value > maximum) or (whole and not value.is_integer())):
            raise ValueError(expected)
        return value

    return check


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def _headers(raw: str) -> tuple[tuple[str, str], ...]:
    """``Name=value,Name2=value2`` -> ((name, value), ...): a token for each name, a value with
    no control character (values cannot hold a comma)."""
    out = []
    for part in raw.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(name) or not value or any(ord(c) < 32 or ord(c) == 127
                                                                             for c in value):
            raise ValueError(f"must be Name=value pairs separated by commas (X-Scope-OrgID=team-a); "
                             f"{part.strip()!r} is not one")
        out.append((name, value))
    return tuple(out)


def _namespaces(raw: str) -> tuple[str, ...]:
    """``a,b team-*`` -> ("a", "b", "team-*"): namespace names or globs (``*``, ``?``)."""
    names = tuple(n for n in re.split(r"[,\s]+", raw.strip()) if n)
    try:
        prometheus.namespace_scope(names)
    except ValueError as exc:
        raise ValueError(f"must be namespace names or globs separated by commas: {exc}") from None
    return names


def _choice(*allowed: str) -> Callable[[str], str]:
    """A check of one of ``allowed`` (case and surrounding blanks ignored)."""
    def check(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return check


EVALUATION_MODES = ("fleet", "timers")
READER_MODES = ("thread", "process")


def _url(raw: str) -> str:
    """A check of an http(s) URL with a host (the value is kept as written)."""
    expected = "must be an http:// or https:// URL with a host (http://HOST:PORT)"
    try:
        parts = urllib.parse.urlsplit(raw.strip())
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise ValueError(expected) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(expected)
    return raw.strip()


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its environment variable, default and check (``fleetwarden operator``'s flags
    set the variables: ``commands.operator.FLAGS``)."""

    field: str  # the Settings attribute
    env: str
    default: Any
    check: Callable[[str], Any]
    convert: Callable[[Any], Any] = lambda value: value


_SECONDS = " of seconds"
OPTIONS = (
    Option("interval", "FLEETWARDEN_INTERVAL", 15.0, _number(0.5, unit=_SECONDS)),
    Option("prometheus_url", "FLEETWARDEN_PROMETHEUS_URL", "http://localhost:9090", _url),
    Option("prometheus_timeout", "FLEETWARDEN_PROMETHEUS_TIMEOUT", 10.0, _number(0, above=True, unit=_SECONDS)),
    Option("prometheus_grace", "FLEETWARDEN_PROMETHEUS_GRACE", 30.0, _number(0, unit=_SECONDS)),
    Option("scrape_interval", "FLEETWARDEN_SCRAPE_INTERVAL", 15.0, _number(0.1, unit=_SECONDS)),
    Option("lookback_minutes", "FLEETWARDEN_LOOKBACK_MINUTES", 90, _number(5, whole=True, unit=" of minutes"), int),
    Option("metrics_port", "FLEETWARDEN_METRICS_PORT", 8081, _number(0, whole=True, maximum=65535), int),
    Option("workers", "FLEETWARDEN_WORKERS", 16, _number(1, whole=True), int),
    Option("pace", "FLEETWARDEN_PACE", 0.7, _number(0, maximum=0.9)),
    Option("alertmanager_url", "FLEETWARDEN_ALERTMANAGER_URL", None, _url),
    Option("prometheus_headers", "FLEETWARDEN_PROMETHEUS_HEADERS", (), _headers),
    Option("namespaces", "FLEETWARDEN_NAMESPACES", (), _namespaces),
    Option("evaluation", "FLEETWARDEN_EVALUATION", "timers", _choice(*EVALUATION_MODES)),
    Option("prometheus_reader", "FLEETWARDEN_PROMETHEUS_READER", "thread", _choice(*READER_MODES)),
)


def read(option: Option, raw: str | None) -> Any:
    """The value of ``option`` from ``raw`` (None or blank: its default). Raises InputError naming
    the variable (``field``) and the value."""
    if raw is None or not raw.strip():
        return option.default
    try:
        return option.convert(option.check(raw))
    except ValueError as exc:
        raise errors.InputError(f"{exc}, got {raw!r}", field=option.env) from None


@dataclasses.dataclass(frozen=True)
class Settings:
    interval: float
    prometheus_url: str
    scrape_interval: float
    lookback_minutes: int
    metrics_port: int
    workers: int
    alertmanager_url: str | None = None
    prometheus_timeout: float = 10.0
    prometheus_grace: float = 30.0  # a failed fetch this soon after a good one is bridged by it (handlers/runtime.py)
    prometheus_headers: tuple[tuple[str, str], ...] = ()
    namespaces: tuple[str, ...] = ()  # a shard's (empty: every namespace); the Prometheus queries' scope
    evaluation: str = "timers"
    pace: float = 0.7  # fleet mode: the share of the interval a cycle's evaluations are spread over
    prometheus_reader: str = "thread"  # where the fetch's answers are decoded: READER_MODES

    def reader_process(self) -> bool:
        """Whether the fetch's answers are decoded in a reader process (adapters/reader.py)."""
        return self.prometheus_reader == "process"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``environ`` (default ``os.environ``); raises InputError on a bad value."""
        env = os.environ if environ is None else environ
        return cls(**{option.field: read(option, env.get(option.env)) for option in OPTIONS})


@functools.lru_cache(maxsize=1)
def current() -> Settings:
    """The operator process's settings, read from the environment once (the handlers' modules
    share them; ``fleetwarden operator`` has checked them before kopf imports the handlers)."""
    return Settings.from_env()
