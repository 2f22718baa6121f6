"""The anchored warm fold (core/warmfold.py) gives, cycle after cycle, exactly the findings of a
fold of the detectors from an empty state at the anchor, however the window's minutes change.

The fleets are the independent generator's (``core/fleetgen.py``) on seeds used nowhere else, so
every anomaly shape passes through kept states; the operator's cycle is simulated: a window of
the lookback plus the anchor's minutes ending at each minute, its last minutes re-read (new
objects) every cycle as the incremental fetcher re-reads them.
"""

from __future__ import annotations

import dataclasses
import gc
import pickle
from collections.abc import Sequence
from typing import Any

import bucketed
import pytest

from fleetwarden.core import detectors, findings, fleetgen, series, spec, warmfold

MINUTE = 60
LOOKBACK = 30  # minutes: shorter than the operator's 90, so a test fleet re-anchors many times
ANCHOR = 7
PARAMS = spec.AnomalyParams()


FLEET = bucketed.agent_minutes(seed=901, agents=len(fleetgen.SHAPES), hours=2.0)


def _refold(window: Sequence[series.AgentMinute], params: spec.AnomalyParams = PARAMS) -> list[findings.Finding]:
    ds = detectors.DetectorSet(params, window[0].agent, window[0].namespace)
    return [f for m in window for f in ds.step(m)]


