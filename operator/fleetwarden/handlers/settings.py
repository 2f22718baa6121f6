"""The operator's settings, read once from the environment (``fleetwarden operator`` sets it).

| variable | default | meaning |
|---|---|---|
| ``FLEETWARDEN_INTERVAL`` | 15 | seconds between evaluations of each AgentBudget |
| ``FLEETWARDEN_PROMETHEUS_URL`` | http://localhost:9090 | where the agents' metrics are |
| ``FLEETWARDEN_SCRAPE_INTERVAL`` | 15 | Prometheus' scrape interval; data older than 3 of them is stale |
| ``FLEETWARDEN_LOOKBACK_MINUTES`` | 90 | the window the detectors refold each cycle |
| ``FLEETWARDEN_METRICS_PORT`` | 8081 | the operator's own /metrics (0: off) |
| ``FLEETWARDEN_WORKERS`` | 16 | threads running evaluations |
| ``FLEETWARDEN_ALERTMANAGER_URL`` | (none) | Alertmanager to send an alert per incident to (none: no alerts) |
"""

from __future__ import annotations

import dataclasses
import os

from fleetwarden import errors


def _number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise errors.InputError(f"{name}={raw!r} is not a number") from exc
    if value < minimum:
        raise errors.InputError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _url(name: str) -> str | None:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise errors.InputError(f"{name}={raw!r} must start with http:// or https://")
    return raw


@dataclasses.dataclass(frozen=True)
class Settings:
    interval: float
    prometheus_url: str
    scrape_interval: float
    lookback_minutes: int
    metrics_port: int
    workers: int
    alertmanager_url: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            interval=_number("FLEETWARDEN_INTERVAL", 15.0, 0.5),
            prometheus_url=os.environ.get("FLEETWARDEN_PROMETHEUS_URL") or "http://localhost:9090",
            scrape_interval=_number("FLEETWARDEN_SCRAPE_INTERVAL", 15.0, 0.1),
            lookback_minutes=int(_number("FLEETWARDEN_LOOKBACK_MINUTES", 90, 5)),
            metrics_port=int(_number("FLEETWARDEN_METRICS_PORT", 8081, 0)),
            workers=int(_number("FLEETWARDEN_WORKERS", 16, 1)),
            alertmanager_url=_url("FLEETWARDEN_ALERTMANAGER_URL"),
        )


SETTINGS = Settings.from_env()
