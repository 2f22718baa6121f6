"""Counterfactual replay: what proposed manifests would have changed against the current ones.

    compare(current, proposed, events, prices) -> Comparison

``current`` and ``proposed`` are the findings of two replays of the same events
(:func:`fleetwarden.core.replay.run`), each with the manifests it ran under. The comparison:

1. **actions added or removed.** Findings are paired by ``(namespace, agent, kind, action,
   tool, task_id)``, in time order within a key; a proposed finding with no partner is
   *added*, a current one with no partner is *removed*. A finding whose time merely moved
   (a tighter cap fires earlier) is paired, not counted twice.
2. **blocked.** Among added (and removed) findings whose action is not ``alert``: the tasks
   of ``token_cap_exceeded`` (one per task), and the tool calls of ``rate_limit_exceeded``
   (``calls_per_minute - limit_per_minute`` of the minute its evidence reports: a lower
   bound, an episode reports its start and when it worsens), ``tool_not_allowed`` (replay
   reports a tool once per agent and policy: at least one call each) and
   ``approval_required`` (one per call held for approval).
3. **approvals raised**: added ``approval_required`` findings (and those no longer raised).
4. **dollars saved**, by kills. An agent is killed at the time of the first finding with
   action ``kill`` about it (``runaway_loop``), or of the first ``kill_switch`` of a budget
   that applies to it (the kill switch scales every agent of the budget to zero), when that
   budget's ``spec.enforcement`` is ``Enforce`` and it is not suspended. For each agent, with
   ``Kc`` and ``Kp`` its kill times under the current and proposed manifests (``inf``: never):
   if ``Kp < Kc`` the proposed kill saves the agent's spend in the events with
   ``Kp <= time < Kc`` (``saved_usd``); if ``Kc < Kp`` the proposed manifests kill later or
   never, and the agent's spend recorded in ``Kc <= time < Kp`` is ``lost_usd``. The events
   after a kill exist only if it was not enforced when they were recorded, so ``lost_usd``
   counts only what the events hold; an event with no known price is counted in
   ``unpriced_events`` and never priced at 0ドル.

Limits: both replays see every event, so findings after a proposed kill are still counted
(the agent would have been stopped), and a call the proposed manifests deny still counts
towards later findings.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetwarden import errors
from fleetwarden.core import buckets, events, findings, policies, spec, timefmt

_Key = tuple[str, str, str, str, str | None, str | None]
_INF = math.inf


@dataclasses.dataclass(frozen=True)
class Run:
    """One replay: its findings (in time order) and the manifests it ran under."""

    findings: Sequence[findings.Finding]
    budgets: Sequence[spec.AgentBudget]
    policies: Sequence[spec.CostPolicy]


@dataclasses.dataclass(frozen=True)
class Blocked:
    """What findings with a blocking action (not ``alert``) hold back."""

    tasks: tuple[tuple[str, str, str], ...] = ()  # (namespace, agent, task_id)
    calls_at_least: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": [{"namespace": n, "agent": a, "task_id": t} for n, a, t in self.tasks],
                "calls_at_least": self.calls_at_least}


@dataclasses.dataclass
class Kill:
    """One agent whose kill time differs between the two runs, and the spend in between."""

    namespace: str
    agent: str
    current: float  # kill time under the current manifests (inf: never)
    proposed: float
    spend_usd: float = 0.0
    events: int = 0
    unpriced_events: int = 0

    @property
    def earlier(self) -> bool:
        return self.proposed < self.current

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "agent": self.agent,
                "current_kill": _time(self.current), "proposed_kill": _time(self.proposed),
                "spend_usd": round(self.spend_usd, 6), "events": self.events,
                "unpriced_events": self.unpriced_events}


@dataclasses.dataclass
class Comparison:
    """The difference the proposed manifests make (see the module doc for each figure)."""

    added: list[findings.Finding]
    removed: list[findings.Finding]
    blocked: Blocked
    unblocked: Blocked
    approvals_raised: list[findings.Finding]
    approvals_dropped: list[findings.Finding]
    kills: list[Kill]

    @property
    def saved_usd(self) -> float:
        return math.fsum(k.spend_usd for k in self.kills if k.earlier)

    @property
    def lost_usd(self) -> float:
        return math.fsum(k.spend_usd for k in self.kills if not k.earlier)

    @property
    def unpriced_events(self) -> int:
        return sum(k.unpriced_events for k in self.kills)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``fleetwarden replay --compare --output json`` (docs/replay.md)."""
        return {
            "actions": {"added": action_counts(self.added), "removed": action_counts(self.removed)},
            "blocked": self.blocked.to_dict(), "unblocked": self.unblocked.to_dict(),
            "approvals": {"raised": len(self.approvals_raised), "dropped": len(self.approvals_dropped)},
            "dollars": {"saved_usd": round(self.saved_usd, 6), "lost_usd": round(self.lost_usd, 6),
                        "net_saved_usd": round(self.saved_usd - self.lost_usd, 6),
                        "unpriced_events": self.unpriced_events},
            "kills": [k.to_dict() for k in self.kills],
            "added": [f.to_dict() for f in self.added],
            "removed": [f.to_dict() for f in self.removed],
        }


