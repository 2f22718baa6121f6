"""Guardrails inside the agent process, driven by a CostPolicy.

The operator compiles each CostPolicy into a ConfigMap with the keys ``policy.json`` (the
spec in the CRD's camelCase shape), ``halt`` (``"true"``/``"false"``), ``replicas.json``
(each agent's replica count: its rate limits are shared out among its replicas) and
``steps.json`` (what the AgentBudget steps in force ask: a cap on each model call's output
tokens, no new task), mounted in
the pod (default ``/etc/fleetwarden/policy``). :meth:`GuardrailPolicy.from_dir` reads it and
re-reads it when the files change (it looks at most once a second).

Exceptions::

    FleetwardenError
     +-- GuardrailError            a guardrail stopped an action
          +-- TokenCapExceeded     the model call would pass the task's token cap
          +-- RateLimited          the tool-call rate limit is exhausted
          +-- ToolNotAllowed       the tool is denied or not on the allowlist
          +-- ApprovalRequired     a human must approve the tool call (no approval backend)
          |    +-- ApprovalDenied  the approval was denied or expired
          +-- Halted               the policy's halt flag is set (kill switch)
          +-- TasksStopped         a StopNewTasks step is in force: no new task starts
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import pydantic

from fleetwarden import errors
from fleetwarden.core import policies
from fleetwarden.core import spec as specs

log = logging.getLogger("fleetwarden.sdk")

DEFAULT_POLICY_DIR = "/etc/fleetwarden/policy"
POLICY_FILE = "policy.json"
HALT_FILE = "halt"
REPLICAS_FILE = "replicas.json"
STEPS_FILE = "steps.json"
RELOAD_SECONDS = 1.0


# ---------------------------------------------------------------- exceptions


class GuardrailError(errors.FleetwardenError):
    """A guardrail stopped an action. ``status`` is the guardrail decision recorded."""

    status = "denied"


class TokenCapExceeded(GuardrailError):
    status = "token_cap_exceeded"

    def __init__(self, message: str, *, used: int, estimated: int, cap: int) -> None:
        super().__init__(message)
        self.used, self.estimated, self.cap = used, estimated, cap


class RateLimited(GuardrailError):
    status = "rate_limit_exceeded"

    def __init__(self, message: str, *, tool: str, retry_after: float) -> None:
        super().__init__(message)
        self.tool, self.retry_after = tool, retry_after


class ToolNotAllowed(GuardrailError):
    status = "tool_not_allowed"

    def __init__(self, message: str, *, tool: str) -> None:
        super().__init__(message)
        self.tool = tool


class ApprovalRequired(GuardrailError):
    status = "approval_required"

    def __init__(self, message: str, *, tool: str, rule: str, amount_usd: float | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.tool, self.rule, self.amount_usd, self.request_id = tool, rule, amount_usd, request_id


class ApprovalDenied(ApprovalRequired):
    status = "denied"

    def __init__(self, message: str, *, tool: str, rule: str, amount_usd: float | None = None,
                 request_id: str | None = None, decision: str = "denied") -> None:
        super().__init__(message, tool=tool, rule=rule, amount_usd=amount_usd, request_id=request_id)
        self.decision = decision


class Halted(GuardrailError):
    status = "halted"


class TasksStopped(GuardrailError):
    """A StopNewTasks step of an AgentBudget is in force: new tasks are refused while running
    ones finish (counted as ``denied``)."""

    status = "denied"


@dataclasses.dataclass(frozen=True)
class Steps:
    """What the AgentBudget steps in force ask of the agent (``steps.json``)."""

    max_output_tokens: int | None = None  # CapOutputTokens: the most output tokens a model call may ask for
    stop_new_tasks: bool = False  # StopNewTasks: no new task starts
    names: tuple[str, ...] = ()  # "<budget>/<step>" of the steps in force


# ---------------------------------------------------------------- the policy


class GuardrailPolicy:
    """A CostPolicy spec and the halt flag, optionally kept in step with a directory.

    ``GuardrailPolicy(spec, halted=False)`` is fixed; ``GuardrailPolicy.from_dir(path)``
    follows the mounted ConfigMap. Read :attr:`spec` and :attr:`halted` (both reload
    when due). A file that does not parse keeps the last good policy (logged); at start it
    raises :class:`~fleetwarden.errors.InputError` naming the file. A missing directory or
    file means "no policy" (everything allowed, not halted) until it appears.
    """

    def __init__(self, policy: specs.CostPolicySpec | None = None, *, halted: bool = False,
                 replicas: Mapping[str, int] | None = None, steps: Steps | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._spec = policy if policy is not None else specs.CostPolicySpec()
        self._halted = halted
        self._steps = steps if steps is not None else Steps()
        self._replicas: Mapping[str, int] = dict(replicas or {})
        self._dir: Path | None = None
        self._clock = clock
        self._next_check = 0.0
        self._stamp: tuple[object, ...] | None = None
        self._lock = threading.Lock()
        self.generation = 0  # bumped on every change; caches key on it

    @classmethod
    def from_dir(cls, path: str | Path = DEFAULT_POLICY_DIR, *,
                 clock: Callable[[], float] = time.monotonic) -> GuardrailPolicy:
        policy = cls(clock=clock)
        policy._dir = Path(path)
        policy._reload(initial=True)
        policy._next_check = clock() + RELOAD_SECONDS
        return policy

    @classmethod
    def from_json(cls, text: str, *, halted: bool = False) -> GuardrailPolicy:
        return cls(_parse_spec(text, POLICY_FILE), halted=halted)

    @property
    def spec(self) -> specs.CostPolicySpec:
        if self._dir is not None and self._clock() >= self._next_check:
            self._check()
        return self._spec

    @property
    def halted(self) -> bool:
        if self._dir is not None and self._clock() >= self._next_check:
            self._check()
        return self._halted

    @property
    def steps(self) -> Steps:
        """The AgentBudget steps in force for this policy's agents (none when not said)."""
        if self._dir is not None and self._clock() >= self._next_check:
            self._check()
        return self._steps

    def replicas(self, agent: str) -> int:
        """How many replicas share ``agent``'s rate limits (1 when the operator has not said)."""
        if self._dir is not None and self._clock() >= self._next_check:
            self._check()
        return self._replicas.get(agent, 1)

    def set(self, policy: specs.CostPolicySpec | None = None, *, halted: bool | None = None,
            replicas: Mapping[str, int] | None = None, steps: Steps | None = None) -> None:
        """Replace the spec, the halt flag, the replica counts and/or the steps (for policies not
        read from a directory)."""
        with self._lock:
            if steps is not None:
                self._steps = steps
            if policy is not None:
                self._spec = policy
            if halted is not None:
                self._halted = halted
            if replicas is not None:
                self._replicas = dict(replicas)
            self.generation += 1

    def _check(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return
            self._next_check = now + RELOAD_SECONDS
            self._reload(initial=False)

    def _reload(self, *, initial: bool) -> None:
        assert self._dir is not None
        files = (self._dir / POLICY_FILE, self._dir / HALT_FILE, self._dir / REPLICAS_FILE, self._dir / STEPS_FILE)
        stamp = tuple(_stat(f) for f in files)
        if stamp == self._stamp:
            return
        try:
            text, halt_text, replicas_text, steps_text = (f.read_text(encoding="utf-8") if st is not None else None
                                                          for f, st in zip(files, stamp, strict=True))
            new_spec = specs.CostPolicySpec() if text is None else _parse_spec(text, str(files[0]))
            halted = _parse_halt(halt_text, str(files[1]))
            replicas = _parse_replicas(replicas_text, str(files[2]))
            steps = _parse_steps(steps_text, str(files[3]))
        except (OSError, errors.InputError) as exc:
            if initial:
                if isinstance(exc, errors.InputError):
                    raise
                raise errors.InputError(f"cannot read the policy: {exc}", file=str(self._dir)) from exc
            log.warning("guardrail policy not reloaded, keeping the last good one: %s", exc)
            self._stamp = stamp  # do not retry the same broken files every second
            return
        self._stamp = stamp
        if new_spec != self._spec or halted != self._halted or replicas != self._replicas or steps != self._steps:
            self._spec, self._halted, self._replicas, self._steps = new_spec, halted, replicas, steps
            self.generation += 1


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows the ConfigMap's ..data symlink swap
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _parse_spec(text: str, file: str) -> specs.CostPolicySpec:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.InputError(f"not valid JSON: {exc}", file=file) from exc
    if isinstance(data, dict) and "spec" in data and "kind" in data:
        data = data["spec"]  # a whole CostPolicy resource is accepted too
    try:
        return specs.CostPolicySpec.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise errors.InputError(first["msg"], file=file, field=field) from exc


def _parse_halt(text: str | None, file: str) -> bool:
    if text is None:
        return False
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise errors.InputError(f"{text.strip()!r} is not true or false", file=file)


def _parse_replicas(text: str | None, file: str) -> dict[str, int]:
    """``{"agent": replicas, ...}``; each count a whole number >= 1."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.InputError(f"not valid JSON: {exc}", file=file) from exc
    if not isinstance(data, dict):
        raise errors.InputError("must map each agent to its replica count", file=file)
    for agent, count in data.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise errors.InputError(f"{count!r} is not a replica count >= 1", file=file, field=str(agent))
    return data


def _parse_steps(text: str | None, file: str) -> Steps:
    """``{"maxOutputTokens": n or null, "stopNewTasks": bool, "steps": [...]}``; absent: no step."""
    if text is None:
        return Steps()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.InputError(f"not valid JSON: {exc}", file=file) from exc
    if not isinstance(data, dict):
        raise errors.InputError("must be an object", file=file)
    cap, stop, names = data.get("maxOutputTokens"), data.get("stopNewTasks", False), data.get("steps") or []
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise errors.InputError(f"{cap!r} is not a token count >= 1", file=file, field="maxOutputTokens")
    if not isinstance(stop, bool):
        raise errors.InputError(f"{stop!r} is not true or false", file=file, field="stopNewTasks")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise errors.InputError("must be a list of step names", file=file, field="steps")
    return Steps(max_output_tokens=cap, stop_new_tasks=stop, names=tuple(names))


# ---------------------------------------------------------------- rate limits


class TokenBucket:
    """``rate_per_minute`` calls a minute, with bursts of up to ``burst`` (default: one
    minute's worth, at least 1). ``take()`` returns 0.0 when a call may go now, else the
    seconds until one may (nothing is taken then). The clock is injected."""

    __slots__ = ("rate", "burst", "tokens", "updated", "clock")

    def __init__(self, rate_per_minute: float, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = max(1.0, rate_per_minute) if burst is None else burst
        self.tokens = self.burst
        self.clock = clock
        self.updated = clock()

    def wait_at(self, now: float) -> float:
        """Refill up to ``now``; 0.0 if a call may go, else the seconds until one may."""
        if now > self.updated:
            tokens = self.tokens + (now - self.updated) * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def wait_time(self) -> float:
        return self.wait_at(self.clock())

    def take(self) -> float:
        wait = self.wait_time()
        if wait == 0.0:
            self.tokens -= 1.0
        return wait


class RateLimiter:
    """The overall and per-tool buckets of one agent process, rebuilt when the policy's
    limits change. ``per_tool`` keys may be fnmatch patterns: the tools a pattern applies to
    share its bucket. Which key applies to a tool is :func:`fleetwarden.core.policies.rate_limit_key`
    (an exact name first, then the longest pattern), as in replay and the operator."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._share = 1
        self._limits: specs.RateLimits | None = None
        self._overall: TokenBucket | None = None
        self._buckets: dict[str, TokenBucket] = {}  # per_tool key -> bucket
        self._key_of: dict[str, str | None] = {}  # tool -> its per_tool key
        self._lock = threading.Lock()

    def acquire(self, limits: specs.RateLimits, tool: str, replicas: int = 1) -> float:
        """0.0 if the call may go now (its tokens are taken), else seconds to wait. With
        ``replicas`` > 1 this process has 1/replicas of each limit (rate and burst; a burst of
        at least one call)."""
        with self._lock:
            if limits is not self._limits or replicas != self._share:
                if self._limits is None or limits != self._limits or replicas != self._share:
                    self._rebuild(limits, replicas)
                self._limits = limits
            if tool in self._key_of:
                key = self._key_of[tool]
            else:
                key = self._key_of[tool] = policies.rate_limit_key(limits, tool)
            now = self._clock()
            overall = self._overall
            bucket = None if key is None else self._buckets[key]
            wait = 0.0 if overall is None else overall.wait_at(now)
            if bucket is not None:
                tool_wait = bucket.wait_at(now)
                if tool_wait > wait:
                    wait = tool_wait
            if wait == 0.0:
                if overall is not None:
                    overall.tokens -= 1.0
                if bucket is not None:
                    bucket.tokens -= 1.0
            return wait

    def _rebuild(self, limits: specs.RateLimits, replicas: int) -> None:
        """New buckets for new limits or a new share; a bucket that stays keeps its tokens (at
        most its new burst), so a rescale grants no fresh burst."""
        def bucket(rate: float, old: TokenBucket | None) -> TokenBucket:
            new = TokenBucket(rate / replicas, burst=max(1.0, rate / replicas), clock=self._clock)
            if old is not None:
                old.wait_at(new.updated)
                new.tokens = min(old.tokens, new.burst)
            return new

        self._overall = None if limits.tool_calls_per_minute is None else bucket(
            limits.tool_calls_per_minute, self._overall)
        self._buckets = {k: bucket(r, self._buckets.get(k)) for k, r in limits.per_tool.items()}
        self._key_of = {}
        self._share = replicas


# ---------------------------------------------------------------- approvals

Decision = Literal["approved", "denied", "expired"]


class ApprovalBackend(Protocol):
    """Where approval requests go and decisions come from. The Kubernetes backend creates a
    CostApproval and watches its ``status.decision``; :class:`InMemoryApprovals` is local."""

    def request(self, *, agent: str, namespace: str, workflow: str, task_id: str, rule: str, tool: str,
                amount_usd: float | None, reason: str, timeout_seconds: float) -> str:
        """Create a request; return its id."""
        ...

    def wait(self, request_id: str, timeout: float) -> Decision:
        """Block until the request is decided or ``timeout`` seconds pass ("expired")."""
        ...


class InMemoryApprovals:
    """Approvals in this process: ``request`` records, a person (or test) calls ``approve``
    or ``deny``, ``wait`` blocks until then. ``auto`` decides every request at once."""

    def __init__(self, auto: Decision | None = None) -> None:
        self.auto = auto
        self.requests: dict[str, dict[str, object]] = {}
        self._decisions: dict[str, Decision] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)

    def request(self, *, agent: str, namespace: str, workflow: str, task_id: str, rule: str, tool: str,
                amount_usd: float | None, reason: str, timeout_seconds: float) -> str:
        with self._cond:
            request_id = f"approval-{next(self._ids)}"
            self.requests[request_id] = dict(agent=agent, namespace=namespace, workflow=workflow,
                                             task_id=task_id, rule=rule, tool=tool, amount_usd=amount_usd,
                                             reason=reason, timeout_seconds=timeout_seconds)
            if self.auto is not None:
                self._decisions[request_id] = self.auto
            self._cond.notify_all()
            return request_id

    def pending(self) -> list[str]:
        with self._cond:
            return [r for r in self.requests if r not in self._decisions]

    def wait_for_request(self, timeout: float = 5.0) -> str:
        """Block until a request is pending; return its id (for tests and demos)."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(r not in self._decisions for r in self.requests), timeout):
                raise TimeoutError("no approval request arrived")
            return next(r for r in self.requests if r not in self._decisions)

    def decide(self, request_id: str, decision: Decision) -> None:
        with self._cond:
            self._decisions[request_id] = decision
            self._cond.notify_all()

    def approve(self, request_id: str) -> None:
        self.decide(request_id, "approved")

    def deny(self, request_id: str) -> None:
        self.decide(request_id, "denied")

    def wait(self, request_id: str, timeout: float) -> Decision:
        with self._cond:
            if self._cond.wait_for(lambda: request_id in self._decisions, timeout):
                return self._decisions[request_id]
            self._decisions[request_id] = "expired"
            return "expired"
