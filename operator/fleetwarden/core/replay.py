"""Replay: usage events + AgentBudget/CostPolicy manifests -> findings, in time order, streaming.

    run(events, budgets, policies, price_table) -> Iterator[Finding]

The same decisions as the operator, from a file instead of Prometheus:

1. each event is priced and counted in its agent's minute (:mod:`~fleetwarden.core.buckets`);
2. per-event policies run at once, with the event's time as the clock: token caps,
   tool allowlists, approval gates, tool rate limits (per minute), and the budgets the
   agent belongs to (warning, exceeded, kill switch) over their spend windows;
3. when a minute is complete (no event can land in it any more: the latest event time
   minus ``buckets.LATENESS``), its buckets go through the anomaly detectors
   (:class:`fleetwarden.core.detectors.DetectorSet`), and rate-limit episodes that ended
   are closed (:class:`fleetwarden.core.guardrails.Episodes`, the operator's fold too);
4. findings wait in a small heap until the data's horizon has passed their time, then are
   yielded, so the output is ordered by ``time`` while memory stays flat.

A finding's time is the replay clock when it was detectable: the time of the event that
revealed it (a late event: the horizon it arrived at), or the end of the minute that
revealed an anomaly.

Which manifests apply to an agent: same namespace and selector matching the labels seen
on its events (:func:`fleetwarden.core.policies.applicable`; re-resolved when new labels
appear). Every CostPolicy that applies is enforced; the first by name gives the anomaly
parameters and tool prices. With no CostPolicy, an agent gets ``CostPolicySpec()``
(anomaly detection on, no caps); with no AgentBudget, no budget findings.

Broken lines (``EventError`` items in the input) and llm calls with no known price are
passed to ``on_error`` and counted in ``stats``; they never stop the replay.

Task state (tokens per task, calls per task for approval rules) is dropped when the task
ends (a ``task`` event) or after ``TASK_IDLE_SECONDS`` without events.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from fleetwarden import errors
from fleetwarden.core import (
    buckets,
    detectors,
    detectpool,
    events,
    findings,
    guardrails,
    policies,
    pricing,
    series,
    spec,
    windows,
)

TASK_IDLE_SECONDS = 3600.0
_SWEEP_SECONDS = 600.0
_INF = float("inf")


@dataclasses.dataclass
class Stats:
    """Counts of one replay, for the summary line."""

    events: int = 0
    broken: int = 0
    late: int = 0
    findings: int = 0
    agents: int = 0


class _Task:
    __slots__ = ("tokens", "last", "capped", "calls")

    def __init__(self) -> None:
        self.tokens = 0
        self.last = 0.0
        self.capped = False
        self.calls: dict[str, int] | None = None


class _BudgetState:
    """One AgentBudget: its spend windows and its reported conditions (shared by its agents)."""

    __slots__ = ("budget", "name", "spec", "windows", "latch", "headroom", "checked_minute", "pending_minute",
                 "pending_usd", "periods")

    def __init__(self, budget: spec.AgentBudget) -> None:
        self.budget = budget
        self.name = budget.metadata.name
        self.spec = budget.spec
        self.windows = windows.SpendWindows()
        self.latch = policies.Latch()
        self.headroom = -1.0  # USD that can still be spent before a threshold may be crossed
        self.checked_minute = -1
        self.pending_minute = -1  # spend of the newest minute, not yet added to the windows
        self.pending_usd = 0.0
        self.periods: dict[spec.Window, float | None] = {}

    def flush(self) -> None:
        if self.pending_usd:
            self.windows.add(float(self.pending_minute), self.pending_usd)
        self.pending_usd = 0.0


class _PolicyState:
    """What one CostPolicy asks of one agent, resolved once (and caches per tool)."""

    __slots__ = ("policy", "name", "spec", "cap", "rate", "rules", "approvals", "needs_calls", "allowed",
                 "approvals_for", "rate_keys", "rate_patterns")

    def __init__(self, policy: spec.CostPolicy) -> None:
        self.policy = policy
        self.name = policy.metadata.name
        s = self.spec = policy.spec
        self.cap = s.token_caps.per_task
        self.rate = s.rate_limits if (s.rate_limits.tool_calls_per_minute is not None or s.rate_limits.per_tool) \
            else None
        self.rules = s.tools if (s.tools.allow is not None or s.tools.deny) else None
        self.approvals = s.approvals
        self.needs_calls = any(r.calls_per_workflow_above is not None for r in s.approvals)
        self.allowed: dict[str, bool] = {}
        self.approvals_for: dict[str, list[spec.ApprovalRule]] = {}
        self.rate_keys: dict[str, str | None] = {}  # tool -> the perTool key that applies to it
        self.rate_patterns = any(policies.is_pattern(k) for k in s.rate_limits.per_tool)

    def rate_key(self, tool: str) -> str | None:
        assert self.rate is not None
        key = self.rate_keys[tool] = policies.rate_limit_key(self.rate, tool)
        return key

    def rules_for(self, tool: str) -> list[spec.ApprovalRule]:
        found = self.approvals_for.get(tool)
        if found is None:
            import fnmatch

            found = self.approvals_for[tool] = [
                r for r in self.approvals if r.tool is None or r.tool == tool or fnmatch.fnmatchcase(tool, r.tool)]
        return found


class _AgentCtx:
    """Replay's per-agent state, kept in ``AgentState.ctx``."""

    __slots__ = ("budgets", "policies", "budget_name", "policy_name", "detectors", "detect_id", "detect_params",
                 "tasks", "needs_tasks", "reported_tools", "rate", "last_sweep", "min_cap")

    def __init__(self) -> None:
        self.budgets: list[_BudgetState] = []
        self.policies: list[_PolicyState] = []
        self.budget_name: str | None = None
        self.policy_name: str | None = None
        self.detectors: detectors.DetectorSet | None = None
        # with a DetectorPool: the agent's number there, and its parameters until its first minute is sent
        self.detect_id: int | None = None
        self.detect_params: spec.AnomalyParams | None = None
        self.tasks: dict[str, _Task] = {}
        self.needs_tasks = False
        self.reported_tools: set[tuple[str, str]] = set()
        # rate-limit episodes, by (policy name, perTool key or None for toolCallsPerMinute)
        self.rate: guardrails.Episodes[tuple[str, str | None]] = guardrails.Episodes(guardrails.RATE_QUIET_MINUTES)
        self.last_sweep = 0.0
        self.min_cap: int | None = None  # the smallest per-task token cap of its policies


