"""One evaluation of one AgentBudget: gather -> evaluate (pure) -> act -> one status patch.

    Runtime.reconcile(budget_body, deployments, policy_bodies) -> Decision

1. Read the budget (and the CostPolicies of its namespace) into the core's models.
2. Pick its agents from the namespace's Deployments (kopf keeps them in an index).
3. Take this cycle's fleet-wide Prometheus snapshot: fetched once per interval and shared
   by every budget, so the number of queries does not grow with agents or budgets. A
   Prometheus failure is cached too (so 10,000 budgets do not hammer a dead server) and
   becomes "metrics unknown": MetricsAvailable=False, a Warning event, no destructive action.
4. Call :func:`fleetwarden.core.evaluate.evaluate` with the previous status and ``now``.
5. Apply its actions (scale subresource, KEDA pause, model env/annotation).
6. Write the status in one merge patch, only if it changed; post the decision's events.
7. Call ``hooks.on_findings`` (incident records, Alertmanager) and update /metrics.

Besides: :meth:`Runtime.check_governance` flags agent Deployments that no AgentBudget
governs (or whose budget sets no unit-economics target) with a Warning Event, once per
(Deployment, problem).

A transient Kubernetes failure of an action is raised (the ``KubeError`` itself, after the
status is written, so the next cycle continues from what was decided: an unfinished
scale-down is redone while the state is Killed); so is a failed status write. The kopf
handler maps them to ``kopf.TemporaryError`` (:mod:`fleetwarden.handlers.retry`). In a fleet
large enough that figures wait for their turn, a write of figures alone or a heartbeat is sent
by the writer's threads (:class:`StatusWriter`); one that fails is logged, and the next
evaluation writes it.

Kopf-free on purpose: the handlers and ``benchmarks/operator_scale.py`` call it alike.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pydantic

try:  # the kept statuses are read back with orjson when it is installed (the image has it)
    import orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    orjson = None  # type: ignore[assignment]

from fleetwarden import errors
from fleetwarden.adapters import kube, prometheus, reader
from fleetwarden.core import decision, evaluate, governance, manifests, spec, timefmt, warmfold
from fleetwarden.core import status as status_model
from fleetwarden.handlers import hooks, metrics

log = logging.getLogger(__name__)

# Status fields that drift every cycle (the clock moves) without meaning anything changed;
# they are written with any other change, and at least every HEARTBEAT_SECONDS.
_VOLATILE = ("lastEvaluated", "projectedMonthUSD", "burnRateUSDPerHour")
# Write the status at least this often even when nothing changed (lastEvaluated heartbeat)...
HEARTBEAT_SECONDS = 60.0
# ...but never so often that heartbeats alone pass this many status writes a second: with
# 10,000 budgets a one-minute heartbeat would be 167 PATCHes a second, most of the API load.
# The period grows with the fleet (heartbeat_seconds), and a token bucket holds the rate when
# evaluations fall behind: at 10,000 budgets a pass over the fleet took longer than the period,
# and every evaluation wrote its status (benchmarks/operator_scale.py).
MAX_HEARTBEATS_PER_SECOND = 5.0
# A status whose figures alone changed (spend, the summary, costs, top agents and tools, the
# source's counts, a condition's message: _FIGURES) is written at once while the fleet is small
# enough that doing so each interval stays under this many writes a second (300 budgets at the
# 15 s interval); a larger fleet writes each budget's figures at most once every
# budgets / MAX_FIGURE_WRITES_PER_SECOND seconds (500 s at 10,000: figure_seconds). A change of
# anything else (state, a condition's status or reason, the kill switch, a model, a step, an
# incident, the generation observed) is written at once at any size. Measured at 10,000 budgets
# whose hour spend moved every minute, every evaluation was a PATCH, and with the watch event each
# PATCH brings back, the writes were about 40% of the operator's samples (docs/operator.md, Scale).
MAX_FIGURE_WRITES_PER_SECOND = 20.0
# In such a large fleet, figure-only writes and heartbeats go out from threads of their own
# (StatusWriter), so no evaluation waits for them: at 10,000 live budgets a PATCH took up to
# 1.6 s while the writes went on, and the runners waiting on the API server together missed the
# later budgets' turns (docs/operator.md, Scale). At most this many wait to be sent; with as many
# waiting, a budget's figures wait for a later evaluation, as with an empty token bucket.
STATUS_WRITERS = 4
MAX_QUEUED_WRITES = 64
_FIGURES = ("summary", "spend", "costPerTaskUSD", "costPerOutcomeUSD", "topAgents", "topTools")
_SOURCE_FIGURES = ("series", "families", "lastSample", "unpricedModels")
# The operator's fetcher reads the SDK's per-minute series incrementally (the minutes since its
# last fetch), and a longer span (its first fetch) this many minutes at a time, so its memory
# does not peak with the whole lookback of a large fleet at once (docs/operator.md, Scale).
RANGE_SLICE_MINUTES = 15
# Intervals after which an evaluation fetches the snapshot by its age once the fleet loop prefetches
# it between cycles (Runtime.prefetch): later than the next cycle's last evaluation (a paced cycle
# spreads over up to 0.9 of the interval), so only a stalled loop leaves it to the evaluations.
PREFETCHED_REFRESH = 1.5


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) turning ``old`` into ``new`` (None removes a key)."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    return patch


def _meaningful(status: Mapping[str, Any]) -> dict[str, Any]:
    """What of a status is a change worth writing: all but the _VOLATILE fields, with every float
    to two significant digits. Spend drifts a little every cycle; written each time, that drift
    alone would set the write rate of a large fleet. A change in the first two digits (0 -> 0.8
    USD, 87% -> 88% of the cap), a new state, condition, incident or count is a change (written
    at once, or for figures alone in a large fleet at the budget's turn: figure_seconds);
    smaller drift waits for the heartbeat."""
    return {k: _coarse(v) for k, v in status.items() if k not in _VOLATILE}


def _alike(old: Mapping[str, Any], new: Mapping[str, Any], skip: tuple[str, ...]) -> bool:
    """Whether ``old`` and ``new`` hold equal values under every key but ``skip``'s. Equal values have
    equal :func:`_meaningful` and :func:`_decisive` parts, so this answers "no change" for both
    without building them; a number equal in value but not in JSON type (``3`` and ``3.0``: the
    API server gives back an integral float as an int) is no change either."""
    return {k: v for k, v in old.items() if k not in skip} == {k: v for k, v in new.items() if k not in skip}


def _pack_status(status: Mapping[str, Any]) -> bytes:
    """A status kept between evaluations: its JSON (about 1-2 KB, against about 3 KB for its
    dicts and strings: 10,000 budgets keep one each). JSON gives back the same values and types:
    a status is the plain JSON the API server was sent. The first byte says how it is read
    back: ``o`` with orjson (installed, and every int within its 64 bits, past which it would
    read a float), ``j`` with the standard library.

    Not compressed: zlib lets the interpreter lock go for each call, however small, and every
    evaluation reads its budget's status. While other threads had work (a large fleet's status
    writes and their watch events), the evaluation then waited up to the switch interval (5 ms)
    to get the lock back at each read: in a profile of 10,000 live budgets during their figure
    writes, 10% of the operator's samples were in that read (docs/operator.md, Scale;
    ``python benchmarks/lock_handoffs.py`` measures a read alone and beside busy threads)."""
    text = json.dumps(status, separators=(",", ":")).encode()
    return (b"o" if _orjson_reads(status) else b"j") + text


def _orjson_reads(status: Mapping[str, Any]) -> bool:
    if orjson is None:
        return False
    try:
        orjson.dumps(status)  # refuses an int past 64 bits, as its reader would not give one back
    except TypeError:
        return False
    return True


def _unpack_status(packed: bytes) -> dict[str, Any]:
    raw = packed[1:]
    if packed[:1] == b"o":
        try:
            fast: dict[str, Any] = orjson.loads(raw)  # a few times the standard library's speed
            return fast
        except orjson.JSONDecodeError:  # NaN or Infinity, which json.dumps writes and orjson refuses
            pass
    out: dict[str, Any] = json.loads(raw)
    return out


def _decisive(meaningful: Mapping[str, Any]) -> dict[str, Any]:
    """What of a status is written at once at any fleet size, from its :func:`_meaningful` part:
    all but its figures (_FIGURES, the source's counts, each condition's message)."""
    out = {k: v for k, v in meaningful.items() if k not in _FIGURES}
    conditions = out.get("conditions")
    if isinstance(conditions, list):
        out["conditions"] = [{k: v for k, v in c.items() if k != "message"} if type(c) is dict or isinstance(c, Mapping)
                             else c for c in conditions]
    source = out.get("source")
    if isinstance(source, Mapping):
        out["source"] = {k: v for k, v in source.items() if k not in _SOURCE_FIGURES}
    return out


def _coarse(value: Any) -> Any:
    # the exact types first: a status is plain JSON, and an ABC's isinstance check costs more
    # than the rest (this runs on two statuses per evaluation)
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return float(f"{value:.2g}")
    if kind is dict or isinstance(value, Mapping):
        return {k: _coarse(v) for k, v in value.items()}
    if isinstance(value, list):  # (a C-level check already)
        return [_coarse(v) for v in value]
    return value


class _Kept:
    """A namespace's list of Deployments as the index keeps it (see :class:`LabelIndex`)."""

    __slots__ = ("by_label", "deployments", "ids", "states")

    def __init__(self, ids: tuple[int, ...], deployments: list[Mapping[str, Any]],
                 by_label: dict[tuple[str, str], list[Any]]) -> None:
        self.ids, self.deployments, self.by_label = ids, deployments, by_label
        # (a Deployment's id, where the model is read) -> its AgentDeployment (kube.agent_state)
        self.states: dict[tuple[int, str | None, str | None, str | None], decision.AgentDeployment] = {}


