"""The Tracker and its tasks: what an agent calls to record spend and to ask the guardrails.

A :class:`Tracker` stands for one agent (its Deployment). Each unit of work is a
:class:`Task` (``with tracker.task(workflow="refund") as task:``); inside it the agent
records model calls, tool calls, outcomes and human time, optionally within steps
(``with task.step("plan"):``). Every record updates the Prometheus metrics of the
tracker's registry and, when an :class:`EventWriter` is given, writes a usage event.

The current task and step live in context variables, so nested code (and asyncio tasks
started inside a task) find them with :func:`current_task`; threads get a fresh context
in Python, so pass the task object to worker threads (its methods are thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import functools
import inspect
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fleetwarden import errors
from fleetwarden.core import pricing, spec
from fleetwarden.sdk import _events, _guardrails, _metrics

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("fleetwarden.sdk")

_current_task: contextvars.ContextVar[Task | None] = contextvars.ContextVar("fleetwarden_task", default=None)
_current_step: contextvars.ContextVar[tuple[Task, str] | None] = contextvars.ContextVar(
    "fleetwarden_step", default=None)

_current_reservation: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar(
    "fleetwarden_reservation", default=None)

_default_prices: pricing.PriceTable | None = None


def default_price_table() -> pricing.PriceTable:
    """The shared genai-prices table used when a Tracker is given none."""
    global _default_prices
    if _default_prices is None:
        _default_prices = pricing.PriceTable()
    return _default_prices


def current_task() -> Task | None:
    """The task of the current context (thread or asyncio task), or None."""
    return _current_task.get()


TASK_STATUSES = ("completed", "failed", "abandoned")


class Tracker:
    """Records what one agent spends and applies its guardrails.

    :param agent: the agent's name (its Deployment's name).
    :param namespace: its namespace.
    :param labels: its labels (``team``, ``project``, ``cost_center``...), written on usage
        events (not metric labels: those stay low-cardinality).
    :param registry: the prometheus-client registry (default: the global one).
    :param events: an :class:`EventWriter` for usage events, or None.
    :param price_table: prices model/tool/human costs not given explicitly.
    :param policy: a :class:`GuardrailPolicy` (None: no guardrails).
    :param approvals: an :class:`ApprovalBackend`; without one an approval gate raises
        :class:`ApprovalRequired` instead of waiting for a decision.
    :param model: the model the agent runs, for ``fleetwarden_agent_model_info`` (default:
        the model of the latest call).
    :param rate_limit: ``"raise"`` (default) raises :class:`RateLimited`; ``"sleep"`` waits
        for the bucket when the policy's action is ``throttle`` (at most ``max_wait`` s).
    :param clock: Unix seconds now (injected for simulations and tests).
    """

    def __init__(self, agent: str, *, namespace: str = "default", labels: dict[str, str] | None = None,
                 registry: Any | None = None, events: _events.EventWriter | None = None,
                 price_table: pricing.PriceTable | None = None,
                 policy: _guardrails.GuardrailPolicy | None = None,
                 approvals: _guardrails.ApprovalBackend | None = None, agent_version: str | None = None,
                 model: str | None = None, rate_limit: str = "raise", max_wait: float = 60.0,
                 human_hourly_rate_usd: float | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 task_ids: Callable[[], str] | None = None) -> None:
        if not agent:
            raise errors.InputError("a Tracker needs an agent name", field="agent")
        if rate_limit not in ("raise", "sleep"):
            raise errors.InputError("must be 'raise' or 'sleep'", field="rate_limit")
        self.agent = agent
        self.namespace = namespace
        self.labels = dict(labels or {})
        self.events = events
        self.prices = price_table if price_table is not None else default_price_table()
        self.policy = policy
        self.approvals = approvals
        self.agent_version = agent_version
        self.rate_limit = rate_limit
        self.max_wait = max_wait
        self.human_hourly_rate_usd = human_hourly_rate_usd
        self.clock = clock
        self.sleep = sleep
        self.store = _metrics.store_for(registry)
        self._limiter = _guardrails.RateLimiter(clock)
        counter = itertools.count(1)
        prefix = os.urandom(4).hex()
        self._task_ids = task_ids or (lambda: f"{prefix}-{next(counter)}")
        self._model: str | None = None
        self._pinned_model = model is not None
        # Label tuples -> metric cells, so the hot path does one dict lookup.
        self._llm_cells: dict[tuple[str, str, str], list[float]] = {}
        self._decision_cells: dict[tuple[str, str, str], list[float]] = {}
        self._rules_for: spec.CostPolicySpec | None = None
        self._rules_cache: dict[str, tuple[bool, tuple[spec.ApprovalRule, ...]]] = {}
        self._base: dict[str, Any] = {"agent": agent, "namespace": namespace}
        if self.labels:
            self._base["labels"] = self.labels
        if agent_version is not None:
            self._base["agent_version"] = agent_version
        if model is not None:
            self.set_model(model)

    # ---------------------------------------------------------------- model

    @property
    def model(self) -> str | None:
        return self._model

    def set_model(self, model: str) -> None:
        """Declare the model the agent runs now (``fleetwarden_agent_model_info``)."""
        self._model = model
        self.store.set_model(self.agent, self.namespace, model)

    def set_agent_version(self, version: str | None) -> None:
        """Declare the agent's release (image tag or revision) written on later events."""
        self.agent_version = version
        base = {k: v for k, v in self._base.items() if k != "agent_version"}
        if version is not None:
            base["agent_version"] = version
        self._base = base  # swapped whole: a writer in another thread sees the old or the new one

    # ---------------------------------------------------------------- tasks

    def task(self, workflow: str = "", task_id: str | None = None) -> Task:
        """A new task, to use as ``with tracker.task(workflow=...) as task:``. It ends
        ``completed``, or ``failed`` on an exception, or as :meth:`Task.abandon` says."""
        return self.start_task(workflow, task_id)

    def start_task(self, workflow: str = "", task_id: str | None = None) -> Task:
        """A new task that ends when :meth:`Task.end` is called (or its ``with`` block ends).

        Refused with :class:`Halted` while the policy's halt flag is set, and with
        :class:`TasksStopped` while an AgentBudget's StopNewTasks step is in force (tasks already
        running go on and finish)."""
        policy = self.policy
        if policy is not None and policy.halted:
            self.store.count_guardrail(self.agent, self.namespace, workflow, "", "halted")
            raise _guardrails.Halted(f"agent {self.agent!r} is halted by its cost policy")
        steps = policy.steps if policy is not None else None
        if steps is not None and steps.stop_new_tasks:
            self.store.count_guardrail(self.agent, self.namespace, workflow, "", _guardrails.TasksStopped.status)
            raise _guardrails.TasksStopped(
                f"agent {self.agent!r} starts no new task: AgentBudget step {', '.join(steps.names) or '?'} "
                "(StopNewTasks) is in force; running tasks finish. It is undone when spend falls back under "
                "the step's threshold or a person acknowledges it")
        return Task(self, workflow, task_id or self._task_ids())

    def max_output_tokens(self, requested: int | None = None) -> int | None:
        """The ``max_tokens`` to pass to a model call: ``requested`` clamped to the cap of an
        AgentBudget's CapOutputTokens step in force (the cap when ``requested`` is None; None when
        neither is set)."""
        steps = self.policy.steps if self.policy is not None else None
        cap = steps.max_output_tokens if steps is not None else None
        if cap is None:
            return requested
        return cap if requested is None else min(requested, cap)

    def traced_task(self, workflow: str = "") -> Callable[[F], F]:
        """Decorate a function (sync or async) so each call runs as one task; the task is
        available inside as :func:`current_task`."""
        def decorate(func: F) -> F:
            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    with self.task(workflow):
                        return await func(*args, **kwargs)
                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.task(workflow):
                    return func(*args, **kwargs)
            return wrapper  # type: ignore[return-value]
        return decorate

    def traced_tool(self, tool: str, *, amount_arg: str | None = None) -> Callable[[F], F]:
        """Decorate a tool function (sync or async): each call is checked by the guardrails
        and recorded as a call of ``tool`` in the current task (``error`` on an exception).
        ``amount_arg`` names a keyword argument holding the action's USD amount (for
        approval rules)."""
        def decorate(func: F) -> F:
            def task_and_amount(kwargs: dict[str, Any]) -> tuple[Task, float | None]:
                task = _current_task.get()
                if task is None:
                    raise errors.FleetwardenError(
                        f"tool {tool!r} called outside a task: wrap the caller in tracker.task(...)")
                return task, (None if amount_arg is None else kwargs.get(amount_arg))

            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    task, amount = task_and_amount(kwargs)
                    with task.tool(tool, amount_usd=amount):
                        return await func(*args, **kwargs)
                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                task, amount = task_and_amount(kwargs)
                with task.tool(tool, amount_usd=amount):
                    return func(*args, **kwargs)
            return wrapper  # type: ignore[return-value]
        return decorate

    # ---------------------------------------------------------------- internals

    def _event(self, kind: str, task: Task | None, step: str, fields: dict[str, Any]) -> None:
        assert self.events is not None
        event = {"time": self.clock(), "type": kind, **self._base}
        if task is not None:
            if task.workflow:
                event["workflow"] = task.workflow
            event["task_id"] = task.task_id
        if step:
            event["step"] = step
        event.update(fields)
        self.events.write(event)

    def _decide(self, task: Task, tool: str, status: str) -> None:
        key = (task.workflow, tool, status)
        store = self.store
        with store.lock:
            cell = self._decision_cells.get(key)
            if cell is None:
                cell = self._decision_cells[key] = store.cell(store.guardrails, (self.agent, self.namespace, *key))
            cell[0] += 1

    def _blocks(self, task: Task, tool: str, status: str, message: str, mode: spec.Enforcement) -> bool:
        """A guardrail would block: under ``spec.enforcement`` Enforce count ``status`` and return
        True (the caller blocks); under DryRun or Warn count ``would_<status>`` and return False
        (Warn also logs ``message`` as a warning)."""
        if mode is spec.Enforcement.enforce:
            self._decide(task, tool, status)
            return True
        self._decide(task, tool, _metrics.WOULD + status)
        if mode is spec.Enforcement.warn:
            log.warning("%s (not blocked: the cost policy's spec.enforcement is Warn)", message)
        return False

    def _tool_rules(self, rules: spec.CostPolicySpec, tool: str) -> tuple[bool, tuple[spec.ApprovalRule, ...]]:
        """Whether the policy allows ``tool`` and the approval rules that apply to it, cached
        per policy spec (a reloaded policy is a new spec object)."""
        if rules is not self._rules_for:
            self._rules_for = rules
            self._rules_cache = {}
        found = self._rules_cache.get(tool)
        if found is None:
            found = self._rules_cache[tool] = (
                rules.tools.allowed(tool),
                tuple(r for r in rules.approvals if r.tool is None or fnmatch.fnmatchcase(tool, r.tool)))
        return found