def _time(t: float) -> str | None:
    return None if t == _INF else timefmt.rfc3339_ms(t)


def action_counts(fs: Iterable[findings.Finding]) -> dict[str, int]:
    """Findings counted by action (the actions that occur), in ``findings.ACTIONS`` order."""
    c = collections.Counter(f.action for f in fs)
    return {a: c[a] for a in findings.ACTIONS if c[a]}


def _key(f: findings.Finding) -> _Key:
    return (f.namespace, f.agent, f.kind, f.action, f.tool, f.task_id)


def diff(current: Iterable[findings.Finding], proposed: Iterable[findings.Finding]
         ) -> tuple[list[findings.Finding], list[findings.Finding]]:
    """(added, removed): proposed findings with no current partner, and current ones with no
    proposed partner, paired by key in time order; both in ``findings.sort_key`` order."""
    pending: dict[_Key, collections.deque[findings.Finding]] = collections.defaultdict(collections.deque)
    for f in sorted(current, key=findings.sort_key):
        pending[_key(f)].append(f)
    added = []
    for f in sorted(proposed, key=findings.sort_key):
        q = pending.get(_key(f))
        if q:
            q.popleft()
        else:
            added.append(f)
    removed = sorted((f for q in pending.values() for f in q), key=findings.sort_key)
    return added, removed


def blocked(fs: Iterable[findings.Finding]) -> Blocked:
    """Tasks and tool calls these findings hold back (module doc, 2.)."""
    tasks: dict[tuple[str, str, str], None] = {}
    calls = 0
    for f in fs:
        if f.action == findings.ALERT:
            continue
        if f.kind == findings.TOKEN_CAP_EXCEEDED and f.task_id is not None:
            tasks[(f.namespace, f.agent, f.task_id)] = None
        elif f.kind == findings.RATE_LIMIT_EXCEEDED:
            over = _number(f.evidence, "calls_per_minute") - _number(f.evidence, "limit_per_minute")
            calls += max(0, math.ceil(over)) if not math.isnan(over) else 1
        elif f.kind in (findings.TOOL_NOT_ALLOWED, findings.APPROVAL_REQUIRED):
            calls += 1
    return Blocked(tuple(tasks), calls)


def _number(evidence: Mapping[str, Any], name: str) -> float:
    value = evidence.get(name)
    return float(value) if isinstance(value, (int, float)) else math.nan