class LabelIndex:
    """The Deployments of a list by each of their labels, and the agent each one is, kept for
    the list while it is the same.

    Each budget's evaluation picks its agents from its namespace's Deployments; matching its
    selector against each of them costs every budget the whole namespace (at 10,000 budgets in
    100 namespaces, a million matches a cycle: 7.5% of the operator's time under the GIL in
    ``benchmarks/operator_scale.py``). The index gives the Deployments that carry one of the
    selector's ``matchLabels`` pairs, in the list's order; the full match is then run on those
    alone, so the agents chosen are the same. A list is "the same" when it holds the same
    objects in the same order (kopf's index gives a new object for every changed Deployment; the
    index keeps the list, so no object of it is freed and its identity reused meanwhile).

    The fleet loop hands the budgets of a namespace one list a cycle (``fleet.copy_indexes``):
    that very list is known at once, without reading its objects' identities again (a list is
    not changed once handed over: each cycle and each of kopf's reads makes a new one). And the
    :class:`decision.AgentDeployment` read from a Deployment (its model, version, replicas) is
    kept with the list, not read again by every budget at every evaluation (:meth:`agent`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, _Kept] = {}
        self.built = 0  # indexes made (a list seen for the first time, or changed)

    def of(self, namespace: str, deployments: list[Mapping[str, Any]]) -> _Kept:
        """The namespace's list as kept (built again when it is another)."""
        with self._lock:
            kept = self._kept.get(namespace)
        if kept is not None and kept.deployments is deployments and len(deployments) == len(kept.ids):
            return kept  # the list of the cycle, seen by another budget of the namespace
        ids = tuple(map(id, deployments))
        if kept is not None and kept.ids == ids:
            kept.deployments = deployments  # the same objects in a new list (the same ones kept alive)
            return kept
        by_label: dict[tuple[str, str], list[Any]] = {}
        for d in deployments:
            labels = (d.get("metadata") or {}).get("labels") or {}
            for pair in labels.items():
                if type(pair[1]) is str:
                    by_label.setdefault(pair, []).append(d)
        kept = _Kept(ids, deployments, by_label)
        with self._lock:
            self._kept[namespace] = kept
            self.built += 1
        return kept

    @staticmethod
    def candidates(kept: _Kept, selector: spec.LabelSelector) -> Sequence[Mapping[str, Any]]:
        """The Deployments of the kept list that can match ``selector`` (all, without matchLabels)."""
        if not selector.match_labels:
            return kept.deployments
        return kept.by_label.get(next(iter(selector.match_labels.items())), ())

    @staticmethod
    def agent(kept: _Kept, deployment: Mapping[str, Any], source: spec.ModelSource) -> decision.AgentDeployment:
        """``kube.agent_state(deployment, source)`` for a Deployment of the kept list, read once
        while the list is kept (its objects alive, so their identities are theirs alone)."""
        key = (id(deployment), source.env_var, source.annotation, source.container)
        state = kept.states.get(key)
        if state is None:
            state = kept.states[key] = kube.agent_state(deployment, source)
        return state

    def forget(self, namespace: str) -> None:
        """Drop the namespace's index (a budget of it deleted: a namespace may be going)."""
        with self._lock:
            self._kept.pop(namespace, None)


def select_agents(budget: spec.AgentBudget, deployments: Iterable[Mapping[str, Any]],
                  index: LabelIndex | None = None
                  ) -> tuple[list[decision.AgentDeployment], dict[str, Mapping[str, Any]]]:
    """The budget's agents (same namespace, selector matches) and their Deployments by name
    (through ``index`` when given: the same agents)."""
    ns = budget.metadata.namespace
    chosen: dict[str, Mapping[str, Any]] = {}
    kept = None
    if index is not None:
        kept = index.of(ns, deployments if type(deployments) is list else list(deployments))
        deployments = index.candidates(kept, budget.spec.selector)
    for d in deployments:
        meta = d.get("metadata") or {}
        if meta.get("namespace", ns) == ns and budget.spec.selector.matches(dict(meta.get("labels") or {})):
            chosen[meta["name"]] = d
    source = budget.spec.model
    if kept is not None:
        agents = [LabelIndex.agent(kept, d, source) for d in chosen.values()]
    else:
        agents = [kube.agent_state(d, source) for d in chosen.values()]
    return agents, chosen


# A Deployment is an agent when it says so, or names its budget.
AGENT_LABEL = "fleetwarden.dev/agent"
BUDGET_LABEL = "fleetwarden.dev/budget"
GOVERNANCE_REASONS = {governance.NO_BUDGET: "Ungoverned", governance.NO_UNIT_ECONOMICS: "NoUnitEconomics"}


def is_agent(deployment: Mapping[str, Any]) -> bool:
    """A Deployment labelled ``fleetwarden.dev/agent: "true"`` or carrying ``fleetwarden.dev/budget``."""
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    return labels.get(AGENT_LABEL) == "true" or BUDGET_LABEL in labels


def pending_approvals(bodies: Iterable[Mapping[str, Any]]) -> list[decision.PendingApproval]:
    """CostApprovals nobody decided yet (no ``status.decision``), as the evaluator takes them."""
    out = []
    for body in bodies:
        if (body.get("status") or {}).get("decision"):
            continue
        meta, s = body.get("metadata") or {}, body.get("spec") or {}
        if not meta.get("name") or not s.get("agent"):
            continue
        out.append(decision.PendingApproval(
            name=str(meta["name"]), agent=str(s["agent"]),
            expires_at=timefmt.parse_rfc3339(s.get("expiresAt")) if s.get("expiresAt") else None,
            rule=s.get("rule"), tool=s.get("tool")))
    return out


