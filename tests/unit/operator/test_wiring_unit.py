"""The operator's wiring: Alertmanager flag, spend counting human time, unit costs by outcome and
the unit-economics gauge, ApprovalPending, governance Events, and the per-minute detector memo.
Fakes only (API server, clock); the e2e tests run the same on the real parts."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import pytest

from fleetwarden import errors
from fleetwarden.adapters import prometheus
from fleetwarden.commands import operator as operator_command
from fleetwarden.core import decision, economics, evaluate, governance, series, spec, stages
from fleetwarden.core.series import AgentMinute
from fleetwarden.handlers import metrics, runtime, settings

NOW = 1_800_000_000.0
NS = "shop"
START = int(NOW // 60) * 60 - 30 * 60


def budget(**spec_fields: Any) -> spec.AgentBudget:
    doc: dict[str, Any] = {"limits": [{"window": "hour", "amountUSD": 10}]}
    doc.update(spec_fields)
    return spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": NS}, "spec": doc})


AGENTS = [decision.AgentDeployment("bot", NS, {"team": "cx"}, 2), decision.AgentDeployment("helper", NS, {"team": "cx"}, 1)]


def minutes(agent: str, *, completed: int = 2, failed: int = 0, outcomes: float = 1.0,
            human: float = 0.0) -> list[AgentMinute]:
    return [AgentMinute(agent, NS, START + 60 * i, inference_cost_usd=0.03, tool_cost_usd=0.01, human_cost_usd=human,
                        tasks_completed=completed, tasks_failed=failed, outcomes=outcomes, workflow="support")
            for i in range(30)]


def run(b: spec.AgentBudget | None = None, **kw: Any) -> decision.Decision:
    fields: dict[str, Any] = {"budget": b or budget(), "agents": AGENTS,
                              "minutes": {a.name: minutes(a.name) for a in AGENTS},
                              "spend": {w: 1.0 for w in spec.Window}, "now": NOW}
    fields.update(kw)
    return evaluate.evaluate(decision.EvaluationInput(**fields))


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


# ---------------------------------------------------------------- 1: Alertmanager


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    operator_command.register(parser.add_subparsers())
    return parser.parse_args(["operator", *argv])


def test_alertmanager_flag_is_documented_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`fleetwarden operator --help` lists --alertmanager-url and its environment variable."""
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    assert "--alertmanager-url" in out and "FLEETWARDEN_ALERTMANAGER_URL" in out


def test_a_bad_alertmanager_url_is_refused_naming_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """--alertmanager-url without http(s):// is an InputError naming the flag (exit 2, one line)."""
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the command sets the variables its flags name
    with pytest.raises(errors.InputError, match="--alertmanager-url"):
        operator_command.run(parse("--alertmanager-url", "alertmanager:9093"))


