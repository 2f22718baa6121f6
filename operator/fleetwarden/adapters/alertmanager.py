"""Alerts to Alertmanager (``POST /api/v2/alerts``), never blocking the reconcile.

Configured with ``fleetwarden operator --alertmanager-url URL`` (which calls
:func:`configure`) or the environment variable ``FLEETWARDEN_ALERTMANAGER_URL``; without
either, nothing is sent.

One finding is one alert. Labels (what Alertmanager groups, routes and deduplicates by):

- ``alertname``: ``Fleetwarden`` + the finding kind in CamelCase (``FleetwardenKillSwitch``,
  ``FleetwardenModelUpdateSpike``, ``FleetwardenRunawayLoop``, ...)
- ``severity``: ``critical`` (kill switch, budget exceeded, or an action that stops or
  changes agents: kill, pause, rollback), ``info`` (approval required), else ``warning``
- ``agent``, ``namespace``, ``budget``, ``incident``, ``kind``, ``action``; ``tool``,
  ``model``, ``workflow`` when the finding names them

Annotations: ``summary`` (one line) and ``description`` (message and evidence).
``startsAt`` is the finding's onset (else its time). No ``endsAt``: Alertmanager resolves the
alert after its ``resolve_timeout`` unless the operator reports it again.

Sending happens on a background thread with a bounded queue: a slow or absent
Alertmanager costs the reconcile nothing; failures are logged as
:class:`fleetwarden.errors.ExternalError` and dropped.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetwarden import errors

ENV_URL = "FLEETWARDEN_ALERTMANAGER_URL"
API_PATH = "/api/v2/alerts"

log = logging.getLogger(__name__)

_CRITICAL_KINDS = {"kill_switch", "budget_exceeded"}
_CRITICAL_ACTIONS = {"kill", "pause", "rollback"}


class AlertmanagerError(errors.ExternalError):
    """Alertmanager could not be reached or refused the alerts."""


def alertname(kind: str) -> str:
    """``kill_switch`` -> ``FleetwardenKillSwitch``."""
    return "Fleetwarden" + "".join(part[:1].upper() + part[1:] for part in kind.split("_"))


def severity(kind: str, action: str) -> str:
    if kind in _CRITICAL_KINDS or action in _CRITICAL_ACTIONS:
        return "critical"
    if kind == "approval_required":
        return "info"
    return "warning"


def _finding_dict(finding: Any) -> dict[str, Any]:
    return dict(finding) if isinstance(finding, Mapping) else dict(finding.to_dict())


def build_alert(finding: Any, incident: str, *, budget: str | None = None,
                generator_url: str | None = None) -> dict[str, Any]:
    """The Alertmanager v2 alert (``postableAlert``) for one finding."""
    f = _finding_dict(finding)
    labels = {
        "alertname": alertname(f["kind"]),
        "severity": severity(f["kind"], f["action"]),
        "agent": f["agent"],
        "namespace": f["namespace"],
        "budget": f.get("budget") or budget or "",
        "incident": incident,
        "kind": f["kind"],
        "action": f["action"],
    }
    for key in ("tool", "model", "workflow"):
        if f.get(key):
            labels[key] = str(f[key])
    labels = {k: str(v) for k, v in labels.items() if v != ""}
    evidence = f.get("evidence") or {}
    description = f["message"]
    if evidence:
        description += " Evidence: " + json.dumps(evidence, sort_keys=True)
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {
            "summary": f"{f['kind'].replace('_', ' ')} on {f['namespace']}/{f['agent']} "
                       f"(action {f['action']}, incident {incident})",
            "description": description,
        },
        "startsAt": f.get("onset") or f["time"],
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


def build_alerts(items: Iterable[tuple[Any, str]], *, budget: str | None = None) -> list[dict[str, Any]]:
    """Alerts for ``(finding, incident_id)`` pairs, one per incident (the latest finding wins)."""
    by_incident: dict[str, dict[str, Any]] = {}
    for finding, incident in items:
        by_incident[incident] = build_alert(finding, incident, budget=budget)
    return [by_incident[k] for k in sorted(by_incident)]


ACTION_FAILED = "FleetwardenActionFailed"


def build_failure_alert(failure: Any, *, namespace: str, budget: str) -> dict[str, Any]:
    """The alert for an action that did not take effect (``core.decision.ActionFailure``): critical,
    since the budget is not enforced as its status would otherwise say. Alertmanager groups the
    repeats (one alert per budget, agent and action while it keeps failing)."""
    action = failure.action
    verb = type(action).__name__
    agent = str(getattr(action, "agent", ""))
    labels = {"alertname": ACTION_FAILED, "severity": "critical", "namespace": namespace, "budget": budget,
              "agent": agent, "action": verb, "reason": str(failure.reason)}
    code = f"{failure.status} " if failure.status is not None else ""
    return {
        "labels": {k: v for k, v in labels.items() if v},
        "annotations": {"summary": f"{verb} on {namespace}/{agent} failed: {code}{failure.reason}",
                        "description": f"{failure.message}. The operator retries with backoff; until it "
                                       "succeeds the budget is not enforced on this agent."},
    }


class Notifier:
    """Posts alerts to one Alertmanager; :meth:`submit` never blocks."""

    def __init__(self, url: str, *, timeout: float = 5.0, queue_size: int = 256) -> None:
        if not url.startswith(("http://", "https://")):
            raise errors.InputError(f"alertmanager URL must start with http:// or https://, got {url!r}",
                                    field="--alertmanager-url")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def send(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """POST ``alerts`` now; raises :class:`AlertmanagerError`."""
        if not alerts:
            return
        data = json.dumps(list(alerts)).encode()
        request = urllib.request.Request(self.url + API_PATH, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - configured URL
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise AlertmanagerError(f"alertmanager {self.url} refused {len(alerts)} alert(s): "
                                    f"HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AlertmanagerError(f"alertmanager {self.url} unreachable: {exc}") from exc

    def submit(self, alerts: Sequence[Mapping[str, Any]]) -> bool:
        """Queue ``alerts`` for the sender thread; False (and a log line) when the queue is full."""
        if not alerts:
            return True
        self._ensure_thread()
        try:
            self._queue.put_nowait([dict(a) for a in alerts])
        except queue.Full:
            self.dropped += len(alerts)
            log.warning("alertmanager queue full; dropped %d alert(s)", len(alerts))
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was handled (tests, shutdown). True when drained."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(timeout=self.timeout + 1)
                self._thread = None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fleetwarden-alertmanager", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                self.send(batch)
                self.sent += len(batch)
            except errors.ExternalError as exc:
                self.failed += len(batch or ())
                log.warning("%s", exc)
            finally:
                self._queue.task_done()


_configured: Notifier | None = None
_config_lock = threading.Lock()


def configure(url: str | None) -> Notifier | None:
    """Set (or, with None, clear) the process-wide notifier; returns it."""
    global _configured
    with _config_lock:
        if _configured is not None and (url is None or _configured.url != url.rstrip("/")):
            _configured.close()
            _configured = None
        if url and _configured is None:
            _configured = Notifier(url)
        return _configured


def notifier() -> Notifier | None:
    """The configured notifier: set by :func:`configure`, else from ``$FLEETWARDEN_ALERTMANAGER_URL``."""
    with _config_lock:
        current = _configured
    if current is not None:
        return current
    url = os.environ.get(ENV_URL)
    return configure(url) if url else None
