"""What the operator's decision reads and returns: the types adapters, handlers and views share.

    EvaluationInput  --evaluate-->  Decision(findings, actions, status, events)

The handler observes the cluster and Prometheus into an :class:`EvaluationInput` (the
AgentBudget, the CostPolicies, each selected agent's :class:`AgentDeployment`, per-minute
buckets, spend, pending approvals, the previous status), calls
:func:`fleetwarden.core.evaluate.evaluate`, applies the :class:`Decision`'s actions and writes
its status. This module holds no rule: the rules are the stages of
:mod:`fleetwarden.core.stages`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from fleetwarden.core import findings, series, sources, spec, warmfold
from fleetwarden.core import status as st

Finding = findings.Finding

@dataclasses.dataclass(frozen=True)
class AgentDeployment:
    """One agent Deployment as the operator observes it."""

    name: str
    namespace: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    replicas: int = 1
    model: str | None = None
    version: str | None = None
    replicas_before: int | None = None  # fleetwarden.dev/replicas-before-kill on the Deployment
    resource_version: str | None = None  # as observed: an action on it is refused (409) if it changed since


@dataclasses.dataclass(frozen=True)
class PendingApproval:
    """A CostApproval nobody has decided yet (``status.decision`` unset)."""

    name: str
    agent: str
    expires_at: float | None = None  # spec.expiresAt; past it, the request no longer counts
    rule: str | None = None
    tool: str | None = None


_MISSING = object()


class Memo:
    """Results that depend only on complete minutes, shared across cycles and budgets.

    ``get(minute, key, compute)`` returns the value stored under ``key`` or stores
    ``compute()``. Values are kept for the newest minute and the one before only (the
    evaluations store them under the minute of their data, which is the clock's or, just after
    the minute turned, the one before (``stages.data_minute``); the clock turns the memo,
    :meth:`turn`; a key names what they were computed from), so memory stays bounded and a value is computed once a minute: at the
    first evaluation of the minute that asks for it, also for an agent with nothing new since
    minutes (its fold's key, which names its last minute, would otherwise have aged out and been
    folded again at every cycle). An older minute is computed again (at 10,000 budgets, two
    more minutes kept held some 20,000 more figures: docs/operator.md, "Scale")."""

    KEEP_MINUTES = 1

    def __init__(self) -> None:
        self._by_minute: dict[int, dict[Hashable, Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, minute: int, key: Hashable, compute: Callable[[], Any]) -> Any:
        # A hit takes no lock: a dict's get is one step for the interpreter, and a minute's bucket
        # only ever gains keys (an old minute's is dropped whole, still whole for a reader holding
        # it). Every evaluation thread reads here several times per budget; the lock serialised
        # them (docs/operator.md, "Scale").
        bucket = self._by_minute.get(minute)
        if bucket is not None:
            value = bucket.get(key, _MISSING)
            if value is not _MISSING:
                self.hits += 1  # (a count for the benchmarks: a lost increment is harmless)
                return value
        value = compute()
        with self._lock:
            self.misses += 1
            self._bucket(minute)[key] = value
        return value

    def peek(self, minute: int, key: Hashable) -> Any:
        """The value stored under ``key`` for ``minute``, or None: nothing is computed."""
        bucket = self._by_minute.get(minute)
        return None if bucket is None else bucket.get(key)

    def first(self, minute: int, key: Hashable, value: Any) -> Any:
        """The value stored under ``key`` for ``minute``; ``value``, stored, if there is none."""
        with self._lock:
            return self._bucket(minute).setdefault(key, value)

    def put(self, minute: int, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key`` for ``minute``, in place of any before."""
        with self._lock:
            self._bucket(minute)[key] = value

    def turn(self, minute: int) -> None:
        """The evaluations' clock is at ``minute``: the values of minutes more than KEEP_MINUTES before
        it are dropped, whether or not a value of ``minute`` is ever stored (an agent with nothing
        new asks again for its last minute's values; they are kept only while that minute is recent)."""
        if minute not in self._by_minute:
            with self._lock:
                self._bucket(minute)

    def _bucket(self, minute: int) -> dict[Hashable, Any]:
        bucket = self._by_minute.get(minute)
        if bucket is None:
            bucket = self._by_minute[minute] = {}
            newest = max(self._by_minute)
            for old in [m for m in self._by_minute if m < newest - self.KEEP_MINUTES * series.MINUTE]:
                del self._by_minute[old]
        return bucket

    def __len__(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._by_minute.values())