def test_settings_read_the_alertmanager_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLEETWARDEN_ALERTMANAGER_URL becomes Settings.alertmanager_url; unset is None; garbage is refused."""
    monkeypatch.setenv("FLEETWARDEN_ALERTMANAGER_URL", "http://alertmanager.monitoring:9093")
    assert settings.Settings.from_env().alertmanager_url == "http://alertmanager.monitoring:9093"
    monkeypatch.delenv("FLEETWARDEN_ALERTMANAGER_URL")
    assert settings.Settings.from_env().alertmanager_url is None
    monkeypatch.setenv("FLEETWARDEN_ALERTMANAGER_URL", "ftp://x")
    with pytest.raises(errors.InputError, match="FLEETWARDEN_ALERTMANAGER_URL"):
        settings.Settings.from_env()


# ---------------------------------------------------------------- 2: spend counts human time


def test_spend_counts_inference_tools_and_human_time_in_the_same_queries() -> None:
    """The spend queries sum LLM, tool and human cost (AgentMinute.cost_usd's parts) at no extra query."""
    assert prometheus.SPEND_METRICS == ("fleetwarden_llm_cost_usd_total", "fleetwarden_tool_cost_usd_total",
                                        "fleetwarden_human_cost_usd_total")
    query = prometheus.spend_query(3600)
    assert all(m in query for m in prometheus.SPEND_METRICS)
    assert prometheus.QUERIES_PER_CYCLE == 17
    m = AgentMinute("bot", NS, 0, inference_cost_usd=1.0, tool_cost_usd=0.5, human_cost_usd=2.0)
    assert m.cost_usd == 3.5


def test_human_cost_in_the_answer_is_part_of_the_budget_spend() -> None:
    """Prometheus' answer to the spend query (which includes human cost) is the budget's spend."""
    answers = {prometheus.spend_query(3600): [{"metric": {"namespace": NS, "agent": "bot"}, "value": [NOW, "7.5"]}]}

    class Client:
        def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
            if query == prometheus.FRESHNESS_QUERY:
                return [{"metric": {"namespace": NS, "agent": "bot"}, "value": [NOW, str(NOW)]}]
            return answers.get(query, [])

        def custom_query_range(self, *args: Any, **kwargs: Any) -> Any:
            return []

    snap = prometheus.Fetcher(Client(), lookback_minutes=30).fetch(NOW)
    assert snap.for_budget(budget(), [AGENTS[0]]).spend[spec.Window.hour] == 7.5


# ---------------------------------------------------------------- 4: unit costs and targets


def test_cost_per_task_and_per_outcome_are_what_the_economics_report_says() -> None:
    """costPerTaskUSD and costPerOutcomeUSD{outcome} over the last hour equal economics.report's figures
    on the same minutes (inference + tools + human time + prorated fixed costs)."""
    b = budget(fixedMonthlyCostsUSD={"vectorDB": 432.0})
    ms = {a.name: minutes(a.name, completed=2, failed=1, human=0.02) for a in AGENTS}
    named = {a.name: {m.minute: {"resolved_ticket": 1.0} for m in ms[a.name][::2]} for a in AGENTS}
    status = run(b, minutes=ms, outcomes=named).status.body()
    acc = economics.EconomicsAccumulator()
    for a in AGENTS:
        for m in ms[a.name]:
            acc.add_minute(m, outcomes=named[a.name].get(m.minute))
    end = int(NOW // 60) * 60
    totals = economics.report(acc, start=end - 3600, end=end, budget=b.spec).totals
    assert status["costPerTaskUSD"] == pytest.approx(totals.total_usd / 180, abs=1e-4)  # 60 minutes x 3 ended tasks
    assert status["costPerOutcomeUSD"] == {"resolved_ticket": pytest.approx(totals.total_usd / 30, abs=1e-4)}
    assert totals.fixed_usd == pytest.approx(432.0 / 720)  # an hour of a 30-day month


def test_no_outcome_of_a_name_means_no_cost_per_outcome_not_zero() -> None:
    """Without outcomes by name, costPerOutcomeUSD is absent (unknown); without tasks, so is costPerTaskUSD."""
    status = run(minutes={a.name: minutes(a.name, completed=0, outcomes=0.0) for a in AGENTS}).status.body()
    assert "costPerOutcomeUSD" not in status and "costPerTaskUSD" not in status


def test_the_adapter_reads_outcomes_by_name_in_the_outcomes_range_query() -> None:
    """fleetwarden_outcomes_total is fetched by outcome in its existing range query, per agent and minute."""
    assert prometheus.family_query("outcomes") == (
        "sum by (namespace, agent, outcome) (((fleetwarden_outcomes_total"
        " - last_over_time(fleetwarden_outcomes_total[1h] offset 1m)) >= 0 or fleetwarden_outcomes_total))")
    results: dict[str, list[dict[str, Any]]] = {family: [] for family in prometheus.RANGE_FAMILIES}
    results["outcomes"] = [
        {"metric": {"namespace": NS, "agent": "bot", "outcome": "resolved_ticket"}, "values": [[1200, "3"]]},
        {"metric": {"namespace": NS, "agent": "bot", "outcome": "escalated"}, "values": [[1200, "1"], [1260, "0"]]},
    ]
    assert prometheus.build_outcomes(results, 0, 3600) == {
        (NS, "bot"): {1140: {"resolved_ticket": 3.0, "escalated": 1.0}}}
    buckets = prometheus.build_minutes(results, 0, 3600)[(NS, "bot")]
    assert [(m.minute, m.outcomes) for m in buckets] == [(1140, 4.0), (1200, 0.0)]


def sample(name: str, labels: dict[str, str]) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_unit_economics_targets_are_exported_and_removed() -> None:
    """fleetwarden_unit_economics_target_usd carries each target and human baseline; dropped ones go away."""
    b = budget(unitEconomics=[{"outcome": "resolved_ticket", "workflow": "support", "targetCostUSD": 0.75,
                               "humanBaselineUSD": 8.5}, {"outcome": "lead", "targetCostUSD": 2.0}])
    metrics.record_targets(b)
    base = {"namespace": NS, "budget": "support"}
    gauge = "fleetwarden_unit_economics_target_usd"
    assert sample(gauge, {**base, "workflow": "support", "outcome": "resolved_ticket", "kind": "target"}) == 0.75
    assert sample(gauge, {**base, "workflow": "support", "outcome": "resolved_ticket",
                          "kind": "human_baseline"}) == 8.5
    assert sample(gauge, {**base, "workflow": "", "outcome": "lead", "kind": "target"}) == 2.0
    assert sample(gauge, {**base, "workflow": "", "outcome": "lead", "kind": "human_baseline"}) is None
    metrics.record_targets(budget(unitEconomics=[{"outcome": "lead", "targetCostUSD": 3.0}]))
    assert sample(gauge, {**base, "workflow": "support", "outcome": "resolved_ticket", "kind": "target"}) is None
    assert sample(gauge, {**base, "workflow": "", "outcome": "lead", "kind": "target"}) == 3.0
    metrics.forget(NS, "support")
    assert sample(gauge, {**base, "workflow": "", "outcome": "lead", "kind": "target"}) is None


def test_the_budget_gauges_follow_each_evaluation_what_moved_and_what_did_not() -> None:
    """fleetwarden_budget_spend_usd, _limit_usd, _kill_switch_engaged and agent_owner_info say what the
    last evaluation decided: a moved spend alone, a spend gone (unknown, not 0), a cap edited alone,
    an agent gone, each followed; a forgotten budget leaves no series."""
    name = "gauged"
    base = {"namespace": NS, "budget": name}

    def gauged(**spec_fields: Any) -> spec.AgentBudget:
        b = budget(**spec_fields)
        return b.model_copy(update={"metadata": b.metadata.model_copy(update={"name": name})})

    def record(b: spec.AgentBudget, spend: dict[spec.Window, float | None], agents: list[Any] = AGENTS) -> None:
        metrics.record(b, run(b, spend=spend, agents=agents), agents)

    def spent(window: str) -> float | None:
        return sample("fleetwarden_budget_spend_usd", {**base, "window": window})

    def cap(window: str) -> float | None:
        return sample("fleetwarden_budget_limit_usd", {**base, "window": window})

    def owner(agent: str) -> float | None:
        return sample("fleetwarden_agent_owner_info", {**base, "agent": agent, "team": "", "project": "",
                                                       "cost_center": ""})

    b = gauged()
    record(b, {spec.Window.hour: 1.5, spec.Window.day: 4.0, spec.Window.month: 9.0})
    assert (spent("hour"), spent("day"), spent("month")) == (1.5, 4.0, 9.0)
    assert (cap("hour"), cap("day")) == (10.0, None)
    assert sample("fleetwarden_budget_kill_switch_engaged", base) == 0.0
    assert (owner("bot"), owner("helper")) == (1.0, 1.0)
    record(b, {spec.Window.hour: 1.6, spec.Window.day: 4.0, spec.Window.month: 9.0})  # the hour moved
    assert (spent("hour"), spent("day"), spent("month")) == (1.6, 4.0, 9.0)
    record(b, {spec.Window.hour: 1.6, spec.Window.day: None, spec.Window.month: 9.0})  # the day unknown
    assert (spent("hour"), spent("day"), spent("month")) == (1.6, None, 9.0)
    edited = gauged(limits=[{"window": "hour", "amountUSD": 12}, {"window": "day", "amountUSD": 50}])
    record(edited, {spec.Window.hour: 1.6, spec.Window.day: 4.5, spec.Window.month: 9.0})  # a cap edited, the day known again
    assert (cap("hour"), cap("day"), spent("day")) == (12.0, 50.0, 4.5)
    record(edited, {spec.Window.hour: 1.6, spec.Window.day: 4.5, spec.Window.month: 9.0}, AGENTS[:1])
    assert (owner("bot"), owner("helper")) == (1.0, None)
    metrics.forget(NS, name)
    assert (spent("hour"), spent("month"), cap("hour"), owner("bot")) == (None, None, None, None)
    record(edited, {spec.Window.hour: 1.6, spec.Window.day: 4.5, spec.Window.month: 9.0})  # back: all said again
    assert (spent("hour"), spent("day"), cap("day"), owner("helper")) == (1.6, 4.5, 50.0, 1.0)
    metrics.forget(NS, name)


# ---------------------------------------------------------------- 5: ApprovalPending


def test_pending_approvals_of_the_budgets_agents_set_approval_pending() -> None:
    """Undecided, unexpired CostApprovals of the budget's agents: ApprovalPending=True with count and names;
    others' agents and expired requests do not count."""
    approvals = [decision.PendingApproval("bot-refund-2", "bot", expires_at=NOW + 600),
                 decision.PendingApproval("bot-refund-1", "bot"),
                 decision.PendingApproval("helper-old", "helper", expires_at=NOW - 1),
                 decision.PendingApproval("stranger-1", "stranger", expires_at=NOW + 600)]
    c = cond(run(approvals=approvals).status.body(), "ApprovalPending")
    assert (c["status"], c["reason"]) == ("True", "ApprovalPending")
    assert c["message"].startswith("2 CostApproval(s) waiting") and "bot-refund-1, bot-refund-2" in c["message"]
    c = cond(run(approvals=approvals[2:]).status.body(), "ApprovalPending")
    assert (c["status"], c["reason"]) == ("False", "NoApprovalPending")


def test_approval_pending_holds_without_metrics() -> None:
    """Approvals come from the API server, not Prometheus: known even when the metrics are not."""
    c = cond(run(minutes=None, spend=dict.fromkeys(spec.Window), metrics_reason="Prometheus down",
                 approvals=[decision.PendingApproval("a", "bot")]).status.body(), "ApprovalPending")
    assert c["status"] == "True"


def test_the_runtime_passes_only_undecided_approvals() -> None:
    """CostApproval bodies with a status.decision are not pending; the rest become PendingApprovals."""
    bodies: list[dict[str, Any]] = [
        {"metadata": {"name": "a"}, "spec": {"agent": "bot", "expiresAt": "2027-01-15T09:00:00Z", "rule": "r"}},
        {"metadata": {"name": "b"}, "spec": {"agent": "bot"}, "status": {"decision": "Approved"}},
        {"metadata": {"name": "c"}, "spec": {"agent": "helper"}, "status": {"decision": None}},
    ]
    assert runtime.pending_approvals(bodies) == [
        decision.PendingApproval("a", "bot", expires_at=1_800_003_600.0, rule="r"),
        decision.PendingApproval("c", "helper")]


# ---------------------------------------------------------------- 6: governance hygiene


class EventsOnly:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def post_event(self, ref: dict[str, Any], type_: str, reason: str, message: str, *, once: bool = False) -> None:
        self.events.append((ref["name"], type_, reason, message))


def deployment(name: str, labels: dict[str, str], uid: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "labels": labels}}


def budget_body(selector: dict[str, str], unit_economics: list[dict[str, Any]] | None = None,
                generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "support", "namespace": NS, "uid": "b-1", "generation": generation},
            "spec": {"selector": {"matchLabels": selector}, "unitEconomics": unit_economics or []}}