def _window(ms: Sequence[series.AgentMinute], end: int, fold_start: int) -> list[series.AgentMinute]:
    """The cycle's window: the minutes from the anchor to ``end``, the last TAIL re-read as new
    objects, the newest one seen in part (a scrape of its end is still to come)."""
    settled_before = end - warmfold.TAIL_MINUTES * MINUTE
    out = [m if m.minute < settled_before else dataclasses.replace(m) for m in ms if fold_start <= m.minute < end]
    if out and out[-1].minute == end - MINUTE:
        m = out[-1]
        out[-1] = dataclasses.replace(m, llm_calls=m.llm_calls // 2, tokens=m.tokens // 2,
                                      output_tokens=m.output_tokens // 2)
    return out


def _as(kind: str, window: list[series.AgentMinute]) -> Sequence[series.AgentMinute]:
    """The window as a list, or as the operator's fetcher hands it out: a compact run, rebuilt
    every cycle (the kept state must match it by its rows, not by its objects)."""
    if kind == "list" or not window:
        return window
    return series.MinuteRun.of(window[0].agent, window[0].namespace, window)


def _cycles(ms: Sequence[series.AgentMinute]) -> range:
    first = ms[0].minute + (LOOKBACK + ANCHOR) * MINUTE
    return range(first, ms[-1].minute + 2 * MINUTE, MINUTE)


def test_anchor_moves_every_anchor_minutes_and_keeps_the_lookback() -> None:
    for agent in ("a", "support-7", "procurement"):
        anchors = []
        for start in range(0, 40 * MINUTE, MINUTE):
            at = warmfold.anchor(float(start), ANCHOR, "ns", agent)
            assert start < at <= start + ANCHOR * MINUTE  # the fold sees the lookback, at most ANCHOR-1 more
            assert (at // MINUTE) % ANCHOR == warmfold.phase("ns", agent, ANCHOR)
            anchors.append(at)
        assert all(anchors.count(a) == ANCHOR for a in anchors[ANCHOR:-ANCHOR])  # one anchor lasts ANCHOR cycles


@pytest.mark.parametrize("kind", ["list", "run"])
def test_every_cycle_gives_the_findings_of_a_fold_from_the_anchor(kind: str) -> None:
    folds = warmfold.Folds()
    compared = found = 0
    for (namespace, agent), ms in sorted(FLEET.items()):
        for end in _cycles(ms):
            start = end - (LOOKBACK + ANCHOR) * MINUTE
            at = warmfold.anchor(start, ANCHOR, namespace, agent)
            window = _as(kind, _window(ms, end, at))
            if not window:
                continue
            warm = folds.findings(namespace, agent, window, end, PARAMS, at)
            assert warm == _refold(window), (agent, end)
            compared += 1
            found += len(warm)
            folds.sweep(start)
    assert found > 0  # the shapes were found through kept states
    assert folds.warm > 5 * folds.cold  # and most cycles restored one
    assert compared == folds.warm + folds.cold
    assert len(folds) <= len(FLEET)


def test_states_kept_once_the_dictionary_is_trained_are_smaller_and_fold_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first states a Folds keeps train a zstd dictionary; the states kept after it are
    compressed with it and restored with it, those kept before still read without it, and every
    cycle still gives the findings of a fold from the anchor."""
    folds = warmfold.Folds()
    restores: list[tuple[bool, bool]] = []  # (the state has the dictionary, the dictionary was trained)
    real_loads = warmfold.loads

    def loads(blob: bytes, trained: warmfold.Trained | None = None,
              params: spec.AnomalyParams | None = None) -> detectors.DetectorSet:
        restores.append((trained is not None, folds.trained is not None))
        return real_loads(blob, trained, params)
    monkeypatch.setattr(warmfold, "loads", loads)
    # cycle after cycle, each over the fleet, as the operator folds (each agent's state is kept again
    # within two minutes of the dictionary's training)
    for end, (namespace, agent) in sorted((end, key) for key, ms in FLEET.items() for end in _cycles(ms)):
        ms = FLEET[namespace, agent]
        at = warmfold.anchor(end - (LOOKBACK + ANCHOR) * MINUTE, ANCHOR, namespace, agent)
        window = _as("run", _window(ms, end, at))
        if window:
            assert folds.findings(namespace, agent, window, end, PARAMS, at) == _refold(window), (agent, end)
    assert folds.trained is not None
    assert (False, True) in restores  # a state kept before the dictionary, read after it was trained
    assert sum(1 for r in restores if r == (True, True)) > 100
    kept = [s for s in folds._states.values() if s.trained is folds.trained]
    assert len(kept) == len(folds._states) > 0
    alone = sum(len(warmfold.compress(warmfold.pickled(real_loads(s.blob, s.trained, s.params)))) for s in kept)
    assert sum(len(s.blob) for s in kept) < 0.9 * alone


def test_a_dictionary_zstd_cannot_train_leaves_the_states_compressed_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmfold, "_TRAIN_STATES", 3)
    folds = warmfold.Folds()
    for raw in (b"abc", b"abd", b"abe"):
        folds._sample(raw)
    assert folds.trained is None and folds._samples is None  # given up: tried once
    (namespace, agent), ms = sorted(FLEET.items())[0]
    end = _cycles(ms)[5]
    at = warmfold.anchor(end - (LOOKBACK + ANCHOR) * MINUTE, ANCHOR, namespace, agent)
    window = _window(ms, end, at)
    assert folds.findings(namespace, agent, window, end, PARAMS, at) == _refold(window)
    assert all(s.trained is None for s in folds._states.values())


def _with_a_finding_kept() -> tuple[str, str, int, int, list[series.AgentMinute]]:
    """A cycle whose window has a finding revealed by a minute that a state keeps."""
    for (namespace, agent), ms in sorted(FLEET.items()):
        for end in _cycles(ms):
            at = warmfold.anchor(end - (LOOKBACK + ANCHOR) * MINUTE, ANCHOR, namespace, agent)
            window = _window(ms, end, at)
            settled_before = end - warmfold.TAIL_MINUTES * MINUTE
            if window and any(f.time <= settled_before for f in _refold(window)):
                return namespace, agent, end, at, window
    raise AssertionError("no finding in the fleet")


@pytest.mark.parametrize("kind", ["list", "run"])
def test_a_changed_minute_already_kept_is_folded_again(kind: str) -> None:
    """A late sample that changes a minute already kept (or one that disappears) is not stepped
    over: the window is folded again from the anchor."""
    namespace, agent, end, at, window = _with_a_finding_kept()
    folds = warmfold.Folds()
    folds.findings(namespace, agent, _as(kind, window), end, PARAMS, at)
    warm = folds.warm
    assert folds.findings(namespace, agent, _as(kind, list(window)), end, PARAMS, at) == _refold(window)
    assert folds.warm == warm + 1  # the same minutes anew: the state holds
    settled = [i for i, m in enumerate(window) if m.minute < end - warmfold.TAIL_MINUTES * MINUTE]
    idle = [dataclasses.replace(m, inference_cost_usd=0.0, tool_cost_usd=0.0, tokens=0, output_tokens=0,
                                llm_calls=0, tool_calls=series.NO_TOOLS, tool_costs=series.NO_TOOLS)
            if i in settled else m for i, m in enumerate(window)]
    assert _refold(idle) != _refold(window)  # the change matters to the detectors
    cold = folds.cold
    assert folds.findings(namespace, agent, _as(kind, idle), end, PARAMS, at) == _refold(idle)
    assert folds.cold == cold + 1
    dropped = window[:1] + window[2:]  # a kept minute gone
    assert folds.findings(namespace, agent, _as(kind, dropped), end, PARAMS, at) == _refold(dropped)
    assert folds.cold == cold + 2


def test_other_parameters_or_anchor_fold_again() -> None:
    (namespace, agent), ms = sorted(FLEET.items())[0]
    folds = warmfold.Folds()
    end = _cycles(ms)[10]
    at = warmfold.anchor(end - (LOOKBACK + ANCHOR) * MINUTE, ANCHOR, namespace, agent)
    window = _window(ms, end, at)
    folds.findings(namespace, agent, window, end, PARAMS, at)
    quiet = PARAMS.model_copy(update={"cost_shift": PARAMS.cost_shift.model_copy(update={"enabled": False})})
    assert folds.findings(namespace, agent, window, end, quiet, at) == _refold(window, quiet)
    assert folds.cold == 2
    later = [m for m in window if m.minute >= at + MINUTE]
    assert folds.findings(namespace, agent, later, end, quiet, at + MINUTE) == _refold(later, quiet)
    assert folds.cold == 3


def test_sweep_forgets_states_no_window_can_use() -> None:
    folds = warmfold.Folds()
    ahead: list[tuple[str, str, list[series.AgentMinute], int, int]] = []
    for (namespace, agent), ms in FLEET.items():
        end = _cycles(ms)[0]
        at = warmfold.anchor(end - (LOOKBACK + ANCHOR) * MINUTE, ANCHOR, namespace, agent)
        window = _window(ms, end, at)
        folds.findings(namespace, agent, window, end, PARAMS, at)
        if folds.prepare(namespace, agent, window, end, PARAMS, at + MINUTE):  # a state folded ahead
            ahead.append((namespace, agent, window, end, at + MINUTE))
    assert len(folds) == len(FLEET) and ahead
    assert not any(folds.prepare(n, a, w, e, PARAMS, at) for n, a, w, e, at in ahead)  # kept
    folds.sweep(float(max(ms[-1].minute for ms in FLEET.values())))
    assert len(folds) == 0
    assert all(folds.prepare(n, a, w, e, PARAMS, at) for n, a, w, e, at in ahead)  # forgotten: folded again


@pytest.mark.parametrize("tools", [series.NO_TOOLS, {"crm.search": 3.0}])
def test_kept_state_restores_read_only_tool_maps(tools: dict[str, float]) -> None:
    ds = detectors.DetectorSet(PARAMS, "a", "ns")
    m = series.AgentMinute(agent="a", namespace="ns", minute=600, llm_calls=2, tokens=500,
                           tool_calls=series.NO_TOOLS if not tools else warmfold._proxy_of(dict(tools)))
    ds.step(m)
    restored = warmfold.loads(warmfold.dumps(ds), params=ds.params)
    kept = restored.tools._short[-1][1]  # the minute's tool map, as the detector keeps it
    assert dict(kept) == dict(tools) and type(kept) is type(m.tool_calls)
    for minute in range(660, 660 + 20 * MINUTE, MINUTE):
        nxt = dataclasses.replace(m, minute=minute, llm_calls=minute % 7)
        assert restored.step(nxt) == ds.step(nxt)


def test_a_kept_state_refers_to_its_parameters_and_is_restored_with_those_handed_to_it() -> None:
    """A kept state holds no copy of its parameters (a pydantic model and its four parts), only a
    reference: restored, its detectors hold the parameters handed to ``loads``, and step as before;
    restored without them, it says so. A detector holding parameters of its own keeps a copy."""
    (namespace, agent), ms = sorted(FLEET.items())[1]
    params = spec.AnomalyParams(cost_shift=spec.CostShiftParams(ratio=2.5))
    ds = detectors.DetectorSet(params, agent, namespace)
    for m in ms[:60]:
        ds.step(m)
    raw = warmfold.pickled(ds)
    assert b"Params" not in raw and b"ratio" not in raw
    equal = params.model_copy(deep=True)
    restored = warmfold.loads(warmfold.compress(raw), params=equal)
    assert restored.params is equal and restored.shift.p is equal.cost_shift
    assert restored.loop.p is restored.plateau.p is restored.task.p is equal.runaway_loop
    assert restored.spike.p is equal.model_update_spike and restored.tools.p is equal.tool_call_explosion
    for m in ms[60:120]:
        assert restored.step(m) == ds.step(m)
    with pytest.raises(pickle.UnpicklingError, match="without its parameters"):
        warmfold.loads(warmfold.compress(raw))
    ds.shift.p = spec.CostShiftParams(ratio=3.0)  # not the set's: kept whole
    back = warmfold.loads(warmfold.dumps(ds), params=params)
    assert back.shift.p == spec.CostShiftParams(ratio=3.0) and back.shift.p is not params.cost_shift


def test_the_evaluation_judges_the_fold_from_the_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the whole evaluation (the in-view rule and the incidents carried cycle to cycle):
    folds and an anchor give the findings of an evaluation of the minutes from the anchor on,
    refolded, with the lookback starting at the anchor; and the anchor is what it judged in view."""
    from fleetwarden.core import decision, evaluate

    judged_from: list[float] = []
    in_view = detectors.in_view

    def recorded(out: Any, start: float, params: spec.AnomalyParams) -> list[findings.Finding]:
        judged_from.append(start)
        return in_view(out, start, params)
    monkeypatch.setattr(detectors, "in_view", recorded)
    lookback = 90  # the operator's: the in-view rule needs the hour before an onset and more
    fleet = bucketed.agent_minutes(seed=902, agents=3, hours=3.5, shapes=("task_loop", "tool_ramp", "cost_shift"))
    for (namespace, agent), ms in sorted(fleet.items()):
        budget = spec.AgentBudget.model_validate({
            "metadata": {"name": "b", "namespace": namespace},
            "spec": {"limits": [{"window": "day", "amountUSD": 1e9}], "killSwitch": {"window": "day"}}})
        deployment = decision.AgentDeployment(name=agent, namespace=namespace)
        folds = warmfold.Folds()
        warm_prev: dict[str, object] = {}
        cold_prev: dict[str, object] = {}
        warm_new, cold_new = [], []
        for end in range(ms[0].minute + (lookback + ANCHOR) * MINUTE, ms[-1].minute + 2 * MINUTE, MINUTE):
            start = end - (lookback + ANCHOR) * MINUTE
            at = warmfold.anchor(start, ANCHOR, namespace, agent)
            fetched = _window(ms, end, start + MINUTE)
            common = {"budget": budget, "agents": [deployment], "spend": dict.fromkeys(spec.Window, 1.0),
                      "now": end + 20.0}
            warm = evaluate.evaluate(decision.EvaluationInput(
                minutes={agent: fetched}, previous=warm_prev, lookback_start=float(start),  # type: ignore[arg-type]
                anchor_minutes=ANCHOR, folds=folds, memo=decision.Memo(), **common))  # type: ignore[arg-type]
            cold = evaluate.evaluate(decision.EvaluationInput(
                minutes={agent: [m for m in fetched if m.minute >= at]}, previous=cold_prev,  # type: ignore[arg-type]
                lookback_start=float(at), **common))  # type: ignore[arg-type]
            assert judged_from[-2:] == [at, at]  # what is in view is judged from the fold's start, both ways
            warm_prev, cold_prev = warm.status.body(), cold.status.body()
            warm_new += [f for f in warm.new_findings if f.kind in findings.ANOMALY_KINDS]
            cold_new += [f for f in cold.new_findings if f.kind in findings.ANOMALY_KINDS]
        assert warm_new == cold_new, agent
    assert warm_new and folds.warm > folds.cold


def test_two_sources_of_one_agent_are_folded_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two budgets may read one agent from two sources (other minutes, same count): neither the
    minute's memo nor the kept states give one the other's findings."""
    from fleetwarden.core import decision, stages

    (namespace, agent), ms = sorted(FLEET.items())[0]
    deployment = decision.AgentDeployment(name=agent, namespace=namespace)
    window = ms[:40]
    memo = decision.Memo()
    folded: list[int] = []
    refold = stages.detector_findings

    def counted(*args: Any) -> list[findings.Finding]:
        folded.append(1)
        return refold(*args)
    monkeypatch.setattr(stages, "detector_findings", counted)
    for source in ("fleetwarden", "fleetwarden", "litellm"):
        stages.cached_detector_findings(memo, deployment, window, PARAMS, source)
    assert len(folded) == 2  # the second read of one source came from the memo, the other source's did not
    folds = warmfold.Folds()
    end = window[-1].minute + MINUTE
    for source in ("fleetwarden", "litellm", "fleetwarden"):
        folds.findings(namespace, agent, window, end, PARAMS, window[0].minute, source)
    assert (folds.cold, folds.warm, len(folds)) == (2, 1, 2)


def test_a_kept_state_holds_cost_shifts_baselines_as_they_were() -> None:
    """A baseline's observations, sliced only when a window needs them, are at every later minute
    those before its cut when it was made; a state pickled after any minute (its baselines stored
    without observations) has every baseline a later window can use as it was, with its computed
    level and summaries; and a fold restored from its pickle after every minute finds what the
    fold kept in memory finds. Cost-shift fleets of their own seed, and the busy and slow agents
    of every shape."""
    fleet = bucketed.agent_minutes(seed=903, agents=6, hours=3.0, shapes=("cost_shift", "cost_shift", *fleetgen.SHAPES[:4]))
    compared = computed = 0
    for ms in fleet.values():
        live = detectors.DetectorSet(PARAMS, ms[0].agent, ms[0].namespace)
        hopped = detectors.DetectorSet(PARAMS, ms[0].agent, ms[0].namespace)
        found_live, found_hopped = [], []
        made: dict[tuple[int, int], dict[str, list[Any]]] = {}  # (reset count, cut) -> observations when made
        resets = 0
        for m in ms:
            before = live.shift._bases
            found_live += live.step(m)
            found_hopped += hopped.step(m)
            resets += live.shift._bases is not before  # a declared change started the history over
            for cut, base in live.shift._bases.items():
                if base is not None and (resets, cut) not in made:
                    lo = cut - detectors.SHIFT_BASELINE_MINUTES * MINUTE
                    made[(resets, cut)] = {stat: live.shift._since(stat, lo, cut) for stat in detectors.STATS}
            hopped = warmfold.loads(warmfold.dumps(hopped), params=hopped.params)
            restored = warmfold.loads(warmfold.dumps(live), params=live.params).shift
            usable = m.minute - (max(detectors.SHIFT_WINDOWS) - 1) * MINUTE  # a window's earliest cut from now on
            for cut, base in live.shift._bases.items():
                again = restored._bases[cut]
                if base is None or cut < usable:
                    assert again is None or base is not None
                    continue
                assert again is not None and again.pre(restored) == base.pre(live.shift) == made[(resets, cut)]
                assert (again.cut, again._known, again._level, again._summaries) == \
                    (base.cut, base._known, base._level, base._summaries)
                compared += 1
                computed += base._known
        assert found_hopped == found_live
    assert compared > 1000 and computed > 100  # the fleets do keep baselines, with levels computed


def _restores_counted(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The kept states restored from now on (warmfold.loads), each appended to the list returned."""
    restored: list[bytes] = []
    real_loads = warmfold.loads

    def loads(blob: bytes, trained: warmfold.Trained | None = None,
              params: spec.AnomalyParams | None = None) -> detectors.DetectorSet:
        restored.append(blob)
        return real_loads(blob, trained, params)
    monkeypatch.setattr(warmfold, "loads", loads)
    return restored


def test_an_agent_with_nothing_new_gets_its_kept_findings_without_a_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once every minute of the window is kept (an agent quiet since), a cycle gives the kept
    findings, those of a fold from the anchor, and restores no state: nothing is left to step."""
    namespace, agent, end, at, window = _with_a_finding_kept()
    settled = [m for m in window if m.minute < end - warmfold.TAIL_MINUTES * MINUTE]
    assert any(f.time <= settled[-1].minute + MINUTE for f in _refold(settled))
    folds = warmfold.Folds()
    assert folds.findings(namespace, agent, settled, end, PARAMS, at) == _refold(settled)  # keeps them all
    restored = _restores_counted(monkeypatch)
    for later in (end + MINUTE, end + 20 * MINUTE):
        assert folds.findings(namespace, agent, settled, later, PARAMS, at) == _refold(settled)
    assert restored == [] and (folds.warm, folds.unchanged, folds.cold) == (2, 2, 1)
    longer = settled + [dataclasses.replace(window[-1], minute=end + 5 * MINUTE)]  # something new: restored
    assert folds.findings(namespace, agent, longer, end + 20 * MINUTE, PARAMS, at) == _refold(longer)
    assert len(restored) == 1 and (folds.warm, folds.unchanged, folds.cold) == (3, 2, 1)


@pytest.mark.parametrize("live_minutes", [5, 6])  # the agent goes quiet in either of its parities
def test_a_live_agents_state_is_kept_every_other_minute_and_once_more_when_it_goes_quiet(
        monkeypatch: pytest.MonkeyPatch, live_minutes: int) -> None:
    """A live agent (a new minute each minute) has its state kept every other minute, in the minutes of
    its anchor's parity (one settled minute more), the minutes between restoring the older state and
    stepping one minute more; when the agent goes quiet its state is kept once its last minute has
    settled, whatever the parity, and the folds after restore nothing. Every fold gives the findings
    of a fold from the anchor."""
    (namespace, agent), ms = sorted(FLEET.items())[0]
    kept: list[detectors.DetectorSet] = []
    real_pickled = warmfold.pickled
    monkeypatch.setattr(warmfold, "pickled", lambda ds: kept.append(ds) or real_pickled(ds))
    restored = _restores_counted(monkeypatch)
    folds = warmfold.Folds()

    def anchor(end: int) -> int:
        return warmfold.anchor(end - (LOOKBACK + ANCHOR) * MINUTE, ANCHOR, namespace, agent)

    def last_settled(end: int) -> int:  # the minute the first fold's state is kept after
        window = _window(ms, end, anchor(end))
        return window[warmfold._settled(window, end - warmfold.TAIL_MINUTES * MINUTE) - 1].minute
    anchored = next(end for end in _cycles(ms) if anchor(end - MINUTE) != anchor(end))  # just re-anchored
    at = anchor(anchored)
    # the first fold's state kept out of the agent's parity: its next state is kept a minute later
    first = next(end for end in (anchored, anchored + MINUTE) if (last_settled(end) - at) // MINUTE % 2)
    live = range(first, first + live_minutes * MINUTE, MINUTE)
    assert {anchor(end) for end in live} == {at}  # (ANCHOR is 7 minutes)
    keeps = []
    for end in live:
        window = _window(ms, end, at)
        before = len(kept)
        assert folds.findings(namespace, agent, window, end, PARAMS, at) == _refold(window)
        if len(kept) > before:
            keeps.append(folds._states[namespace, agent, ""].folded)
    assert warmfold.KEEP_MINUTES == 2 and len(restored) == live_minutes - 1
    assert keeps[1] - keeps[0] == 1 and len(keeps) == 1 + live_minutes // 2  # the first fold, then every other
    assert all(b - a == 2 for a, b in zip(keeps[1:], keeps[2:], strict=False))
    assert all((window[n - 1].minute - at) // MINUTE % 2 == 0 for n in keeps[1:])  # the agent's parity
    quiet = _window(ms, live[-1], at)  # no minute after the last cycle's
    for later in range(live[-1] + MINUTE, live[-1] + (warmfold.TAIL_MINUTES + 3) * MINUTE, MINUTE):
        assert folds.findings(namespace, agent, quiet, later, PARAMS, at) == _refold(quiet)
    assert folds._states[namespace, agent, ""].folded == len(quiet)  # kept once the last minute settled
    settled_at = len(restored)
    assert folds.findings(namespace, agent, quiet, later + 10 * MINUTE, PARAMS, at) == _refold(quiet)
    assert len(restored) == settled_at and folds.unchanged >= 2  # nothing to restore since


def _ahead_of(start: int, namespace: str, agent: str) -> int | None:
    """The anchor the agent moves to at the next minute, None when it stays."""
    at, nxt = (warmfold.anchor(s, ANCHOR, namespace, agent) for s in (start, start + MINUTE))
    return nxt if nxt != at else None


@pytest.mark.parametrize("kind", ["list", "run"])
def test_folding_ahead_takes_every_anchor_move_off_the_cold_folds(kind: str) -> None:
    """Each minute before an anchor moves, the new anchor's fold is done ahead: the minute the
    anchor moves, the fold restores it (no fold from the anchor), and every cycle still gives
    the findings of a fold from the anchor."""
    folds = warmfold.Folds()
    moves = found = bare = 0
    for (namespace, agent), ms in sorted(FLEET.items()):
        prepared, last_at = False, None
        for end in _cycles(ms):
            start = end - (LOOKBACK + ANCHOR) * MINUTE
            at = warmfold.anchor(start, ANCHOR, namespace, agent)
            window = _as(kind, _window(ms, end, at))
            if not window:
                continue
            moved, cold = folds.ahead_used, folds.cold
            warm = folds.findings(namespace, agent, window, end, PARAMS, at)
            assert warm == _refold(window), (agent, end)
            found += len(warm)
            moves += folds.ahead_used - moved
            # from the anchor: only an agent's first fold, and a move with nothing folded ahead
            assert folds.cold - cold == (last_at is None or (at != last_at and not prepared)), (agent, end)
            assert folds.ahead_used - moved == (at != last_at and prepared)
            last_at = at
            ahead = _ahead_of(start, namespace, agent)
            prepared = False
            if ahead is not None:
                # nothing settled from the next anchor on (a quiet agent): nothing to fold ahead
                settled = any(ahead <= m.minute < end - warmfold.TAIL_MINUTES * MINUTE for m in window)
                prepared = folds.prepare(namespace, agent, window, end, PARAMS, ahead)
                assert prepared == settled
                bare += not settled
                assert not folds.prepare(namespace, agent, window, end, PARAMS, ahead)  # once per anchor
            folds.sweep(start)
    assert found > 0
    assert moves == folds.ahead_used > 2 * len(FLEET) > bare
    assert folds.cold <= len(FLEET) + bare  # the agents' first cycles and the moves with nothing folded ahead


@pytest.mark.parametrize("kind", ["list", "run"])
def test_a_minute_changed_after_folding_ahead_is_folded_again(kind: str) -> None:
    """A settled minute that changes between the fold ahead and the anchor's move (a late
    sample) is not stepped over: the window is folded from the new anchor."""
    for (namespace, agent), ms in sorted(FLEET.items()):
        end = next((e for e in _cycles(ms) if _ahead_of(e - (LOOKBACK + ANCHOR) * MINUTE, namespace, agent)), None)
        if end is not None:
            break
    assert end is not None
    start = end - (LOOKBACK + ANCHOR) * MINUTE
    ahead = _ahead_of(start, namespace, agent)
    assert ahead is not None
    folds = warmfold.Folds()
    at = warmfold.anchor(start, ANCHOR, namespace, agent)
    assert folds.prepare(namespace, agent, _as(kind, _window(ms, end, at)), end, PARAMS, ahead)
    later = _window(ms, end + MINUTE, ahead)
    assert later[0].minute == ahead
    changed = [dataclasses.replace(later[0], llm_calls=later[0].llm_calls + 50, tokens=later[0].tokens + 90_000)]
    changed += later[1:]
    assert _refold(changed) != _refold(later) or changed != later
    assert folds.findings(namespace, agent, _as(kind, changed), end + MINUTE, PARAMS, ahead) == _refold(changed)
    assert (folds.cold, folds.warm, folds.ahead_used) == (1, 0, 1)  # taken up, found unequal, folded again


def test_the_evaluation_folds_ahead_only_late_in_the_minute_and_finds_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the whole evaluation, three cycles a minute: the fold ahead runs only from the
    agent's second of the minute (never in the cycle just after the minute turned), every anchor
    move after the first fold restores it, and the new findings are those of an evaluation
    without kept states."""
    from fleetwarden.core import decision, evaluate

    seconds: list[float] = []
    after_end: list[float] = []  # seconds after the end of the data's minute of each fold ahead
    prepare = warmfold.Folds.prepare

    def recorded(self: warmfold.Folds, namespace: str, agent: str, window: Any, end: int, *rest: Any) -> bool:
        seconds.append(now - end - warmfold.prepare_second(namespace, agent))
        after_end.append(now - end)
        return prepare(self, namespace, agent, window, end, *rest)
    monkeypatch.setattr(warmfold.Folds, "prepare", recorded)
    lookback, found = 90, 0  # the operator's: the in-view rule needs the hour before an onset and more
    fleet = bucketed.agent_minutes(seed=903, agents=3, hours=3.5, shapes=("task_loop", "tool_ramp", "cost_shift"))
    for (namespace, agent), ms in sorted(fleet.items()):
        budget = spec.AgentBudget.model_validate({
            "metadata": {"name": "b", "namespace": namespace},
            "spec": {"limits": [{"window": "day", "amountUSD": 1e9}], "killSwitch": {"window": "day"}}})
        deployment = decision.AgentDeployment(name=agent, namespace=namespace)
        folds, memo = warmfold.Folds(), decision.Memo()
        warm_prev: dict[str, object] = {}
        cold_prev: dict[str, object] = {}
        warm_new, cold_new = [], []
        moves = 0
        first = ms[0].minute + (lookback + ANCHOR) * MINUTE
        for end in range(first, ms[-1].minute + 2 * MINUTE, MINUTE):
            start = end - (lookback + ANCHOR) * MINUTE
            moves += end > first and _ahead_of(start - MINUTE, namespace, agent) is not None
            fetched = _window(ms, end, start + MINUTE)
            for now in (end + 5.0, end + 30.0, end + 59.5):  # (the clock's minute: no data_end here)
                common = {"budget": budget, "agents": [deployment], "spend": dict.fromkeys(spec.Window, 1.0), "now": now}
                warm = evaluate.evaluate(decision.EvaluationInput(
                    minutes={agent: fetched}, previous=warm_prev, lookback_start=float(start),  # type: ignore[arg-type]
                    anchor_minutes=ANCHOR, folds=folds, memo=memo, **common))  # type: ignore[arg-type]
                at = warmfold.anchor(start, ANCHOR, namespace, agent)
                cold = evaluate.evaluate(decision.EvaluationInput(
                    minutes={agent: [m for m in fetched if m.minute >= at]}, previous=cold_prev,  # type: ignore[arg-type]
                    lookback_start=float(at), **common))  # type: ignore[arg-type]
                warm_prev, cold_prev = warm.status.body(), cold.status.body()
                warm_new += [f for f in warm.new_findings if f.kind in findings.ANOMALY_KINDS]
                cold_new += [f for f in cold.new_findings if f.kind in findings.ANOMALY_KINDS]
        assert warm_new == cold_new, agent
        assert folds.cold == 1 and folds.ahead_used == moves > 0, agent
        found += len(warm_new)
    assert found > 0
    assert seconds and min(seconds) >= 0  # never before the agent's second of the minute
    # nor in the cycles that fold the new minute (read 15-27 s after its end, its waiting shares
    # folded up to about 50 s after it): a fold ahead there made them the minute's costliest
    assert min(after_end) >= 45


def _folds_counted(monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], list[float]]:
    """Every fold of an agent's window (from a kept state or the anchor, or a refold without
    kept states) appends the time the caller set in ``clock[0]`` to ``calls``: (calls, clock)."""
    from fleetwarden.core import stages

    calls: list[float] = []
    clock = [0.0]
    findings_of, refold = warmfold.Folds.findings, stages.detector_findings

    def counted(self: warmfold.Folds, *args: Any, **kwargs: Any) -> list[findings.Finding]:
        calls.append(clock[0])
        return findings_of(self, *args, **kwargs)

    def refolded(*args: Any) -> list[findings.Finding]:
        calls.append(clock[0])
        return refold(*args)
    monkeypatch.setattr(warmfold.Folds, "findings", counted)
    monkeypatch.setattr(stages, "detector_findings", refolded)
    return calls, clock