class Replay:
    """The streaming engine behind :func:`run`."""

    def __init__(self, budgets: Sequence[spec.AgentBudget], cost_policies: Sequence[spec.CostPolicy],
                 price_table: buckets.Prices, *, on_error: Callable[[errors.FleetwardenError], None] | None = None,
                 lateness: float = buckets.LATENESS, detect: bool = True,
                 pool: detectpool.DetectorPool | None = None) -> None:
        self.budgets = list(budgets)
        self.detect = detect
        self.pool = pool if detect else None
        self._pool_ids = itertools.count()
        # with a pool: the minutes of the last close being judged (their reserved seq and budget/policy
        # names), the release that waits for them, and the findings pushed meanwhile (_settle)
        self._judging: list[tuple[int, str | None, str | None]] = []
        self._deferred: float | None = None
        self._staged: list[tuple[float, int, int, findings.Finding]] = []
        self.cost_policies = list(cost_policies)
        self.on_error = on_error
        self.stats = Stats()
        self.bucketer = buckets.Bucketer(price_table, lateness=lateness, on_new_agent=self._resolve,
                                         on_labels=self._resolve)
        self._budget_states: dict[tuple[str, str], _BudgetState] = {}
        self._heap: list[tuple[float, int, int, findings.Finding]] = []
        self._seq = itertools.count()
        self._emitted_until = -_INF
        self._rate_agents: dict[buckets.AgentState, None] = {}  # agents with an open rate-limit episode
        self._default_params = spec.CostPolicySpec().anomalies
        # (model, provider) -> per-token rates, when the price table has fixed ones (PriceTable.static_rates)
        prices = self.bucketer.prices
        self._static_rates = getattr(prices, "static_rates", None) if type(prices) is pricing.PriceTable else None
        self._rates_of: dict[tuple[str, str | None], pricing.RateTuple] = {}

    # ------------------------------------------------------------ policy selection

    def _resolve(self, st: buckets.AgentState) -> None:
        ctx = st.ctx
        if ctx is None:
            ctx = st.ctx = _AgentCtx()
            self.stats.agents += 1
        chosen_budgets = policies.applicable(self.budgets, st.namespace, st.labels)
        chosen_policies = policies.applicable(self.cost_policies, st.namespace, st.labels)
        ctx.budgets = []
        for b in chosen_budgets:
            key = (b.metadata.namespace, b.metadata.name)
            bs = self._budget_states.get(key)
            if bs is None:
                bs = self._budget_states[key] = _BudgetState(b)
            ctx.budgets.append(bs)
        old = {p.name: p for p in ctx.policies}
        ctx.policies = [old.get(p.metadata.name) or _PolicyState(p) for p in chosen_policies]
        ctx.budget_name = chosen_budgets[0].metadata.name if chosen_budgets else None
        ctx.policy_name = chosen_policies[0].metadata.name if chosen_policies else None
        ctx.needs_tasks = any(p.cap is not None or p.needs_calls for p in ctx.policies)
        ctx.min_cap = min((p.cap for p in ctx.policies if p.cap is not None), default=None)
        st.set_prices(*policies.agent_prices(chosen_budgets, chosen_policies))
        if ctx.detectors is None and ctx.detect_id is None and self.detect:
            params = chosen_policies[0].spec.anomalies if chosen_policies else self._default_params
            if self.pool is not None:
                ctx.detect_id, ctx.detect_params = next(self._pool_ids), params
            else:
                ctx.detectors = detectors.DetectorSet(params, st.agent, st.namespace)

    # ------------------------------------------------------------ output

    def _push(self, f: findings.Finding) -> None:
        entry = (f.time, next(self._seq), 0, f)
        if self._deferred is None:
            heapq.heappush(self._heap, entry)
        else:  # after a release that waits for the pool: not part of it
            self._staged.append(entry)

    def _release(self, until: float) -> Iterator[findings.Finding]:
        heap = self._heap
        while heap and heap[0][0] <= until:
            f = heapq.heappop(heap)[3]
            if f.time < self._emitted_until:  # never out of order (a detector's gap fill)
                f = dataclasses.replace(f, time=self._emitted_until)
            self._emitted_until = f.time
            self.stats.findings += 1
            yield f

    # ------------------------------------------------------------ the stream

    def feed(self, items: Iterable[events.Event | errors.EventError]) -> Iterator[findings.Finding]:
        """Process every item, yielding findings as their time is passed by the data's horizon.

        From :func:`events.iter_events` the parsed objects are read directly
        (:meth:`events.EventStream.records`), with no ``Event`` per line; any other iterable
        of events goes the same way through ``(time, raw, line)``. Each event: 3. and 4. when
        it completes a minute (:meth:`_complete`), 1. its cost (:meth:`_cost`) counted in its
        agent's minute, 2. the per-event policies (:meth:`_event_policies`).
        """
        records = items.records() if isinstance(items, events.EventStream) else _records(items)
        b = self.bucketer
        stats = self.stats
        next_close = -_INF  # the horizon at which the next minute can close
        lateness = b.lateness
        agents = b.agents
        place = b.place
        by_name: dict[str, buckets.AgentState] = {}  # agent name -> its state (namespace checked)
        for rec in records:
            if type(rec) is not tuple:
                self._broken(rec)  # type: ignore[arg-type]
                continue
            ts, raw, line = rec
            stats.events += 1
            if ts - lateness >= next_close:
                # 3. minutes that are complete now, then 4. findings whose time has passed
                horizon = ts - lateness
                if self._deferred is not None:
                    yield from self._settle()
                next_close = self._complete(horizon, ts)
                if self._judging:  # the pool judges this close's minutes: its release waits for them
                    self._deferred = horizon
                elif self._heap:
                    yield from self._release(horizon)
            # 1. price and count (Bucketer.add, inline)
            agent = raw["agent"]
            ns = raw.get("namespace", "default")
            st = by_name.get(agent)
            if st is None or st.namespace != ns:
                st = agents.get((ns, agent))
                if st is None:
                    st = b.agent(ns, agent)
                by_name[agent] = st
            labels = raw.get("labels")
            if labels and labels != st.labels and not labels.items() <= st.labels.items():
                st.labels = {**st.labels, **labels}
                if b._on_labels is not None:
                    b._on_labels(st)
            etype = raw["type"]
            cost: float | None = raw.get("cost_usd")
            if cost is not None and (etype == "llm" or etype == "tool"):
                cost = float(cost)
            elif etype == "llm" or etype == "tool" or etype == "human":
                cost = self._cost(st, etype, raw, ts, line)
                if cost is None:  # a model with no known price: reported as a broken line
                    continue
            else:
                cost = 0.0
            acc = place(st, ts)
            tokens = acc.count(etype, raw, cost)
            # 2. per-event policies, the clock at the event (a late event: the horizon it met)
            ctx: _AgentCtx = st.ctx
            if ctx.budgets or ctx.policies:
                closed = b.closed_until
                now = ts if closed is None or ts >= closed else float(closed)
                self._event_policies(st, ctx, etype, raw, ts, now, cost, tokens, acc)
        # end of input: every minute is complete, every finding is due
        if self._deferred is not None:
            yield from self._settle()
        since = b.closed_until
        self._close_minutes(b._finish(), since, b.closed_until, b.watermark if b.watermark is not None else 0.0)
        stats.late = b.late
        if self._judging:
            self._deferred = _INF
            yield from self._settle()
        yield from self._release(_INF)

    def _settle(self) -> Iterator[findings.Finding]:
        """With a pool: the findings of the close it judged go where one process would have pushed
        them (their reserved seq), then comes the release that waited for them, and only then what
        was pushed since (``_staged``): the same findings, times and order as without a pool."""
        assert self.pool is not None and self._deferred is not None
        judging, self._judging = self._judging, []
        heap = self._heap
        for index, found in self.pool.collect().items():
            seq, budget, policy = judging[index]
            for j, f in enumerate(found):
                if budget is not None or policy is not None:
                    f = dataclasses.replace(f, budget=f.budget or budget, policy=f.policy or policy)
                heapq.heappush(heap, (f.time, seq, j, f))
        until, self._deferred = self._deferred, None
        yield from self._release(until)
        for entry in self._staged:
            heapq.heappush(heap, entry)
        self._staged = []

    def _broken(self, error: errors.EventError) -> None:
        self.stats.broken += 1
        if self.on_error is not None:
            self.on_error(error)

    def _complete(self, horizon: float, ts: float) -> float:
        """The latest event is at ``ts``: close the minutes complete at ``horizon``; return the
        horizon at which the next minute can close."""
        b = self.bucketer
        if b.watermark is None or ts > b.watermark:
            b.watermark = ts
        since = b.closed_until
        self._close_minutes(b._close(horizon), since, b.closed_until, ts)
        return (int(horizon // 60) + 1) * 60.0

    def _cost(self, st: buckets.AgentState, etype: str, raw: dict[str, Any], ts: float, line: int) -> float | None:
        """1. What a model call or tool call without ``cost_usd``, or a human's minutes, cost:
        priced, a model's fixed per-token rates cached; None: a model with no known price
        (passed to ``on_error``)."""
        if etype == "llm":
            rates = self._rates_of.get((raw["model"], raw.get("provider")))
            if rates is None:
                return self._llm_cost(etype, raw, ts, line)
            if "cache_read_tokens" in raw or "cache_write_tokens" in raw or "reasoning_tokens" in raw:
                return pricing.llm_call_cost(rates, int(raw["input_tokens"]), int(raw["output_tokens"]),
                                             int(raw.get("cache_read_tokens", 0)),
                                             int(raw.get("cache_write_tokens", 0)),
                                             int(raw.get("reasoning_tokens", 0)))
            return pricing.llm_call_cost(rates, int(raw["input_tokens"]), int(raw["output_tokens"]))
        if etype == "tool":
            cached = st._tool_cache.get(raw["tool"])
            return cached if cached is not None else self.bucketer.tool_cost(st, raw["tool"], None)
        return self.bucketer.human_cost(st, raw["minutes"], raw.get("cost_usd"))

    def _llm_cost(self, etype: str, raw: dict[str, Any], ts: float, line: int) -> float | None:
        """A model call priced by the price table (its per-token rates cached when fixed)."""
        b = self.bucketer
        try:
            cost = b.llm_cost(events.Event(ts, etype, raw["agent"], raw.get("namespace", "default"), raw, line))
        except errors.PricingError as exc:
            self.stats.events -= 1
            self._broken(errors.EventError(f"{exc}", line=line, field="model"))
            return None
        if self._static_rates is not None:
            key = (raw["model"], raw.get("provider"))
            found = self._static_rates(*key)
            if found is not None:
                self._rates_of[key] = found
        return cost

    def _event_policies(self, st: buckets.AgentState, ctx: _AgentCtx, etype: str, raw: dict[str, Any], ts: float,
                        now: float, cost: float, tokens: int, acc: buckets._Acc) -> None:
        """2. The policies one event can trip, with the clock ``now``: the budgets its spend counts
        in, then its agent's cost policies."""
        if cost and ctx.budgets:
            # the cost in each budget of the agent: the newest minute's spend waits in `pending_usd`; a
            # budget is checked when its headroom is spent or a new minute began
            bminute = int(ts // 60) * 60
            for bs in ctx.budgets:
                if bminute == bs.pending_minute:
                    bs.pending_usd += cost
                elif bminute > bs.pending_minute:
                    bs.flush()
                    bs.pending_minute = bminute
                    bs.pending_usd = cost
                else:
                    bs.windows.add(ts, cost)  # a late event
                bs.headroom -= cost
                if bs.headroom <= 0 or int(now // 60) != bs.checked_minute:
                    self._check_budget(bs, st.agent, st.namespace, raw, now)
        if not ctx.policies:
            return
        if etype == "tool":
            self._tool_call(st, ctx, raw, ts, now, cost, acc)
        elif etype == "llm":
            if ctx.needs_tasks:
                # _llm_tokens, inline: tokens per task against the caps
                task_id = raw["task_id"]
                task = ctx.tasks.get(task_id)
                if task is None:
                    task = ctx.tasks[task_id] = _Task()
                task.last = now
                task.tokens += tokens
                if not task.capped and ctx.min_cap is not None and task.tokens > ctx.min_cap:
                    self._token_cap(ctx, task, st.agent, st.namespace, raw, now)
        elif etype == "task" and ctx.tasks:
            ctx.tasks.pop(raw["task_id"], None)
        if ctx.needs_tasks and now - ctx.last_sweep > _SWEEP_SECONDS:
            ctx.last_sweep = now
            stale = [k for k, t in ctx.tasks.items() if now - t.last > TASK_IDLE_SECONDS]
            for k in stale:
                del ctx.tasks[k]

    # ------------------------------------------------------------ minutes

    def _close_minutes(self, closed: list[tuple[buckets.AgentState, series.AgentMinute]], since: int | None,
                       upto: int | None, now: float) -> None:
        """Minutes ``[since, upto)`` have closed (``closed``: their buckets with their agents, oldest
        first) when the latest event seen is at ``now``."""
        rate_minutes: dict[buckets.AgentState, list[series.AgentMinute]] = {}
        push = self._push
        jobs: list[detectpool.Job] = []
        for st, am in closed:
            ctx: _AgentCtx = st.ctx
            if ctx.detectors is not None:
                found = ctx.detectors.step(am)
                for f in found:
                    if ctx.budget_name is not None or ctx.policy_name is not None:
                        f = dataclasses.replace(f, budget=f.budget or ctx.budget_name,
                                                policy=f.policy or ctx.policy_name)
                    push(f)
            elif ctx.detect_id is not None:  # judged by the pool: its findings' place in the order is kept
                jobs.append((ctx.detect_id, ctx.detect_params, detectpool.pack(am)))
                ctx.detect_params = None
                self._judging.append((next(self._seq), ctx.budget_name, ctx.policy_name))
            if ctx.rate:
                rate_minutes.setdefault(st, []).append(am)
        if jobs:
            assert self.pool is not None
            self.pool.submit(jobs)
        if self._rate_agents and upto is not None:
            first = since if since is not None else (closed[0][1].minute if closed else upto)
            for st in list(self._rate_agents):
                self._rate_close(st, st.ctx, rate_minutes.get(st, []), first, upto, now)

    def _rate_close(self, st: buckets.AgentState, ctx: _AgentCtx, closed: list[series.AgentMinute], since: int,
                    upto: int, now: float) -> None:
        """Minutes ``[since, upto)`` of this agent are complete: fed to its rate-limit episodes (each
        level was judged at event time: a complete minute goes on with an episode, or starts one
        after a calm minute ended the last). An episode that ended, with an excess in a later minute
        still open, starts again at once, detected now (only now is the calm minute known complete)."""
        episodes = ctx.rate
        for key in episodes.open_keys():
            pname, rkey = key
            p = next((p for p in ctx.policies if p.name == pname and p.rate is not None), None)
            rate = p.rate if p is not None else None
            limit = policies.rate_limit_for(rate, rkey) if rate is not None else None
            if p is None or rate is None or limit is None:
                episodes.end(key)
                continue
            by_minute = {am.minute: am.tool_calls for am in closed}
            ep = episodes.get(key)
            assert ep is not None
            for m in range(max(since, ep.last + 60), upto, 60):
                tool_calls = by_minute.get(m)
                c = policies.rate_key_calls(rate, rkey, tool_calls) if tool_calls is not None else 0.0
                if episodes.observe(key, m, policies.rate_level(c, limit), worsen=False):
                    self._rate_found(st, p, rkey, c, tool_calls, now)
            if episodes.get(key) is not None:
                continue
            for mm in sorted(st.open):  # every open minute is later than the calm one
                acc = st.open[mm]
                c = float(acc.tool_total) if rkey is None else policies.rate_key_calls(rate, rkey, acc.tool_calls)
                if episodes.observe(key, mm, policies.rate_level(c, limit), complete=False):
                    self._rate_found(st, p, rkey, c, acc.tool_calls, now)
                    break
        episodes.drop_ended()
        if not episodes:
            self._rate_agents.pop(st, None)

    def _rate_found(self, st: buckets.AgentState, p: _PolicyState, key: str | None, calls: float,
                    tool_calls: Mapping[str, float] | None, now: float) -> None:
        assert p.rate is not None
        f = policies.rate_limit_exceeded(policies.RateInput(
            subject=policies.Subject(agent=st.agent, namespace=st.namespace, now=now), policy=p.name,
            limits=p.rate, tool=key, calls_per_minute=calls, tool_calls=tool_calls))
        if f is not None:
            self._push(f)

    # ------------------------------------------------------------ budgets

    def _check_budget(self, bs: _BudgetState, agent: str, namespace: str, raw: dict[str, Any], now: float) -> None:
        bs.flush()
        bs.pending_minute = max(bs.pending_minute, int(now // 60) * 60)
        bs.checked_minute = int(now // 60)
        subject = policies.Subject(agent=agent, namespace=namespace, now=now, workflow=raw.get("workflow"))
        headroom = _INF
        w = bs.windows
        for limit in bs.spec.limits:
            spend = w.spend(limit.window, calendar=limit.calendar, now=now)
            if limit.calendar:
                period = w.calendar[limit.window].period
                if bs.periods.get(limit.window) != period:
                    bs.periods[limit.window] = period
                    for kind in (findings.BUDGET_WARNING, findings.BUDGET_EXCEEDED):
                        bs.latch.forget((kind, limit.window))
            inp = policies.LimitInput(subject=subject, budget=bs.name, limit=limit, spend_usd=spend)
            period_s = None if limit.calendar else float(spec.WINDOW_SECONDS[limit.window])
            for kind, check in ((findings.BUDGET_WARNING, policies.budget_warning),
                                (findings.BUDGET_EXCEEDED, policies.budget_exceeded)):
                f = check(inp)
                if bs.latch.fire((kind, limit.window), f is not None, now, period=period_s) and f is not None:
                    self._push(f)
            warn = limit.amount_usd * limit.warning_percent / 100.0
            for threshold in (warn, limit.amount_usd):
                if spend < threshold:
                    headroom = min(headroom, threshold - spend)
                elif spend == threshold:
                    headroom = min(headroom, 1e-9)
        ks = bs.spec.kill_switch
        cap = bs.spec.limit_for(ks.window)
        if ks.enabled and cap is not None:
            spend = w.spend(ks.window, calendar=cap.calendar, now=now)
            f = policies.kill_switch(policies.KillSwitchInput(subject=subject, budget=bs.name, spec=bs.spec,
                                                              spend_since_resume_usd=spend))
            if bs.latch.fire((findings.KILL_SWITCH, ks.window), f is not None, now,
                             period=float(spec.WINDOW_SECONDS[ks.window])) and f is not None:
                self._push(f)
            threshold = cap.amount_usd * ks.threshold_percent / 100.0
            if spend <= threshold:
                headroom = min(headroom, max(threshold - spend, 1e-9))
        bs.headroom = headroom

    # ------------------------------------------------------------ cost policies

    def _task(self, ctx: _AgentCtx, task_id: str, now: float) -> _Task:
        task = ctx.tasks.get(task_id)
        if task is None:
            task = ctx.tasks[task_id] = _Task()
        task.last = now
        return task

    def _token_cap(self, ctx: _AgentCtx, task: _Task, agent: str, ns: str, raw: dict[str, Any], now: float) -> None:
        """The task passed the smallest token cap: the first policy (by name) it is over reports it."""
        for p in ctx.policies:
            if p.cap is not None and task.tokens > p.cap:
                f = policies.token_cap_exceeded(policies.TokenCapInput(
                    subject=_subject(agent, ns, raw, now), policy=p.name, caps=p.spec.token_caps,
                    task_id=raw["task_id"], task_tokens=task.tokens))
                if f is not None:
                    task.capped = True
                    self._push(f)
                    return

    def _tool_call(self, st: buckets.AgentState, ctx: _AgentCtx, raw: dict[str, Any], ts: float, now: float,
                   cost: float, acc: buckets._Acc) -> None:
        tool = raw["tool"]
        task = None
        for p in ctx.policies:
            # allowlist / denylist: one finding per (agent, tool)
            if p.rules is not None:
                ok = p.allowed.get(tool)
                if ok is None:
                    ok = p.allowed[tool] = p.rules.allowed(tool)
                if not ok and (p.name, tool) not in ctx.reported_tools:
                    ctx.reported_tools.add((p.name, tool))
                    f = policies.tool_not_allowed(policies.ToolInput(
                        subject=_subject(st.agent, st.namespace, raw, now), policy=p.name, rules=p.rules, tool=tool))
                    if f is not None:
                        self._push(f)
            # rate limits, on the counts of the event's open minute (a perTool pattern's tools together)
            rate = p.rate
            if rate is not None:
                limit = rate.tool_calls_per_minute
                if limit is not None and acc.tool_total > limit:
                    self._rate_check(st, ctx, p, None, limit, float(acc.tool_total), raw, ts, now, acc)
                if rate.per_tool:
                    key = p.rate_keys[tool] if tool in p.rate_keys else p.rate_key(tool)
                    if key is not None:
                        calls = float(acc.tool_calls[tool]) if key == tool and not p.rate_patterns else \
                            policies.rate_key_calls(rate, key, acc.tool_calls)
                        if calls > rate.per_tool[key]:
                            self._rate_check(st, ctx, p, key, rate.per_tool[key], calls, raw, ts, now, acc)
            # approval gates
            if p.approvals:
                rules = p.rules_for(tool)
                if rules:
                    calls = 0
                    if p.needs_calls and raw.get("task_id") is not None:
                        if task is None:
                            task = self._task(ctx, raw["task_id"], now)
                        if task.calls is None:
                            task.calls = {}
                        calls = task.calls[tool] = task.calls.get(tool, 0) + 1
                    amount = raw.get("value_usd")
                    if amount is None:
                        amount = raw.get("amount_usd")
                    if amount is None:
                        amount = cost
                    if type(amount) is not int and type(amount) is not float:
                        amount = None  # an unknown field holding something else: no amount
                    for f in policies.approval_required(policies.ApprovalInput(
                            subject=_subject(st.agent, st.namespace, raw, now), rules=rules, tool=tool,
                            task_id=raw.get("task_id"), amount_usd=amount, calls_in_task=calls)):
                        self._push(f)

    def _rate_check(self, st: buckets.AgentState, ctx: _AgentCtx, p: _PolicyState, key: str | None, limit: float,
                    calls: float, raw: dict[str, Any], ts: float, now: float, acc: buckets._Acc) -> None:
        """The calls of the event's open minute passed one limit (``key``'s): an episode starts or
        worsens now; the minute close decides when it ends (:meth:`_rate_close`)."""
        assert p.rate is not None
        level = policies.rate_level(calls, limit)
        if not ctx.rate.observe((p.name, key), int(ts // 60) * 60, level, complete=False):
            return
        self._rate_agents[st] = None
        f = policies.rate_limit_exceeded(policies.RateInput(subject=_subject(st.agent, st.namespace, raw, now),
                                                            policy=p.name, limits=p.rate, tool=key,
                                                            calls_per_minute=calls, tool_calls=acc.tool_calls))
        if f is not None:
            self._push(f)


def _subject(agent: str, namespace: str, raw: dict[str, Any], now: float) -> policies.Subject:
    return policies.Subject(agent=agent, namespace=namespace, now=now, workflow=raw.get("workflow"))


def _records(items: Iterable[events.Event | errors.EventError]) -> Iterator[events.Record | errors.EventError]:
    """Events as replay reads them: ``(time, raw, line)``; anything else (an ``EventError``) as is."""
    Event = events.Event
    for ev in items:
        if type(ev) is Event:
            yield (ev.time, ev.raw, ev.line)  # type: ignore[misc]
        else:
            yield ev  # type: ignore[misc]


def run(events_iterable: Iterable[events.Event | errors.EventError], budgets: Sequence[spec.AgentBudget],
        policies_: Sequence[spec.CostPolicy], price_table: buckets.Prices, *,
        on_error: Callable[[errors.FleetwardenError], None] | None = None,
        stats: Stats | None = None, detect: bool = True, jobs: int = 1) -> Iterator[findings.Finding]:
    """Findings of a stream of events under these manifests, in time order (see the module doc).

    ``events_iterable`` yields :class:`~fleetwarden.core.events.Event` (and, from
    ``events.iter_events``, ``EventError`` for broken lines, passed to ``on_error``).
    ``stats``, when given, is filled in as the replay goes. ``detect=False`` skips the anomaly
    detectors (budgets and policies only). ``jobs`` > 1 runs the detectors in ``jobs``
    worker processes, sharded by agent (:mod:`~fleetwarden.core.detectpool`), this process
    reading, pricing and applying the policies beside them (the detectors are most of the
    work: ``docs/design.md``, "Replay throughput"): the same findings in the same order.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or not detect:
        engine = Replay(budgets, policies_, price_table, on_error=on_error, detect=detect)
        if stats is not None:
            engine.stats = stats
        return engine.feed(events_iterable)
    return _pooled(events_iterable, budgets, policies_, price_table, on_error, stats, jobs)


def _pooled(events_iterable: Iterable[events.Event | errors.EventError], budgets: Sequence[spec.AgentBudget],
            policies_: Sequence[spec.CostPolicy], price_table: buckets.Prices,
            on_error: Callable[[errors.FleetwardenError], None] | None, stats: Stats | None,
            workers: int) -> Iterator[findings.Finding]:
    """:func:`run` with a detector pool of ``workers`` processes, stopped when the findings end or
    the caller stops reading."""
    with detectpool.DetectorPool(workers) as pool:
        engine = Replay(budgets, policies_, price_table, on_error=on_error, pool=pool)
        if stats is not None:
            engine.stats = stats
        yield from engine.feed(events_iterable)