def test_ungoverned_agents_get_one_warning_event_per_problem() -> None:
    """An agent Deployment no budget selects gets Ungoverned once; one whose budget has no unit-economics
    target gets NoUnitEconomics once; a Deployment not labelled as an agent gets nothing."""
    k = EventsOnly()
    rt = runtime.Runtime(interval=15.0, fetcher=None, kube_client=k)  # type: ignore[arg-type]
    deployments = [deployment("stray", {"fleetwarden.dev/agent": "true"}),
                   deployment("bot", {"fleetwarden.dev/budget": "support", "team": "cx"}),
                   deployment("web", {"app": "web"})]
    budgets = [budget_body({"team": "cx"})]
    gaps = rt.check_governance(deployments, budgets)
    assert {(g.agent, g.problem) for g in gaps} == {("stray", governance.NO_BUDGET),
                                                     ("bot", governance.NO_UNIT_ECONOMICS)}
    assert sorted((n, t, r) for n, t, r, _ in k.events) == [("bot", "Warning", "NoUnitEconomics"),
                                                            ("stray", "Warning", "Ungoverned")]
    rt.check_governance(deployments, budgets)
    rt.check_governance([deployments[0]], budgets)
    assert len(k.events) == 2  # once per (deployment, problem)


def test_a_governed_agent_gets_no_event_and_a_new_problem_is_said_again() -> None:
    """With a target the agent is governed (no event); when its budget goes away it is Ungoverned, once."""
    k = EventsOnly()
    rt = runtime.Runtime(interval=15.0, fetcher=None, kube_client=k)  # type: ignore[arg-type]
    bot = deployment("bot", {"fleetwarden.dev/agent": "true", "team": "cx"})
    governed = budget_body({"team": "cx"}, [{"outcome": "resolved_ticket", "targetCostUSD": 0.5}])
    assert rt.check_governance([bot], [governed]) == []
    assert k.events == []
    rt.check_governance([bot], [])
    rt.check_governance([bot], [])
    assert [r for _, _, r, _ in k.events] == ["Ungoverned"]
    assert "no AgentBudget" in k.events[0][3]