def _day_budget(namespace: str, agent: str) -> tuple[spec.AgentBudget, Any]:
    """A budget no test's spend comes near, and the agent's Deployment."""
    from fleetwarden.core import decision

    budget = spec.AgentBudget.model_validate({
        "metadata": {"name": "b", "namespace": namespace},
        "spec": {"limits": [{"window": "day", "amountUSD": 1e9}], "killSwitch": {"window": "day"}}})
    return budget, decision.AgentDeployment(name=agent, namespace=namespace)


def _in_share(ms: Sequence[series.AgentMinute], share: int) -> tuple[str, str, list[series.AgentMinute]]:
    """The agent's minutes, in a namespace (its own, or its name with a number) that puts it in
    wait share ``share`` (``warmfold.wait_share``): (namespace, agent, minutes)."""
    agent = ms[0].agent
    namespace = next(ns for ns in (ms[0].namespace, *(f"{ms[0].namespace}-{n}" for n in range(64)))
                     if warmfold.wait_share(ns, agent) == share)
    return namespace, agent, [dataclasses.replace(m, namespace=namespace) for m in ms]


def _incident(f: findings.Finding) -> tuple[object, ...]:
    """What names a finding's incident: its kind, agent, tool and onset."""
    return f.kind, f.agent, f.tool, f.onset


