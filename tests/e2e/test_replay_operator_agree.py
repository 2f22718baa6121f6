"""Replay and the operator agree on every anomaly shape, on real parts.

One fleet of the independent generator (``core/fleetgen.py``, a tuning seed) carries every
hard shape once, two benign changes and a plain agent. Replay (``core.replay.run``) reads its
usage events. The same events drive the real SDK (one ``Tracker`` per agent on a simulated
clock), whose registry is scraped every SCRAPE seconds, off the minute as a real scrape is:
those samples (counters and the open-task gauges, as a Prometheus scrape stores them, with
``instance`` and ``job``) are backfilled into a real Prometheus with ``promtool tsdb
create-blocks-from openmetrics``. The operator's path then runs as the operator runs it:
``Runtime.reconcile`` (the handler's code, without acting) with an ``adapters.prometheus.Fetcher``
on that Prometheus, its default lookback and its anchored fold (``core/warmfold.py``: the
detectors fold each agent's minutes from an anchor that moves every 15 minutes, their state kept
between cycles), every CYCLE minutes through the fleet, twice in each of those minutes: just
after it turned and LATE seconds into it, where each anchor's move of the next minute is folded
ahead (``Folds.prepare``) and taken up when the anchor moves.

Per shape, the (kind, onset) of the findings on the shaped agent must be the same on both
sides. Onsets may differ by ONSET_TOLERANCE: live, a minute holds what the last scrape before
its end saw (an event in the seconds after that scrape counts in the next minute), and the
open-task ages are read at that scrape, not at the minute's end.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import Any

import prometheus_client as pc
import pytest

from fleetwarden.adapters import prometheus as prom_adapter
from fleetwarden.core import events, fleetgen, pricing, replay, warmfold
from fleetwarden.devcluster import monitoring
from fleetwarden.handlers import runtime
from fleetwarden.sdk import _metrics, _tracker

SEED = 0  # a tuning seed whose small fleet replay finds every shape in
HARD = ("task_loop", "retry_storm", "loop_accelerating", "spike_slow", "spike_busy", "spike_surge", "tool_ramp",
        "cost_shift")
BENIGN = ("pricier_model", "traffic_surge")
AGENTS = len(HARD) + len(BENIGN) + 1  # and one plain agent
HOURS = 3.0
SCRAPE = 15  # seconds between scrapes
PHASE = 7  # seconds after each minute's start of the first scrape in it
CYCLE = 1  # minutes between the operator's evaluations (it evaluates every interval, a minute at most)
LATE = 50  # seconds into the minute of its second evaluation (every agent folds ahead from then: warmfold.prepare_second)
ONSET_TOLERANCE = 60.0  # seconds (see the module doc)
DETECTOR_KINDS = frozenset(fleetgen.POSITIVE.values())
HISTOGRAMS = (_metrics.names.TASK_COST_USD, _metrics.names.TASK_TOKENS)  # the operator reads neither
INSTANCE = {"instance": "agents:9300", "job": "agents"}


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _fleet(start: float) -> tuple[list[dict[str, Any]], fleetgen.Fleet]:
    evs, fleet = fleetgen.build(SEED, agents=AGENTS, hours=HOURS, start=start, shapes=(*HARD, *BENIGN))
    return list(evs), fleet


def _scrape(registry: pc.CollectorRegistry, at: int, out: dict[tuple[str, str], list[str]],
            types: dict[str, str]) -> None:
    """One scrape of ``registry`` at ``at``: each sample appended to its series' lines."""
    for family in registry.collect():
        if family.name in HISTOGRAMS:
            continue
        types[family.name] = family.type
        for sample in family.samples:
            labels = {**sample.labels, **INSTANCE}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out[(family.name, f"{sample.name}{{{text}}}")].append(f"{sample.value!r} {at}")