# ---------------------------------------------------------------- 8: the detector memo


def _counted_refolds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The agents whose lookback the detectors refold from now on, one name a refold."""
    calls: list[str] = []
    original = stages.detector_findings

    def counting(agent: decision.AgentDeployment, ms: Any, params: spec.AnomalyParams) -> Any:
        calls.append(agent.name)
        return original(agent, ms, params)

    monkeypatch.setattr(stages, "detector_findings", counting)
    return calls


def test_detectors_refold_once_per_minute_per_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four cycles in one minute refold each agent's lookback once; the next minute's data refolds again;
    the findings are the same as without the memo."""
    calls = _counted_refolds(monkeypatch)
    memo = decision.Memo()
    ms = {a.name: minutes(a.name) for a in AGENTS}
    plain = run(minutes=ms)
    calls.clear()
    for i in range(4):
        d = run(minutes=ms, now=NOW + 10 * i, memo=memo)
        assert d.findings == plain.findings
    assert sorted(calls) == ["bot", "helper"]
    later = {name: [*buckets[1:], AgentMinute(name, NS, START + 30 * 60, inference_cost_usd=0.03)]
             for name, buckets in ms.items()}
    run(minutes=later, now=NOW + 60, memo=memo)
    assert sorted(calls) == ["bot", "bot", "helper", "helper"]