class Task:
    """One task of an agent. Created by :meth:`Tracker.task`; its methods are thread-safe."""

    __slots__ = ("tracker", "workflow", "task_id", "status", "cost_usd", "tokens", "reserved", "llm_calls",
                 "tool_calls", "tool_counts", "approved_rules", "_token", "_ended", "_tool_cells", "_open")

    def __init__(self, tracker: Tracker, workflow: str, task_id: str) -> None:
        self.tracker = tracker
        self.workflow = workflow
        self.task_id = task_id
        self.status: str | None = None  # set when the task ends
        self.cost_usd = 0.0  # model + tool + human USD so far
        self.tokens = 0  # all tokens so far
        self.reserved = 0  # tokens held by model calls under way (reserve_llm), not yet recorded
        self.llm_calls = 0
        self.tool_calls = 0
        self.tool_counts: dict[str, int] = {}
        self.approved_rules: set[str] = set()
        self._token: contextvars.Token[Task | None] | None = None
        self._ended = False
        self._tool_cells: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
        store = tracker.store
        with store.lock:  # open until it ends: [tokens, started, last record] for the open-task gauges
            self._open = store.task_cell(tracker.agent, tracker.namespace, tracker.clock, id(self), tracker.clock())

    def __repr__(self) -> str:
        return f"Task({self.tracker.agent!r}, workflow={self.workflow!r}, task_id={self.task_id!r})"

    # ---------------------------------------------------------------- lifetime

    def __enter__(self) -> Task:
        self._token = _current_task.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._token is not None:
            _current_task.reset(self._token)
            self._token = None
        if not self._ended:
            self.end("failed" if exc_type is not None else "completed")

    def abandon(self) -> None:
        """End the task as abandoned (the work was given up, not failed)."""
        self.end("abandoned")

    def end(self, status: str = "completed") -> None:
        """End the task: count it, observe its cost and tokens, write its ``task`` event.
        Ending twice is a no-op."""
        if status not in TASK_STATUSES:
            raise errors.InputError(f"{status!r} is not one of {', '.join(TASK_STATUSES)}", field="status")
        tr = self.tracker
        store = tr.store
        with store.lock:
            if self._ended:
                return
            self._ended = True
            self.status = status
            store.end_task(tr.agent, tr.namespace, id(self))
            key = (tr.agent, tr.namespace, self.workflow)
            store.cell(store.tasks, (*key, status))[0] += 1
            store.observe_task(key, self.cost_usd, self.tokens)
        if tr.events is not None:
            tr._event("task", self, "", {"status": status})

    @property
    def ended(self) -> bool:
        return self._ended

    def _record(self, now: float) -> None:
        """A record of this task at ``now`` (call with the store's lock held): it runs; its age counts
        from its first record."""
        cell = self._open
        if not cell[3]:
            cell[1] = now
            cell[3] = 1.0
        cell[2] = now

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Task]:
        """Run a block as the step ``name`` (a low-cardinality reasoning or decision point).
        The halt flag is honoured here: a halted agent raises :class:`Halted`."""
        self._check_halt("")
        token = _current_step.set((self, name))
        try:
            yield self
        finally:
            _current_step.reset(token)

    def _step(self) -> str:
        current = _current_step.get()
        return current[1] if current is not None and current[0] is self else ""

    # ---------------------------------------------------------------- model calls

    def llm_call(self, model: str, *, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
                 cache_write_tokens: int = 0, reasoning_tokens: int = 0, cost_usd: float | None = None,
                 provider: str | None = None, status: str = "ok", step: str | None = None,
                 reservation: Reservation | None = None) -> float:
        """Record one model call; return its USD cost (priced by the tracker's price table
        when ``cost_usd`` is None; an unknown model raises PricingError naming it). Token
        counts are disjoint: cache and reasoning tokens are not inside input/output. The
        call settles ``reservation`` (default: the one of the enclosing :meth:`llm_guard`):
        its tokens stop being held as the call's real tokens are counted, in one step."""
        tr = self.tracker
        if status != "ok" and status != "error":
            raise errors.InputError(f"{status!r} is not 'ok' or 'error'", field="status")
        if cost_usd is None:
            rates = tr.prices.static_rates(model, provider)
            if rates is not None:  # one price forever: no clock needed
                cost_usd = pricing.llm_call_cost(rates, input_tokens, output_tokens, cache_read_tokens,
                                                 cache_write_tokens, reasoning_tokens)
            else:
                cost_usd = tr.prices.llm_cost(model, input_tokens=input_tokens, output_tokens=output_tokens,
                                              cache_read_tokens=cache_read_tokens,
                                              cache_write_tokens=cache_write_tokens,
                                              reasoning_tokens=reasoning_tokens, provider=provider,
                                              at=tr.clock())
        if step is None:
            current = _current_step.get()
            step = current[1] if current is not None and current[0] is self else ""
        key = (self.workflow, step, model)
        cell = tr._llm_cells.get(key)
        store = tr.store
        if reservation is None:
            reservation = _current_reservation.get()
        with store.lock:
            if reservation is not None and reservation.task is self and not reservation.settled:
                reservation.settled = True
                self.reserved -= reservation.tokens
            if cell is None:
                cell = tr._llm_cells[key] = store.llm_cell((tr.agent, tr.namespace, *key))
            cell[0 if status == "ok" else 1] += 1
            cell[2] += cost_usd
            cell[3] += input_tokens
            cell[4] += output_tokens
            if cache_read_tokens or cache_write_tokens or reasoning_tokens:
                cell[5] += cache_read_tokens
                cell[6] += cache_write_tokens
                cell[7] += reasoning_tokens
            self.cost_usd += cost_usd
            self.tokens += input_tokens + output_tokens + cache_read_tokens + cache_write_tokens + reasoning_tokens
            self.llm_calls += 1
            self._open[0] = self.tokens
            self._record(tr.clock())
        if model != tr._model and not tr._pinned_model:
            tr.set_model(model)
        if tr.events is not None:
            fields: dict[str, Any] = {"model": model, "input_tokens": input_tokens,
                                      "output_tokens": output_tokens}
            if provider is not None:
                fields["provider"] = provider
            if cache_read_tokens:
                fields["cache_read_tokens"] = cache_read_tokens
            if cache_write_tokens:
                fields["cache_write_tokens"] = cache_write_tokens
            if reasoning_tokens:
                fields["reasoning_tokens"] = reasoning_tokens
            fields["cost_usd"] = cost_usd
            if status != "ok":
                fields["status"] = status
            tr._event("llm", self, step, fields)
        return cost_usd

    def check_llm(self, estimated_tokens: int = 0) -> None:
        """Ask the guardrails before a model call expected to use ``estimated_tokens``:
        raises :class:`TokenCapExceeded` if it would pass the task's token cap (counting the
        tokens used and those reserved by calls under way), or :class:`Halted`. Counted in
        ``fleetwarden_guardrail_decisions_total`` (tool=""). It reserves nothing: concurrent
        calls of one task should use :meth:`llm_guard` or :meth:`reserve_llm`."""
        self._token_cap(estimated_tokens, reserve=False)

    def max_output_tokens(self, requested: int | None = None) -> int | None:
        """:meth:`Tracker.max_output_tokens`: pass it as the model call's ``max_tokens``."""
        return self.tracker.max_output_tokens(requested)

    def reserve_llm(self, estimated_tokens: int = 0, *, max_tokens: int = 0) -> Reservation:
        """:meth:`check_llm` for ``estimated_tokens`` (the prompt) plus ``max_tokens`` (the
        most the call may answer, clamped by a CapOutputTokens step), and hold them for the task in
        the same step, so calls
        under way together never pass the cap together. :meth:`llm_call` settles the
        reservation; :meth:`Reservation.release` gives it back when the call is not made."""
        if max_tokens:
            max_tokens = self.tracker.max_output_tokens(max_tokens) or max_tokens
        reservation = self._token_cap(estimated_tokens + max_tokens, reserve=True)
        assert reservation is not None
        return reservation

    def _token_cap(self, tokens: int, *, reserve: bool) -> Reservation | None:
        tr = self.tracker
        if tr.policy is None:
            return Reservation(self, 0) if reserve else None
        self._check_halt("")
        rules = tr.policy.spec
        caps = rules.token_caps
        cap = caps.per_task
        with tr.store.lock:  # the check and the hold are one step
            used, held = self.tokens, self.reserved
            over = cap is not None and used + held + tokens > cap
            blocks = over and caps.action != spec.Action.alert
            if reserve and not (blocks and rules.enforcement is spec.Enforcement.enforce):
                self.reserved += tokens
        if not over:
            tr._decide(self, "", "allowed")
        elif not blocks:
            tr._decide(self, "", "token_cap_exceeded")
        else:
            message = (f"task {self.task_id}: {used} tokens used + {held} reserved + {tokens} estimated "
                       f"would pass the cap of {cap} tokens per task")
            if tr._blocks(self, "", "token_cap_exceeded", message, rules.enforcement):
                raise _guardrails.TokenCapExceeded(message, used=used, estimated=tokens, cap=cap or 0)
        return Reservation(self, tokens) if reserve else None

    @contextlib.contextmanager
    def llm_guard(self, estimated_tokens: int = 0, *, max_tokens: int = 0) -> Iterator[Task]:
        """``with task.llm_guard(estimated_tokens=2000, max_tokens=1000):`` reserves the call's
        tokens before the block (the model call) runs (:meth:`reserve_llm`); record the call
        inside with :meth:`llm_call` or a usage helper, which settles the reservation. When the
        block ends without recording, the reservation is released."""
        reservation = self.reserve_llm(estimated_tokens, max_tokens=max_tokens)
        token = _current_reservation.set(reservation)
        try:
            yield self
        finally:
            _current_reservation.reset(token)
            reservation.release()

    # ---------------------------------------------------------------- tool calls

    def check_tool(self, tool: str, *, amount_usd: float | None = None, cost_usd: float | None = None) -> None:
        """Ask the guardrails before calling ``tool``: halt flag, allow/deny list, rate
        limits, approval gates (in that order). Raises a :class:`GuardrailError`, waits for a
        rate limit (``rate_limit="sleep"``) or an approval (with an approval backend), or
        returns when the call may go."""
        tr = self.tracker
        policy = tr.policy
        if policy is None:
            return
        self._check_halt(tool)
        rules = policy.spec
        allowed, approvals = tr._tool_rules(rules, tool)
        # 1: allow/deny list
        if not allowed:
            message = f"tool {tool!r} is not allowed by the cost policy"
            if rules.tools.action == spec.Action.alert:
                tr._decide(self, tool, "tool_not_allowed")
            elif tr._blocks(self, tool, "tool_not_allowed", message, rules.enforcement):
                raise _guardrails.ToolNotAllowed(message, tool=tool)
        # 2: rate limits (token buckets, overall and per tool)
        limits = rules.rate_limits
        if limits.tool_calls_per_minute is not None or limits.per_tool:
            replicas = policy.replicas(tr.agent)
            wait = tr._limiter.acquire(limits, tool, replicas)
            waited = 0.0
            while wait > 0.0:
                if limits.action == spec.Action.alert:
                    tr._decide(self, tool, "rate_limit_exceeded")
                    break
                if rules.enforcement is not spec.Enforcement.enforce:  # DryRun, Warn: never wait nor deny
                    tr._blocks(self, tool, "rate_limit_exceeded",
                               f"tool {tool!r}: tool-call rate limit reached", rules.enforcement)
                    break
                if (tr.rate_limit != "sleep" or limits.action != spec.Action.throttle
                        or waited + wait > tr.max_wait):
                    tr._decide(self, tool, "rate_limit_exceeded")
                    raise _guardrails.RateLimited(
                        f"tool {tool!r}: tool-call rate limit reached; retry in {wait:.1f}s",
                        tool=tool, retry_after=wait)
                tr.sleep(wait)
                waited += wait
                wait = tr._limiter.acquire(limits, tool, replicas)
        # 3: approval gates
        for rule in approvals:
            amount = amount_usd if amount_usd is not None else cost_usd
            reason = None
            if rule.amount_above_usd is not None and amount is not None and amount > rule.amount_above_usd:
                reason = f"amount {amount:.2f} USD is above {rule.amount_above_usd:.2f} USD"
            elif rule.calls_per_workflow_above is not None and rule.name not in self.approved_rules:
                calls = sum(n for t, n in self.tool_counts.items()
                            if rule.tool is None or fnmatch.fnmatchcase(t, rule.tool))
                if calls >= rule.calls_per_workflow_above:
                    reason = (f"call {calls + 1} of {rule.tool!r} in one task is above "
                              f"{rule.calls_per_workflow_above}")
            if reason is not None:
                self._approve(rule, tool, amount, reason, rules.enforcement)
        tr._decide(self, tool, "allowed")

    def _approve(self, rule: spec.ApprovalRule, tool: str, amount: float | None, reason: str,
                 mode: spec.Enforcement) -> None:
        tr = self.tracker
        message = f"tool {tool!r} needs approval (rule {rule.name!r}): {reason}"
        if not tr._blocks(self, tool, "approval_required", message, mode):
            return  # DryRun, Warn: no request, no wait
        if tr.approvals is None:
            raise _guardrails.ApprovalRequired(message, tool=tool, rule=rule.name, amount_usd=amount)
        request_id = tr.approvals.request(agent=tr.agent, namespace=tr.namespace, workflow=self.workflow,
                                          task_id=self.task_id, rule=rule.name, tool=tool, amount_usd=amount,
                                          reason=reason, timeout_seconds=rule.timeout_seconds)
        decision = tr.approvals.wait(request_id, float(rule.timeout_seconds))
        if decision == "approved":
            tr._decide(self, tool, "approved")
            if rule.amount_above_usd is None:
                self.approved_rules.add(rule.name)  # a call-count gate opens once per task
            return
        tr._decide(self, tool, "denied")
        raise _guardrails.ApprovalDenied(f"{message}: {decision}", tool=tool, rule=rule.name,
                                         amount_usd=amount, request_id=request_id, decision=decision)

    async def acheck_tool(self, tool: str, *, amount_usd: float | None = None,
                          cost_usd: float | None = None) -> None:
        """:meth:`check_tool` for asyncio code: a rate-limit pause or an approval wait runs in a
        worker thread (``asyncio.to_thread``, the context copied), so the event loop goes on."""
        await asyncio.to_thread(self.check_tool, tool, amount_usd=amount_usd, cost_usd=cost_usd)

    async def atool_call(self, tool: str, *, cost_usd: float | None = None, status: str = "ok",
                         amount_usd: float | None = None, check: bool = True,
                         duration_seconds: float | None = None, step: str | None = None) -> float:
        """:meth:`tool_call` for asyncio code (the checks' waits off the event loop); returns the cost."""
        return await asyncio.to_thread(self.tool_call, tool, cost_usd=cost_usd, status=status,
                                       amount_usd=amount_usd, check=check, duration_seconds=duration_seconds,
                                       step=step)

    def tool_call(self, tool: str, *, cost_usd: float | None = None, status: str = "ok",
                  amount_usd: float | None = None, check: bool = True,
                  duration_seconds: float | None = None, step: str | None = None) -> float:
        """Record one tool call (call it just before the tool runs, or after with
        ``check=False``); with ``check`` the guardrails decide first and may raise. The cost
        is ``cost_usd``, else the policy's or price table's price for the tool, else 0.
        ``amount_usd`` is the money the action moves (a purchase), for approval rules.
        Returns the cost."""
        if status not in ("ok", "error"):
            raise errors.InputError(f"{status!r} is not 'ok' or 'error'", field="status")
        if check:
            self.check_tool(tool, amount_usd=amount_usd, cost_usd=cost_usd)
        tr = self.tracker
        if cost_usd is None:
            price = tr.policy.spec.tool_prices_usd.get(tool) if tr.policy is not None else None
            cost_usd = price if price is not None else tr.prices.tool_cost(tool)
        if step is None:
            step = self._step()
        key = (step, tool, status)
        store = tr.store
        with store.lock:
            cells = self._tool_cells.get(key)
            if cells is None:
                cells = self._tool_cells[key] = (
                    store.cell(store.tool_calls, (tr.agent, tr.namespace, self.workflow, step, tool, status)),
                    store.cell(store.tool_cost, (tr.agent, tr.namespace, self.workflow, tool)))
            cells[0][0] += 1
            cells[1][0] += cost_usd
            self.cost_usd += cost_usd
            self.tool_calls += 1
            self._record(tr.clock())
            self.tool_counts[tool] = self.tool_counts.get(tool, 0) + 1
        if tr.events is not None:
            fields: dict[str, Any] = {"tool": tool, "cost_usd": cost_usd, "status": status}
            if amount_usd is not None:
                fields["amount_usd"] = amount_usd
            if duration_seconds is not None:
                fields["duration_seconds"] = round(duration_seconds, 6)
            tr._event("tool", self, step, fields)
        return cost_usd

    @contextlib.contextmanager
    def tool(self, tool: str, *, amount_usd: float | None = None, cost_usd: float | None = None) -> Iterator[Task]:
        """``with task.tool("crm.search"):`` checks the guardrails, runs the block (the tool
        call), and records it with its duration, as ``error`` if the block raises."""
        self.check_tool(tool, amount_usd=amount_usd, cost_usd=cost_usd)
        step = self._step()
        started = time.perf_counter()
        status = "ok"
        try:
            yield self
        except BaseException:
            status = "error"
            raise
        finally:
            self.tool_call(tool, cost_usd=cost_usd, status=status, amount_usd=amount_usd, check=False,
                           duration_seconds=time.perf_counter() - started, step=step)

    # ---------------------------------------------------------------- outcomes and humans

    def outcome(self, name: str, count: float = 1, value_usd: float | None = None) -> None:
        """Record a business outcome of this task (``resolved_ticket``...)."""
        if not count > 0:
            raise errors.InputError("must be > 0", field="count")
        tr = self.tracker
        store = tr.store
        with store.lock:
            cell = store.cell(store.outcomes, (tr.agent, tr.namespace, self.workflow, name), 2)
            cell[0] += count
            if value_usd is not None:
                cell[1] += value_usd
        if tr.events is not None:
            fields: dict[str, Any] = {"outcome": name, "count": count}
            if value_usd is not None:
                fields["value_usd"] = value_usd
            tr._event("outcome", self, "", fields)

    def human(self, minutes: float, cost_usd: float | None = None) -> float:
        """Record human-in-the-loop time for this task; returns its USD cost (``cost_usd``,
        else minutes at the tracker's or price table's hourly rate)."""
        if minutes < 0:
            raise errors.InputError("must be >= 0", field="minutes")
        tr = self.tracker
        if cost_usd is None:
            cost_usd = tr.prices.human_cost(minutes, tr.human_hourly_rate_usd)
        store = tr.store
        with store.lock:
            cell = store.cell(store.human, (tr.agent, tr.namespace, self.workflow), 2)
            cell[0] += minutes
            cell[1] += cost_usd
            self.cost_usd += cost_usd
            self._record(tr.clock())
        if tr.events is not None:
            tr._event("human", self, self._step(), {"minutes": minutes, "cost_usd": cost_usd})
        return cost_usd

    # ---------------------------------------------------------------- halt

    def _check_halt(self, tool: str) -> None:
        policy = self.tracker.policy
        if policy is not None and policy.halted:
            self.tracker._decide(self, tool, "halted")
            raise _guardrails.Halted(f"agent {self.tracker.agent!r} is halted by its cost policy")


class Reservation:
    """Tokens a model call of ``task`` holds against the task's cap until the call is recorded
    (:meth:`Task.llm_call` settles it) or :meth:`release` gives them back."""

    __slots__ = ("task", "tokens", "settled")

    def __init__(self, task: Task, tokens: int) -> None:
        self.task, self.tokens, self.settled = task, tokens, False

    def release(self) -> None:
        """Give the tokens back (a no-op once settled or released)."""
        task = self.task
        with task.tracker.store.lock:
            if not self.settled:
                self.settled = True
                task.reserved -= self.tokens