def sdk_samples(evs: Iterable[dict[str, Any]], fleet: fleetgen.Fleet) -> Iterator[str]:
    """The OpenMetrics text of every scrape of the SDK that ``evs`` drive (one Tracker per agent)."""
    clock = _Clock()
    registry = pc.CollectorRegistry()
    trackers = {a.name: _tracker.Tracker(a.name, namespace=a.namespace, registry=registry, clock=clock,
                                         agent_version=a.version) for a in fleet.agents}
    tasks: dict[str, _tracker.Task] = {}
    series: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    types: dict[str, str] = {}
    scrape = int(fleet.start) + PHASE
    end = int(fleet.start) + fleet.minutes * 60
    for ev in evs:
        while scrape < ev["time"]:
            clock.now = scrape
            _scrape(registry, scrape, series, types)
            scrape += SCRAPE
        clock.now = ev["time"]
        tracker = trackers[ev["agent"]]
        task = tasks.get(ev["task_id"])
        if task is None or task.ended:
            task = tasks[ev["task_id"]] = tracker.start_task(ev["workflow"], ev["task_id"])
        _record(tracker, task, ev)
    while scrape < end:
        clock.now = scrape
        _scrape(registry, scrape, series, types)
        scrape += SCRAPE
    for name, kind in types.items():
        yield f"# TYPE {name} {kind}"
        for (family, key), lines in series.items():
            if family == name:
                yield from (f"{key} {line}" for line in lines)
    yield "# EOF"


def _record(tracker: _tracker.Tracker, task: _tracker.Task, ev: dict[str, Any]) -> None:
    """One usage event as the agent's code reports it through the SDK."""
    kind = ev["type"]
    if kind == "llm":
        if ev.get("agent_version") != tracker.agent_version:
            tracker.set_agent_version(ev.get("agent_version"))
        task.llm_call(ev["model"], input_tokens=ev["input_tokens"], output_tokens=ev["output_tokens"],
                      cost_usd=ev["cost_usd"])
    elif kind == "tool":
        task.tool_call(ev["tool"], cost_usd=ev["cost_usd"], status=ev["status"], check=False)
    elif kind == "human":
        task.human(ev["minutes"], cost_usd=ev["cost_usd"])
    elif kind == "task":
        task.end(ev["status"])
    elif kind == "outcome":
        task.outcome(ev["outcome"], ev["count"])
    else:
        raise AssertionError(f"an event type the SDK driver does not know: {kind!r}")


Key = tuple[str, str, float]  # (agent, kind, onset)


def _deployments(fleet: fleetgen.Fleet) -> list[dict[str, Any]]:
    return [{"metadata": {"name": a.name, "namespace": a.namespace, "labels": {"app": "fleet"}, "uid": a.name},
             "spec": {"replicas": 1, "template": {"spec": {"containers": [
                 {"name": "agent", "image": f"example.com/{a.name}:1.0",
                  "env": [{"name": "MODEL", "value": a.model}]}]}}}} for a in fleet.agents]


def _budgets(fleet: fleetgen.Fleet) -> list[dict[str, Any]]:
    return [{"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
             "metadata": {"name": "fleet", "namespace": ns, "uid": f"budget-{ns}", "generation": 1},
             "spec": {"selector": {"matchLabels": {"app": "fleet"}},
                      "limits": [{"window": "day", "amountUSD": 1e9}], "killSwitch": {"window": "day"}}}
            for ns in sorted({a.namespace for a in fleet.agents})]


def operator_findings(url: str, fleet: fleetgen.Fleet) -> tuple[set[Key], float, warmfold.Folds]:
    """Every detector finding the operator reports as a new incident, cycle after cycle (each
    budget's status carried to its next cycle, as the operator writes and reads it), the last
    cycle's minute, and the operator's kept detector states."""
    clock = _Clock()
    fetcher = prom_adapter.Fetcher(prom_adapter.connect(url, timeout=30.0), clock=clock,
                                   anchor_minutes=warmfold.ANCHOR_MINUTES)  # as runtime.build makes it
    rt = runtime.Runtime(interval=60.0, fetcher=fetcher, clock=clock)
    deployments = _deployments(fleet)
    budgets = _budgets(fleet)
    found: set[Key] = set()
    end = fleet.start + fleet.minutes * 60
    t = fleet.start + 40 * 60
    while t <= end:
        for clock.now in (t, t + LATE) if t + LATE < end else (t,):  # (past the data's end, it is stale)
            rt.new_cycle()
            for body in budgets:
                verdict = rt.reconcile(body, deployments, apply=False)
                body["status"] = verdict.status.body()
                available = [c["status"] for c in body["status"].get("conditions") or ()
                             if c["type"] == "MetricsAvailable"]
                assert available == ["True"], (clock.now, body["metadata"], body["status"])
                found |= {(f.agent, f.kind, float(f.onset or 0.0)) for f in verdict.new_findings
                          if f.kind in DETECTOR_KINDS}
        t += CYCLE * 60
    return found, t - CYCLE * 60, rt.folds