def test_the_memo_keeps_only_recent_minutes() -> None:
    """Entries of minutes older than Memo.KEEP_MINUTES are dropped as new minutes come."""
    memo = decision.Memo()
    for minute in range(0, 60 * 20, 60):
        memo.get(minute, ("k", minute), lambda: 1)
    assert len(memo) == decision.Memo.KEEP_MINUTES + 1
    # the minute before the newest is still served (evaluations on the snapshot before the turn)
    assert memo.get(60 * 18, ("k", 60 * 18), lambda: 2) == 1


def test_the_memos_values_age_with_the_evaluations_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent with nothing new asks for its last minute's values minute after minute; they are
    kept while that minute is recent on the evaluations' clock (Memo.turn, each evaluation), not for
    as long as no newer minute happens to be stored: a quiet fleet's memo does not keep old values
    (nor one per anchor the agents had) without end. The evaluations keep an agent's fold under the
    clock's minute, so a quiet agent is folded once a minute, not at every evaluation."""
    memo = decision.Memo()
    memo.get(0, "k", lambda: 1)
    memo.turn(60)
    assert memo.get(0, "k", lambda: 2) == 1  # the minute before the clock's: kept
    memo.turn(120)
    assert len(memo) == 0 and memo.get(0, "k", lambda: 3) == 3
    calls = _counted_refolds(monkeypatch)
    memo = decision.Memo()
    ms = {a.name: minutes(a.name) for a in AGENTS}
    for later in (0, 30, 60, 120, 150):  # the same minutes (the last one a minute behind), the clock moving on
        # the stages before acting alone: what an evaluation that writes no status works out (no figures)
        evaluate.plan(decision.EvaluationInput(budget=budget(), agents=AGENTS, minutes=ms,
                                               spend=dict.fromkeys(spec.Window, 1.0), now=NOW + later, memo=memo))
    # kept for the clock's minute (stages: the memo's minute is the evaluation's, not the agent's last
    # one): worked out once in each minute of the clock, at 0 (kept at 30), 60 and 120 (kept at 150),
    # where it was worked out at every evaluation once the agent's last minute had aged out
    assert series.minute_of(NOW) == series.minute_of(NOW + 30) and series.minute_of(NOW + 120) == series.minute_of(NOW + 150)
    assert sorted(calls) == ["bot"] * 3 + ["helper"] * 3


def test_a_memo_hit_waits_for_no_lock() -> None:
    """A value already computed is read while another thread holds the memo's lock (storing a value
    of its own): the evaluation threads do not queue behind one another to read it. A miss still
    stores under the lock, and every minute's bucket keeps what was stored."""
    import threading

    memo = decision.Memo()
    assert memo.get(60, "figures", lambda: "computed") == "computed"
    got: list[Any] = []
    with memo._lock:  # as another thread storing its own value would
        reader = threading.Thread(target=lambda: got.append(memo.get(60, "figures", lambda: "again")))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive() and got == ["computed"]
    assert (memo.hits, memo.misses) == (1, 1)
    assert memo.get(120, "figures", lambda: "next minute") == "next minute" and len(memo) == 2


