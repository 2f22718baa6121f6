"""`replay --jobs N`: the detectors in worker processes, sharded by agent, give the output of one process."""

from __future__ import annotations

import collections
import gc
import json
import signal
from pathlib import Path
from types import MappingProxyType

import pytest

from fleetwarden import cli
from fleetwarden.core import detectpool, events, manifests, pricing, replay, series

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = [str(ROOT / "examples" / name) for name in ("support-swarm", "procurement", "lead-generation")]
BUDGET = {"support": "support-swarm", "procurement": "procurement", "lead-generation": "lead-generation"}
BROKEN = '{"time": "2026-01-05T01:00:00Z", "type": "llm", "agent": "x", "task_id": "t", "model": "gpt-4o"}\n'


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A simulated fleet (a runaway loop on one agent) under the examples' budgets and policies, a third
    of the events without cost_usd (priced by replay), one event late, and a broken line in the middle:
    the file and the broken line's number."""
    tmp = tmp_path_factory.mktemp("fleet")
    raw = tmp / "raw.jsonl"
    assert cli.main(["simulate", "--fast", "--duration", "3h", "--scenario", "runaway-loop", "--at", "60",
                     "--seed", "4", "--agents", "3", "--events", str(raw)]) == 0
    lines = []
    for i, line in enumerate(raw.read_text().splitlines()):
        event = json.loads(line)
        namespace = event.get("namespace", "default")
        if namespace not in BUDGET:
            event["namespace"] = namespace = "support"
        event.setdefault("labels", {})["fleetwarden.dev/budget"] = BUDGET[namespace]
        if i % 3 == 0:
            event.pop("cost_usd", None)
        lines.append(json.dumps(event) + "\n")
    middle = len(lines) // 2
    late = json.loads(lines[middle + 10])
    late["time"] = events.parse_time(late["time"]) - 600  # type: ignore[operator]
    lines.insert(middle + 20, json.dumps(late) + "\n")
    lines.insert(middle, BROKEN)
    path = tmp / "fleet.jsonl"
    path.write_text("".join(lines))
    return path, middle + 1


def _replay(path: Path, jobs: int) -> tuple[list[dict[str, object]], replay.Stats, list[str]]:
    loaded = manifests.load(EXAMPLES)
    stats = replay.Stats()
    errs: list[str] = []
    found = [f.to_dict() for f in replay.run(events.iter_events(str(path)), loaded.budgets, loaded.policies,
                                             pricing.PriceTable.from_config(None), stats=stats, jobs=jobs,
                                             on_error=lambda e: errs.append(str(e)))]
    return found, stats, errs


def test_jobs_give_the_findings_of_one_process(fleet: tuple[Path, int]) -> None:
    path, _ = fleet
    one, stats1, errs1 = _replay(path, 1)
    kinds = collections.Counter(f["kind"] for f in one)
    # the fleet exercises the detectors (what the pool runs) and the rest (what stays in this process)
    assert kinds["runaway_loop"] >= 1 and len(kinds) >= 3, kinds
    assert stats1.broken == 1 and stats1.late >= 1
    for jobs in (2, 3):
        many, stats, errs = _replay(path, jobs)
        assert many == one
        assert stats == stats1 and errs == errs1


