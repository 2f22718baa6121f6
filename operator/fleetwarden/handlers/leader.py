"""Leader election for ``fleetwarden operator --leader-elect``: exactly one replica acts.

What runs where (as controller-runtime's manager does it):

1. Every replica first competes for the Lease (:mod:`fleetwarden.adapters.lease`), serving
   its liveness URL (``/healthz``: 200, ``{"leader": false}``) while it stands by. A standby
   watches nothing, evaluates nothing and writes nothing but its attempts on the Lease.
2. The replica that holds the Lease closes that server and starts kopf (watches, indexes,
   timers, handlers: everything that acts); a thread renews the Lease every retry period.
3. Every write of the operator to the API server passes ``kube.WRITE_GUARD``: it is refused
   once the last renewal started more than ``--renew-deadline`` ago. So a replica that
   cannot renew stops acting at once, before the Lease can expire for the others
   (renew deadline < lease duration), even when its renew thread is itself stuck.
4. When a renewal fails past the deadline the process exits (status 1, "leadership lost"):
   the pod restarts and competes again as a standby with empty caches. A clean stop
   (SIGTERM) releases the Lease, so the other replica takes over without waiting.

Kopf's own writes (finalizers on AgentBudgets) go through kopf's client, not this guard;
they are bookkeeping, never an action on agents, and only the leader runs kopf at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetwarden import errors
from fleetwarden.adapters import kube, lease

log = logging.getLogger(__name__)

_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_LEASE_NAME = "fleetwarden-operator"


@dataclasses.dataclass(frozen=True)
class LeaderSettings:
    name: str
    namespace: str
    timings: lease.LeaseTimings


def lease_name(namespaces: Sequence[str] = ()) -> str:
    """The default Lease: ``fleetwarden-operator`` for the whole cluster; for a shard,
    ``fleetwarden-operator-`` and 10 hex digits of a hash of its namespaces (sorted, without
    repeats), so the replicas of one shard share a Lease and two shards never do."""
    if not namespaces:
        return DEFAULT_LEASE_NAME
    digest = hashlib.sha256("\n".join(sorted(set(namespaces))).encode()).hexdigest()[:10]
    return f"{DEFAULT_LEASE_NAME}-{digest}"


def settings_from_args(args: Any, namespaces: Sequence[str] = ()) -> LeaderSettings:
    """The flags checked: a non-finite, zero or negative duration, or a renew deadline not
    shorter than the lease, is an InputError naming the flag (exit 2). Without ``--lease-name``
    the Lease is :func:`lease_name` of the ``namespaces`` served."""
    timings = lease.LeaseTimings(args.lease_duration, args.renew_deadline, args.retry_period)
    for flag, message in timings.problems():
        raise errors.InputError(message, field=flag)
    name = args.lease_name if args.lease_name is not None else lease_name(namespaces)
    if not _is_dns_subdomain(name):
        raise errors.InputError(f"{name!r} is not a valid Lease name (lowercase DNS subdomain)", field="--lease-name")
    namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or _in_cluster_namespace()
    if not namespace:
        raise errors.InputError("needed with --leader-elect outside a cluster (the Lease's namespace)",
                                field="--lease-namespace")
    if not _is_dns_subdomain(namespace) or "." in namespace:
        raise errors.InputError(f"{namespace!r} is not a namespace name", field="--lease-namespace")
    return LeaderSettings(name, namespace, timings)


def _is_dns_subdomain(text: str) -> bool:
    return bool(text) and len(text) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", text) is not None


def _in_cluster_namespace() -> str | None:
    try:
        with open(_SA_NAMESPACE) as f:
            return f.read().strip() or None
    except OSError:
        return None


class NotLeading(kube.KubeError):
    """A write refused because this replica does not (or no longer) hold the Lease."""


def guard_for(elector: lease.Elector) -> Callable[[str, str], None]:
    def guard(method: str, url: str) -> None:
        if not elector.leading():
            raise NotLeading(f"{method} {url.split('?', 1)[0]}: refused, this replica ({elector.identity}) "
                             "does not hold the leader Lease", None)
    return guard


def _standby_health(liveness: str | None) -> ThreadingHTTPServer | None:
    """Answer the liveness URL while standing by (kopf serves it once this replica leads)."""
    if not liveness:
        return None
    url = urllib.parse.urlsplit(liveness)
    path = url.path or "/"

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            ok = self.path.split("?", 1)[0] == path
            body = json.dumps({"leader": False, "standby": True} if ok else {"error": "not found"}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature
            del format, args

    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), Health)  # noqa: S104 - as configured
    threading.Thread(target=server.serve_forever, name="standby-healthz", daemon=True).start()
    return server


def _lost() -> None:
    log.critical("leader election lost: exiting so that this replica restarts as a standby")
    logging.shutdown()
    os._exit(1)


def elect(settings: LeaderSettings, *, liveness: str | None,
          on_lost: Callable[[], None] = _lost) -> lease.Elector:
    """Stand by until this process holds the Lease; then guard every write, renew in a thread
    (``on_lost`` when a renewal misses the deadline) and return the elector."""
    me = lease.identity(os.environ.get("POD_NAME"), socket.gethostname())
    store = lease.KubeLeaseStore(kube.load_config(guarded=False), settings.namespace, settings.name)
    elector = lease.Elector(store, me, settings.timings)
    kube.WRITE_GUARD = guard_for(elector)
    kube.REPORTING_INSTANCE = me
    log.info("leader election: %s standing by for Lease %s/%s (duration %gs, renew deadline %gs, retry %gs)",
             me, settings.namespace, settings.name, settings.timings.lease_duration,
             settings.timings.renew_deadline, settings.timings.retry_period)
    server = _standby_health(liveness)
    try:
        elector.acquire()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info("leader election: %s leads (Lease %s/%s)", me, settings.namespace, settings.name)

    def renew() -> None:
        if not elector.renew_until_lost():
            on_lost()

    threading.Thread(target=renew, name="lease-renew", daemon=True).start()
    return elector


def step_down(elector: lease.Elector) -> None:
    """After kopf stopped: stop renewing and release the Lease for the other replica."""
    elector.stop()
    elector.release()