CADENCES = {  # the seconds of each minute an agent is evaluated at
    "cycles": (2.0, 2.0 + warmfold.WAIT_SECONDS[1] - 1, 17.0, 32.0, 47.0),  # 15 s cycles, and one sooner
    "late, once a minute": (50.0,),  # no evaluation ends a wait within its minute
}


@pytest.mark.parametrize("cadence", sorted(CADENCES))
@pytest.mark.parametrize("share", range(warmfold.WAIT_SHARES))
def test_two_agents_in_three_fold_a_new_minute_one_or_two_evaluations_later(monkeypatch: pytest.MonkeyPatch,
                                                                            share: int, cadence: str) -> None:
    """An agent of a waiting share (``warmfold.wait_share`` 1 or 2, by its name) folds a new minute
    not at the first evaluation that sees it but at the first one ``WAIT_SECONDS[share]`` or more
    later (at 15 s cycles, the next one or the one after); until then its findings are those of
    the minute before (the same tuple). Share 0 folds at once, and so does a waiting agent with
    nothing of the minute before kept from its anchor (the first minute, and the minute its
    anchor moved), or whose anchor moves at the next minute. No finding is lost or changed:
    every evaluation's new findings are those of a fold from the anchor, in the same order, a
    waiting agent's at most as many seconds later as its wait, also when no evaluation comes
    back within the minute (its minute is folded with the next one)."""
    from fleetwarden.core import decision, evaluate, stages

    calls, clock = _folds_counted(monkeypatch)
    given: list[tuple[float, Sequence[findings.Finding]]] = []
    anchored_findings = stages.anchored_detector_findings

    def recorded(inp: decision.EvaluationInput, *args: Any) -> Sequence[findings.Finding]:
        out = anchored_findings(inp, *args)
        given.append((inp.now, out))
        return out
    monkeypatch.setattr(stages, "anchored_detector_findings", recorded)
    seconds = CADENCES[cadence]
    fold_at = next((s for s in seconds if s - seconds[0] >= warmfold.WAIT_SECONDS[share]), None) if share else None
    longest = 0.0 if not share else fold_at - seconds[0] if fold_at is not None else 60.0
    if cadence == "cycles":  # at 15 s cycles: share 1 at the cycle after the first, share 2 at the one after that
        assert fold_at == (None, 17.0, 32.0)[share]
    lookback, anchor = 90, warmfold.ANCHOR_MINUTES  # the operator's (the in-view rule needs the hour before an onset and more)
    fleet = bucketed.agent_minutes(seed=905, agents=8, hours=4.0, shapes=("task_loop", "tool_ramp", "cost_shift"))
    delayed = compared = waited = 0
    for ms in [ms for _, ms in sorted(fleet.items()) if _refold(ms)][:3]:
        namespace, agent, ms = _in_share(ms, share)
        budget, deployment = _day_budget(namespace, agent)
        folds, memo = warmfold.Folds(), decision.Memo()
        warm_prev: dict[str, object] = {}
        cold_prev: dict[str, object] = {}
        warm_new: list[tuple[float, findings.Finding]] = []
        cold_new: list[tuple[float, findings.Finding]] = []
        expected: list[float] = []
        at_before = None
        for end in range(ms[0].minute + (lookback + anchor) * MINUTE, ms[-1].minute + 2 * MINUTE, MINUTE):
            start = end - (lookback + anchor) * MINUTE
            at = warmfold.anchor(start, anchor, namespace, agent)
            waits = share > 0 and at == at_before == warmfold.anchor(start + MINUTE, anchor, namespace, agent)
            expected.append(end + (fold_at if waits and fold_at is not None else seconds[0]))
            at_before = at
            fetched = _window(ms, end, start + MINUTE)
            for second in seconds:
                clock[0] = now = end + second
                common = {"budget": budget, "agents": [deployment], "spend": dict.fromkeys(spec.Window, 1.0), "now": now}
                warm = evaluate.evaluate(decision.EvaluationInput(
                    minutes={agent: fetched}, previous=warm_prev, lookback_start=float(start),  # type: ignore[arg-type]
                    anchor_minutes=anchor, folds=folds, memo=memo, **common))  # type: ignore[arg-type]
                if waits and fold_at is not None and second < fold_at:  # what the last evaluation was given
                    assert given[-1][1] is given[-2][1], (agent, now)
                    waited += 1
                warm_prev = warm.status.body()
                warm_new += [(now, f) for f in warm.new_findings if f.kind in findings.ANOMALY_KINDS]
                if second == seconds[0]:  # a fold from the anchor, at the first evaluation of the minute
                    clock[0] = -1.0  # (its refolds are not counted)
                    cold = evaluate.evaluate(decision.EvaluationInput(
                        minutes={agent: [m for m in fetched if m.minute >= at]}, previous=cold_prev,  # type: ignore[arg-type]
                        lookback_start=float(at), **common))  # type: ignore[arg-type]
                    cold_prev = cold.status.body()
                    cold_new += [(now, f) for f in cold.new_findings if f.kind in findings.ANOMALY_KINDS]
        folded = [c for c in calls if c >= expected[0]]
        calls.clear()
        if fold_at is not None or not share:
            assert folded == expected, agent
            assert [f for _, f in warm_new] == [f for _, f in cold_new], agent
        else:  # once a minute: a waiting agent folds every other minute at most, the other every minute;
            # a minute folded with the next one is judged on the next one's data (its last minute whole)
            assert len(folded) < len(expected) and len(folded) >= len(expected) // 2, agent
            assert [_incident(f) for _, f in warm_new] == [_incident(f) for _, f in cold_new], agent
        for (warm_at, _), (cold_at, _) in zip(warm_new, cold_new, strict=True):
            assert 0 <= warm_at - cold_at <= longest
            delayed += warm_at > cold_at
        compared += len(cold_new)
    assert compared > 0 and (waited > 0) == (fold_at is not None)
    assert (delayed > 0) == (share > 0)  # the waiting shares' findings came later, share 0's never