class _KillTimes:
    """When each agent of one run is killed (module doc, 4.), resolved from its labels."""

    def __init__(self, run: Run) -> None:
        self.budgets = run.budgets
        self.by_agent: dict[tuple[str, str], float] = {}
        self.by_budget: dict[tuple[str, str], float] = {}
        acting = {(b.metadata.namespace, b.metadata.name) for b in run.budgets
                  if b.spec.enforcement is spec.Enforcement.enforce and not b.spec.suspend}
        for f in run.findings:
            if f.action != findings.KILL:
                continue
            if f.kind == findings.KILL_SWITCH and f.budget is not None:
                if (f.namespace, f.budget) in acting:
                    key = (f.namespace, f.budget)
                    self.by_budget[key] = min(self.by_budget.get(key, _INF), f.time)
            elif f.kind != findings.KILL_SWITCH:
                key = (f.namespace, f.agent)
                self.by_agent[key] = min(self.by_agent.get(key, _INF), f.time)

    def of(self, namespace: str, agent: str, labels: Mapping[str, str]) -> float:
        t = self.by_agent.get((namespace, agent), _INF)
        for b in policies.applicable(self.budgets, namespace, labels):
            t = min(t, self.by_budget.get((namespace, b.metadata.name), _INF))
        return t


def compare(current: Run, proposed: Run, items: Iterable[events.Event | errors.EventError],
            prices: buckets.Prices) -> Comparison:
    """The comparison of two runs over the same events (module doc); ``items`` are read once,
    for the spend of agents whose kill time differs, priced as the current manifests price."""
    added, removed = diff(current.findings, proposed.findings)
    approval = findings.APPROVAL_REQUIRED
    return Comparison(
        added=added, removed=removed, blocked=blocked(added), unblocked=blocked(removed),
        approvals_raised=[f for f in added if f.kind == approval],
        approvals_dropped=[f for f in removed if f.kind == approval],
        kills=kill_spend(current, proposed, items, prices))


def kill_spend(current: Run, proposed: Run, items: Iterable[events.Event | errors.EventError],
               prices: buckets.Prices) -> list[Kill]:
    """Agents whose kill time differs, with their spend between the two kill times."""
    cur, prop = _KillTimes(current), _KillTimes(proposed)
    if not (cur.by_agent or cur.by_budget or prop.by_agent or prop.by_budget):
        return []
    kills: dict[tuple[str, str], Kill] = {}

    def resolve(st: buckets.AgentState) -> None:
        st.set_prices(*policies.agent_prices(policies.applicable(current.budgets, st.namespace, st.labels),
                                             policies.applicable(current.policies, st.namespace, st.labels)))
        kc, kp = cur.of(st.namespace, st.agent, st.labels), prop.of(st.namespace, st.agent, st.labels)
        old = kills.get((st.namespace, st.agent))
        if old is None:
            kills[(st.namespace, st.agent)] = Kill(st.namespace, st.agent, kc, kp)
        else:
            old.current, old.proposed = kc, kp

    b = buckets.Bucketer(prices, on_new_agent=resolve, on_labels=resolve)
    for ev in items:
        if not isinstance(ev, events.Event):
            continue
        st = b.agents.get((ev.namespace, ev.agent)) or b.agent(ev.namespace, ev.agent)
        labels = ev.raw.get("labels")
        if labels and not labels.items() <= st.labels.items():
            st.labels = {**st.labels, **labels}
            resolve(st)
        k = kills[(ev.namespace, ev.agent)]
        if not min(k.current, k.proposed) <= ev.time < max(k.current, k.proposed):
            continue
        k.events += 1
        try:
            k.spend_usd += _cost(b, st, ev)
        except errors.PricingError:
            k.unpriced_events += 1
    return sorted((k for k in kills.values() if k.current != k.proposed), key=lambda k: (k.namespace, k.agent))


def _cost(b: buckets.Bucketer, st: buckets.AgentState, ev: events.Event) -> float:
    raw = ev.raw
    if ev.type == "llm":
        return b.llm_cost(ev)
    if ev.type == "tool":
        return b.tool_cost(st, raw["tool"], raw.get("cost_usd"))
    if ev.type == "human":
        return b.human_cost(st, raw["minutes"], raw.get("cost_usd"))
    return 0.0
