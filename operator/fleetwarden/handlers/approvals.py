"""kopf handlers for CostApprovals: expire requests nobody decided in time; say what happened.

1. Every watch event of a CostApproval lands in :func:`on_costapproval_event` (a plain
   event handler: no finalizer and no annotations on the object, so the operator never
   blocks deleting a request and never races a person's decision with its own writes).
2. A pending request gets a timer for its ``spec.expiresAt``; a decided or deleted one
   loses its timer. After a restart the initial listing schedules every pending request
   again, and one already past its time is expired at once.
3. At expiry the request is read again and, if still pending, patched through the status
   subresource: ``decision: Expired``, ``decidedBy`` = the operator's own username (a
   SelfSubjectReview; the admission policy insists the recorded identity is true),
   ``decidedAt``. The patch carries the resourceVersion read, so a decision made in the
   meantime wins and is never overwritten. A transient API failure tries the expiry again
   after ``retry.DELAY`` (:mod:`fleetwarden.handlers.retry`).
4. Events (``kubectl describe costapproval``): ``ApprovalRequested``, ``ApprovalApproved``,
   ``ApprovalDenied``, ``ApprovalExpired``, each said once per process (and not for old
   requests seen again after a restart).

Run alone: ``kopf run --standalone -m fleetwarden.handlers.approvals``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from fleetwarden import errors
from fleetwarden.adapters import approvals, kube
from fleetwarden.core import spec, timefmt
from fleetwarden.handlers import retry

log = logging.getLogger(__name__)

# Events only for what happened this recently (not for history seen again after a restart).
ANNOUNCE_WITHIN_SECONDS = 300.0


class _State:
    """The process's view: the API clients (made on first use), timers, what was announced."""

    def __init__(self) -> None:
        self.client: approvals.Approvals | None = None
        self.kube: kube.Kube | None = None
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.announced: set[tuple[str, str]] = set()
        self.clock: Callable[[], float] = time.time

    def approvals(self) -> approvals.Approvals:
        if self.client is None:
            api = kube.load_config()
            self.client = approvals.Approvals(api)
            self.kube = kube.Kube(api)
        return self.client

    def events(self) -> kube.Kube:
        self.approvals()
        assert self.kube is not None
        return self.kube


STATE = _State()


def _ref(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    return {"apiVersion": spec.API_VERSION, "kind": approvals.KIND, "name": meta.get("name"),
            "namespace": meta.get("namespace"), "uid": meta.get("uid")}


def _recent(timestamp: str | None, now: float) -> bool:
    if not timestamp:
        return False
    try:
        return now - timefmt.parse_rfc3339_strict(timestamp) <= ANNOUNCE_WITHIN_SECONDS
    except ValueError:
        return False


def _announce(body: Mapping[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
    key = (str(body.get("metadata", {}).get("uid")), reason)
    if key in STATE.announced:
        return
    STATE.announced.add(key)
    try:
        STATE.events().post_event(_ref(body), type_, reason, message, once=True)  # once, across restarts
    except errors.ExternalError as exc:
        log.warning("could not post event %s: %s", reason, exc)


def describe_request(body: Mapping[str, Any]) -> str:
    s = body.get("spec") or {}
    what = f"rule {s.get('rule') or '?'}"
    if s.get("tool"):
        what += f", tool {s['tool']}"
    if s.get("amountUSD") is not None:
        what += f", ${float(s['amountUSD']):.2f}"
    return f"{s.get('agent')} ({s.get('requester')}) asks approval for {what} until {s.get('expiresAt')}"


def expire_if_due(namespace: str, name: str, now: float | None = None) -> dict[str, Any] | None:
    """Mark the request Expired if it is still pending and past ``spec.expiresAt``.

    Returns the updated body, or None when nothing was due (decided meanwhile, deleted,
    not yet expired, or a decision won the race)."""
    client = STATE.approvals()
    now = STATE.clock() if now is None else now
    try:
        body = client.get(namespace, name)
    except kube.KubeError as exc:
        if exc.status == 404:
            return None
        raise
    if not approvals.is_expired(body, now):
        return None
    try:
        updated = client.decide(namespace, name, approvals.EXPIRED, now=now,
                                reason=f"nobody decided before {body['spec']['expiresAt']}")
    except errors.InputError:  # decided in between
        return None
    except kube.KubeError as exc:
        if exc.status in (404, 409):  # deleted, or changed in between: the next event decides
            return None
        raise
    _announce(updated, "ApprovalExpired",
              f"expired: nobody decided before {body['spec']['expiresAt']}", "Warning")
    return updated


async def _expire_later(namespace: str, name: str, uid: str) -> None:
    STATE.timers.pop(uid, None)
    try:
        await asyncio.to_thread(_expire, namespace, name)
    except kopf.TemporaryError as exc:
        delay = exc.delay if exc.delay is not None else retry.DELAY
        log.warning("could not expire costapproval %s/%s: %s; trying again in %gs", namespace, name, exc, delay)
        retry.call_later(STATE.timers, uid, delay, lambda: _expire_later(namespace, name, uid))
    except kopf.PermanentError as exc:
        log.warning("could not expire costapproval %s/%s: %s", namespace, name, exc)


def _expire(namespace: str, name: str) -> None:
    with retry.temporary():
        expire_if_due(namespace, name)


def _cancel(uid: str) -> None:
    handle = STATE.timers.pop(uid, None)
    if handle is not None:
        handle.cancel()


@kopf.on.event(spec.GROUP, spec.VERSION, approvals.PLURAL)
async def on_costapproval_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """Schedule expiry of pending requests; announce requests and decisions."""
    meta = body.get("metadata", {})
    uid, name, namespace = str(meta.get("uid")), meta.get("name"), meta.get("namespace")
    if event.get("type") == "DELETED":
        _cancel(uid)
        return
    now = STATE.clock()
    status = body.get("status") or {}
    decision = approvals.decision_of(body)
    if decision is not None:
        _cancel(uid)
        if decision != approvals.EXPIRED and _recent(status.get("decidedAt"), now):
            why = f": {status['reason']}" if status.get("reason") else ""
            await asyncio.to_thread(_announce, body, f"Approval{decision}",
                                    f"{decision.lower()} by {status.get('decidedBy')}{why}")
        return
    if _recent(meta.get("creationTimestamp"), now):
        await asyncio.to_thread(_announce, body, "ApprovalRequested", describe_request(body))
    expires = (body.get("spec") or {}).get("expiresAt")
    if not expires or uid in STATE.timers:
        return
    try:
        delay = max(0.0, timefmt.parse_rfc3339_strict(str(expires)) - now)
    except ValueError:
        log.warning("costapproval %s/%s: spec.expiresAt %r is not RFC 3339", namespace, name, expires)
        return
    # A small margin so the request is past its time when read again.
    retry.call_later(STATE.timers, uid, delay + 0.05, lambda: _expire_later(str(namespace), str(name), uid))