@pytest.mark.parametrize("anchored", [True, False])
def test_an_agent_quiet_for_minutes_is_folded_once_a_minute_not_every_cycle(monkeypatch: pytest.MonkeyPatch,
                                                                             anchored: bool) -> None:
    """An agent whose last minute is a few minutes old (its tail not yet settled, so a fold
    restores its state and steps the tail) is folded at the first evaluation of each minute;
    the minute's other evaluations take its findings from the memo, which keeps them for the
    clock's minute, not for the agent's last minute (long aged out)."""
    from fleetwarden.core import decision, evaluate

    calls, clock = _folds_counted(monkeypatch)
    namespace, agent, ms = _in_share(sorted(FLEET.items())[0][1], 0)  # (a waiting one folds later: above)
    budget, deployment = _day_budget(namespace, agent)
    quiet_from = ms[0].minute + 60 * MINUTE  # the agent's last minute is the one before
    window = [m for m in ms if m.minute < quiet_from]
    folds, memo = warmfold.Folds(), decision.Memo()
    previous: dict[str, object] = {}
    for end in (quiet_from + MINUTE, quiet_from + 2 * MINUTE):
        start = end - (LOOKBACK + ANCHOR) * MINUTE
        for now in (end + 1.0, end + 15.0, end + 30.0, end + 45.0):
            clock[0] = now
            out = evaluate.evaluate(decision.EvaluationInput(
                budget=budget, agents=[deployment], spend=dict.fromkeys(spec.Window, 1.0), now=now,  # type: ignore[arg-type]
                minutes={agent: [m for m in window if m.minute >= start]}, previous=previous,  # type: ignore[arg-type]
                lookback_start=float(start), anchor_minutes=ANCHOR if anchored else 0,
                folds=folds if anchored else None, memo=memo))
            previous = out.status.body()
    assert calls == [quiet_from + MINUTE + 1.0, quiet_from + 2 * MINUTE + 1.0]