def parse_policies(bodies: Iterable[Mapping[str, Any]]) -> list[spec.CostPolicy]:
    out = []
    for body in bodies:
        try:
            out.append(spec.CostPolicy.model_validate(dict(body)))
        except pydantic.ValidationError as exc:
            meta = body.get("metadata") or {}
            log.warning("CostPolicy %s/%s ignored: %s", meta.get("namespace"), meta.get("name"),
                        str(exc).splitlines()[0])
    return out


class Backoff:
    """Capped exponential backoff per action target: after ``n`` failures in a row, the next
    try waits ``first * 2**(n-1)`` seconds, at most ``cap``. A success forgets the target."""

    def __init__(self, first: float, cap: float = 300.0) -> None:
        self.first, self.cap = max(first, 0.0), cap
        self._state: dict[Hashable, tuple[int, float]] = {}  # key -> (failures, next try, monotonic)
        self._lock = threading.Lock()

    def failed(self, key: Hashable, now: float) -> float:
        """Record a failure; returns the seconds to wait before the next try."""
        with self._lock:
            n = self._state.get(key, (0, 0.0))[0] + 1
            delay = float(min(self.first * 2.0 ** (n - 1), self.cap))
            self._state[key] = (n, now + delay)
            return delay

    def succeeded(self, key: Hashable) -> None:
        with self._lock:
            self._state.pop(key, None)

    def waiting(self, key: Hashable, now: float) -> str | None:
        """Why ``key`` is not tried now (None: try it)."""
        with self._lock:
            n, at = self._state.get(key, (0, 0.0))
        if n == 0 or now >= at:
            return None
        return f"failed {n} time(s) in a row; next try in {at - now:.0f} s"


class Gate:
    """One evaluation's own work at a time. The evaluations run on many threads so that their
    API calls and writes overlap, but their work is Python under one interpreter lock: run side
    by side it is done no sooner, and each switch between threads costs more than the work it
    interleaves (the next thread's data and zstd's context are cold in the cache). In process,
    16 threads took 25-45% more CPU than one for the same evaluations (docs/operator.md, Scale).
    So an evaluation holds the gate (:meth:`held`) and steps out of it (:meth:`outside`) only
    while it waits for something: a fetch, an action, a status write, its hooks with something to
    send. The fleet loop's runners hold it from one budget to the next (handlers/fleet.py,
    evaluate_all), and between two budgets let in an evaluation that comes from outside them
    (:meth:`pass_on`): one prompted by an edit, or run by kopf, waits for the budget under way,
    not for a runner's whole cycle; so is a runner back at its budget's turn (``outside(due=True)``:
    its budget was taken before the holder's next). Runners waiting for the gate idle, or back
    from an API call, are not let in that way: they come in when the holder steps out to wait,
    since handing the work from thread to thread at every budget is what the gate saves
    (measured: a first pass of 10,000 status writes took 321-348 s when they were, 260 s when
    not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._count = threading.Lock()
        self._busy = 0  # evaluations from outside the runners (or runners due) waiting to come in
        self._came_in = threading.Event()  # set by such a thread once it holds the gate

    def holding(self) -> bool:
        """Whether the calling thread holds the gate."""
        return bool(getattr(self._local, "held", False))

    def waiting(self) -> int:
        """How many evaluations from outside the runners, or runners back at a budget's turn, wait to come in."""
        return self._busy

    def _enter(self, idle: bool = False) -> None:
        if not self._lock.acquire(blocking=False):
            if idle:
                self._lock.acquire()
            else:
                with self._count:
                    self._busy += 1
                try:
                    self._lock.acquire()
                finally:
                    with self._count:
                        self._busy -= 1
                self._came_in.set()
        self._local.held = True

    def _leave(self) -> None:
        self._local.held = False
        self._lock.release()

    @contextlib.contextmanager
    def held(self, idle: bool = False) -> Iterator[None]:
        """Hold the gate (a thread that holds it already goes on holding it). ``idle``: a runner
        (with no budget in hand yet), which :meth:`pass_on` does not let in."""
        if self.holding():
            yield
            return
        self._enter(idle)
        try:
            yield
        finally:
            self._leave()

    @contextlib.contextmanager
    def outside(self, due: bool = False) -> Iterator[None]:
        """Let the gate go while waiting (a thread that does not hold it just waits). Back, the
        thread comes in when the holder steps out to wait; ``due`` (a runner back from waiting
        for its budget's turn): also when the holder is between two budgets (:meth:`pass_on`).
        Without it, a runner whose turn came while another held the gate waited for that one to
        reach a budget whose turn was still to come: behind the cycle's schedule, that was every
        budget after its own, and its budget, an earlier one, ended seconds after them."""
        if not self.holding():
            yield
            return
        self._leave()
        try:
            yield
        finally:
            self._enter(idle=not due)  # (idle: not let in by pass_on)

    def pass_on(self) -> None:
        """Between two evaluations: let an evaluation from outside the runners, or a runner back
        for a budget whose turn came (``outside(due=True)``), that waits to come in go first (its
        evaluation, then this thread's next)."""
        if self.holding() and self._busy > 0:
            self._came_in.clear()
            self._leave()
            self._came_in.wait(0.1)  # until it holds the gate (the lock would let this thread back in first)
            self._enter(idle=True)


