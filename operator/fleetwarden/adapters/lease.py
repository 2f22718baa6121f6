"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it
(the library under controller-runtime and kube-controller-manager).

    elector = Elector(KubeLeaseStore(api, namespace, name), identity, LeaseTimings(15, 10, 2))
    elector.acquire(stop)          # blocks until this process holds the Lease
    elector.renew_until_lost(stop) # returns when a renewal could not be made in time

The Lease's spec is the record: ``holderIdentity``, ``leaseDurationSeconds``, ``acquireTime``,
``renewTime``, ``leaseTransitions``. One attempt (:meth:`Elector.try_acquire_or_renew`):

1. Read the Lease; create it, held by us, when there is none.
2. Note the local (monotonic) time whenever the record differs from the one seen last:
   expiry is judged from when *we* saw the holder renew, never from its clock, so clock
   skew between machines cannot make a live holder look expired.
3. Held by another whose record changed less than ``leaseDurationSeconds`` ago: give up.
4. Otherwise write ourselves in (``acquireTime`` and ``leaseTransitions + 1`` when we take
   it over; only ``renewTime`` when we renew) with the resourceVersion read, so of two
   candidates racing for an expired Lease exactly one write succeeds (409 for the other).

The holder renews every ``retry_period``. :meth:`Elector.leading` is true only while the last
successful renewal *started* less than ``renew_deadline`` ago: a holder that cannot renew (API
down, process paused) stops acting at that deadline, before anyone else may take the Lease
(``renew_deadline < lease_duration``). The clocks are injectable (fake ones in the tests).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client import exceptions as kube_exceptions

from fleetwarden import errors
from fleetwarden.adapters import kube

log = logging.getLogger(__name__)

JITTER = 1.2  # client-go's JitterFactor: a candidate waits retry_period * (1 + up to 0.2)


@dataclasses.dataclass(frozen=True)
class LeaseTimings:
    """How long a Lease lasts, how long its holder keeps trying to renew, how often it tries."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[tuple[str, str]]:
        """``(flag, message)`` for each setting that cannot work; empty when all is well."""
        out = []
        for flag, value in (("--lease-duration", self.lease_duration), ("--renew-deadline", self.renew_deadline),
                            ("--retry-period", self.retry_period)):
            if not math.isfinite(value) or value <= 0:
                out.append((flag, f"must be a positive number of seconds, got {value!r}"))
        if out:
            return out
        if self.renew_deadline >= self.lease_duration:
            out.append(("--renew-deadline", f"must be shorter than --lease-duration ({self.lease_duration:g}s), "
                                            f"got {self.renew_deadline:g}s"))
        if self.retry_period * JITTER >= self.renew_deadline:
            out.append(("--retry-period", f"with its jitter ({JITTER:g}x) must be shorter than --renew-deadline "
                                          f"({self.renew_deadline:g}s), got {self.retry_period:g}s"))
        return out


@dataclasses.dataclass(frozen=True)
class Record:
    """A Lease's spec (times as epoch seconds)."""

    holder: str = ""
    lease_duration: float = 0.0
    acquire_time: float | None = None
    renew_time: float | None = None
    transitions: int = 0

    def to_spec(self) -> dict[str, Any]:
        return {"holderIdentity": self.holder or None, "leaseDurationSeconds": max(1, math.ceil(self.lease_duration)),
                "acquireTime": _micro_time(self.acquire_time), "renewTime": _micro_time(self.renew_time),
                "leaseTransitions": self.transitions}

    @classmethod
    def from_spec(cls, lease_spec: dict[str, Any]) -> Record:
        return cls(holder=str(lease_spec.get("holderIdentity") or ""),
                   lease_duration=float(lease_spec.get("leaseDurationSeconds") or 0),
                   acquire_time=_parse_time(lease_spec.get("acquireTime")),
                   renew_time=_parse_time(lease_spec.get("renewTime")),
                   transitions=int(lease_spec.get("leaseTransitions") or 0))


def _micro_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    moment = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Conflict(errors.KubernetesError):
    """Someone else wrote the Lease between our read and our write (HTTP 409)."""


class LeaseStore(Protocol):
    """Where the record lives: a Lease on the API server, or a dict in the tests."""

    def get(self) -> tuple[Record, str] | None:
        """The record and its resourceVersion; None when there is no Lease."""

    def create(self, record: Record) -> str:
        """Create the Lease; its resourceVersion. Conflict when it exists already."""

    def update(self, record: Record, resource_version: str) -> str:
        """Replace the record if still at ``resource_version``; the new one. Conflict otherwise."""