def test_the_memo_never_mixes_up_agents_of_the_same_name_in_two_namespaces() -> None:
    """Two budgets whose agents share names in different namespaces get their own figures from one memo."""
    memo = decision.Memo()
    first = run(memo=memo).status.body()
    other_ns = [decision.AgentDeployment(a.name, "other", dict(a.labels), a.replicas) for a in AGENTS]
    other_minutes = {a.name: [AgentMinute(a.name, "other", m.minute, inference_cost_usd=0.5, tasks_completed=1)
                              for m in minutes(a.name)] for a in AGENTS}
    other_budget = spec.AgentBudget.model_validate({"metadata": {"name": "support", "namespace": "other"},
                                                   "spec": {"limits": [{"window": "hour", "amountUSD": 10}]}})
    second = run(other_budget, agents=other_ns, minutes=other_minutes, memo=memo).status.body()
    assert second["burnRateUSDPerHour"] == pytest.approx(60.0)  # two agents at 0.5 USD a minute
    assert first["burnRateUSDPerHour"] != second["burnRateUSDPerHour"]


def test_heartbeats_hold_their_rate_when_evaluations_fall_behind() -> None:
    """When a pass over the fleet takes longer than the heartbeat period, every unchanged status is
    due at once: the bucket still lets through MAX_HEARTBEATS_PER_SECOND a second (and a second's
    burst), while a status that changed is written whatever the bucket holds."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _Patches()
    rate = runtime.MAX_HEARTBEATS_PER_SECOND
    statuses = {f"uid-{i}": {"state": "Active", "lastEvaluated": "t0"} for i in range(200)}
    for uid, status in statuses.items():
        rt._write_status(k, uid, "ns", uid, {}, status)  # noqa: SLF001 - the first writes: changes
    assert len(k.patches) == 200
    for uid in statuses:
        rt._written_at[uid] -= 10_000  # noqa: SLF001 - all long overdue
    started = time.monotonic()
    for uid, status in statuses.items():
        rt._write_status(k, uid, "ns", uid, status, {**status, "lastEvaluated": "t1"})  # noqa: SLF001
    took = time.monotonic() - started
    heartbeats = len(k.patches) - 200
    assert 1 <= heartbeats <= rate * (1 + took) + 1
    rt._write_status(k, "uid-199", "ns", "uid-199", statuses["uid-199"],  # noqa: SLF001
                     {"state": "Warning", "lastEvaluated": "t2"})
    assert k.patches[-1] == {"state": "Warning", "lastEvaluated": "t2"}  # a change is never held back
    assert not rt.heartbeat_allowed(time.monotonic()) or rt.heartbeat_allowed(time.monotonic() + 1.0)
    assert rt.heartbeat_allowed(time.monotonic() + 2.0)  # refilled


def test_heartbeat_writes_stay_bounded_for_large_fleets() -> None:
    """An unchanged status is rewritten every minute, or less often once heartbeats alone would pass
    MAX_HEARTBEATS_PER_SECOND writes a second (10,000 budgets: every 2,000 s, not 167 writes a second)."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    assert rt.heartbeat_seconds() == runtime.HEARTBEAT_SECONDS == 60.0
    rt._written_at.update({f"uid-{i}": 0.0 for i in range(300)})  # noqa: SLF001 - budgets written so far
    assert rt.heartbeat_seconds() == 60.0
    rt._written_at.update({f"uid-{i}": 0.0 for i in range(10_000)})  # noqa: SLF001
    assert rt.heartbeat_seconds() == pytest.approx(10_000 / runtime.MAX_HEARTBEATS_PER_SECOND)
    assert 10_000 / rt.heartbeat_seconds() <= runtime.MAX_HEARTBEATS_PER_SECOND


class _Patches:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_budget_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.patches.append(patch)