@dataclasses.dataclass(frozen=True)
class EvaluationInput:
    budget: spec.AgentBudget
    agents: Sequence[AgentDeployment]  # the agents the budget selects
    minutes: Mapping[str, Sequence[series.AgentMinute]] | None  # agent -> buckets; None: unknown
    spend: Mapping[spec.Window, float | None]  # the budget's spend per window; None: unknown
    now: float
    # the previous status; a stored body (a mapping) is read leniently (st.read)
    previous: st.AgentBudgetStatus = dataclasses.field(default_factory=st.AgentBudgetStatus)
    policies: Sequence[spec.CostPolicy] = ()
    metrics_reason: str | None = None  # why minutes/spend are unknown
    generation: int | None = None
    # agent -> minute -> outcome name -> count (fleetwarden_outcomes_total by outcome); None: not known
    outcomes: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None
    # agent -> minute -> (guardrail status, tool) -> decisions (fleetwarden_guardrail_decisions_total)
    guardrails: Mapping[str, Mapping[int, Mapping[tuple[str, str], float]]] | None = None
    approvals: Sequence[PendingApproval] = ()  # pending CostApprovals of the namespace
    lookback_start: float | None = None  # the first minute the buckets cover
    # the end of the last complete minute they cover (exclusive): the minute of the data, which an
    # evaluation just after the minute turned, with the data read before it, is one behind of
    data_end: int | None = None
    memo: Memo | None = dataclasses.field(default=None, compare=False)
    # with both: the detectors fold from each agent's anchor, at most anchor_minutes after
    # lookback_start, their state kept warm between cycles in ``folds`` (core/warmfold.py)
    anchor_minutes: int = 0
    folds: warmfold.Folds | None = dataclasses.field(default=None, compare=False)
    # what status.read dropped from a stored previous status (``field: reason``)
    status_repairs: tuple[str, ...] = ()
    # the budget's source and its health when it is not the SDK (core.sources.SourceReport)
    source: sources.SourceReport | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.previous, st.AgentBudgetStatus):
            typed, dropped = st.read(self.previous)
            object.__setattr__(self, "previous", typed)
            object.__setattr__(self, "status_repairs", (*self.status_repairs, *dropped))


# ---------------------------------------------------------------- output

@dataclasses.dataclass(frozen=True)
class ScaleToZero:
    agent: str
    replicas_to_remember: int
    reason: str  # "kill", "killed-again", "suspend"
    observed: str | None = None  # the resourceVersion decided on (AgentDeployment.resource_version)


@dataclasses.dataclass(frozen=True)
class RestoreReplicas:
    agent: str
    replicas: int
    reason: str  # "resume", "unsuspend"
    observed: str | None = None


@dataclasses.dataclass(frozen=True)
class SetModel:
    agent: str
    model: str
    previous: str | None
    reason: str  # "rollback", "rollback-drift", "desired"
    incident: str | None = None
    observed: str | None = None


@dataclasses.dataclass(frozen=True)
class Notify:
    finding: findings.Finding
    incident: str


Action = ScaleToZero | RestoreReplicas | SetModel | Notify


@dataclasses.dataclass(frozen=True)
class ActionFailure:
    """An action the API server refused, or that did not read back as done.

    ``status``: the HTTP status (403, 404, 409, 422, 5xx; None for a timeout or a read-back
    mismatch); ``reason``: the API's reason (``Forbidden``, ``NotFound``, ``Conflict``,
    ``Invalid``, ``Timeout``, ``NotApplied``...); ``message``: the API's message."""

    action: Action
    status: int | None
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str  # CamelCase
    message: str
    agent: str | None = None  # also post it on this agent's Deployment


@dataclasses.dataclass(frozen=True)
class Decision:
    findings: tuple[Finding, ...]
    new_findings: tuple[Finding, ...]  # not reported in an earlier cycle
    actions: tuple[Action, ...]
    status: st.AgentBudgetStatus
    events: tuple[Event, ...]
    failures: tuple[ActionFailure, ...] = ()  # actions that did not take effect (never shown as done)
    held: tuple[Action, ...] = ()  # what DryRun or Warn held back: what would have been done

    @property
    def destructive(self) -> bool:
        return any(isinstance(a, (ScaleToZero, SetModel)) for a in self.actions)