class KubeLeaseStore:
    """A Lease in ``namespace`` called ``name``, through an API client that is never write-guarded
    (the Lease is how this process learns whether it may write anything else)."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name

    def _do(self, what: str, fn: Any, *args: Any) -> dict[str, Any]:
        try:
            response = fn(*args, _preload_content=False, _request_timeout=5)
            data: dict[str, Any] = json.loads(response.data)
            return data
        except kube_exceptions.ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{what}: the Lease changed meanwhile") from exc
            raise kube.wrap_api_error(what, exc) from exc
        except (OSError, ValueError) as exc:
            raise kube.wrap_api_error(what, exc) from exc

    def _body(self, record: Record, resource_version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "labels": {"app.kubernetes.io/name": "fleetwarden"}}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": record.to_spec()}

    def get(self) -> tuple[Record, str] | None:
        try:
            data = self._do(f"read lease {self.namespace}/{self.name}", self.api.read_namespaced_lease,
                            self.name, self.namespace)
        except kube.KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return Record.from_spec(data.get("spec") or {}), str(data["metadata"]["resourceVersion"])

    def create(self, record: Record) -> str:
        data = self._do(f"create lease {self.namespace}/{self.name}", self.api.create_namespaced_lease,
                        self.namespace, self._body(record))
        return str(data["metadata"]["resourceVersion"])

    def update(self, record: Record, resource_version: str) -> str:
        data = self._do(f"update lease {self.namespace}/{self.name}", self.api.replace_namespaced_lease,
                        self.name, self.namespace, self._body(record, resource_version))
        return str(data["metadata"]["resourceVersion"])


class Elector:
    """One candidate for the Lease. ``clock`` (monotonic) measures durations; ``wall`` (epoch)
    is only written into the record for people to read."""

    def __init__(self, store: LeaseStore, identity: str, timings: LeaseTimings, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.store = store
        self.identity = identity
        self.timings = timings
        self.clock = clock
        self.wall = wall
        self._stop = threading.Event()
        self.sleep = sleep or self._stop.wait
        self._observed: Record | None = None
        self._observed_at = float("-inf")  # local time the observed record last changed
        self._renewed_at: float | None = None  # local time the last successful write *started*
        self.acquired_at: float | None = None  # wall time we last took the Lease over

    # ---------------------------------------------------------------- the state

    def leading(self) -> bool:
        """Whether this process may act now: it holds the Lease and renewed it (that attempt
        started) less than ``renew_deadline`` ago."""
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.timings.renew_deadline

    @property
    def observed_holder(self) -> str:
        return self._observed.holder if self._observed is not None else ""

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or keep the Lease; True when we hold it now."""
        started = self.clock()
        now = self.wall()
        try:
            current = self.store.get()
            if current is None:
                mine = Record(self.identity, self.timings.lease_duration, now, now, 0)
                self.store.create(mine)
                return self._won(mine, started, took_over=True)
            record, version = current
            if record != self._observed:
                self._observed, self._observed_at = record, started
            if record.holder and record.holder != self.identity and \
                    self._observed_at + record.lease_duration > started:
                self._renewed_at = None  # held by another, renewed recently enough as we saw it
                return False
            if record.holder == self.identity:
                mine = dataclasses.replace(record, lease_duration=self.timings.lease_duration, renew_time=now)
                took_over = False
            else:
                mine = Record(self.identity, self.timings.lease_duration, now, now, record.transitions + 1)
                took_over = True
            self.store.update(mine, version)
            return self._won(mine, started, took_over=took_over)
        except Conflict as exc:
            log.info("lease: %s", exc)
            return self._lost_attempt()
        except errors.KubernetesError as exc:
            log.warning("lease: %s", exc)
            return self._lost_attempt()

    def _won(self, record: Record, started: float, *, took_over: bool) -> bool:
        self._observed, self._observed_at = record, started
        self._renewed_at = started
        if took_over:
            self.acquired_at = record.acquire_time
            log.info("lease: %s acquired (transition %d)", self.identity, record.transitions)
        return True

    def _lost_attempt(self) -> bool:
        return self.leading()  # still leading until the renew deadline, whatever this attempt said

    # ---------------------------------------------------------------- the loops

    def acquire(self) -> bool:
        """Try every ``retry_period`` (with jitter) until we hold the Lease; False if stopped first."""
        while not self._stop.is_set():
            if self.try_acquire_or_renew():
                return True
            self.sleep(self.timings.retry_period * (1 + random.uniform(0, JITTER - 1)))
        return False

    def renew_until_lost(self) -> bool:
        """Renew every ``retry_period`` while leading; return False once a renewal did not succeed
        within ``renew_deadline`` (leadership lost), True when stopped while still leading."""
        while not self._stop.is_set():
            self.try_acquire_or_renew()
            if self._stop.is_set():
                break
            if not self.leading():
                log.error("lease: %s could not renew within %gs: leadership lost", self.identity,
                          self.timings.renew_deadline)
                return False
            self.sleep(self.timings.retry_period)
        return True

    def stop(self) -> None:
        self._stop.set()

    def release(self) -> None:
        """Give the Lease up (on a clean shutdown), so another replica need not wait for it to expire."""
        if not self.leading():
            return
        self._renewed_at = None
        try:
            current = self.store.get()
            if current is None or current[0].holder != self.identity:
                return
            record, version = current
            self.store.update(dataclasses.replace(record, holder="", lease_duration=1.0, renew_time=self.wall()),
                              version)
        except errors.KubernetesError as exc:
            log.warning("lease: not released: %s", exc)


def identity(pod_name: str | None, hostname: str) -> str:
    """``<pod or host>_<random>``, as client-go names candidates: unique even for two processes
    on one host."""
    return f"{pod_name or hostname}_{random.getrandbits(40):010x}"