def test_small_spend_drift_waits_for_the_heartbeat_but_real_changes_do_not() -> None:
    """Drift below two significant digits is not written until the heartbeat; a visible change in
    spend, a new state or a new condition is written at once, with the exact new values."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _Patches()
    base = {"state": "Active", "spend": {"hour": 4.012, "day": 40.3}, "summary": {"percentUsed": 40.12},
            "conditions": [{"type": "Ready", "status": "True"}], "lastEvaluated": "t0"}

    def write(new: dict[str, Any]) -> None:
        rt._write_status(k, "uid", "ns", "b", rt.previous_status({"metadata": {"uid": "uid"}}), new)  # noqa: SLF001

    write(base)
    assert len(k.patches) == 1
    drift = {**base, "spend": {"hour": 4.031, "day": 40.33}, "summary": {"percentUsed": 40.31}, "lastEvaluated": "t1"}
    write(drift)
    assert len(k.patches) == 1  # 4.012 -> 4.031: the same two digits
    grown = {**drift, "spend": {"hour": 4.6, "day": 40.9}, "summary": {"percentUsed": 46.0}}
    write(grown)
    assert len(k.patches) == 2 and k.patches[-1]["spend"] == {"hour": 4.6, "day": 40.9}
    warned = {**grown, "state": "Warning"}
    write(warned)
    assert len(k.patches) == 3 and k.patches[-1] == {"state": "Warning"}
    rt._written_at["uid"] -= rt.heartbeat_seconds() + 1  # noqa: SLF001 - a heartbeat later
    write({**warned, "spend": {"hour": 4.61, "day": 40.9}, "lastEvaluated": "t9"})
    assert len(k.patches) == 4 and k.patches[-1] == {"spend": {"hour": 4.61}, "lastEvaluated": "t9"}


def test_in_a_large_fleet_figures_wait_for_their_turn_and_decisions_do_not() -> None:
    """Past MAX_FIGURE_WRITES_PER_SECOND x the interval budgets, a status whose figures alone changed
    (spend, the summary, a condition's message) is written at most once every figure_seconds; a new
    state, a condition's new reason or an incident is written at once, with the figures beside it."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    small = int(runtime.MAX_FIGURE_WRITES_PER_SECOND * rt.interval)
    rt._written_at.update({f"uid-{i}": 0.0 for i in range(small - 1)})  # noqa: SLF001 - budgets written so far
    k = _Patches()
    ready = {"type": "BudgetExceeded", "status": "False", "reason": "UnderCap", "message": "40% of the cap"}
    base = {"state": "Active", "spend": {"hour": 4.0}, "summary": {"percentUsed": 40.0}, "conditions": [ready]}

    def write(new: dict[str, Any]) -> None:
        rt._write_status(k, "uid", "ns", "b", rt.previous_status({"metadata": {"uid": "uid"}}), new)  # noqa: SLF001

    write(base)
    assert rt.figure_seconds() == 0.0  # `small` budgets: at once, as in a small fleet
    grown = {**base, "spend": {"hour": 4.6}, "summary": {"percentUsed": 46.0},
             "conditions": [{**ready, "message": "46% of the cap"}]}
    write(grown)
    assert len(k.patches) == 2
    rt._written_at.update({f"uid-{i}": 0.0 for i in range(9_999)})  # noqa: SLF001 - a large fleet, "uid" the 10,000th
    assert rt.figure_seconds() == pytest.approx(10_000 / runtime.MAX_FIGURE_WRITES_PER_SECOND)
    more = {**grown, "spend": {"hour": 5.5}, "summary": {"percentUsed": 55.0},
            "conditions": [{**ready, "message": "55% of the cap"}]}
    write(more)
    assert len(k.patches) == 2  # figures alone: not yet
    rt._written_at["uid"] -= rt.figure_seconds() + 1  # noqa: SLF001 - its turn
    write(more)
    assert rt.writer.drain(10.0)  # (sent by the writer's threads: StatusWriter)
    assert len(k.patches) == 3 and k.patches[-1]["spend"] == {"hour": 5.5}
    over = {**more, "spend": {"hour": 11.0}, "state": "Exceeded",
            "conditions": [{**ready, "status": "True", "reason": "OverCap", "message": "110% of the cap"}]}
    write(over)  # a decision: at once, whatever the turn
    assert len(k.patches) == 4 and k.patches[-1]["state"] == "Exceeded" and k.patches[-1]["spend"] == {"hour": 11.0}
    write({**over, "incidents": [{"id": "inc-1", "kind": "runaway_loop"}]})
    assert len(k.patches) == 5 and k.patches[-1]["incidents"] == [{"id": "inc-1", "kind": "runaway_loop"}]
    write({**over, "incidents": [{"id": "inc-1", "kind": "runaway_loop"}], "source": {"type": "Fleetwarden",
                                                                                       "series": 3}})
    assert len(k.patches) == 6  # a source's type is a decision ...
    write({**over, "incidents": [{"id": "inc-1", "kind": "runaway_loop"}], "source": {"type": "Fleetwarden",
                                                                                       "series": 4}})
    assert len(k.patches) == 6  # ... its count of series a figure


def test_in_a_large_fleet_figure_writes_whose_turns_came_together_stay_at_their_rate() -> None:
    """Budgets whose figures' turns all came at once (the first pass wrote every status within a
    few minutes, so their turns fall within a few minutes too) are written at most
    MAX_FIGURE_WRITES_PER_SECOND a second across the fleet; the others wait for a later evaluation,
    which knows it (figures_wait: their figures are not worked out meanwhile). A decision is
    never held back, and a second later more figures go out."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _Patches()
    rate = runtime.MAX_FIGURE_WRITES_PER_SECOND
    statuses = {f"uid-{i}": {"state": "Active", "spend": {"hour": 4.0}} for i in range(200)}
    for uid, status in statuses.items():
        rt._write_status(k, uid, "ns", uid, {}, status)  # noqa: SLF001 - the first writes: changes
    assert len(k.patches) == 200
    rt._written_at.update({f"other-{i}": 0.0 for i in range(9_800)})  # noqa: SLF001 - 10,000 budgets
    for uid in statuses:
        rt._written_at[uid] -= rt.figure_seconds() + 1  # noqa: SLF001 - every turn has come
    assert not any(rt.figures_wait(uid) for uid in list(statuses)[:5])
    started = time.monotonic()
    for uid, status in statuses.items():
        rt._write_status(k, uid, "ns", uid, status, {**status, "spend": {"hour": 5.5}})  # noqa: SLF001
    took = time.monotonic() - started
    assert rt.writer.drain(10.0)
    figures = len(k.patches) - 200
    assert 1 <= figures <= rate * (1 + took) + 1
    waiting = [uid for uid in statuses if rt._written_at[uid] < started]  # noqa: SLF001
    assert len(waiting) == 200 - figures and rt.figures_wait(waiting[0])
    rt._write_status(k, waiting[0], "ns", waiting[0], statuses[waiting[0]],  # noqa: SLF001
                     {"state": "Exceeded", "spend": {"hour": 11.0}})
    assert k.patches[-1] == {"state": "Exceeded", "spend": {"hour": 11.0}}  # a decision is never held back
    rt._figure_writes._fill(time.monotonic() + 2.0)  # noqa: SLF001 - a second later and more
    assert not rt.figures_wait(waiting[1])


def test_an_unchanged_status_is_found_unchanged_without_rounding_its_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A status whose every value but the volatile ones equals the last one written is no change:
    it is found so without working out either one's rounded parts (most evaluations: nothing
    new), and a number the API server gave back as an int (123 for 123.0) is the same number.
    A change anywhere else still goes through the rounding, and a decision is still written."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _Patches()
    base = {"state": "Active", "spend": {"hour": 123.0}, "summary": {"percentUsed": 12.3},
            "conditions": [{"type": "Ready", "status": "True"}], "lastEvaluated": "t0", "burnRateUSDPerHour": 1.5}
    rt._write_status(k, "uid", "ns", "b", {}, base)  # noqa: SLF001
    assert len(k.patches) == 1
    rounded: list[Any] = []
    real = runtime._meaningful  # noqa: SLF001
    monkeypatch.setattr(runtime, "_meaningful", lambda status: rounded.append(1) or real(status))
    from_api = {**base, "spend": {"hour": 123}}  # the body's status after a restart
    rt._write_status(k, "uid", "ns", "b", from_api, {**base, "lastEvaluated": "t1", "burnRateUSDPerHour": 2.5})  # noqa: SLF001
    assert len(k.patches) == 1 and not rounded
    rt._write_status(k, "uid", "ns", "b", base, {**base, "state": "Warning"})  # noqa: SLF001
    assert len(k.patches) == 2 and k.patches[-1] == {"state": "Warning"} and rounded


def test_while_figures_wait_a_status_alike_but_for_its_figures_is_not_completed(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    """In a large fleet the hour's figures are worked out only for a decisive change: a status
    lacking them whose other values are as written is no change (its figures are not asked for,
    nothing is rounded); one with a new condition is completed and written at once."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _Patches()
    ready = {"type": "BudgetExceeded", "status": "False", "reason": "UnderCap", "message": "40% of the cap"}
    base = {"state": "Active", "spend": {"hour": 4.0}, "summary": {"percentUsed": 40.0}, "conditions": [ready]}
    rt._write_status(k, "uid", "ns", "b", {}, base)  # noqa: SLF001
    asked: list[int] = []

    def complete(status: dict[str, Any]) -> Any:
        return lambda: asked.append(1) or status
    rounded: list[Any] = []
    real = runtime._meaningful  # noqa: SLF001
    monkeypatch.setattr(runtime, "_meaningful", lambda status: rounded.append(1) or real(status))
    lacking = {key: v for key, v in base.items() if key not in runtime._FIGURES}  # noqa: SLF001
    rt._write_status(k, "uid", "ns", "b", base, lacking, complete({**base, "spend": {"hour": 9.0}}))  # noqa: SLF001
    assert len(k.patches) == 1 and not asked and not rounded
    over = {**lacking, "conditions": [{**ready, "status": "True", "reason": "OverCap"}]}
    rt._write_status(k, "uid", "ns", "b", base, over, complete({**over, "spend": {"hour": 11.0}}))  # noqa: SLF001
    assert asked and len(k.patches) == 2 and k.patches[-1]["spend"] == {"hour": 11.0}