class TokenBucket:
    """Writes of one kind, fleet-wide: ``rate`` a second, refilled continuously, a second's worth
    at most (the burst), and at least one write (a rate under one a second writes one at a time)."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._filled = now
        self._lock = threading.Lock()

    def _fill(self, now: float) -> None:
        # threads read the clock before they take the lock, so ``now`` may come out of order: an
        # earlier one adds nothing and leaves the time filled up to as it is (else the time
        # between the two would be counted again at the next fill)
        elapsed = max(0.0, now - self._filled)
        self._filled = max(self._filled, now)
        self._tokens = min(self._burst, self._tokens + elapsed * self.rate)

    def take(self, now: float) -> bool:
        """Take one write; False: none left, the write waits."""
        with self._lock:
            self._fill(now)
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def ready(self, now: float) -> bool:
        """Whether a write could be taken now (nothing taken)."""
        with self._lock:
            self._fill(now)
            return self._tokens >= 1.0


class StatusWriter:
    """Status writes that no evaluation waits for, sent by ``threads`` threads of their own
    (started with the first write). One write of a budget at a time, so a budget's writes reach
    the API server in the order given; a budget's write queued while one of it waits to be sent
    replaces that one (the later status is the whole of it) and keeps its place. A write
    handles its own failures; an exception it lets out is logged."""

    def __init__(self, *, threads: int = STATUS_WRITERS, limit: int = MAX_QUEUED_WRITES) -> None:
        self._threads = threads
        self.limit = limit
        self._cond = threading.Condition()
        self._queued: dict[str, Callable[[], None]] = {}  # uid -> its write, in the order queued
        self._sending: set[str] = set()
        self._started = 0

    def room(self) -> bool:
        """Whether a write of a budget with none queued would be taken now."""
        with self._cond:
            return len(self._queued) < self.limit

    def submit(self, uid: str, write: Callable[[], None]) -> bool:
        """Queue ``write``, budget ``uid``'s. False: ``limit`` writes wait already; nothing queued."""
        with self._cond:
            if uid not in self._queued and len(self._queued) >= self.limit:
                return False
            self._queued[uid] = write
            while self._started < self._threads:
                self._started += 1
                threading.Thread(target=self._run, name=f"fleetwarden-status-writer-{self._started}",
                                 daemon=True).start()
            self._cond.notify_all()
        return True

    def holds(self, uid: str) -> bool:
        """Whether a write of budget ``uid`` is queued or being sent."""
        with self._cond:
            return uid in self._queued or uid in self._sending

    def settle(self, uid: str) -> bool:
        """Drop budget ``uid``'s queued write and wait for the one being sent, so that a write of
        it sent now comes after it. True: there was one of either."""
        with self._cond:
            dropped = self._queued.pop(uid, None) is not None
            waited = uid in self._sending
            while uid in self._sending:
                self._cond.wait()
            return dropped or waited

    def pending(self) -> int:
        """Writes queued or being sent."""
        with self._cond:
            return len(self._queued) + len(self._sending)

    def drain(self, timeout: float) -> bool:
        """Wait until no write is queued or being sent (at most ``timeout`` seconds); True: none."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queued or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _next(self) -> tuple[str, Callable[[], None]]:
        with self._cond:
            while True:
                uid = next((u for u in self._queued if u not in self._sending), None)
                if uid is not None:
                    self._sending.add(uid)
                    return uid, self._queued.pop(uid)
                self._cond.wait()

    def _run(self) -> None:
        while True:
            uid, write = self._next()
            try:
                write()
            except Exception:  # a write never stops the writer
                log.exception("status write of AgentBudget %s failed", uid)
            finally:
                with self._cond:
                    self._sending.discard(uid)
                    self._cond.notify_all()


class Runtime:
    """Process-wide state: API clients, the per-cycle snapshot, per-budget locks and status."""

    def __init__(self, *, interval: float, fetcher: prometheus.Fetcher | None,
                 kube_client: kube.Kube | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, prometheus_grace: float = 0.0) -> None:
        self.interval = interval
        # a failed fetch less than this many seconds after the last good one is bridged by that one
        # (_fetch_held); 0: every failure makes the cycle's metrics unknown
        self.prometheus_grace = prometheus_grace
        self._good_at = float("-inf")  # monotonic time of the last good fetch
        self._failing_since: float | None = None  # monotonic time of the first failure of a streak
        # the share of the interval after which the snapshot is due (fetched by the next evaluation);
        # once something calls prefetch (the fleet loop with a pace, between cycles), a longer one: a fallback
        self.refresh_after = 0.8
        self.monotonic = monotonic  # the backoff's clock
        self.fetcher = fetcher
        self._kube = kube_client
        self.clock = clock
        self._snapshot_lock = threading.Lock()
        self._fetch_lock = threading.Lock()  # one fetch at a time
        self._snapshot: prometheus.FleetSnapshot | errors.PrometheusError | None = None
        self._snapshot_at = float("-inf")  # monotonic time of the last fetch
        self._fetch_ended: float | None = None  # the same, kept when a new cycle makes the snapshot due
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._status: dict[str, bytes] = {}  # uid -> the status we last wrote (_pack_status)
        self._labels = LabelIndex()  # each namespace's Deployments by label (select_agents)
        self._written_at: dict[str, float] = {}
        # uid -> time.monotonic() of the first evaluation that held its figures past their turn (a large
        # fleet: the evaluations run behind, or the fleet's figure writes are at their rate); dropped
        # once they are worked out again (written, or found unchanged): figures_overdue
        self._held: dict[str, float] = {}
        self._heartbeats = TokenBucket(MAX_HEARTBEATS_PER_SECOND, time.monotonic())
        self._figure_writes = TokenBucket(MAX_FIGURE_WRITES_PER_SECOND, time.monotonic())
        self.writer = StatusWriter()  # a large fleet's figure writes and heartbeats
        # whether the evaluations run behind their turns (the fleet loop's, handlers/fleet.py: behind):
        # then a large fleet's figure writes and heartbeats wait, and the evaluations have the time
        self.behind: Callable[[], bool] = lambda: False
        self._evaluated_at: dict[str, float] = {}  # uid -> monotonic time of its last evaluation
        self.memo = decision.Memo()  # per-agent detector results, refolded once per minute
        # per-agent detector states, stepped on from their anchor (used when the fetcher reads an anchor's
        # minutes more than the lookback: build() sets it); the fetcher's re-read minutes are never kept
        self.folds = warmfold.Folds(tail_minutes=getattr(fetcher, "settle_minutes", warmfold.TAIL_MINUTES))
        metrics.FOLDS.source = self.folds  # (fleetwarden_operator_detector_folds_total: the runtime in use)
        self.backoff = Backoff(first=interval)  # actions that failed wait before they are tried again
        # uid -> (generation, the budget parsed at it): one per budget, its latest generation only
        self._budgets: dict[str, tuple[Any, spec.AgentBudget | errors.ManifestError]] = {}
        # uid -> (resourceVersion, the CostPolicy parsed at it, None: invalid): each policy is read
        # by every evaluation in its namespace, parsed (and its warning logged) once per version
        self._policies: dict[str, tuple[Any, spec.CostPolicy | None]] = {}
        self._gaps_lock = threading.Lock()
        self._gaps: dict[str, set[str]] = {}  # Deployment uid -> governance problems already posted
        self._sources: set[spec.SourceType] = set()  # the spec.source of the budgets seen, besides the SDK
        self.gate = Gate()  # one evaluation's own work at a time; its waits outside (Gate)

    @property
    def api(self) -> kube.Kube:
        if self._kube is None:
            self._kube = kube.Kube(kube.load_config())
        return self._kube

    # ---------------------------------------------------------------- the shared snapshot

    def snapshot(self, source: spec.SourceType = spec.SourceType.fleetwarden) -> prometheus.FleetSnapshot:
        """This cycle's fleet-wide data (fetched at most once per ~interval; at once when it lacks
        ``source``, a budget's spec.source read for the first time); raises PrometheusError.

        One thread fetches at a time. While it does, the other evaluations go on with the last
        good snapshot (at most an interval and a fetch old) rather than wait for it; only when
        there is none (the first fetch, after an error, a source not read yet) do they wait."""
        with self._snapshot_lock:
            if source is not spec.SourceType.fleetwarden:
                self._sources.add(source)
            current, due, usable = self._snapshot_state(source)
            if not due or (usable and self._fetch_lock.locked()):
                return self._snapshot_or_raise(current)
        with self.gate.outside():  # (the fetch, or the wait for another's, lets the other evaluations on)
            return self._fetch(source)

    def _fetch(self, source: spec.SourceType) -> prometheus.FleetSnapshot:
        with self._fetch_lock:
            return self._fetch_held(source)

    def _fetch_held(self, source: spec.SourceType) -> prometheus.FleetSnapshot:
        """The fetch, ``_fetch_lock`` held: unless another thread fetched meanwhile (not due any more)."""
        with self._snapshot_lock:
            current, due, _ = self._snapshot_state(source)
            sources = tuple(self._sources)
        if not due:  # another thread fetched it meanwhile
            return self._snapshot_or_raise(current)
        if self.fetcher is None:
            raise errors.PrometheusError("no Prometheus configured")
        fresh: prometheus.FleetSnapshot | errors.PrometheusError
        started = time.monotonic()
        try:
            fresh = self.fetcher.fetch(self.clock(), sources=sources) if sources else self.fetcher.fetch(self.clock())
            metrics.PROMETHEUS_QUERIES.inc(fresh.queries)
            metrics.PROMETHEUS_FETCHES.labels("ok").inc()
        except errors.PrometheusError as exc:
            fresh = exc
            metrics.PROMETHEUS_FETCHES.labels("error").inc()
            log.warning("Prometheus: %s", exc)
        metrics.PROMETHEUS_FETCH_SECONDS.observe(time.monotonic() - started)
        with self._snapshot_lock:
            fresh = self._bridged(fresh, sources)
            self._snapshot, self._snapshot_at = fresh, time.monotonic()
            self._fetch_ended = self._snapshot_at
        return self._snapshot_or_raise(fresh)

    def _bridged(self, fresh: prometheus.FleetSnapshot | errors.PrometheusError,
                 sources: Sequence[spec.SourceType]) -> prometheus.FleetSnapshot | errors.PrometheusError:
        """The snapshot the evaluations get for this fetch's answer (``_snapshot_lock`` held): a
        good one as it is; a failure, the last good snapshot while that one is less than
        ``prometheus_grace`` seconds old and read every source asked for now. One timed-out query
        would otherwise turn every budget's metrics unknown for a cycle, and back the next: two
        condition changes and two events per budget, 20,000 writes at 10,000 budgets, for a blip
        (docs/operator.md, "When Prometheus misbehaves"). A bridged cycle decides on data at most
        the grace and a fetch old; nothing new in it, nothing new is decided. Once the grace has
        passed, the failure is the snapshot (every budget's metrics are unknown, as without one)
        and the last good one is let go: nothing bridges again before a good fetch.

        The snapshot at hand is the last good one whenever there is one to bridge with: a good
        fetch or a bridged failure leaves it, and any other failure replaces it (the sources asked
        for only ever grow, so one missing from it stays missing)."""
        now = self.monotonic()
        if isinstance(fresh, prometheus.FleetSnapshot):
            self._good_at, self._failing_since = now, None
            metrics.PROMETHEUS_FAILING.set(0)
            return fresh
        if self._failing_since is None:
            self._failing_since = now
        metrics.PROMETHEUS_FAILING.set(now - self._failing_since)
        good = self._snapshot
        if not isinstance(good, prometheus.FleetSnapshot) or not now - self._good_at < self.prometheus_grace or any(
                source not in good.sources for source in sources if source is not spec.SourceType.fleetwarden):
            return fresh
        metrics.PROMETHEUS_BRIDGED.inc()
        log.warning("Prometheus failed; the budgets go on with the data read %.0f s ago (--prometheus-grace %g s)",
                    now - self._good_at, self.prometheus_grace)
        return good

    def _snapshot_state(self, source: spec.SourceType
                        ) -> tuple[prometheus.FleetSnapshot | errors.PrometheusError | None, bool, bool]:
        """(the snapshot, whether a fetch is due, whether the snapshot serves ``source`` meanwhile)."""
        current = self._snapshot
        lacks = isinstance(current, prometheus.FleetSnapshot) and source is not spec.SourceType.fleetwarden \
            and source not in current.sources
        due = current is None or time.monotonic() - self._snapshot_at >= self.interval * self.refresh_after or lacks
        return current, due, isinstance(current, prometheus.FleetSnapshot) and not lacks

    @staticmethod
    def _snapshot_or_raise(snap: prometheus.FleetSnapshot | errors.PrometheusError | None) -> prometheus.FleetSnapshot:
        if isinstance(snap, errors.PrometheusError):
            raise snap
        assert snap is not None
        return snap

    def data_end(self) -> int | None:
        """The end of the last complete minute of the snapshot at hand; None when there is none
        (not fetched yet, or the last fetch failed)."""
        snap = self._snapshot
        return snap.end if isinstance(snap, prometheus.FleetSnapshot) else None

    def fetch_ended(self) -> float | None:
        """When the last fetch (good or failed) ended, on ``time.monotonic``'s clock; None: none yet."""
        return self._fetch_ended

    def new_cycle(self) -> None:
        """Make the cached snapshot due: the next budget fetches afresh (the others evaluated
        meanwhile keep the last one, see :meth:`snapshot`)."""
        with self._snapshot_lock:
            self._snapshot_at = float("-inf")

    def prefetch(self) -> None:
        """Fetch a fresh snapshot now, in the calling thread (the fleet loop's, between two cycles,
        so that the next cycle's evaluations neither wait for it nor share the interpreter with
        its reading); an evaluation meanwhile goes on with the last snapshot. A failure is logged
        and kept, as a fetch by an evaluation keeps it. From then on an evaluation fetches by the
        snapshot's age only after ``PREFETCHED_REFRESH`` intervals."""
        self.refresh_after = PREFETCHED_REFRESH
        # The fetch lock is taken before the snapshot is made due: an evaluation running meanwhile (a
        # prompted one, or the end of a cycle stopped short) goes on with the last snapshot rather
        # than take the fetch over and keep its budget waiting for the whole reading.
        with self._fetch_lock:
            self.new_cycle()
            with contextlib.suppress(errors.PrometheusError):  # logged by the fetch; the statuses say it
                self._fetch_held(spec.SourceType.fleetwarden)

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str, namespace: str, name: str) -> None:
        """Drop what this process keeps of budget ``uid`` (deleted). An evaluation of it under way
        and its write being sent end first: a PATCH that lands after the deletion was seen would
        keep its status here again, for a budget no longer there."""
        with self._lock(uid):
            self.writer.settle(uid)  # its queued write dropped, the one being sent waited for
            with self._locks_lock:
                self._locks.pop(uid, None)
        self._status.pop(uid, None)
        self._written_at.pop(uid, None)
        self._held.pop(uid, None)
        self._evaluated_at.pop(uid, None)
        self._budgets.pop(uid, None)
        self._labels.forget(namespace)
        metrics.forget(namespace, name)

    def previous_status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        uid = str((body.get("metadata") or {}).get("uid"))
        kept = self._status.get(uid)
        return _unpack_status(kept) if kept else dict(body.get("status") or {})

    def has_status(self, uid: str) -> bool:
        """Whether this process wrote a status of budget ``uid`` (then :meth:`previous_status`
        reads that one, never the body's)."""
        return bool(self._status.get(uid))

    def is_holding(self, body: Mapping[str, Any]) -> bool:
        """Whether the budget keeps its agents at zero (Killed, Suspended, or a ScaleToZero step in force)."""
        status = self.previous_status(body)
        steps = status.get("steps") or {}
        stepped = any(isinstance(a, Mapping) and a.get("action") == spec.StepAction.scale_to_zero.value
                      for a in steps.get("active") or ()) if isinstance(steps, Mapping) else False
        return bool((body.get("spec") or {}).get("suspend")) or bool(
            (status.get("killSwitch") or {}).get("engaged")) or stepped

    # ---------------------------------------------------------------- one budget

    def reconcile(self, body: Mapping[str, Any], deployments: Iterable[Mapping[str, Any]],
                  policy_bodies: Iterable[Mapping[str, Any]] = (), *, apply: bool = True,
                  approval_bodies: Iterable[Mapping[str, Any]] = ()) -> decision.Decision:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid"))
        lock = self._lock(uid)
        if not lock.acquire(blocking=False):
            with self.gate.outside():  # (never wait holding the gate: the lock's holder may want it)
                lock.acquire()
        try:
            with self.gate.held():
                verdict = self._reconcile(body, deployments, policy_bodies, apply, approval_bodies)
            if apply:
                self._evaluated_at[uid] = self.monotonic()
            return verdict
        finally:
            lock.release()

    def evaluated(self, uid: str) -> bool:
        """Whether this process has evaluated (and applied) the budget ``uid`` at least once."""
        return uid in self._evaluated_at

    def evaluated_at(self, uid: str) -> float | None:
        """``monotonic``'s time of the last evaluation of the budget ``uid`` by this process (None: never)."""
        return self._evaluated_at.get(uid)

    def oldest_evaluation(self) -> float:
        """Seconds since the budget evaluated longest ago was last evaluated (0: none yet)."""
        return _longest_ago(self._evaluated_at, self.monotonic())

    def _reconcile(self, body: Mapping[str, Any], deployments: Iterable[Mapping[str, Any]],
                   policy_bodies: Iterable[Mapping[str, Any]], apply: bool,
                   approval_bodies: Iterable[Mapping[str, Any]] = ()) -> decision.Decision:
        started = time.perf_counter()
        meta = body.get("metadata") or {}
        # 1: the budget (parsed once per generation; invalid: said in its status) and its policies
        budget = self._parse(body)
        if isinstance(budget, errors.ManifestError):
            return self._reject(body, budget, apply)
        namespace = budget.metadata.namespace
        policies = self._parse_policies(policy_bodies)
        # 2: its agents
        agents, chosen = select_agents(budget, deployments, self._labels)
        # 3: this cycle's metrics
        now = self.clock()
        minutes: dict[str, Sequence[Any]] | None
        spend: dict[spec.Window, float | None]
        reason = None
        data: prometheus.BudgetData | None = None
        try:
            data = self.snapshot(budget.spec.source.type).for_budget(budget, agents, policies)
            minutes, spend = dict(data.minutes), dict(data.spend)
        except errors.PrometheusError as exc:
            minutes, spend, reason = None, dict.fromkeys(spec.Window), str(exc)
        # 4: decide what to do (the stages before acting)
        previous = self.previous_status(body)
        typed_previous, repairs = status_model.read(previous)
        inp = decision.EvaluationInput(
            budget=budget, agents=agents, minutes=minutes, spend=spend, now=now, previous=typed_previous,
            status_repairs=tuple(repairs),
            policies=policies, metrics_reason=reason, generation=meta.get("generation"),
            outcomes=data.outcomes if data is not None else None,
            guardrails=data.guardrails if data is not None else None,
            approvals=pending_approvals(approval_bodies),
            lookback_start=data.lookback_start if data is not None else None, memo=self.memo,
            data_end=data.end if data is not None else None,
            anchor_minutes=data.anchor_minutes if data is not None else 0, folds=self.folds,
            source=data.source if data is not None else None)
        draft = evaluate.plan(inp)
        if not apply:
            return evaluate.conclude(inp, draft)
        # 5: act, each action read back; what did not take effect is not shown as done
        k = self.api
        failures: list[decision.ActionFailure] = []
        if draft.actions:
            with self.gate.outside():
                failures = [f for f in (self._act(k, namespace, budget, a) for a in draft.actions) if f is not None]
        # 6: status (one patch, only if it changed) and events; while a change of figures alone would
        # wait for the budget's turn (a large fleet) and no heartbeat is due, the hour's figures are
        # worked out only if a decisive change is to be written (_write_status)
        wait = self.figures_wait(str(meta.get("uid")))
        verdict = evaluate.conclude(inp, draft, failures, figures_too=not wait)
        completed: list[decision.Decision] = []

        def complete() -> dict[str, Any]:
            completed.append(evaluate.with_figures(inp, verdict))
            return completed[0].status.body()
        self._write(k, body, previous, verdict, chosen, complete if wait else None)
        if completed:
            verdict = completed[0]
        # 7: hooks (incidents, alerts) and metrics; a hook writes or sends only for findings, actions or
        # failures, and is waited for outside the gate then (with none, it is called inside: most evaluations)
        with self.gate.outside() if verdict.findings or verdict.actions or verdict.failures else contextlib.nullcontext():
            self._hooks(body, verdict, k)
        metrics.record(budget, verdict, agents)
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        return verdict

    @staticmethod
    def _hooks(body: Mapping[str, Any], verdict: decision.Decision, k: kube.Kube) -> None:
        for hook in list(hooks.on_findings):
            try:
                hook(dict(body), list(verdict.findings), list(verdict.actions), k)
            except Exception:  # a hook never breaks the evaluation
                log.exception("hook %r failed", hook)
        for on_failure in list(hooks.on_failures):
            try:
                on_failure(dict(body), list(verdict.failures))
            except Exception:
                log.exception("hook %r failed", on_failure)

    def _write(self, k: kube.Kube, body: Mapping[str, Any], previous: Mapping[str, Any],
               verdict: decision.Decision, chosen: Mapping[str, Mapping[str, Any]],
               complete: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Write the decision's status (one patch, only if it changed), then post its events
        on the budget (and on the agent's Deployment they name). Returns the budget's ref.
        ``complete``: the whole status, when the decision's lacks its figures (_write_status)."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
        self._write_status(k, str(meta.get("uid")), namespace, name, previous, verdict.status.body(), complete)
        ref = kube.budget_ref(body)
        if verdict.events:
            with self.gate.outside():
                for event in verdict.events:
                    self._post(k, ref, event.type, event.reason, event.message)
                    if event.agent is not None and event.agent in chosen:
                        dmeta = chosen[event.agent].get("metadata") or {}
                        self._post(k, kube.deployment_ref(namespace, event.agent, dmeta.get("uid")),
                                   event.type, event.reason, event.message)
        return ref

    def _reject(self, body: Mapping[str, Any], problem: errors.ManifestError, apply: bool) -> decision.Decision:
        """An AgentBudget that does not validate: no evaluation, no action; its status says why."""
        previous = self.previous_status(body)
        typed, _ = status_model.read(previous)
        verdict = evaluate.invalid_spec(typed, str(problem), self.clock(),
                                        (body.get("metadata") or {}).get("generation"))
        if verdict.events:
            meta = body.get("metadata") or {}
            log.warning("AgentBudget %s/%s: %s", meta.get("namespace"), meta.get("name"), problem)
        if apply:
            self._write(self.api, body, previous, verdict, {})
        return verdict

    def _act(self, k: kube.Kube, namespace: str, budget: spec.AgentBudget, action: decision.Action
             ) -> decision.ActionFailure | None:
        """Apply one action and read it back. None: it took effect; else why not. An action that
        failed recently waits out its backoff (doubling per failure, capped) before it is tried again."""
        if isinstance(action, decision.Notify):
            return None  # the hooks deliver it
        key = (namespace, type(action).__name__, action.agent)
        waiting = self.backoff.waiting(key, self.monotonic())
        if waiting is not None:
            return decision.ActionFailure(action, None, "BackingOff", waiting)
        try:
            self._apply(k, namespace, budget, action)
            self._verify(k, namespace, budget, action)
        except kube.KubeError as exc:
            failure = decision.ActionFailure(action, exc.status, exc.reason_code or "Failed", str(exc))
            self.backoff.failed(key, self.monotonic())
            metrics.ACTION_FAILURES.labels(type(action).__name__, str(exc.status or failure.reason)).inc()
            log.warning("budget %s/%s: %s", namespace, budget.metadata.name, failure.message)
            return failure
        self.backoff.succeeded(key)
        metrics.ACTIONS.labels(type(action).__name__).inc()
        return None

    def _apply(self, k: kube.Kube, namespace: str, budget: spec.AgentBudget, action: decision.Action) -> None:
        if isinstance(action, decision.ScaleToZero):
            k.scale_to_zero(namespace, action.agent, action.replicas_to_remember, observed=action.observed)
        elif isinstance(action, decision.RestoreReplicas):
            k.restore(namespace, action.agent, action.replicas, observed=action.observed)
        elif isinstance(action, decision.SetModel):
            k.set_model(namespace, action.agent, action.model, budget.spec.model, observed=action.observed)

    @staticmethod
    def _verify(k: kube.Kube, namespace: str, budget: spec.AgentBudget, action: decision.Action) -> None:
        """Read the Deployment back: the replicas or the model the action set, or KubeError NotApplied."""
        if isinstance(action, decision.Notify):
            return
        deployment = k.get_deployment(namespace, action.agent)
        if isinstance(action, (decision.ScaleToZero, decision.RestoreReplicas)):
            want = 0 if isinstance(action, decision.ScaleToZero) else action.replicas
            have = (deployment.get("spec") or {}).get("replicas")
            if have != want:
                raise kube.KubeError(f"deployment {namespace}/{action.agent} reads back replicas={have}, "
                                     f"not {want}", None, reason_code="NotApplied")
        else:
            have_model = kube.read_model(deployment, budget.spec.model)
            if have_model != action.model:
                raise kube.KubeError(f"deployment {namespace}/{action.agent} reads back model {have_model}, "
                                     f"not {action.model}", None, reason_code="NotApplied")

    def _write_status(self, k: kube.Kube, uid: str, namespace: str, name: str, old: Mapping[str, Any],
                      new: dict[str, Any], complete: Callable[[], dict[str, Any]] | None = None) -> None:
        """Write ``new`` over ``old`` when it changed enough (see _meaningful). ``complete``: ``new``
        lacks the hour's figures (neither their turn nor a heartbeat has come), and gives the whole
        status; it is called only for a decisive change, which is written at once."""
        now = time.monotonic()
        since = self._since_written(uid, now)
        if _alike(old, new, _VOLATILE if complete is None else _VOLATILE + _FIGURES):
            # every value but the volatile ones (and the figures new lacks) as before: no change
            # of either kind, found without rounding each number of both (most evaluations)
            decisive, changed = False, False
        else:
            old_meaning, new_meaning = _meaningful(old), _meaningful(new)
            decisive = _decisive(old_meaning) != _decisive(new_meaning)  # (figures are never decisive)
            changed = old_meaning != new_meaning
        if complete is not None:
            if not decisive:
                return  # whatever the figures, nothing to write before their turn or a heartbeat
            new = complete()
        figures = self.figure_seconds()
        large = figures > 0  # figures wait for their turn, and go out from the writer's threads
        if decisive:
            if self.writer.holds(uid):  # a write of it waits or is under way: that one first
                with self.gate.outside():
                    self.writer.settle(uid)
            kept = self._status.get(uid)  # what was written last: the writer's may have landed since
            old = _unpack_status(kept) if kept else old
        elif changed:
            if since < figures:
                return  # figures only: this budget's turn comes (its last write is recent)
            if large and not (self._room() and self._figure_writes.take(now)):
                self._held.setdefault(uid, now)
                # Its turn has come, but so has that of more budgets than MAX_FIGURE_WRITES_PER_SECOND
                # a second (or the evaluations run behind): a later evaluation writes it. The turns
                # alone spread the writes only if the last ones were spread: the first pass wrote every
                # status of 10,000 budgets within 250 s, and 500 s later they all fell due within three
                # minutes, some 58 PATCHes (and watch events) a second; cycles took up to 84 s
                # (docs/operator.md, Scale).
                return
        elif since < self.heartbeat_seconds() or (large and not self._room()) or not self.heartbeat_allowed(now):
            self._held.pop(uid, None)  # its figures as written
            return
        self._held.pop(uid, None)  # written now
        if not decisive and large:
            # a large fleet's figures or heartbeat: sent by the writer's threads (STATUS_WRITERS);
            # counted as written now, so that the turns go on as if it were (_send_status undoes it)
            before = self._written_at.get(uid)
            self._written_at[uid] = now
            write = functools.partial(self._send_status, k, uid, namespace, name, old, new)
            if not self.writer.submit(uid, write):  # (filled up meanwhile by other runners)
                if before is None:
                    self._written_at.pop(uid, None)
                else:
                    self._written_at[uid] = before
            return
        self._patch_status(k, uid, namespace, name, old, new, now)

    def _patch_status(self, k: kube.Kube, uid: str, namespace: str, name: str, old: Mapping[str, Any],
                      new: dict[str, Any], now: float) -> None:
        """PATCH ``new`` over ``old`` (nothing if alike) and keep it as written. A budget deleted
        meanwhile is left; another failure is raised."""
        patch = merge_patch(old, new)
        if not patch:
            return
        try:
            with self.gate.outside():
                k.patch_budget_status(namespace, name, patch)
        except kube.KubeError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        self._status[uid] = _pack_status(new) if new else b""  # an empty one reads as none, as before
        self._written_at[uid] = now

    def _send_status(self, k: kube.Kube, uid: str, namespace: str, name: str, old: Mapping[str, Any],
                     new: dict[str, Any]) -> None:
        """The writer's write of budget ``uid``: over the status this process wrote last (what the
        API server holds: a budget's writes go out one at a time), else ``old``. One that fails is
        logged and its turn comes again at once, so the next evaluation writes it."""
        kept = self._status.get(uid)
        counted = self._written_at.get(uid)
        try:
            self._patch_status(k, uid, namespace, name, _unpack_status(kept) if kept else old, new,
                               time.monotonic())
        except Exception as exc:  # noqa: BLE001 - logged; the next evaluation writes it
            log.warning("status of AgentBudget %s/%s not written (the next evaluation writes it): %s",
                        namespace, name, exc)
            if uid in self._written_at and self._written_at.get(uid) == counted:
                self._written_at[uid] = float("-inf")

    # ---------------------------------------------------------------- governance hygiene

    def parse_budget(self, body: Mapping[str, Any]) -> spec.AgentBudget | None:
        """The AgentBudget of a body (None: invalid), parsed once per generation."""
        parsed = self._parse(body)
        return None if isinstance(parsed, errors.ManifestError) else parsed

    def _parse(self, body: Mapping[str, Any]) -> spec.AgentBudget | errors.ManifestError:
        """The AgentBudget of a body, or what is wrong with it (one line naming the field)."""
        meta = body.get("metadata") or {}
        uid, generation = str(meta.get("uid")), meta.get("generation")
        kept = self._budgets.get(uid)
        if generation is not None and kept is not None and kept[0] == generation:
            return kept[1]
        try:
            parsed: spec.AgentBudget | errors.ManifestError = spec.AgentBudget.model_validate(
                {k: body[k] for k in ("metadata", "spec") if k in body})
        except pydantic.ValidationError as exc:
            parsed = manifests.object_error(exc)
        if generation is not None:
            if len(self._budgets) > 100_000:  # budgets deleted while no DELETED event reached us
                self._budgets.clear()
            self._budgets[uid] = (generation, parsed)  # an older generation's parse is dropped
        return parsed

    def _parse_policies(self, bodies: Iterable[Mapping[str, Any]]) -> list[spec.CostPolicy]:
        """The valid CostPolicies of ``bodies`` (as ``parse_policies``), each parsed once per
        ``resourceVersion`` (a body without one is parsed each time)."""
        out = []
        for body in bodies:
            meta = body.get("metadata") or {}
            uid, version = meta.get("uid"), meta.get("resourceVersion")
            kept = self._policies.get(str(uid)) if uid and version else None
            if kept is not None and kept[0] == version:
                parsed = kept[1]
            else:
                parsed = next(iter(parse_policies([body])), None)
                if uid and version:
                    if len(self._policies) > 100_000:  # policies deleted meanwhile
                        self._policies.clear()
                    self._policies[str(uid)] = (version, parsed)
            if parsed is not None:
                out.append(parsed)
        return out

    def check_governance(self, deployments: Iterable[Mapping[str, Any]],
                         budget_bodies: Iterable[Mapping[str, Any]]) -> list[governance.Gap]:
        """Post a Warning Event (``Ungoverned`` / ``NoUnitEconomics``) on each agent Deployment no
        AgentBudget governs, or whose budgets set no unit-economics target: once per
        (Deployment, problem) while the problem lasts. Returns the gaps of ``deployments``."""
        agents = [d for d in deployments if is_agent(d)]
        if not agents:
            return []
        budgets = [b for b in (self.parse_budget(body) for body in budget_bodies) if b is not None]
        by_key: dict[tuple[str, str], Mapping[str, Any]] = {}
        views = []
        for d in agents:
            meta = d.get("metadata") or {}
            key = (str(meta.get("namespace") or "default"), str(meta.get("name")))
            by_key[key] = d
            views.append(governance.Agent(key[1], key[0], dict(meta.get("labels") or {})))
        gaps = governance.ungoverned(views, budgets)
        problems: dict[tuple[str, str], str] = {(g.namespace, g.agent): g.problem for g in gaps}
        to_post = []
        with self._gaps_lock:
            for key, d in by_key.items():
                uid = str((d.get("metadata") or {}).get("uid") or f"{key[0]}/{key[1]}")  # the key of what was said
                problem = problems.get(key)
                if problem is None:
                    self._gaps.pop(uid, None)  # governed now: a later gap is news again
                    continue
                posted = self._gaps.setdefault(uid, set())
                posted.intersection_update({problem})
                if problem not in posted:
                    posted.add(problem)
                    to_post.append((key, uid, problem))
        by_problem = {(g.namespace, g.agent): g for g in gaps}
        for (namespace, name), uid, problem in to_post:
            gap = by_problem[(namespace, name)]
            real_uid = (by_key[(namespace, name)].get("metadata") or {}).get("uid")
            try:
                self.api.post_event(kube.deployment_ref(namespace, name, real_uid), "Warning",
                                    GOVERNANCE_REASONS[problem], gap.message, once=True)  # once, across restarts
            except errors.ExternalError as exc:
                log.warning("event %s not posted: %s", GOVERNANCE_REASONS[problem], exc)
                with self._gaps_lock:
                    self._gaps.get(uid, set()).discard(problem)  # try again on the next event
        return gaps

    def forget_deployment(self, uid: str) -> None:
        with self._gaps_lock:
            self._gaps.pop(uid, None)

    def heartbeat_allowed(self, now: float) -> bool:
        """Take one heartbeat write from the fleet-wide bucket (MAX_HEARTBEATS_PER_SECOND); False:
        none left, the heartbeat waits."""
        return self._heartbeats.take(now)

    def _since_written(self, uid: str, now: float) -> float:
        """Seconds since this process last wrote budget ``uid``'s status (infinite: never)."""
        return now - self._written_at.get(uid, float("-inf"))

    def figures_wait(self, uid: str) -> bool:
        """Whether budget ``uid``'s figures alone would not be written now: neither their turn
        (figure_seconds) nor a heartbeat has come since its last write, or their turn has come
        but the fleet's figure writes are at their rate, or as many as the writer takes wait to be
        sent, or the evaluations run behind (a large fleet; see _write_status)."""
        now = time.monotonic()
        since, figures, heartbeat = self._since_written(uid, now), self.figure_seconds(), self.heartbeat_seconds()
        if since < min(figures, heartbeat):
            return True
        # neither figures nor a heartbeat go out while there is no room (_write_status); figures alone
        # wait while the fleet's figure writes are at their rate
        held = figures > 0 and (not self._room() or (since < heartbeat and not self._figure_writes.ready(now)))
        if held and since >= figures:
            self._held.setdefault(uid, now)  # their turn has come: held past it (figures_overdue)
        return held

    def figures_overdue(self) -> float:
        """Seconds since the first evaluation that held figures past their turn, of the budget held
        longest (0: none held). A large fleet writes a status whose figures alone changed at the
        budget's turn (figure_seconds after its last write), unless the evaluations run behind or the
        fleet's figure writes are at their rate: then its figures wait, and those in its status are
        up to figure_seconds plus this old."""
        return _longest_ago(self._held, time.monotonic())

    def held_since(self, uid: str) -> float | None:
        """Since when (``time.monotonic``) budget ``uid``'s figures have waited past their turn, from
        the first evaluation that held them (None: not held). The fleet loop takes the longest held
        first (fleet.HELD_FIRST)."""
        return self._held.get(uid)

    def figures_held(self) -> int:
        """How many budgets' figures wait past their turn (figures_overdue)."""
        return len(self._held)

    def _room(self) -> bool:
        """Whether a large fleet's figures or heartbeat may be sent now (rate aside): the writer takes
        more, and the evaluations are not behind their turns (the figures wait for them)."""
        return self.writer.room() and not self.behind()

    def figure_seconds(self) -> float:
        """How long a status whose figures alone changed waits after its last write: 0 (at once) while
        writing every budget's figures each interval stays under MAX_FIGURE_WRITES_PER_SECOND."""
        period = len(self._written_at) / MAX_FIGURE_WRITES_PER_SECOND
        return period if period > self.interval else 0.0

    def heartbeat_seconds(self) -> float:
        """How long an unchanged status may go unwritten: a minute, longer for large fleets so that
        heartbeats stay under MAX_HEARTBEATS_PER_SECOND writes a second."""
        return max(HEARTBEAT_SECONDS, len(self._written_at) / MAX_HEARTBEATS_PER_SECOND)

    @staticmethod
    def _post(k: kube.Kube, ref: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            k.post_event(ref, type_, reason, message)
        except errors.ExternalError as exc:
            log.warning("event %s not posted: %s", reason, exc)


def _longest_ago(times: Mapping[str, float], now: float) -> float:
    """Seconds from the earliest of ``times`` (uid -> a monotonic time) to ``now`` (0: none)."""
    earliest = min(list(times.values()), default=None)  # (a copy: other threads add and drop)
    return 0.0 if earliest is None else max(0.0, now - earliest)


def query_timed(query: str, seconds: float) -> None:
    """One Prometheus query's answer took ``seconds`` (the fetcher's ``on_query``)."""
    metrics.PROMETHEUS_QUERY_SECONDS.labels(query).observe(seconds)


def build(settings: Any) -> Runtime:
    """The Runtime for ``settings`` (``handlers.settings.Settings``)."""
    reader_ = reader.ReaderProcess(settings.prometheus_url, timeout=settings.prometheus_timeout,
                                   headers=dict(settings.prometheus_headers), namespaces=settings.namespaces) \
        if settings.reader_process() else None
    fetcher = prometheus.Fetcher(prometheus.connect(settings.prometheus_url, timeout=settings.prometheus_timeout,
                                                    headers=dict(settings.prometheus_headers)), reader=reader_,
                                 lookback_minutes=settings.lookback_minutes,
                                 scrape_interval=settings.scrape_interval, namespaces=settings.namespaces,
                                 incremental=True, slice_minutes=RANGE_SLICE_MINUTES,
                                 anchor_minutes=warmfold.ANCHOR_MINUTES, on_query=query_timed, spend_ledger=True,
                                 overlap=True)
    return Runtime(interval=settings.interval, fetcher=fetcher, prometheus_grace=settings.prometheus_grace)


def deployments_of(stores: Any, namespace: str) -> Sequence[Mapping[str, Any]]:
    """The Deployments of ``namespace`` from a kopf index (or any mapping of lists)."""
    try:
        return list(stores.get(namespace, ()) or ())
    except TypeError:
        return []