@pytest.fixture(scope="module")
def agreement(tmp_path_factory: pytest.TempPathFactory) -> tuple[fleetgen.Fleet, set[Key], set[Key], warmfold.Folds]:
    """The fleet (ending at the last whole minute), replay's findings up to the operator's last
    cycle, the operator's, and its kept detector states."""
    assert shutil.which("promtool"), "promtool is missing: run scripts/setup (Debian package prometheus)"
    start = float(int(time.time() // 60) * 60 - int(HOURS * 60) * 60 - 120)
    evs, fleet = _fleet(start)
    directory = tmp_path_factory.mktemp("agree")
    history = directory / "history.om"
    history.write_text("\n".join(sdk_samples(evs, fleet)) + "\n")
    (directory / "prometheus" / "tsdb").mkdir(parents=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(history),
                    str(directory / "prometheus" / "tsdb")], check=True, capture_output=True, text=True, timeout=600)
    prom = monitoring.Prometheus(directory / "prometheus", tie_to_parent=True)
    prom.start()
    try:
        live, last, folds = operator_findings(prom.url, fleet)
    finally:
        prom.stop()
    replayed = {(f.agent, f.kind, float(f.onset or 0.0))
                for f in replay.run((events.from_obj(ev) for ev in evs), [], [], pricing.PriceTable())
                if f.kind in DETECTOR_KINDS and f.time <= last}
    return fleet, replayed, live, folds


def _agree(a: set[Key], b: set[Key]) -> tuple[list[Key], list[Key]]:
    """What of ``a`` has no finding of its kind in ``b`` within ONSET_TOLERANCE, and the reverse."""
    def unmatched(x: set[Key], y: set[Key]) -> list[Key]:
        return sorted(k for k in x if not any(k[:2] == o[:2] and abs(k[2] - o[2]) <= ONSET_TOLERANCE for o in y))
    return unmatched(a, b), unmatched(b, a)


@pytest.mark.parametrize("shape", [*HARD, *BENIGN, None])
def test_replay_and_the_operator_find_the_same(agreement: tuple[fleetgen.Fleet, set[Key], set[Key], warmfold.Folds],
                                               shape: str | None) -> None:
    """On the agent with ``shape`` (None: the plain agent) both find the same kinds with the same
    onsets; on a hard shape both find its label's kind."""
    fleet, replayed, live, _ = agreement
    agent = next(a for a in fleet.agents if a.shape == shape)
    mine_replay = {k for k in replayed if k[0] == agent.name}
    mine_live = {k for k in live if k[0] == agent.name}
    only_replay, only_live = _agree(mine_replay, mine_live)
    minutes = [(k[1], round((k[2] - fleet.start) / 60, 1)) for k in (*only_replay, *only_live)]
    assert not only_replay and not only_live, (
        f"{shape} on {agent.name}: replay only {only_replay}, operator only {only_live} (minutes {minutes})")
    if shape in HARD:
        assert any(k[1] == fleetgen.POSITIVE[shape] for k in mine_replay), (shape, mine_replay)


def test_the_operator_folded_each_anchor_move_ahead(
        agreement: tuple[fleetgen.Fleet, set[Key], set[Key], warmfold.Folds]) -> None:
    """The findings above came through states folded ahead: the anchors' moves took up the
    states folded ahead of them, and folds from an anchor were little more than each agent's
    first (without folding ahead, one more at every move)."""
    fleet, _, _, folds = agreement
    moves = len(fleet.agents) * ((int(HOURS * 60) - 40) // warmfold.ANCHOR_MINUTES - 2)  # at least
    assert folds.ahead_used >= moves > 0, (folds.ahead_used, folds.prepared, folds.cold)
    assert folds.cold <= 2 * len(fleet.agents), (folds.cold, folds.ahead_used)