def test_cli_jobs_name_the_broken_line_and_print_the_same_bytes(fleet: tuple[Path, int], capfd) -> None:  # type: ignore[no-untyped-def]
    path, broken_line = fleet
    outputs = []
    for jobs in ("1", "2"):
        args = ["replay", "--events", str(path), "--output", "json", "--jobs", jobs]
        assert cli.main(args + [arg for d in EXAMPLES for arg in ("-f", d)]) == 1
        out, err = capfd.readouterr()
        assert f"{path}:{broken_line}: field 'input_tokens': required for type 'llm'" in err.splitlines()
        assert "1 broken" in err
        outputs.append(out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") >= 3


def test_cli_refuses_jobs_below_one(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "e.jsonl"
    path.write_text("")
    with pytest.raises(SystemExit) as exc:
        cli.main(["replay", "--events", str(path), "--jobs", "0"])
    assert exc.value.code == 2
    assert "argument --jobs/-j: must be a whole number of processes, at least 1, got '0'" in capsys.readouterr().err


def test_a_minute_crosses_to_a_worker_unchanged() -> None:
    am = series.make("a", "ns", 120, 0.5, 0.25, 0.0, 1200, 300, 3, 1, 0, 0, 2.0,  # type: ignore[operator]
                     MappingProxyType({"kb.search": 2.0}), series._EMPTY, "gpt-4o", "v2", "triage",
                     4, 900, 61.5, "t-1", 500, 300.0, "t-0")
    back = detectpool.unpack(detectpool.pack(am))
    assert back == am and back.tool_costs is series._EMPTY and dict(back.tool_calls) == {"kb.search": 2.0}


def test_a_worker_that_fails_stops_the_replay_with_its_error() -> None:
    with detectpool.DetectorPool(1) as pool:
        am = series.AgentMinute(agent="a", namespace="ns", minute=60)
        pool.submit([(0, None, detectpool.pack(am))])  # an agent's first minute without its parameters
        with pytest.raises(RuntimeError, match="a detector worker failed: ValueError: the first minute of agent 0 came without its parameters"):
            pool.collect()


def test_a_late_finding_after_a_close_the_pool_judges_keeps_its_place() -> None:
    """A late event's finding (at the closed minute's end, before findings already due) comes after them,
    its time raised to theirs, as in one process: it is not part of the release that waits for the pool."""
    from tests.unit.core.test_replay import T0, TABLE, ev, policy, spend

    p = policy(tools={"deny": ["bad", "worse"]})
    evs = [spend(T0 + s, 0.01) for s in range(0, 360, 10)]
    evs.append(ev(T0 + 260, "tool", tool="bad", agent="b"))  # due at the next release (horizon T0 + 290)
    evs.sort(key=lambda e: e.time)
    evs += [spend(T0 + 410, 0.01),  # closes the minutes before T0 + 240; releases up to T0 + 290
            ev(T0 + 200, "tool", tool="worse", agent="b"),  # late: found at T0 + 240, after the T0 + 260 one
            spend(T0 + 420, 0.01)]
    outs = [[(f.kind, f.tool, f.time) for f in replay.run(evs, [], [p], TABLE, jobs=jobs)] for jobs in (1, 2)]
    assert outs[0] == [("tool_not_allowed", "bad", T0 + 260), ("tool_not_allowed", "worse", T0 + 260)]
    assert outs[1] == outs[0]


def test_the_replay_command_collects_garbage_at_its_own_young_threshold_and_restores_the_old(
        fleet: tuple[Path, int], monkeypatch: pytest.MonkeyPatch, capfd) -> None:  # type: ignore[no-untyped-def]
    from fleetwarden.commands import replay as command

    path, _ = fleet
    seen: list[tuple[int, int, int]] = []
    real = replay.run

    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(gc.get_threshold())
        yield from real(*args, **kwargs)

    monkeypatch.setattr(replay, "run", run)
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 12)
    try:
        assert cli.main(["replay", "--events", str(path), "--output", "json"]) == 1  # (its one broken line)
        assert gc.get_threshold() == (700, 11, 12)  # restored
    finally:
        gc.set_threshold(*before)
    assert seen == [(command.YOUNG_THRESHOLD, 11, 12)]
    assert command.YOUNG_THRESHOLD > 700 and capfd.readouterr().out.count("\n") >= 1  # the findings still out


def test_a_detector_worker_collects_at_the_thresholds_it_is_given() -> None:
    """The pool hands its workers this process's thresholds: a spawned worker would start at CPython's."""
    import multiprocessing

    before = gc.get_threshold()
    parent, child = multiprocessing.Pipe()
    parent.send(None)  # no batch: the worker ends at once, its thresholds set
    try:
        detectpool._worker(child, (12_345, 6, 7))
        assert gc.get_threshold() == (12_345, 6, 7)
    finally:
        gc.set_threshold(*before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