@pytest.mark.parametrize("anchored", [True, False])
def test_an_evaluation_just_after_the_turn_with_the_data_read_before_it_folds_nothing(
        monkeypatch: pytest.MonkeyPatch, anchored: bool) -> None:
    """The fleet loop reads each cycle's data before the cycle: an evaluation soon after the
    minute turned may still have the data of the minute before. Its detectors' results are those
    that data gave (kept in the memo under the data's minute), not folded again for the clock's
    new minute; the data of the new minute is folded once."""
    from fleetwarden.core import decision, evaluate

    calls, clock = _folds_counted(monkeypatch)
    namespace, agent, ms = _in_share(sorted(FLEET.items())[1][1], 0)
    budget, deployment = _day_budget(namespace, agent)
    folds, memo = warmfold.Folds(), decision.Memo()
    previous: dict[str, object] = {}
    first = ms[0].minute + (LOOKBACK + ANCHOR + 20) * MINUTE
    evaluations = []  # (the data's minute, the clock)
    for end in (first, first + MINUTE, first + 2 * MINUTE):
        evaluations += [(end, end + 20.0), (end, end + 50.0), (end, end + MINUTE + 2.0)]  # the last: after the turn
    for end, now in evaluations:
        clock[0] = now
        start = end - (LOOKBACK + ANCHOR) * MINUTE
        out = evaluate.evaluate(decision.EvaluationInput(
            budget=budget, agents=[deployment], spend=dict.fromkeys(spec.Window, 1.0), now=now,  # type: ignore[arg-type]
            minutes={agent: _window(ms, end, start + MINUTE)}, previous=previous,  # type: ignore[arg-type]
            lookback_start=float(start), data_end=end, anchor_minutes=ANCHOR if anchored else 0,
            folds=folds if anchored else None, memo=memo))
        previous = out.status.body()
    assert calls == [first + 20.0, first + MINUTE + 20.0, first + 2 * MINUTE + 20.0]


def test_a_dropped_state_goes_at_once_not_to_the_garbage_collector() -> None:
    """A fold's detectors, dropped once kept, and each state restored for a cycle then dropped, hold
    no reference cycle: they are freed when dropped. At 10,000 budgets a cycle restores thousands of
    states, and cyclic ones (a detector holding a bound method of its set did) piled up for the
    collector: hundreds of objects each, most of the operator's collection time in a cycle where
    every agent had a new minute."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for ms in FLEET.values():
            fold = detectors.DetectorSet(PARAMS, ms[0].agent, ms[0].namespace)
            for m in ms:
                fold.step(m)
            blob = warmfold.dumps(fold)
            del fold
            restored = warmfold.loads(blob, params=PARAMS)
            restored.step(dataclasses.replace(ms[-1], minute=ms[-1].minute + MINUTE))
            del restored
            assert gc.collect() == 0, ms[0].agent
    finally:
        if enabled:
            gc.enable()
